"""gguf-serve against llama.cpp's llama-server on the same model, in the same run: one table, both servers.

    python -m bench.compare --model smollm2-135m [--runs 3] [--backend numpy] [--only gguf|llama]

Each run starts each server in turn on a free loopback port (never both at once; the sides alternate
so that load from elsewhere on the machine falls on both), waits for /health 200 and measures: load
time, resident memory of the server's process tree, single-stream decode tok/s, time to first token
of a ~500-token prompt, aggregate tok/s of 16 concurrent streams, and how long a short request waits
behind a 4,500-token prompt. The table shows medians over the runs. Bounded: fixed request counts and
output lengths (ignore_eos), a deadline on every wait, and every server killed on the way out.
llama-server comes from bench/llama_server.py (built once, cached outside the repo).
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.llama_server import VERSION as LLAMA_VERSION
from bench.llama_server import llama_server_binary
from bench.machine import describe, load_average, print_table
from inference.gguf.registry import resolve_model

ROOT = Path(__file__).resolve().parents[1]
SIDES = {"gguf": "gguf-serve", "llama": "llama-server"}
LOAD_DEADLINE_S = 600.0
DECODE_TOKENS = 128  # per stream, single and concurrent
CONCURRENCY = 16
TTFT_WORDS, LONG_WORDS = 428, 3875  # ~500 and ~4,500 SmolLM2 tokens; the table reports the real counts
SHORT_DELAY_S = 1.0  # the short request follows the long prompt by this much
TEXT = (
    "The lighthouse stood on a narrow spit of rock where the river met the sea, and every evening the "
    "keeper climbed its one hundred and twelve steps to trim the wick, wind the clockwork that turned "
    "the lens, and write the weather in a ledger that nobody had read for forty years. Ships passed "
    "without stopping, gulls argued on the gallery rail, and the tide came and went twice a day as it "
    "always had, carrying driftwood, glass floats, lost oars and once a sealed green bottle."
).split()


def fixed_prompt(words: int, tag: int) -> str:
    """`words` words of TEXT, cycled, after a leading number: a fresh first token defeats prefix caches."""
    body = [TEXT[i % len(TEXT)] for i in range(words)]
    return f"{tag}. " + " ".join(body)


# -- servers -------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    url: str
    log: Path
    load_s: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(side: str, args: argparse.Namespace, model_path: Path, port: int) -> list[str]:
    if side == "gguf":
        exe = Path(sys.executable).with_name("gguf-serve")
        flags = ["--model", args.model, "--port", str(port), "--backend", args.backend]
        return [str(exe), "serve", *flags, "--log-level", "warning"]
    flags = ["-m", str(model_path), "-t", "2", "-c", "8192", "-np", str(CONCURRENCY), "--port", str(port)]
    # --kv-unified: one KV pool shared by the slots, as gguf-serve's block pool is; without it -np 16
    # splits -c 8192 into 512-token slots and the 4,500-token prompt is refused.
    return [str(llama_server_binary()), *flags, "--kv-unified", "--host", "127.0.0.1"]


def start_server(side: str, cmd: list[str], logdir: Path) -> Server:
    """Starts `cmd` in its own process group (so the whole tree can be killed) and waits for /health 200."""
    log = logdir / f"{side}-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGUF_SERVE_")}
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(SIDES[side], proc, f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}", log)
    try:
        server.load_s = wait_healthy(server, start)
    except BaseException:  # Ctrl-C included: no server outlives the bench
        stop_server(server)
        raise
    return server


def wait_healthy(server: Server, start: float) -> float:
    """Seconds from `start` to the first /health 200."""
    deadline = time.monotonic() + LOAD_DEADLINE_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{log_tail(server.log)}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not healthy within {LOAD_DEADLINE_S:.0f} s:\n{log_tail(server.log)}")


def stop_server(server: Server) -> None:
    """SIGTERM to the process group; SIGKILL to whatever is left once the leader exits (or after 30 s)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def tree_rss_mib(pid: int) -> float:
    """VmRSS summed over `pid` and all its descendants (gguf-serve's worker is a child process)."""
    total_kib, todo, seen = 0, [pid], set()
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        proc = Path(f"/proc/{p}")
        try:
            status = (proc / "status").read_text()
            total_kib += next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
            for children in proc.glob("task/*/children"):
                todo.extend(int(c) for c in children.read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between listing and reading
    return total_kib / 1024


# -- requests ------------------------------------------------------------------------------------------


@dataclass
class Stream:
    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    usage: dict = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start


async def stream(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> Stream:
    """One streamed /v1/completions request at temperature 0 with ignore_eos (both servers accept it)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = Stream(start=time.perf_counter())
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:500]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message", chunk["error"]))
            if any(c.get("text") for c in chunk.get("choices") or []):
                result.token_times.append(time.perf_counter())
            result.usage = chunk.get("usage") or result.usage
    result.end = time.perf_counter()
    if not result.token_times or not result.usage:
        raise RuntimeError(f"stream without text or usage (max_tokens {max_tokens})")
    return result


async def decode_tok_s(client: httpx.AsyncClient, model: str, tag: int) -> float:
    s = await stream(client, model, f"{tag}. Tell me a long story about the sea.", DECODE_TOKENS)
    tokens = s.usage["completion_tokens"]
    assert tokens == DECODE_TOKENS, f"ignore_eos ignored: {tokens} tokens"
    return (tokens - 1) / (s.token_times[-1] - s.token_times[0])  # first token to last


async def prompt_ttft(client: httpx.AsyncClient, model: str, tag: int) -> tuple[float, int]:
    s = await stream(client, model, fixed_prompt(TTFT_WORDS, tag), 1)
    return s.ttft, s.usage["prompt_tokens"]


async def aggregate_tok_s(client: httpx.AsyncClient, model: str, tag: int) -> float:
    start = time.perf_counter()
    prompts = [f"{tag + i}. Write about the history of lighthouses." for i in range(CONCURRENCY)]
    streams = await asyncio.gather(*(stream(client, model, p, DECODE_TOKENS) for p in prompts))
    return sum(s.usage["completion_tokens"] for s in streams) / (time.perf_counter() - start)


async def fairness(client: httpx.AsyncClient, model: str, tag: int) -> dict[str, float]:
    """The short request's TTFT and total time while a 4,500-token prompt is being processed."""
    long = asyncio.create_task(stream(client, model, fixed_prompt(LONG_WORDS, tag), 8))
    await asyncio.sleep(SHORT_DELAY_S)
    short = await stream(client, model, "Hi", 10)
    long_done = await long
    return {
        "hi_ttft": short.ttft,
        "hi_total": short.end - short.start,
        "long_total": long_done.end - long_done.start,  # under 1 s would mean nothing was measured
        "long_tokens": long_done.usage["prompt_tokens"],
    }


# -- one run of one side -------------------------------------------------------------------------------


async def measure(server: Server, run: int) -> dict[str, float]:
    tag = 1000 * (run + 1)  # a leading number per run and test: no prompt repeats within a run
    limits = httpx.Limits(max_connections=CONCURRENCY + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        await stream(client, model, "Warm up.", 4)
        figures = {"decode": await decode_tok_s(client, model, tag + 1)}
        figures["ttft"], figures["ttft_tokens"] = await prompt_ttft(client, model, tag + 2)
        figures["aggregate"] = await aggregate_tok_s(client, model, tag + 10)
        return figures | await fairness(client, model, tag + 3)


def run_side(side: str, args: argparse.Namespace, model_path: Path, run: int, logdir: Path) -> dict:
    server = start_server(side, server_command(side, args, model_path, free_port()), logdir)
    try:
        figures = {"load": server.load_s, "rss_load": tree_rss_mib(server.proc.pid)}
        figures |= asyncio.run(measure(server, run))
        figures["rss_end"] = tree_rss_mib(server.proc.pid)
        return figures
    except Exception:
        print(f"{server.name} log tail:\n{log_tail(server.log)}", file=sys.stderr)
        raise
    finally:
        stop_server(server)


# -- the table -----------------------------------------------------------------------------------------

# (key, label, better, display): display turns the median into the table's unit.
ROWS: list[tuple[str, str, str, Callable[[float], str]]] = [
    ("load", "load time (start to /health 200), s", "lower", lambda v: f"{v:.2f}"),
    ("rss_load", "resident memory after load, MiB", "lower", lambda v: f"{v:.0f}"),
    ("rss_end", "resident memory at the end, MiB", "lower", lambda v: f"{v:.0f}"),
    ("decode", f"decode tok/s, 1 stream, {DECODE_TOKENS} tokens", "higher", lambda v: f"{v:.1f}"),
    ("ttft", "TTFT of the ~500-token prompt, ms", "lower", lambda v: f"{v * 1e3:.0f}"),
    ("ttft_tokens", "  its prompt tokens (usage)", "-", lambda v: f"{v:.0f}"),
    (
        "aggregate",
        f"aggregate tok/s, {CONCURRENCY} streams x {DECODE_TOKENS}",
        "higher",
        lambda v: f"{v:.1f}",
    ),
    ("hi_ttft", '"Hi" TTFT behind a long prompt, ms', "lower", lambda v: f"{v * 1e3:.0f}"),
    ("hi_total", '"Hi" total (10 tokens), ms', "lower", lambda v: f"{v * 1e3:.0f}"),
    ("long_total", "  the long prompt's total (8 tokens), s", "lower", lambda v: f"{v:.2f}"),
    ("long_tokens", "  the long prompt's tokens (usage)", "-", lambda v: f"{v:.0f}"),
]


def table_rows(medians: dict[str, dict[str, float]]) -> list[dict[str, str]]:
    rows = []
    for key, label, better, display in ROWS:
        row = {"metric": label, "better": better}
        row |= {SIDES[side]: display(m[key]) for side, m in medians.items()}
        if len(medians) == 2 and better != "-":
            row["gguf-serve / llama-server"] = f"{medians['gguf'][key] / medians['llama'][key]:.2f}x"
        elif len(medians) == 2:
            row["gguf-serve / llama-server"] = "-"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="registry name")
    parser.add_argument("--runs", type=int, default=3, help="server starts per side (medians are shown)")
    parser.add_argument("--backend", default="auto", help="gguf-serve's --backend (numpy, cpu, cuda, auto)")
    parser.add_argument("--only", choices=list(SIDES), help="run one side only")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error(f"--runs must be 1..20, got {args.runs}")
    sides = [args.only] if args.only else list(SIDES)
    model_path = resolve_model(args.model)
    if "llama" in sides:
        llama_server_binary()  # build before the clock starts, not inside a load time
    print(f"load average before: {load_average()}")
    figures: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as logdir:
        for run in range(args.runs):
            for side in sides if run % 2 == 0 else sides[::-1]:
                figures[side].append(run_side(side, args, model_path, run, Path(logdir)))
                print(f"run {run + 1}/{args.runs} {SIDES[side]} done; load average {load_average()}")
    medians = {
        side: {k: statistics.median(f[k] for f in runs) for k in runs[0]} for side, runs in figures.items()
    }
    print(describe())
    print(f"load average after: {load_average()}")
    print(
        f"{args.model} ({model_path.name}); gguf-serve --backend {args.backend}; llama-server from "
        f"llama-cpp-python {LLAMA_VERSION} (-t 2 -c 8192 -np {CONCURRENCY} --kv-unified); temperature 0, "
        f"ignore_eos, streamed /v1/completions; median of {args.runs} runs; "
        f"Python {platform.python_version()}"
    )
    print_table(table_rows(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
