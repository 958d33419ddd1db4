"""Continuous batching on the real SmolLM2-135M: batched, chunked and preempted runs equal solo runs."""

import os

import msgspec
import numpy as np
import pytest

from inference.engine.engine import Engine, EngineConfig
from inference.engine.sampler import top_logprobs
from inference.errors import RequestError
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.text.grammar import GrammarSpec, GrammarVocabulary

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4,",
    "Les montagnes sont",
]
GREEDY = SamplingParams(temperature=0.0)


def cfg(smol, i, text, max_tokens=12, **kw):
    ids = tuple(smol.tokenizer.encode(text))
    kw.setdefault("sampling", GREEDY)
    return AdapterForwardConfig(
        request_id=f"r{i}", prompt_ids=ids, max_tokens=max_tokens, ignore_eos=True, **kw
    )


def run(engine: Engine, configs) -> dict[tuple[str, int], list]:
    for c in configs:
        engine.add_request(c)
    out: dict[tuple[str, int], list] = {}
    finish = {}
    steps = 0
    while engine.has_unfinished():
        for ev in engine.step():
            out.setdefault((ev.request_id, ev.index), []).extend(ev.token_ids)
            if ev.finish_reason:
                finish[(ev.request_id, ev.index)] = ev.finish_reason
        steps += 1
        assert steps < 10_000
    assert set(finish) == set(out)
    return out


def test_batched_chunked_greedy_equals_solo(smol):
    solo = {f"r{i}": smol.greedy(list(smol.tokenizer.encode(p)), 12) for i, p in enumerate(PROMPTS)}
    engine = Engine(smol.loaded, EngineConfig(max_num_seqs=8, max_num_batched_tokens=7, kv_cache_tokens=1024))
    got = run(engine, [cfg(smol, i, p) for i, p in enumerate(PROMPTS)])
    assert {k[0]: v for k, v in got.items()} == solo
    assert engine.stats().kv_blocks_used == 0


def test_preemption_by_recompute_keeps_outputs(smol):
    solo = {f"r{i}": smol.greedy(list(smol.tokenizer.encode(p)), 24) for i, p in enumerate(PROMPTS)}
    # 10 blocks of 4 slots cannot hold five sequences of ~30 tokens at once
    engine = Engine(
        smol, EngineConfig(max_num_seqs=5, max_num_batched_tokens=64, block_size=4, kv_cache_tokens=40)
    )
    got = run(engine, [cfg(smol, i, p, max_tokens=24) for i, p in enumerate(PROMPTS)])
    assert {k[0]: v for k, v in got.items()} == solo
    assert engine.stats().preemptions > 0
    assert engine.stats().kv_blocks_used == 0


def test_n_choices_share_the_prompt_blocks(smol):
    engine = Engine(smol.loaded, EngineConfig(max_num_seqs=4, kv_cache_tokens=512))
    c = cfg(smol, 0, PROMPTS[2], max_tokens=6, n=3)
    engine.add_request(c)
    engine.step()  # prefill (one chunk) + first token of every choice
    prompt_blocks = -(-len(c.prompt_ids) // engine.config.block_size)
    assert engine.stats().running == 3
    assert engine.stats().kv_blocks_used < 3 * prompt_blocks  # full prompt blocks are shared
    got = run(engine, [])
    assert len({tuple(v) for v in got.values()}) == 1  # greedy: three equal choices
    assert engine.stats().kv_blocks_used == 0


def test_seeded_choices_differ_but_repeat(smol):
    sampling = SamplingParams(temperature=1.0, seed=1234)
    a = run(Engine(smol.loaded), [cfg(smol, 0, PROMPTS[0], max_tokens=10, n=3, sampling=sampling)])
    b = run(Engine(smol.loaded), [cfg(smol, 0, PROMPTS[0], max_tokens=10, n=3, sampling=sampling)])
    assert a == b
    assert len({tuple(v) for v in a.values()}) > 1


def test_seed_gives_same_tokens_alone_and_in_a_batch(smol):
    seeded = cfg(smol, 0, PROMPTS[0], max_tokens=16, sampling=SamplingParams(temperature=0.9, seed=7))
    alone = run(Engine(smol.loaded), [seeded])
    others = [
        cfg(smol, i, p, max_tokens=16, sampling=SamplingParams(temperature=1.0))
        for i, p in enumerate(PROMPTS)
    ][1:]
    together = run(Engine(smol.loaded, EngineConfig(max_num_batched_tokens=16)), [*others, seeded])
    assert together[("r0", 0)] == alone[("r0", 0)]


def test_abort_frees_blocks_within_one_step(smol):
    engine = Engine(smol.loaded, EngineConfig(kv_cache_tokens=512))
    engine.add_request(cfg(smol, 0, PROMPTS[2], max_tokens=50))
    engine.add_request(cfg(smol, 1, PROMPTS[0], max_tokens=50))
    engine.step()
    assert engine.stats().kv_blocks_used > 0
    engine.abort("r0")
    engine.abort("r1")
    assert engine.stats().kv_blocks_used == 0 and not engine.has_unfinished()
    assert engine.step() == []


def test_running_request_ids_follow_admission_and_finish(smol):
    engine = Engine(smol.loaded, EngineConfig(max_num_seqs=1, kv_cache_tokens=512))
    assert engine.backend_name == "numpy"
    engine.add_request(cfg(smol, 0, PROMPTS[0], max_tokens=2))
    engine.add_request(cfg(smol, 1, PROMPTS[1], max_tokens=2))
    assert engine.running_request_ids() == set()  # queued, not yet admitted
    engine.step()
    assert engine.running_request_ids() == {"r0"}  # one slot: r1 waits
    run(engine, [])
    assert engine.running_request_ids() == set()


def test_finish_reasons_and_usage(smol):
    engine = Engine(smol.loaded)
    c = AdapterForwardConfig(request_id="len", prompt_ids=tuple(smol.tokenizer.encode("Hi")), max_tokens=1)
    engine.add_request(c)
    events = engine.step()
    assert [e.finish_reason for e in events] == ["length"]
    assert events[0].completion_tokens == 1 and events[0].prompt_tokens == len(c.prompt_ids)
    # greedy text of a prompt, then the same request with a stop string taken from that text
    text = "".join(e.text for e in smol.generate(cfg(smol, 1, PROMPTS[0], max_tokens=12)))
    stop = text.strip().split()[1]
    cut = list(smol.generate(cfg(smol, 2, PROMPTS[0], max_tokens=12, stop=(stop,))))
    assert cut[-1].finish_reason == "stop"
    assert "".join(e.text for e in cut) == text[: text.index(stop)]


def test_end_of_generation_token_stops(smol):
    ids = smol.tokenizer.encode(
        smol.chat_template.render([{"role": "user", "content": "Say hi."}]), allow_special=True
    )
    c = AdapterForwardConfig(request_id="eog", prompt_ids=tuple(ids), max_tokens=200, sampling=GREEDY)
    events = list(smol.generate(c))
    assert events[-1].finish_reason == "stop"
    assert events[-1].token_ids[-1] in smol.tokenizer.eog_ids
    assert "<|im_end|>" not in "".join(e.text for e in events)


def test_prompt_logprobs_match_prefix_logits(smol):
    ids = smol.tokenizer.encode(PROMPTS[2])
    c = AdapterForwardConfig(
        request_id="echo",
        prompt_ids=tuple(ids),
        max_tokens=1,
        prompt_logprobs=2,
        sampling=SamplingParams(temperature=0.0, logprobs=2),
    )
    engine = Engine(smol.loaded, EngineConfig(max_num_batched_tokens=5))  # prompt spans several chunks
    engine.add_request(c)
    events = [e for _ in range(20) for e in engine.step()]
    prompt_lp = events[0].prompt_logprobs
    assert len(prompt_lp) == len(ids) and prompt_lp[0] is None
    for pos in (1, 4, len(ids) - 1):
        want = top_logprobs(smol.prefill(ids[:pos]), ids[pos], 2)
        assert prompt_lp[pos].chosen.token_id == ids[pos]
        assert prompt_lp[pos].chosen.logprob == pytest.approx(want.chosen.logprob, abs=1e-4)
        assert [t.token_id for t in prompt_lp[pos].top] == [t.token_id for t in want.top]
    lp = events[0].logprobs[0]
    assert lp.chosen.token_id == int(np.argmax(smol.prefill(ids)))


@pytest.mark.parametrize("change", [{"prompt_ids": ()}, {"max_tokens": 0}, {"n": 17}])
def test_invalid_requests_trip_an_assertion_before_running(smol, change):
    """The API boundary refuses them (tests/unit/test_limits.py); the engine only asserts."""
    base = dict(request_id="bad", prompt_ids=(1, 2, 3), max_tokens=4)
    engine = Engine(smol.loaded)
    with pytest.raises(AssertionError):
        engine.add_request(AdapterForwardConfig(**{**base, **change}))
    assert not engine.has_unfinished()


def json_request(smol, rid: str, **kw) -> AdapterForwardConfig:
    messages = [
        {"role": "system", "content": "You answer in JSON."},
        {"role": "user", "content": "Give the capital and population of France as a JSON object."},
    ]
    ids = smol.tokenizer.encode(smol.chat_template.render(messages), allow_special=True, add_bos=False)
    return AdapterForwardConfig(
        request_id=rid, prompt_ids=tuple(ids), max_tokens=64, grammar=GrammarSpec(kind="json_object"), **kw
    )


def test_json_mode_outputs_parse_alone_batched_and_preempted(smol):
    """n = 4 sampled choices and a greedy one, first alone, then together in a cache small enough to
    preempt: the same tokens, each output an object prefix, and every "stop" a parsed JSON object."""
    import json

    sampled = dict(n=4, sampling=SamplingParams(temperature=1.0, seed=11))
    alone = {}
    for rid, kw in (("s", sampled), ("g", {"sampling": GREEDY})):
        alone |= run(Engine(smol.loaded, EngineConfig(kv_cache_tokens=2048)), [json_request(smol, rid, **kw)])
    tight = Engine(smol.loaded, EngineConfig(max_num_seqs=5, block_size=4, kv_cache_tokens=4 * 32))
    together = run(tight, [json_request(smol, "s", **sampled), json_request(smol, "g", sampling=GREEDY)])
    assert together == alone and tight.stats().preemptions > 0
    parsed = 0
    vocab, eog = GrammarVocabulary(smol.tokenizer), smol.tokenizer.eog_ids
    for ids in alone.values():
        c = vocab.constraint(GrammarSpec(kind="json_object"))
        for t in ids:
            c.advance(t)
            assert c.error is None, c.error  # every token continued the grammar
        done = c.complete  # the object closed: the engine stopped it there, or at the EOG after it
        assert done or len(ids) == 64, ids
        text = smol.tokenizer.decode([t for t in ids if t not in eog])
        if done:
            assert isinstance(json.loads(text), dict)
            parsed += 1
    assert parsed >= 2


class MasksAfterForward(Engine):
    """The engine without the overlap: the sampler fills every mask once the forward is done."""

    def _fill_masks_during_forward(self, scheduled):
        return None


def test_masks_filled_during_the_forward_give_the_same_tokens(smol):
    """n = 2 sampled JSON choices beside a greedy text one, chunked prefill: the masks filled while the
    forward runs are those the sampler would fill after it (the same tokens, step by step)."""
    config = EngineConfig(max_num_batched_tokens=16, kv_cache_tokens=2048)
    sampled = json_request(smol, "j", n=2, sampling=SamplingParams(temperature=1.0, seed=3))
    requests = [msgspec.structs.replace(sampled, max_tokens=20), cfg(smol, 1, PROMPTS[0], max_tokens=8)]
    overlapped = Engine(smol.loaded, config)
    out = run(overlapped, requests)
    assert out == run(MasksAfterForward(smol.loaded, config), requests)
    assert overlapped._mask_thread is not None
    vocab = GrammarVocabulary(smol.tokenizer)
    for index in (0, 1):  # every token was allowed by the mask of its own state, not a stale one
        c = vocab.constraint(GrammarSpec(kind="json_object"))
        for t in out[("j", index)]:
            c.advance(t)
            assert c.error is None, c.error


def wide_grammar(alternatives: int = 2100) -> GrammarSpec:
    """Lark whose parser exceeds llguidance's 2000 items per Earley row once three digits are out."""
    rules = "\n".join(f'r{i}: "w{i}."' for i in range(alternatives))
    wide = " | ".join(f"r{i}" for i in range(alternatives))
    lark = f'start: "Hello, " DIGITS wide\nDIGITS: /[0-9]{{3}}/\nwide: {wide}\n{rules}\n'
    return GrammarSpec(kind="lark", source=lark, param="grammar")


def test_a_parser_limit_mid_output_ends_that_choice_with_an_error(smol):
    """The failing choice's last event says "error" with llguidance's reason and the field; its batch
    mates run on to the same tokens as alone (on the code before, step() raised ValueError, and the worker
    died with every request in it)."""
    plain = cfg(smol, 1, PROMPTS[0], max_tokens=10)
    alone = run(Engine(smol.loaded, EngineConfig(kv_cache_tokens=1024)), [plain])
    engine = Engine(smol.loaded, EngineConfig(kv_cache_tokens=1024))
    engine.add_request(cfg(smol, 0, PROMPTS[1], max_tokens=20, grammar=wide_grammar()))
    engine.add_request(plain)
    events = []
    while engine.has_unfinished():
        events += engine.step()
    (failed,) = [e for e in events if e.request_id == "r0" and e.finish_reason is not None]
    assert failed.finish_reason == "error" and failed.completion_tokens < 20, failed
    assert failed.error.startswith("grammar: the grammar's parser failed at output token "), failed.error
    assert "Current row has 2101 items; max is 2000" in failed.error and "\n" not in failed.error
    text = smol.tokenizer.decode([t for e in events if e.request_id == "r0" for t in e.token_ids])
    assert text.startswith("Hello, "), text
    assert [t for e in events if e.request_id == "r1" for t in e.token_ids] == alone[("r1", 0)]
    assert engine.stats().kv_blocks_used == 0


def test_json_mode_needs_an_end_of_generation_token(tmp_path):
    from inference.adapter import InferenceAdapter
    from tests.unit.gguf_fixtures import write_tiny_model

    adapter = InferenceAdapter.load(write_tiny_model(tmp_path / "m.gguf"))
    adapter.tokenizer.eog_ids = frozenset()  # a vocabulary without one
    engine = Engine(adapter.loaded, EngineConfig(kv_cache_tokens=256))
    request = AdapterForwardConfig(request_id="j", prompt_ids=(1, 2), grammar=GrammarSpec(kind="json_object"))
    with pytest.raises(RequestError, match="needs an end-of-generation token") as info:
        engine.add_request(request)
    assert info.value.param == "response_format" and not engine.has_unfinished()
    engine.add_request(msgspec.structs.replace(request, grammar=None))  # text mode still runs
    assert engine.has_unfinished()


LONG = "You are a careful assistant. " * 12  # ~72 tokens, several 16-token blocks


def test_prefix_cache_skips_the_shared_prompt_and_changes_no_token(smol):
    """A second request that repeats a finished one's prompt (plus more) computes only what is new;
    greedy tokens equal those of an engine without the cache, also when blocks get evicted."""
    prompts = [LONG + "Name a colour.", LONG + "Name a colour. Then a fruit.", LONG + "Count to five."]
    configs = [cfg(smol, i, p, max_tokens=8) for i, p in enumerate(prompts)]
    plain = Engine(smol.loaded, EngineConfig(prefix_caching=False))
    expected = {c.request_id: run(plain, [c])[(c.request_id, 0)] for c in configs}
    assert plain.stats().cached_prompt_tokens == 0
    cached = Engine(smol.loaded, EngineConfig(block_size=16))
    got = {}
    for c in configs:
        before = cached.stats().cached_prompt_tokens
        got[c.request_id] = run(cached, [c])[(c.request_id, 0)]
        hit = cached.stats().cached_prompt_tokens - before
        shared = len(os.path.commonprefix([list(c.prompt_ids), list(configs[0].prompt_ids)]))
        assert hit == (0 if c is configs[0] else min(shared, len(c.prompt_ids) - 1) // 16 * 16)
    assert got == expected and cached.stats().kv_blocks_used == 0


def test_prefix_cache_forgets_blocks_that_were_reused(smol):
    """8 blocks: the second prompt overwrites blocks the first left cached; when the first prompt comes
    again, only its blocks still intact may be taken from the cache."""
    first = cfg(
        smol, 0, LONG + "Name a colour, then a fruit, then a vegetable, then a tree. " * 2, max_tokens=8
    )
    second = cfg(smol, 1, LONG + "Count to five in French, German, Spanish and Italian. " * 2, max_tokens=8)
    plain = Engine(smol.loaded, EngineConfig(prefix_caching=False))
    expected = {c.request_id: run(plain, [c])[(c.request_id, 0)] for c in (first, second)}
    assert -(-(len(first.prompt_ids) + 8) // 16) <= 8 and len(first.prompt_ids) > 6 * 16
    tight = Engine(smol.loaded, EngineConfig(block_size=16, kv_cache_tokens=16 * 8))
    again = msgspec.structs.replace(first, request_id="again")
    outputs = {c.request_id: run(tight, [c])[(c.request_id, 0)] for c in (first, second, again)}
    assert outputs == expected | {"again": expected[first.request_id]}
    assert tight.stats().cached_prompt_tokens >= 2 * 4 * 16  # LONG's 4 blocks, twice at least


def test_prefix_cache_is_not_used_while_prompt_logprobs_are_wanted(smol):
    engine = Engine(smol.loaded, EngineConfig())
    first = cfg(smol, 0, LONG, max_tokens=2)
    run(engine, [first])
    events = []
    engine.add_request(msgspec.structs.replace(first, request_id="lp", prompt_logprobs=1))
    while engine.has_unfinished():
        events += engine.step()
    assert engine.stats().cached_prompt_tokens == 0
    assert len(events[0].prompt_logprobs) == len(first.prompt_ids)  # None for token 0, then one each


def test_short_request_starts_during_a_long_prefill(smol):
    """A short request that arrives while a long prompt is prefilled in chunks is scheduled at the very
    next step (decodes first, then admissions, then the next prefill chunks), not after the prompt."""
    engine = Engine(smol.loaded, EngineConfig(max_num_batched_tokens=64, kv_cache_tokens=4096))
    long_ids = tuple(range(1000, 1000 + 600))  # ten chunks of 64
    engine.add_request(AdapterForwardConfig(request_id="long", prompt_ids=long_ids, max_tokens=2))
    engine.step()  # first chunk of the long prompt
    engine.add_request(cfg(smol, 0, "Hi", max_tokens=3))
    firsts = {}
    for step in range(1, 20):
        for ev in engine.step():
            firsts.setdefault(ev.request_id, step)
    assert firsts["r0"] == 1, firsts  # its first token comes from the step right after it arrived
    assert 9 <= firsts["long"] <= 11  # the long prompt kept its pace: ten chunks, less what r0 took
