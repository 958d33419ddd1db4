"""NumPy engine throughput at batch 1: prefill and decode tokens/s beside the fp32 memory-bandwidth bound.

The bound: decoding one token reads every fp32 linear weight once (q, k, v, o, gate, up, down in every block
and the output matrix, which is token_embd when the output is tied), so tokens/s <= bandwidth / those bytes,
with the bandwidth measured as a large float32 `W @ x` in NumPy (W streams from RAM) just before each model's
decode runs, so that both see the same machine load (on a shared machine it moves a lot: report the load).

    .venv/bin/python -m bench.engine [--models smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b]
"""

import argparse
import statistics
import time
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import numpy as np

from bench.machine import blas_config, describe, load_average, median_seconds, print_table
from inference.adapter import InferenceAdapter
from inference.gguf.loader import load_gguf
from inference.gguf.registry import resolve_model

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
CHOICES = (*MODELS, "qwen2.5-coder-1.5b")
PREFILL_TOKENS = 500
DECODE_TOKENS = 128
DECODE_PROMPT_TOKENS = 8  # decode starts from a short context, like llama-bench's tg128
RUNS = 3
BANDWIDTH_ROWS, BANDWIDTH_COLS = 16384, 8192  # 512 MiB of float32: far beyond any cache
BANDWIDTH_RUNS = 7


# -- the machine --------------------------------------------------------------------------------------


def measure_bandwidth(runs: int = BANDWIDTH_RUNS) -> float:
    """Bytes/s of a float32 matrix-vector product whose matrix streams from RAM (median of `runs`)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((BANDWIDTH_ROWS, BANDWIDTH_COLS), dtype=np.float32)  # [N, K], 512 MiB
    x = rng.standard_normal(BANDWIDTH_COLS, dtype=np.float32)  # [K]
    w @ x  # warm-up: page in, start the BLAS threads
    seconds = median_seconds(lambda: w @ x, runs)
    return (w.nbytes + x.nbytes + 4 * BANDWIDTH_ROWS) / seconds


# -- the model ----------------------------------------------------------------------------------------


def weight_bytes_per_token(path: Path) -> int:
    """fp32 bytes of every 2-D weight matrix a decode step reads; token_embd only as the tied output."""
    tensors = load_gguf(path).tensors
    matrices = [t for name, t in tensors.items() if len(t.shape) == 2 and name != "token_embd.weight"]
    if "output.weight" not in tensors:
        matrices.append(tensors["token_embd.weight"])
    return 4 * sum(t.n_elements for t in matrices)


def prompt_ids(adapter: InferenceAdapter, n: int) -> list[int]:
    """The first n token ids of English prose (the pydoc topics shipped with the stdlib)."""
    text = "\n\n".join(topics[k] for k in sorted(topics))[: 40 * n]
    ids = adapter.tokenizer.encode(text)
    assert len(ids) >= n, f"{len(ids)} tokens of text, need {n}"
    return ids[:n]


# -- the engine calls: all of them are here ------------------------------------------------------------


def time_prefill(adapter: InferenceAdapter, ids: list[int]) -> float:
    start = time.perf_counter()
    adapter.prefill(ids)
    return time.perf_counter() - start


def time_decode(adapter: InferenceAdapter, ids: list[int], n: int) -> float:
    """Seconds for n single-token decode steps after prefilling `ids` (untimed); greedy next tokens."""
    logits = adapter.prefill(ids)
    start = time.perf_counter()
    for _ in range(n):
        logits = adapter.decode(int(np.argmax(logits)))
    return time.perf_counter() - start


# -- the table ----------------------------------------------------------------------------------------


def bench(name: str, runs: int) -> dict[str, Any]:
    path = resolve_model(name, progress=False)
    start = time.perf_counter()
    adapter = InferenceAdapter.load(path, backend="numpy")
    load_s = time.perf_counter() - start
    long_ids, short_ids = prompt_ids(adapter, PREFILL_TOKENS), prompt_ids(adapter, DECODE_PROMPT_TOKENS)
    prefill_s = statistics.median(time_prefill(adapter, long_ids) for _ in range(runs))
    bandwidth = measure_bandwidth()
    decode_s = statistics.median(time_decode(adapter, short_ids, DECODE_TOKENS) for _ in range(runs))
    per_token = weight_bytes_per_token(path)
    bound = bandwidth / per_token
    decode = DECODE_TOKENS / decode_s
    return {
        "model": name,
        "load s": load_s,
        "weights MB": adapter.memory_usage.weights / 1e6,
        "read/token MB": per_token / 1e6,
        f"prefill tok/s ({PREFILL_TOKENS})": PREFILL_TOKENS / prefill_s,
        f"decode tok/s ({DECODE_TOKENS})": decode,
        "W @ x GB/s": bandwidth / 1e9,
        "bound tok/s": bound,
        "decode/bound": f"{decode / bound:.0%}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=CHOICES)
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per measurement (median)")
    args = parser.parse_args()
    print(describe())
    print(f"BLAS: {blas_config()}")
    print(f"load average before: {load_average()}")
    mib = BANDWIDTH_ROWS * BANDWIDTH_COLS * 4 >> 20
    print(
        f"batch 1, fp32 weights; prefill = {PREFILL_TOKENS}-token prompt, decode = {DECODE_TOKENS} steps "
        f"after {DECODE_PROMPT_TOKENS} prompt tokens; median of {args.runs} runs; bandwidth = float32 W @ x, "
        f"W {mib} MiB, median of {BANDWIDTH_RUNS}\n"
    )
    rows = [bench(name, args.runs) for name in args.models]
    print_table(rows)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
