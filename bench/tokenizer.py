"""Tokenizer throughput: build from GGUF metadata, encode ~1 MB of English, decode, stream; one table."""

import argparse
from pydoc_data.topics import topics
from typing import Any

from bench.machine import describe, median_seconds, print_table
from inference.gguf.loader import read_metadata
from inference.gguf.registry import resolve_model
from inference.text.tokenizer import Tokenizer

MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")
RUNS = 5


def english(size: int) -> str:
    """`size` bytes of English prose: the Python documentation topics shipped with the stdlib, repeated."""
    text = "\n\n".join(topics[k] for k in sorted(topics))
    text = text * (size // len(text.encode()) + 1)
    return text.encode()[:size].decode("utf-8", errors="ignore")


def stream_all(tok: Tokenizer, ids: list[int]) -> str:
    detok = tok.detokenizer()
    return "".join([detok.push(i) for i in ids]) + detok.flush()


def bench(name: str, text: str) -> dict[str, Any]:
    metadata = read_metadata(resolve_model(name, progress=False))
    build = median_seconds(lambda: Tokenizer.from_metadata(metadata), RUNS)
    tok = Tokenizer.from_metadata(metadata)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    megabytes = len(text.encode()) / 1e6
    return {
        "vocabulary": f"{name} ({metadata['tokenizer.ggml.pre']}, {tok.vocab_size})",
        "build s": build,
        "encode MB/s": megabytes / median_seconds(lambda: tok.encode(text), RUNS),
        "tokens": len(ids),
        "decode MB/s": megabytes / median_seconds(lambda: tok.decode(ids), RUNS),
        "stream Mtok/s": len(ids) / 1e6 / median_seconds(lambda: stream_all(tok, ids), RUNS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=1_000_000, help="size of the English text")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    text = english(args.bytes)
    print(describe())
    print(f"{len(text.encode()):,} bytes of English (pydoc topics); median of {RUNS} runs\n")
    print_table([bench(name, text) for name in args.models], float_format=".3f")


if __name__ == "__main__":
    main()
