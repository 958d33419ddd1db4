"""The `gguf-serve` command line: fetch-model, generate, serve."""

import argparse
import sys

from inference.errors import GGUFServeError
from inference.model_registry import DEFAULT_MODEL, MODELS, resolve_model


def _fetch(args: argparse.Namespace) -> int:
    path = resolve_model(args.name, progress=None)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gguf-serve", description="OpenAI-compatible server for GGUF models")
    sub = parser.add_subparsers(dest="command")
    fetch = sub.add_parser("fetch-model", help="download a registry model into the cache; print its path")
    fetch.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"one of {', '.join(MODELS)}")
    fetch.set_defaults(func=_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except GGUFServeError as exc:
        print(f"gguf-serve: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
