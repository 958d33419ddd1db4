"""CPU matvec bandwidth: GB/s of weight bytes per GGML type and decode batch size t, on one thread and on
the whole OpenMP team, against what a plain read (sum) and a memcpy of memory reach on as many threads;
for the types with the int8-activation decode kernel (matvec_q8, AVX-512 VNNI hosts) its team figures
beside the float32 kernel's (columns "q8 ...", "q8 / f32": the float32 time over the int8 time).

    .venv/bin/python -m bench.cpu_kernels [--runs 25] [--quick]

Each timed call reads weights that are not in cache: every shape cycles through copies of its matrix that
together exceed the last-level cache, as decode does (a model's weights stream from DRAM). Columns: the
median over the runs on one thread and on the team, and the team's best run. On a shared machine (compare
the load averages printed before and after) a team waits for its slowest member's time slice, often a
whole 4 ms scheduler tick, so the median says more about the neighbours than about the kernel; the best
run is then the kernel's own figure, and "best / read" compares it with the best plain read (sum).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES

from bench.machine import describe, load_average, print_table
from inference.model.backends import _cpu
from tests.kernels.test_cpu_quant import random_rows, row_bytes

POOL_BYTES = 256 << 20  # weights cycled through per shape: well past the 32 MiB L3 of the test VM
HOT = [QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K, QT.F32, QT.F16]
OTHER = [QT.Q4_0, QT.Q5_1, QT.Q5_K, QT.BF16, QT.Q2_K, QT.Q3_K]
# [n, k]: qwen2.5-0.5b's gate (and up) and down, SmolLM2-360M-like q|k|v, llama-3.2-1b's gate and down.
# A K-quant needs k % 256 == 0 (files store such tensors as Q5_0 / Q8_0): shapes that don't fit are skipped.
SHAPES = [(4864, 896), (896, 4864), (1536, 576), (8192, 2048), (2048, 8192)]
HEADS = [(QT.Q8_0, (49152, 576)), (QT.Q8_0, (151936, 896)), (QT.Q6_K, (128256, 2048))]  # tied / output heads
BATCH_SHAPE = (896, 4864)


def times(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def memory_bandwidth(runs: int, threads: int) -> dict[str, float]:
    """GB/s of a uint64 sum and of a memcpy (bytes copied) over POOL_BYTES split among `threads` threads"""
    src = np.ones(POOL_BYTES // 8, np.uint64)
    dst = np.empty_like(src)
    spans = [(c[0], c[-1] + 1) for c in np.array_split(np.arange(src.size), threads)]
    with ThreadPoolExecutor(threads) as pool:

        def read():
            list(pool.map(lambda s: src[s[0] : s[1]].sum(), spans))

        def copy():
            list(pool.map(lambda s: np.copyto(dst[s[0] : s[1]], src[s[0] : s[1]]), spans))

        read_t, copy_t = times(read, runs), times(copy, runs)
    gbs = POOL_BYTES / 1e9
    return {
        "read": gbs / statistics.median(read_t),
        "read best": gbs / min(read_t),
        "memcpy": gbs / statistics.median(copy_t),
        "memcpy best": gbs / min(copy_t),
    }


class Matvec:
    """One shape of one type: copies of the weights, x and y, and a call that reads the next copy."""

    def __init__(self, qtype: QT, n: int, k: int, t: int, rng: np.random.Generator, q8: bool = False):
        self.qtype, self.n, self.k, self.t = qtype, n, k, t
        self.kernel = _cpu.matvec_q8_parts if q8 else _cpu.matvec_parts
        base = random_rows(qtype, n, k, rng)
        self.nbytes = base.nbytes
        self.cycle = itertools.cycle([base] + [base.copy() for _ in range(POOL_BYTES // base.nbytes - 1)])
        self.x = rng.standard_normal((t, k), dtype=np.float32)
        self.y = np.empty((t, n), np.float32)

    def __call__(self) -> None:
        w = next(self.cycle)
        q, k, t, n = int(self.qtype), self.k, self.t, self.n
        self.kernel((q,), (w,), (w.shape[1],), (n,), k, self.x, t, self.y, n)

    def seconds(self, runs: int, threads: int) -> list[float]:
        previous = _cpu.threads()
        _cpu.set_threads(threads)
        try:
            self()  # the first call of a team is not the steady state
            return times(self, runs)
        finally:
            _cpu.set_threads(previous)


def fits(qtype: QT, k: int) -> bool:
    return k % GGML_QUANT_SIZES[qtype][0] == 0


def row(qtype: QT, n: int, k: int, t: int, runs: int, threads: int, read_gbs: float, rng) -> dict:
    mv = Matvec(qtype, n, k, t, rng)
    one, team = mv.seconds(runs, 1), mv.seconds(runs, threads)
    gb = n * row_bytes(qtype, k) / 1e9
    q8 = dict.fromkeys(("q8 best ms", "q8 best GB/s", "q8 / f32"), "-")  # no int8 kernel for the type here
    if int(qtype) in _cpu.matvec_q8_types():
        team_q8 = Matvec(qtype, n, k, t, rng, q8=True).seconds(runs, threads)
        q8 = {
            "q8 best ms": min(team_q8) * 1e3,
            "q8 best GB/s": gb / min(team_q8),
            "q8 / f32": f"{min(team) / min(team_q8):.2f}x",
        }
    return {
        "type": qtype.name,
        "shape [n, k]": f"[{n}, {k}]",
        "MB": gb * 1e3,
        "t": t,
        "1 thr ms": statistics.median(one) * 1e3,
        "1 thr GB/s": gb / statistics.median(one),
        f"{threads} thr ms": statistics.median(team) * 1e3,
        f"{threads} thr GB/s": gb / statistics.median(team),
        "best ms": min(team) * 1e3,
        "best GB/s": gb / min(team),
        "best / read": f"{gb / min(team) / read_gbs:.0%}",
        **q8,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25, help="timed calls per row and thread count")
    ap.add_argument("--quick", action="store_true", help="hot types on the first two shapes only")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    threads = _cpu.threads()
    print(describe())
    print(f"kernels: SIMD path {_cpu.simd_level()} (host {_cpu.host_level()}), team of {threads} threads")
    print(f"load average before: {load_average()}")
    for th in sorted({1, threads}):
        mem = memory_bandwidth(args.runs, th)
        print(
            f"memory, {th} thread(s): read (sum) {mem['read']:.1f} GB/s (best {mem['read best']:.1f}), "
            f"memcpy {mem['memcpy']:.1f} GB/s copied (best {mem['memcpy best']:.1f})"
        )
    read_gbs = mem["read best"]

    def table(cases: list[tuple[QT, int, int, int]]) -> list[dict]:
        return [row(q, n, k, t, args.runs, threads, read_gbs, rng) for q, n, k, t in cases]

    shapes = SHAPES[:2] if args.quick else SHAPES
    cases = [(q, n, k, 1) for q in HOT for n, k in shapes if fits(q, k)]
    if not args.quick:
        cases += [(q, n, k, 1) for q, (n, k) in HEADS]
        cases += [(q, *BATCH_SHAPE, 1) for q in OTHER]
    print(f"\nt = 1 (one sequence decoding); best / read: the best {threads}-thread run / the best read")
    print_table(table(cases), ".2f")

    print("\nbatch size t: the weights are read once per call, whatever t")
    batch = []
    for q in [QT.Q4_1, QT.Q8_0, QT.Q4_K, QT.Q6_K, QT.F16]:
        rows = table([(q, *BATCH_SHAPE, t) for t in (1, 2, 4, 8, 16)])
        one, best = rows[0]["1 thr ms"], rows[0]["best ms"]
        batch += [{**r, "1 thr x t=1": r["1 thr ms"] / one, "best x t=1": r["best ms"] / best} for r in rows]
    print_table(batch, ".2f")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
