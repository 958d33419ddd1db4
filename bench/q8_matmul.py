"""Prefill matmul on the CPU: int8 activations x GGUF weights (cpu/quantize_q8.c + cpu/matmul_q8.c) against
the alternative, the weight dequantized to float32 once (outside the timing) and x @ W.T through NumPy's
BLAS. Shapes of qwen2.5-0.5b (ffn up/gate [4864, 896], down [896, 4864], fused qkv [1152, 896]); K-quants
need k % 256 == 0, so they run on [896, 4864] only. Time = median of --reps runs, q8 including the
quantization of x; GFLOP/s = 2 n k t / time. err = max |y_q8 - y_f32| / sum |w||x| over the outputs.
--clock wall (default) times wall-clock with --threads threads; --clock thread times the CPU time of one
thread (kernels and BLAS both run on the calling thread): on a shared, loaded machine wall-clock figures
of a 2-thread kernel mostly measure the scheduler, CPU time still measures the kernel.

    .venv/bin/python -m bench.q8_matmul [--threads 2] [--reps 7] [--clock wall|thread]
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # BLAS reads its thread count when NumPy is imported
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    _threads = "1" if "thread" in sys.argv else _threads
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = _threads

import platform
import time

import numpy as np
from gguf import GGMLQuantizationType as QT

from inference.model.backends import _cpu
from tests.kernels.quantdata import dequant, synthetic

SHAPES = [(4864, 896), (896, 4864), (1152, 896)]
TOKENS = [64, 256, 512]
TYPES = [QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K]
WIDTHS = ["<5", ">12", ">4", ">8", ">8", ">12", ">8", ">9", ">8"]


def median_ms(fn, reps: int, clock) -> float:
    fn()  # warm: page in the weight, size the OpenMP team
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times)) * 1e3


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def bench_one(qtype: QT, n: int, k: int, t: int, reps: int, clock, rng: np.random.Generator) -> tuple:
    raw = synthetic(qtype, n, k, rng)
    w = dequant(raw, qtype).reshape(n, k)  # the alternative's float32 weight, made outside the timing
    x = rng.standard_normal((t, k), dtype=np.float32)
    xq = np.empty(_cpu.q8_bytes(t, k), np.uint8)
    y = np.empty((t, n), np.float32)

    def q8():
        _cpu.quantize_q8(x, t, k, xq)
        _cpu.matmul_q8(int(qtype), raw, raw.shape[1], n, k, xq, t, y, n)

    q8_ms = median_ms(q8, reps, clock)
    f32_ms = median_ms(lambda: x @ w.T, reps, clock)
    err = np.max(np.abs(y - x @ w.T) / (np.abs(x) @ np.abs(w).T))
    return q8_ms, f32_ms, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall")
    args = ap.parse_args()
    if args.clock == "thread":
        args.threads = 1
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    _cpu.set_threads(args.threads)
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0]
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, SIMD path {_cpu.simd_level()}, {args.threads} thread(s) for")
    print(f"the kernels and BLAS, load average {load:.1f}; median of {args.reps} runs, {args.clock} clock")
    columns = ["type", "[n, k]", "t", "q8 ms", "GFLOP/s", "f32 BLAS ms", "GFLOP/s", "faster", "err"]
    print(" ".join(f"{c:{w}}" for c, w in zip(columns, WIDTHS, strict=True)))
    wins = {}
    for n, k in SHAPES:
        for qtype in TYPES:
            if k % 256 and qtype.name.endswith("_K"):
                continue
            for t in TOKENS:
                q8_ms, f32_ms, err = bench_one(qtype, n, k, t, args.reps, clock, rng)
                flop = 2 * n * k * t / 1e9
                faster = f"q8 {f32_ms / q8_ms:.1f}x" if q8_ms < f32_ms else f"f32 {q8_ms / f32_ms:.1f}x"
                wins.setdefault((n, k), []).append(q8_ms < f32_ms)
                gflops = [f"{flop / ms * 1e3:.0f}" for ms in (q8_ms, f32_ms)]
                row = [qtype.name, f"[{n}, {k}]", t, f"{q8_ms:.2f}", gflops[0], f"{f32_ms:.2f}", gflops[1]]
                row += [faster, f"{err:.1e}"]
                print(" ".join(f"{c:{w}}" for c, w in zip(row, WIDTHS, strict=True)))
    for (n, k), won in wins.items():
        print(f"[{n}, {k}]: int8 path faster in {sum(won)} of {len(won)} (type, t) cases")


if __name__ == "__main__":
    main()
