"""HTTP load benchmark on loopback: streamed completions at concurrency 1, 4, 16; prints TTFT, ITL, tokens/s.

    python -m bench.http                      # starts `gguf-serve serve` (SmolLM2-135M) on a free port
    python -m bench.http --url http://127.0.0.1:8000 --api-key KEY

Bounded: a fixed number of requests per level, each with a fixed output length (ignore_eos), and
only 127.0.0.1 / localhost targets are accepted.
"""

import sys
from pathlib import Path

# Run as `python bench/http.py`, this file's folder comes first on sys.path and would shadow the
# standard library's `http` package that httpx imports; drop it (python -m bench.http needs nothing).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root: `bench.machine`

import argparse  # noqa: E402
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from bench.machine import describe, load_average

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Result:
    ttft: float  # seconds to the first token
    gaps: list[float] = field(default_factory=list)  # seconds between tokens
    tokens: int = 0


async def one_request(client: httpx.AsyncClient, model: str, max_tokens: int, seed: int) -> Result:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    last, result = None, None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            now = time.perf_counter()
            if chunk.get("usage"):
                result.tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"][0]["text"]:
                if result is None:
                    result = Result(ttft=now - start)
                else:
                    result.gaps.append(now - last)
                last = now
    return result


async def run_level(
    client: httpx.AsyncClient, model: str, concurrency: int, requests: int, max_tokens: int
) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def bounded(i: int) -> Result:
        async with gate:
            return await one_request(client, model, max_tokens, seed=i)

    start = time.perf_counter()
    results = await asyncio.gather(*[bounded(i) for i in range(requests)])
    elapsed = time.perf_counter() - start
    ttfts = [r.ttft for r in results]
    gaps = [g for r in results for g in r.gaps]
    tokens = sum(r.tokens for r in results)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": elapsed,
        "ttft_p50": _pct(ttfts, 50),
        "ttft_p95": _pct(ttfts, 95),
        "itl_p50": _pct(gaps, 50),
        "itl_p95": _pct(gaps, 95),
        "tokens": tokens,
        "tok_s": tokens / elapsed,
        "req_s": requests / elapsed,
    }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(
        f"{'conc':>4} {'reqs':>5} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} "
        f"{'out tok/s':>10} {'req/s':>6}"
    )
    for r in rows:
        ms = {k: r[k] * 1e3 for k in ("ttft_p50", "ttft_p95", "itl_p50", "itl_p95")}
        print(
            f"{r['concurrency']:>4} {r['requests']:>5} {ms['ttft_p50']:>7.0f}ms {ms['ttft_p95']:>7.0f}ms "
            f"{ms['itl_p50']:>6.0f}ms {ms['itl_p95']:>6.0f}ms {r['tok_s']:>10.1f} {r['req_s']:>6.2f}"
        )


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "app.serve",
        "--model",
        args.model,
        "--port",
        str(port),
        "--backend",
        args.backend,
        "--max-num-seqs",
        str(max(args.concurrency)),
        "--log-level",
        "warning",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGUF_SERVE_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy within 600 s")


async def main_async(args, url: str) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        await one_request(client, model, 4, seed=0)  # warm-up
        rows = []
        for c in args.concurrency:
            runs = [
                await run_level(client, model, c, max(args.requests, c), args.max_tokens)
                for _ in range(args.runs)
            ]
            rows.append(_median_row(runs))
    print(describe())
    print_table(
        rows,
        f"gguf-serve HTTP benchmark: {model}, {args.max_tokens} output tokens/request, streamed; "
        f"median of {args.runs} runs per level; Python {platform.python_version()}",
    )


def _median_row(runs: list[dict]) -> dict:
    """Each figure's median over the runs of one concurrency level."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--api-key", default=os.environ.get("GGUF_SERVE_API_KEY", ""))
    parser.add_argument("--model", default="smollm2-135m", help="when starting a server")
    parser.add_argument("--backend", default="auto", help="when starting a server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--requests", type=int, default=16, help="requests per level (at least the concurrency)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="runs per level (medians are printed)")
    args = parser.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        parser.error("only loopback targets (127.0.0.1, localhost) are benchmarked")
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        print(f"load average before: {load_average()}")
        asyncio.run(main_async(args, url))
        print(f"load average after: {load_average()}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
