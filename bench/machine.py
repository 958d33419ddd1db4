"""What every bench table needs: the machine it ran on, medians of timed runs, and the table itself."""

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def blas_config() -> str:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    threads = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}
    config = " ".join(blas.get("openblas configuration", "").split())
    return f"{blas['name']} {blas['version']} ({config}); thread env {threads or 'unset'}"


def describe() -> str:
    """One line naming the machine: CPU, logical cores, numpy."""
    return f"machine: {cpu_name()}, {os.cpu_count()} logical cores, numpy {np.__version__}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(rows: list[dict[str, Any]], float_format: str = ".1f") -> None:
    """Markdown-ish table: columns from the first row's keys, first column left, the rest right-aligned."""
    columns = list(rows[0])
    cells = [[format(v, float_format) if isinstance(v, float) else str(v) for v in r.values()] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in cells:
        aligned = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        print(" | ".join(aligned))
