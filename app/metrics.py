"""Prometheus metrics in the text exposition format (0.0.4), written here: no client library needed."""

import bisect
import math
from collections import defaultdict

from inference.engine.stats import EngineStats

PREFIX = "gguf_serve_"
CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar appends "; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)

# EngineStats field -> (type, name, help) of its family: the worker's report is rendered from this table
# (tests/unit/test_metrics.py checks that every field has a row)
ENGINE_FAMILIES = {
    "running": (
        "gauge",
        "requests_running",
        "Sequences the engine is decoding (a request with n choices counts n).",
    ),
    "waiting": (
        "gauge",
        "requests_waiting",
        "Sequences admitted and waiting for the engine to schedule them.",
    ),
    "kv_blocks_used": ("gauge", "kv_cache_blocks_used", "KV-cache blocks in use."),
    "kv_blocks_total": ("gauge", "kv_cache_blocks_total", "KV-cache blocks in all."),
    "preemptions": (
        "counter",
        "preemptions_total",
        "Sequences preempted (KV blocks freed, recomputed later).",
    ),
    "cached_prompt_tokens": (
        "counter",
        "prefix_cache_hit_tokens_total",
        "Tokens whose KV came from the prefix cache instead of being computed (prompts, and what a "
        "preempted sequence had generated).",
    ),
    "draft_tokens_proposed": (
        "counter",
        "spec_decode_draft_tokens_total",
        "Speculative decoding: tokens the draft model or n-gram lookup proposed and the model verified.",
    ),
    "draft_tokens_accepted": (
        "counter",
        "spec_decode_accepted_tokens_total",
        "Speculative decoding: proposed tokens the model accepted (its own choice at that position).",
    ),
}


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = PREFIX + name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)  # [bucket]; the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = []
        total = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += n
            le = "+Inf" if bound == math.inf else repr(float(bound))
            lines.append(f'{self.name}_bucket{{le="{le}"}} {total}')
        lines += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]
        return _family(self.name, "histogram", self.help, lines)


class Metrics:
    """Counters and histograms the API process observes, gauges the worker reports after each step."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.ttft = Histogram(
            "time_to_first_token_seconds", "Time from admission to the first token.", LATENCY_BUCKETS
        )
        self.itl = Histogram(
            "inter_token_latency_seconds", "Time between consecutive tokens of one choice.", ITL_BUCKETS
        )
        self.e2e = Histogram(
            "e2e_request_latency_seconds", "Time from admission to the last token.", LATENCY_BUCKETS
        )
        self.queue = Histogram(
            "request_queue_time_seconds", "Time a request waited before its first schedule.", LATENCY_BUCKETS
        )
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: defaultdict[str, int] = defaultdict(int)  # finish reason -> requests
        self.rejected: defaultdict[str, int] = defaultdict(int)  # reason -> requests refused at admission
        self.worker_restarts = 0
        self.worker_stalls = 0
        self.aborted: defaultdict[str, int] = defaultdict(int)  # reason -> requests aborted for the client
        self.worker_up = 0
        self.engine = EngineStats()  # the worker's latest report, as it came
        self.in_flight = 0  # requests admitted by the API process and not finished

    def set_engine_stats(self, stats: EngineStats) -> None:
        self.engine = stats

    def reset_engine_stats(self) -> None:
        """The worker died: its replacement starts from an idle engine (the cache's size stays known)."""
        self.engine = EngineStats(kv_blocks_total=self.engine.kv_blocks_total)

    def render(self) -> str:
        out: list[str] = []
        for kind, name, help_text, value in self._scalars():
            out += _family(PREFIX + name, kind, help_text, [f"{PREFIX}{name} {value}"])
        for name, help_text, label, values in self._labelled():
            samples = [f'{PREFIX}{name}{{{label}="{key}"}} {n}' for key, n in sorted(values.items())]
            out += _family(PREFIX + name, "counter", help_text, samples)
        for h in (self.ttft, self.itl, self.e2e, self.queue):
            out += h.render()
        return "\n".join(out) + "\n"

    def _scalars(self) -> list[tuple[str, str, str, float]]:
        """(type, name, help, value) of each gauge and counter, in the order /metrics lists them."""
        e = self.engine
        usage = e.kv_blocks_used / e.kv_blocks_total if e.kv_blocks_total else 0.0
        engine = [
            (kind, name, text, getattr(e, field)) for field, (kind, name, text) in ENGINE_FAMILIES.items()
        ]
        return engine + [
            ("gauge", "worker_up", "1 when the engine worker is loaded and serving.", self.worker_up),
            (
                "counter",
                "worker_restarts_total",
                "Times the supervisor restarted a dead worker.",
                self.worker_restarts,
            ),
            (
                "counter",
                "worker_stalls_total",
                "Workers killed for sending no heartbeat for worker_stall_timeout_s.",
                self.worker_stalls,
            ),
            ("gauge", "requests_in_flight", "HTTP requests admitted and not yet finished.", self.in_flight),
            ("gauge", "kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.", usage),
            (
                "gauge",
                "spec_decode_acceptance_ratio",
                "Accepted / proposed tokens of speculative decoding since start (0 before any proposal).",
                e.draft_tokens_accepted / e.draft_tokens_proposed if e.draft_tokens_proposed else 0.0,
            ),
            ("counter", "prompt_tokens_total", "Prompt tokens of finished requests.", self.prompt_tokens),
            ("counter", "generation_tokens_total", "Tokens generated.", self.generation_tokens),
        ]

    def _labelled(self) -> list[tuple[str, str, str, dict[str, int]]]:
        """(name, help, label, label value -> count) of each labelled counter."""
        return [
            ("request_finished_total", "Finished choices by finish reason.", "finish_reason", self.finished),
            ("request_rejected_total", "Requests refused at admission, by reason.", "reason", self.rejected),
            (
                "requests_aborted_total",
                "Requests aborted because their client stopped reading (client_idle: nothing read for "
                "stream_idle_timeout_s; buffer_full: stream_buffer_events per choice unread).",
                "reason",
                self.aborted,
            ),
        ]


def _family(name: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
    """One metric family in the exposition format: its HELP and TYPE lines, then its samples."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def parse(text: str) -> dict[str, float]:
    """Sample name (with labels) -> value; for tests and the benchmark."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples
