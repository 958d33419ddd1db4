"""Oversubscription check: which threads of gguf-serve's processes burn CPU while it decodes.

    python -m bench.threads [--model smollm2-135m] [--backend cpu] [--seconds 8]

Starts `gguf-serve serve` (bench/compare.py's launcher), then for one stream and for 16 concurrent streams
samples every thread's CPU time (/proc/PID/task/TID/stat utime + stime) of the API process and of the
worker process before and after the phase, and prints per process: threads that exist, threads that used
more than 10% of a core ("busy"), and the cores used in all (CPU seconds / wall seconds). On a machine
with C cores and `threads` = C, no oversubscription means: the worker's busy threads are its main thread
plus the OpenMP team (C - 1 helpers), BLAS's pool stays idle (threadpoolctl holds it to the same team
size, and the decode path never calls BLAS), and the API process uses a fraction of a core.
"""

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.compare import CONCURRENCY, free_port, server_command, start_server, stop_server, stream
from bench.machine import describe, load_average, print_table
from inference.gguf.registry import resolve_model

BUSY = 0.10  # share of one core above which a thread counts as busy
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of `pid`."""
    out = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return out


def children(pid: int) -> list[int]:
    kids = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        kids.extend(int(c) for c in f.read_text().split())
    return kids


def worker_pid(api_pid: int) -> int:
    """The engine worker: the API's child with the most threads (the others are multiprocessing helpers)."""
    kids = [k for k in children(api_pid) if Path(f"/proc/{k}").exists()]
    if not kids:
        raise RuntimeError(f"gguf-serve (pid {api_pid}) has no worker process")
    return max(kids, key=lambda k: len(list(Path(f"/proc/{k}/task").iterdir())))


async def load_phase(url: str, model: str, streams: int, seconds: float) -> None:
    """`streams` concurrent streams, restarted as they finish, for `seconds`."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            while time.monotonic() < deadline:
                await stream(client, model, f"{i}. Tell me a long story about the sea.", 32)

        await asyncio.gather(*(one(i) for i in range(streams)))


def usage_rows(phase: str, pids: dict[str, int], before: dict, after: dict, wall: float) -> list[dict]:
    rows = []
    for name, pid in pids.items():
        used = {tid: after[pid].get(tid, 0.0) - before[pid].get(tid, 0.0) for tid in after[pid]}
        rows.append(
            {
                "phase": phase,
                "process": f"{name} ({pid})",
                "threads": len(after[pid]),
                "busy threads": sum(1 for s in used.values() if s / wall > BUSY),
                "cores used": round(sum(used.values()) / wall, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    args = parser.parse_args(argv)
    model_path = resolve_model(args.model)
    print(describe())
    print(f"load before: {load_average()}; cores this process may use: {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory() as logdir:
        server = start_server("gguf", server_command("gguf", args, model_path, free_port()), Path(logdir))
        try:
            pids = {"api": server.proc.pid, "worker": worker_pid(server.proc.pid)}
            rows = []
            for phase, streams in (("idle", 0), ("1 stream", 1), (f"{CONCURRENCY} streams", CONCURRENCY)):
                before, start = {p: thread_cpu(p) for p in pids.values()}, time.monotonic()
                if streams:
                    asyncio.run(load_phase(server.url, args.model, streams, args.seconds))
                else:
                    time.sleep(args.seconds / 2)
                after, wall = {p: thread_cpu(p) for p in pids.values()}, time.monotonic() - start
                rows += usage_rows(phase, pids, before, after, wall)
        finally:
            stop_server(server)
    print_table(rows)
    print(f"load after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
