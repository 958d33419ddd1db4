"""Decode speed of gguf-serve against llama-server in paired rounds: both servers up at once, each idle
while the other measures, so a burst of load from elsewhere falls on one round of both sides.

    python -m bench.paired --model smollm2-135m [--rounds 7] [--backend cpu]

bench/compare.py starts each server in turn, minutes apart: on a shared machine its decode ratio moved
from 0.8x to 3x between runs as load came and went. Here every round measures single-stream decode
(128 tokens) and 16-stream aggregate tok/s on both servers back to back, in alternating order, and the
table shows each round's ratio and their median: the ratio of two measurements seconds apart is what
stays stable. Idle servers take no CPU (the worker blocks on its queue; llama-server on its socket).
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from bench.compare import (
    CONCURRENCY,
    SIDES,
    Server,
    aggregate_tok_s,
    decode_tok_s,
    free_port,
    server_command,
    start_server,
    stop_server,
    stream,
)
from bench.machine import describe, load_average, print_table
from inference.gguf.registry import resolve_model

ROUNDS = 7
MEASURES = {"decode": decode_tok_s, "aggregate": aggregate_tok_s}


async def one(server: Server, measure: str, tag: int) -> float:
    limits = httpx.Limits(max_connections=CONCURRENCY + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        if tag < 2000:  # the first round warms each server up
            await stream(client, model, "Warm up.", 4)
        return await MEASURES[measure](client, model, tag)


def rounds(servers: dict[str, Server], n: int) -> list[dict[str, float]]:
    """Per round: {side_measure: tok/s} and the load average when the round ended."""
    out = []
    for r in range(n):
        order = list(servers) if r % 2 == 0 else list(servers)[::-1]  # alternate who goes first
        figures: dict[str, float] = {}
        for measure in MEASURES:
            for side in order:
                figures[f"{side}_{measure}"] = asyncio.run(one(servers[side], measure, 1000 * (r + 1) + 50))
        figures["load"] = os.getloadavg()[0]
        out.append(figures)
        print(f"round {r + 1}/{n}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    return out


def table(results: list[dict[str, float]]) -> list[dict[str, str]]:
    rows = []
    for i, f in enumerate(results, 1):
        row = {"round": str(i), "load (1 min)": f"{f['load']:.2f}"}
        for m in MEASURES:
            row[f"{m}: gguf / llama tok/s"] = f"{f[f'gguf_{m}']:.1f} / {f[f'llama_{m}']:.1f}"
            row[f"{m} ratio"] = f"{f[f'gguf_{m}'] / f[f'llama_{m}']:.2f}x"
        rows.append(row)
    median = {"round": "median", "load (1 min)": f"{statistics.median(f['load'] for f in results):.2f}"}
    for m in MEASURES:
        g = statistics.median(f[f"gguf_{m}"] for f in results)
        ll = statistics.median(f[f"llama_{m}"] for f in results)
        median[f"{m}: gguf / llama tok/s"] = f"{g:.1f} / {ll:.1f}"
        median[f"{m} ratio"] = f"{statistics.median(f[f'gguf_{m}'] / f[f'llama_{m}'] for f in results):.2f}x"
    return [*rows, median]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="registry name")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="paired rounds (median shown)")
    parser.add_argument("--backend", default="cpu", help="gguf-serve's --backend")
    args = parser.parse_args(argv)
    model_path = resolve_model(args.model)
    print(f"load average before: {load_average()}", flush=True)
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="bench-paired-") as logdir:
        try:
            for side in SIDES:
                cmd = server_command(side, args, model_path, free_port())
                servers[side] = start_server(side, cmd, Path(logdir))
            results = rounds(servers, args.rounds)
        finally:
            for server in servers.values():
                stop_server(server)
    print(describe())
    print(
        f"{args.model}; gguf-serve --backend {args.backend} vs llama-server "
        f"(-t 2 -np {CONCURRENCY} --kv-unified), both up, alternating; single stream = 128 tokens "
        f"streamed, aggregate = {CONCURRENCY} streams x 128"
    )
    print_table(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
