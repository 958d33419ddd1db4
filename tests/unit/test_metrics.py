"""EngineStats crosses the worker pipe as it is and /metrics renders it from one table: every field has a
family, the names are the ones dashboards use, and a dead worker's gauges reset without a hand-built copy
(the cause of bug 1f05088: a field added to the engine's stats was missing from the reset)."""

import msgspec
import pytest

from app.metrics import ENGINE_FAMILIES, Metrics, parse
from inference.engine import worker
from inference.engine.engine import Engine
from inference.engine.stats import EngineStats

# each field a distinct value, so a rendered value names the field it came from
STATS = EngineStats(
    running=3,
    waiting=5,
    kv_blocks_used=7,
    kv_blocks_total=11,
    preemptions=13,
    cached_prompt_tokens=17,
    draft_tokens_proposed=23,
    draft_tokens_accepted=19,
)
NAMES = {  # the /metrics names, as they were before EngineStats crossed as it is
    "running": "gguf_serve_requests_running",
    "waiting": "gguf_serve_requests_waiting",
    "kv_blocks_used": "gguf_serve_kv_cache_blocks_used",
    "kv_blocks_total": "gguf_serve_kv_cache_blocks_total",
    "preemptions": "gguf_serve_preemptions_total",
    "cached_prompt_tokens": "gguf_serve_prefix_cache_hit_tokens_total",
    "draft_tokens_proposed": "gguf_serve_spec_decode_draft_tokens_total",  # new with speculative decoding
    "draft_tokens_accepted": "gguf_serve_spec_decode_accepted_tokens_total",
}


def test_the_worker_sends_the_engines_own_struct():
    """No mirror type: the messages hold EngineStats, and one decodes to an equal EngineStats."""
    assert worker.WorkerStep.__annotations__["stats"] is EngineStats
    assert worker.WorkerReady.__annotations__["stats"] is EngineStats
    assert Engine.stats.__annotations__["return"] is EngineStats
    sent = worker.WorkerStep(events=[], stats=STATS, queue_times=[], rejected=[])
    got = msgspec.msgpack.Decoder(worker.FromWorker).decode(msgspec.msgpack.encode(sent))
    assert type(got.stats) is EngineStats and got.stats == STATS


def test_every_field_has_a_family_under_its_old_name():
    assert set(ENGINE_FAMILIES) == set(EngineStats.__struct_fields__)
    metrics = Metrics("m")
    metrics.set_engine_stats(STATS)
    samples = parse(metrics.render())
    assert {field: samples[name] for field, name in NAMES.items()} == msgspec.structs.asdict(STATS)
    assert samples["gguf_serve_kv_cache_usage_ratio"] == pytest.approx(7 / 11)
    assert samples["gguf_serve_spec_decode_acceptance_ratio"] == pytest.approx(19 / 23)


def test_a_dead_workers_gauges_reset_but_the_cache_size_stays():
    metrics = Metrics("m")
    metrics.set_engine_stats(STATS)
    metrics.reset_engine_stats()
    samples = parse(metrics.render())
    assert {field: samples[name] for field, name in NAMES.items()} == {
        f: (11 if f == "kv_blocks_total" else 0) for f in NAMES
    }
    assert metrics.engine == EngineStats(kv_blocks_total=11)
