"""Reliability of a real server (SmolLM2-135M): fuzzed bodies and their 5xx, /health under a 3 MB body,
stall detection, memory of 20 clients that never read. Prints one table.

    python -m bench.reliability [--quick] [--backend auto]

Starts `gguf-serve serve` on a free loopback port and measures, in this order:
1. fuzzed bodies (tests/api/test_fuzz.py's generator: wrong types, nesting 10,000 deep, invalid UTF-8,
   byte flips) sent 8 at a time: how many got a 5xx (none should);
2. /health's slowest answer (probed every 5 ms from another thread) while a 3 MB completions body
   (750,000 one-character prompts) is sent and refused, back to back;
3. the resident memory of the server's process tree while 20 streams whose clients never read are open
   (sampled every second), and how many of them the server aborted as idle;
4. stall detection: SIGSTOP the worker, seconds until /health answers 503; then until a new worker serves.
--quick sends 400 of the bodies and uses shorter times (stream_idle_timeout_s 5, stall 20 s, a 45 s
memory window) instead of the defaults (30 s, 30 s, 60 s). A stall timeout shorter than the slowest
engine step kills a busy worker (a 512-token prefill step took 10 s on a loaded 2-core VM): the table
counts such stalls before the SIGSTOP (should be 0).
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from app.metrics import parse
from bench.compare import free_port, start_server, stop_server, tree_rss_mib
from bench.machine import describe, load_average, print_table
from tests.api.test_fuzz import MODEL, all_bodies, capped

THREE_MB = json.dumps(
    {"model": MODEL, "prompt": ["a"] * 750_000, "max_tokens": 1}, separators=(",", ":")
).encode()
UNREAD_STREAMS = 20
# ~640 tokens echoed by 3 choices as 3 x 40 KB: more than the socket buffers of a client that never reads
# take, so the server's writes block at the first chunks (20 streams: 60 of the 80 sequences admitted)
UNREAD_BODY = {"prompt": "-" * 40_000, "echo": True, "n": 3, "max_tokens": 2000, "ignore_eos": True}
QUICK = {"bodies": 400, "big_bodies": 10, "memory_s": 45.0, "idle_s": 5.0, "stall_s": 20.0}
FULL = {"bodies": None, "big_bodies": 20, "memory_s": 60.0, "idle_s": 30.0, "stall_s": 30.0}


# -- 1. fuzzed bodies -------------------------------------------------------------------------------------


def fuzz_bodies(limit: int | None) -> list[tuple[str, bytes]]:
    bodies = [body for items in all_bodies().values() for body in items]
    return bodies if limit is None else random.Random(13).sample(bodies, limit)


async def send_bodies(url: str, bodies: list[tuple[str, bytes]]) -> list[int]:
    """The status of each body, 8 in flight on one keep-alive client."""
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(
        base_url=url, headers={"Content-Type": "application/json"}, timeout=120
    ) as c:

        async def one(path: str, body: bytes) -> int:
            async with gate:
                return (await c.post(path, content=capped(path, body))).status_code

        return await asyncio.gather(*(one(path, body) for path, body in bodies))


# -- 2. /health while a 3 MB body is handled --------------------------------------------------------------


def slowest_health_during_big_bodies(url: str, times: int) -> tuple[float, int]:
    """(slowest /health answer in seconds among probes overlapping the requests, probes counted)."""
    probes: list[tuple[float, float]] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                start = time.monotonic()
                client.get("/health")
                probes.append((start, time.monotonic() - start))
                time.sleep(0.005)

    prober = threading.Thread(target=probe, daemon=True)
    with httpx.Client(base_url=url, headers={"Content-Type": "application/json"}, timeout=120) as client:
        client.post("/v1/completions", content=THREE_MB)  # once before: one-time costs are not measured
        prober.start()
        time.sleep(0.1)
        start = time.monotonic()
        for _ in range(times):
            client.post("/v1/completions", content=THREE_MB)
        end = time.monotonic()
    stop.set()
    prober.join()
    during = [seconds for at, seconds in probes if at <= end and at + seconds >= start]
    return max(during), len(during)


# -- 3. memory of clients that never read -----------------------------------------------------------------


def unread_stream(port: int) -> socket.socket:
    """A streamed completion on a socket that never reads (1 KB receive buffer, 536-byte segments)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", port))
    payload = json.dumps({"model": MODEL, "stream": True, **UNREAD_BODY}).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def memory_of_unread_streams(server, seconds: float) -> dict[str, float]:
    """RSS (MiB) of the server's process tree before, at its peak and at the end of `seconds` with
    UNREAD_STREAMS open; how many the server aborted as idle and how many were still admitted at the end."""
    before = tree_rss_mib(server.proc.pid)
    socks = [unread_stream(int(server.url.rsplit(":", 1)[1])) for _ in range(UNREAD_STREAMS)]
    samples = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.append(tree_rss_mib(server.proc.pid))
            time.sleep(1.0)
        m = metrics(server.url)
    finally:
        for sock in socks:
            sock.close()
    return {
        "before": before,
        "peak": max(samples),
        "end": samples[-1],
        "aborted": m.get('gguf_serve_requests_aborted_total{reason="client_idle"}', 0.0),
        "in_flight": m["gguf_serve_requests_in_flight"],
    }


def metrics(url: str) -> dict[str, float]:
    return parse(httpx.get(f"{url}/metrics", timeout=10).text)


# -- 4. stall detection -----------------------------------------------------------------------------------


def worker_pid(server_pid: int) -> int:
    """The engine worker: the spawn child that is not multiprocessing's resource tracker."""
    for pid in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            return int(pid)
    raise RuntimeError(f"no worker process under {server_pid}")


def stall_detection(url: str, server_pid: int, timeout_s: float) -> tuple[float, float]:
    """(seconds from SIGSTOP of the worker to /health 503, then to /health 200 with a new worker). The
    worker is stopped while idle: a step in progress would have started the silence earlier."""
    wait_idle(url, 120)
    pid = worker_pid(server_pid)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        detected = wait_status(url, 503, timeout_s * 2 + 10) - stopped
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # if it was not killed, leave no stopped process behind
        except ProcessLookupError:
            pass
    replaced = wait_status(url, 200, 300) - stopped
    return detected, replaced


def wait_idle(url: str, timeout_s: float) -> None:
    """Until nothing is admitted or running, plus two heartbeats."""
    deadline = time.monotonic() + timeout_s
    names = ("gguf_serve_requests_in_flight", "gguf_serve_requests_running", "gguf_serve_requests_waiting")
    while any(metrics(url)[name] for name in names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not idle within {timeout_s:.0f} s")
        time.sleep(0.1)
    time.sleep(2.0)


def wait_status(url: str, status: int, timeout_s: float) -> float:
    """monotonic() when /health first answers `status`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == status:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"/health did not answer {status} within {timeout_s:.0f} s")


# -- the run ----------------------------------------------------------------------------------------------


def server_command(args: argparse.Namespace, config: dict, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("gguf-serve")
    flags = {
        "--model": MODEL,
        "--port": str(port),
        "--backend": args.backend,
        "--kv-cache-tokens": "16384",
        "--stream-idle-timeout-s": str(config["idle_s"]),
        "--worker-stall-timeout-s": str(config["stall_s"]),
        "--log-level": "warning",
    }
    return [str(exe), "serve", *[x for pair in flags.items() for x in pair]]


def measure(server, config: dict) -> list[dict[str, str]]:
    bodies = fuzz_bodies(config["bodies"])
    statuses = asyncio.run(send_bodies(server.url, bodies))
    server_errors = sum(s >= 500 for s in statuses)
    healthy = httpx.get(f"{server.url}/health", timeout=10).status_code
    slowest, probes = slowest_health_during_big_bodies(server.url, config["big_bodies"])
    memory = memory_of_unread_streams(server, config["memory_s"])
    false_stalls = metrics(server.url)["gguf_serve_worker_stalls_total"]
    detected, replaced = stall_detection(server.url, server.proc.pid, config["stall_s"])
    return [
        {"measure": "fuzzed bodies sent", "value": str(len(bodies)), "note": f"/health after: {healthy}"},
        {"measure": "  of which got a 5xx", "value": str(server_errors), "note": "must be 0"},
        {
            "measure": "/health p100 under a 3 MB body",
            "value": f"{slowest * 1e3:.0f} ms",
            "note": f"{probes} probes over {config['big_bodies']} bodies",
        },
        {
            "measure": f"RSS, {UNREAD_STREAMS} unread streams",
            "value": f"{memory['before']:.0f} -> {memory['peak']:.0f} (peak) -> {memory['end']:.0f} MiB",
            "note": f"over {config['memory_s']:.0f} s; stream_idle_timeout_s {config['idle_s']}",
        },
        {
            "measure": "  streams aborted as idle",
            "value": f"{memory['aborted']:.0f} of {UNREAD_STREAMS}",
            "note": f"{memory['in_flight']:.0f} still admitted at the end",
        },
        {"measure": "worker stalls before the SIGSTOP", "value": f"{false_stalls:.0f}", "note": "must be 0"},
        {
            "measure": "stall detection (SIGSTOP -> 503)",
            "value": f"{detected:.1f} s",
            "note": f"worker_stall_timeout_s {config['stall_s']}; new worker serving after {replaced:.1f} s",
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a sample of the bodies, short timeouts")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    port = free_port()
    print(describe())
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="gguf-serve-reliability-") as logdir:
        server = start_server("gguf", server_command(args, config, port), Path(logdir))
        try:
            rows = measure(server, config)
        finally:
            stop_server(server)
    print(f"load average after: {load_average()}")
    print(
        f"gguf-serve reliability: {MODEL}, backend {args.backend}, {'--quick' if args.quick else 'full'} run"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
