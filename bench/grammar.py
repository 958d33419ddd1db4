"""The cost of structured outputs: the grammar masks of one step, and an engine step of 16 constrained
sequences against 16 unconstrained ones (issue 14's target: at most 10% more).

Masks: a json_schema grammar's rows walk the tokens of documents that validate against it (the path a
model takes), on SmolLM2's (49k) and Qwen2.5's (151k) vocabularies; one step fills the masks of all rows
in one llguidance call (fill_masks), then the sampler sets the banned logits to -inf.

Engine: SmolLM2-135M on the cpu backend, 16 sequences sampled at temperature 1.0 (seeded), timed per
step over the decode steps where all 16 sample; the masks are filled while the forward runs.

    .venv/bin/python -m bench.grammar [--runs 3] [--steps 64] [--tokens 24]
"""

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np

from bench.machine import describe, load_average, print_table
from inference.engine.engine import Engine, EngineConfig
from inference.engine.sampler import _apply_constraints
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.gguf.loader import read_metadata
from inference.gguf.registry import resolve_model
from inference.text.grammar import GrammarSpec, GrammarVocabulary
from inference.text.tokenizer import Tokenizer

VOCABULARIES = ("smollm2-135m", "qwen2.5-coder-0.5b")
ENGINE_MODEL = "smollm2-135m"
ROWS = (1, 16)
RUNS = 3
MASK_STEPS = 64
ENGINE_TOKENS = 24
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "population": {"type": "integer", "minimum": 0},
        "districts": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 12},
        "coastal": {"type": "boolean"},
    },
    "required": ["city", "population", "districts", "coastal"],
    "additionalProperties": False,
}
NO_BIAS = np.empty(0, np.int64)  # the states of the mask walk set no logit_bias
SPEC = GrammarSpec(kind="json_schema", source=json.dumps(SCHEMA))
CITIES = ["Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Nantes", "Strasbourg", "Montpellier"]


def documents(n: int) -> list[str]:
    """n texts that validate against SCHEMA, each different (indented or not, districts vary)."""
    docs = []
    for i in range(n):
        city = CITIES[i % len(CITIES)]
        doc = {
            "city": f"{city} {i}",
            "population": 100_000 + 7919 * i,
            "districts": [f"{city} district number {j}" for j in range(3 + i % 5)],
            "coastal": i % 2 == 0,
        }
        docs.append(json.dumps(doc, indent=2 if i % 2 else None))
    return docs


# -- masks --------------------------------------------------------------------------------------------


class Walk:
    """B constraints, each advancing along the tokens of its own document (restarting when done)."""

    def __init__(self, vocab: GrammarVocabulary, tok: Tokenizer, rows: int):
        self.vocab = vocab
        self.paths = [tok.encode(d, add_bos=False) for d in documents(rows)]
        self.pos = [0] * rows
        self.constraints = [vocab.constraint(SPEC) for _ in range(rows)]

    def advance(self) -> None:
        for i, c in enumerate(self.constraints):
            c.advance(self.paths[i][self.pos[i]])
            assert c.error is None, c.error
            self.pos[i] += 1
            if self.pos[i] == len(self.paths[i]):
                self.pos[i], self.constraints[i] = 0, self.vocab.constraint(SPEC)


def time_masks(vocab: GrammarVocabulary, tok: Tokenizer, rows: int, steps: int) -> dict[str, float]:
    """Mean seconds per step of fill_masks (llguidance's parallel fill, unpacked to [B, V] bool) and of
    the sampler applying those masks to [B, V] logits (the banned ones -> -inf)."""
    walk = Walk(vocab, tok, rows)
    logits = np.zeros((rows, vocab.size), np.float32)
    fill, applied = [], []
    for _ in range(steps):
        states = [SimpleNamespace(constraint=c, bias_ids=NO_BIAS) for c in walk.constraints]
        start = time.perf_counter()
        vocab.fill_masks(walk.constraints)
        fill.append(time.perf_counter() - start)
        x = logits.copy()
        start = time.perf_counter()
        _apply_constraints(x, logits, states)  # finds the masks filled, as in the engine
        applied.append(time.perf_counter() - start)
        walk.advance()
    return {"fill_masks": np.mean(fill), "sampler applies": np.mean(applied)}


def mask_rows(runs: int, steps: int) -> list[dict]:
    out = []
    for name in VOCABULARIES:
        tok = Tokenizer.from_metadata(read_metadata(resolve_model(name, progress=False)))
        vocab = GrammarVocabulary(tok)
        for rows in ROWS:
            per_run = [time_masks(vocab, tok, rows, steps) for _ in range(runs)]
            row = {"vocabulary": f"{name} ({vocab.size})", "rows": rows}
            for key in per_run[0]:
                row[f"{key} ms/step"] = 1e3 * statistics.median(r[key] for r in per_run)
            out.append(row)
    return out


# -- engine steps -------------------------------------------------------------------------------------


def requests(tok: Tokenizer, constrained: bool, seqs: int, max_tokens: int) -> list[AdapterForwardConfig]:
    prompt = tok.encode("Describe a French city as a JSON object with its districts.\n", add_bos=True)
    return [
        AdapterForwardConfig(
            request_id=f"{'g' if constrained else 't'}{i}",
            prompt_ids=tuple(prompt),
            max_tokens=max_tokens,
            sampling=SamplingParams(temperature=1.0, seed=i),
            ignore_eos=not constrained,
            grammar=SPEC if constrained else None,
        )
        for i in range(seqs)
    ]


def decode_step_seconds(engine: Engine, configs: list[AdapterForwardConfig]) -> list[float]:
    """Seconds of each step in which every sequence sampled a token (the decode steps of a full batch)."""
    for cfg in configs:
        engine.add_request(cfg)
    times = []
    while engine.has_unfinished():
        start = time.perf_counter()
        events = engine.step()
        elapsed = time.perf_counter() - start
        if len(events) == len(configs):
            times.append(elapsed)
    return times[1:]  # the first sampled step follows the prefill


class MasksAfterForward(Engine):
    """The engine without the overlap: the sampler fills the masks once the forward is done."""

    def _fill_masks_during_forward(self, scheduled):
        return None


def engine_rows(runs: int, steps: int, seqs: int = 16) -> list[dict]:
    config = EngineConfig(max_num_seqs=seqs, kv_cache_tokens=16384, prefix_caching=False)
    overlapped = Engine.load(ENGINE_MODEL, backend="cpu", config=config)
    cases = {
        "unconstrained": (overlapped, False),
        "json_schema, masks after the forward": (MasksAfterForward(overlapped.loaded, config), True),
        "json_schema, masks during the forward": (overlapped, True),
    }
    per_run: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(runs):  # the cases interleaved, so that a change of machine load touches each of them
        for label, (engine, constrained) in cases.items():
            times = decode_step_seconds(engine, requests(engine.tokenizer, constrained, seqs, steps))
            per_run[label].append(statistics.median(times))
    base = statistics.median(per_run["unconstrained"])
    out = []
    for label, medians in per_run.items():
        step = statistics.median(medians)
        row = {f"{seqs} sequences ({ENGINE_MODEL}, cpu backend)": label, "decode step ms": 1e3 * step}
        out.append(row | {"overhead": f"{step / base - 1:+.1%}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per measurement (median)")
    parser.add_argument("--steps", type=int, default=MASK_STEPS, help="mask steps per run")
    parser.add_argument("--tokens", type=int, default=ENGINE_TOKENS, help="engine: max_tokens per sequence")
    args = parser.parse_args()
    print(describe())
    print(f"load average before: {load_average()}")
    print(f"json_schema grammar, median of {args.runs} runs; masks: {args.steps} steps per run\n")
    print_table(mask_rows(args.runs, args.steps), ".3f")
    print()
    print_table(engine_rows(args.runs, args.tokens), ".1f")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
