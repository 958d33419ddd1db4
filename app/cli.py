"""The `gguf-serve` command line: fetch-model, generate, serve."""

import argparse
import logging
import sys
from importlib import metadata

from inference.errors import GGUFServeError
from inference.gguf.registry import DEFAULT_MODEL, MODELS, ProgressLog, resolve_model

NO_CHAT_HINT = (
    "gguf-serve: the model generated no text. It has a chat template, so it is probably an instruct "
    "model: try again with --chat"
)


def version() -> str:
    """The installed distribution's version ("0.0.0" in a checkout that was never installed)."""
    try:
        return metadata.version("gguf-serve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _fetch(args: argparse.Namespace) -> int:
    # a byte progress bar on a terminal; elsewhere (an init container's log) a line every 5 s
    progress = None if sys.stderr.isatty() else ProgressLog(args.name)
    if progress is not None:
        logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stderr)
    path = resolve_model(args.name, progress=progress)
    print(path)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from inference.adapter import InferenceAdapter
    from inference.forward_config import AdapterForwardConfig, SamplingParams

    adapter = InferenceAdapter.load(args.model, backend=args.backend)
    if args.chat:
        text = adapter.chat_template.render(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True
        )
        ids = adapter.tokenizer.encode(text, allow_special=True)
    else:
        ids = adapter.tokenizer.encode(args.prompt)
    sampling = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
    )
    cfg = AdapterForwardConfig(
        request_id="cli",
        prompt_ids=tuple(ids),
        sampling=sampling,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
    )
    finish, text = None, ""
    for event in adapter.generate(cfg):
        print(event.text, end="", flush=True)
        text += event.text
        finish = event.finish_reason or finish
    print(f"\n[finish_reason={finish}]", file=sys.stderr)
    if not text.strip() and not args.chat and not getattr(adapter.chat_template, "is_fallback", True):
        print(NO_CHAT_HINT, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """`gguf-serve` and its subcommands; every option's help shows its default."""
    parser = argparse.ArgumentParser(
        prog="gguf-serve", description="OpenAI-compatible server for GGUF models"
    )
    parser.add_argument("--version", action="version", version=f"gguf-serve {version()}")
    sub = parser.add_subparsers(dest="command")
    shown = argparse.ArgumentDefaultsHelpFormatter  # appends "(default: ...)" to each help
    fetch = sub.add_parser(
        "fetch-model", help="download a registry model into the cache; print its path", formatter_class=shown
    )
    fetch.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"one of {', '.join(MODELS)}")
    fetch.set_defaults(func=_fetch)
    from app.serve import add_serve_arguments
    from app.serve import main as serve_main

    # serve's flags state their defaults themselves (their argparse default is None: "not given")
    serve = sub.add_parser("serve", help="serve the model over HTTP (OpenAI API)")
    add_serve_arguments(serve)
    serve.set_defaults(func=serve_main)
    gen = sub.add_parser(
        "generate", help="generate text for one prompt, printing tokens as they come", formatter_class=shown
    )
    gen.add_argument("--model", default=DEFAULT_MODEL, help="registry name or path to a .gguf file")
    gen.add_argument("--prompt", required=True, default=argparse.SUPPRESS, help="the prompt text (required)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    gen.add_argument("--top-k", type=int, default=0, help="0 = disabled")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed; none = random")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument(
        "--backend", default="numpy", choices=["auto", "cuda", "cpu", "numpy"], help="compute backend"
    )
    gen.set_defaults(func=_generate)
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
