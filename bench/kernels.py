"""Kernel benchmark. Without a GPU: the ptxas resource table and an emulator correctness summary. With
pycuda and a device: bandwidth of every matvec kernel (T=1) against the device's peak, and an estimate of
decode tokens/s for qwen2.5-coder-0.5b shapes (sum of its per-token matvecs).

    .venv/bin/python -m bench.kernels
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
from gguf import GGMLQuantizationType as QT

from inference.model.backends import cuda_unavailable_reason
from tests.kernels import ptxas
from tests.kernels.quantdata import SUFFIX, synthetic

# qwen2.5-coder-0.5b per-token projections (N, K, count per token): qkv, o, gate_up, down x 24 layers + output
QWEN05 = [(1152, 896, 24), (896, 896, 24), (9728, 896, 24), (896, 4864, 24), (151936, 896, 1)]


def cpu_report() -> None:
    if ptxas.nvcc_path():
        resources, failures = ptxas.check_all()
        print(ptxas.table(resources))
        print(f"\nptxas: {len(resources)} kernel compilations, {len(failures)} problems\n")
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-m", "not gpu", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
    )
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-500:]
    print(f"emulator kernel tests (both orders): {summary} [{time.perf_counter() - start:.1f} s wall]")


def gpu_report() -> None:
    import pycuda.driver as drv  # noqa: PLC0415

    from inference.model.backends.cuda_backend import CudaBackend  # noqa: PLC0415
    from inference.model.backends.cuda_memory import DeviceWeight  # noqa: PLC0415

    be = CudaBackend()
    dev = drv.Context.get_device()
    a = drv.device_attribute
    peak = 2 * dev.get_attribute(a.MEMORY_CLOCK_RATE) * 1e3 * dev.get_attribute(a.GLOBAL_MEMORY_BUS_WIDTH) / 8
    print(f"device: {dev.name()}, peak DRAM bandwidth ~{peak / 1e9:.0f} GB/s")
    print(f"{'kernel':<18} {'N x K':>12} {'GB/s':>8} {'% peak':>7} {'us':>8}")
    rng = np.random.default_rng(0)
    start, stop = drv.Event(), drv.Event()
    for qtype, suffix in SUFFIX.items():
        n, k = 4864, 4864 if qtype not in (QT.F32,) else 2048
        raw = synthetic(qtype, n, k, rng)
        w = DeviceWeight(be.to_device(raw), suffix, n, k)
        x = be.to_device(rng.standard_normal((1, k), dtype=np.float32))
        be.linear(x, w)
        start.record()
        reps = 50
        for _ in range(reps):
            be.linear(x, w)
        stop.record()
        stop.synchronize()
        sec = start.time_till(stop) / 1e3 / reps
        gbs = (raw.nbytes + 4 * k + 4 * n) / sec / 1e9
        print(
            f"matvec_{suffix}_t1".ljust(18),
            f"{n}x{k}".rjust(12),
            f"{gbs:8.1f} {gbs * 1e9 / peak:7.1%} {sec * 1e6:8.1f}",
        )
    total = 0.0
    for n, k, count in QWEN05:
        raw = synthetic(QT.Q5_0 if n != 151936 else QT.Q8_0, n, k, rng)
        w = DeviceWeight(be.to_device(raw), "q5_0" if n != 151936 else "q8_0", n, k)
        x = be.to_device(rng.standard_normal((1, k), dtype=np.float32))
        be.linear(x, w)
        start.record()
        for _ in range(10):
            be.linear(x, w)
        stop.record()
        stop.synchronize()
        total += start.time_till(stop) / 1e3 / 10 * count
    print(
        f"qwen2.5-coder-0.5b decode, matvecs only: {1 / total:.0f} tokens/s (upper bound; attention excluded)"
    )


def main() -> None:
    reason = cuda_unavailable_reason()
    if reason is None:
        gpu_report()
    else:
        print(f"no GPU ({reason}): CPU report only\n")
        cpu_report()


if __name__ == "__main__":
    main()
