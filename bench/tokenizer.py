"""Tokenizer throughput: build from GGUF metadata, encode ~1 MB of English, decode, stream; one table."""

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import gguf

from inference.model_registry import resolve_model
from inference.tokenizer import Tokenizer

MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")
RUNS = 5


def read_metadata(path: Path) -> dict[str, Any]:
    """GGUF key/values as Python values (inference.gguf_loader's job once it lands)."""
    return {key: field.contents() for key, field in gguf.GGUFReader(path).fields.items()}


def english(size: int) -> str:
    """`size` bytes of English prose: the Python documentation topics shipped with the stdlib, repeated."""
    text = "\n\n".join(topics[k] for k in sorted(topics))
    text = text * (size // len(text.encode()) + 1)
    return text.encode()[:size].decode("utf-8", errors="ignore")


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else platform.processor() or platform.machine()


def median_seconds(fn: Callable[[], Any], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stream_all(tok: Tokenizer, ids: list[int]) -> str:
    detok = tok.detokenizer()
    return "".join([detok.push(i) for i in ids]) + detok.flush()


def bench(name: str, text: str) -> dict[str, Any]:
    metadata = read_metadata(resolve_model(name, progress=False))
    build = median_seconds(lambda: Tokenizer.from_metadata(metadata))
    tok = Tokenizer.from_metadata(metadata)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    megabytes = len(text.encode()) / 1e6
    return {
        "vocabulary": f"{name} ({metadata['tokenizer.ggml.pre']}, {tok.vocab_size})",
        "build s": build,
        "encode MB/s": megabytes / median_seconds(lambda: tok.encode(text)),
        "tokens": len(ids),
        "decode MB/s": megabytes / median_seconds(lambda: tok.decode(ids)),
        "stream Mtok/s": len(ids) / 1e6 / median_seconds(lambda: stream_all(tok, ids)),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in cells:  # first column left-aligned, numbers right-aligned
        aligned = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        print(" | ".join(aligned))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=1_000_000, help="size of the English text")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    text = english(args.bytes)
    print(f"{len(text.encode()):,} bytes of English (pydoc topics); median of {RUNS} runs; {cpu_name()}\n")
    print_table([bench(name, text) for name in args.models])


if __name__ == "__main__":
    main()
