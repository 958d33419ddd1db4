"""The `gguf-serve` command line: fetch-model, generate, serve."""

import argparse
import logging
import sys
from importlib import metadata
from typing import TYPE_CHECKING

from inference.errors import GGUFServeError
from inference.gguf.registry import DEFAULT_MODEL, MODELS, ProgressLog, resolve_model

if TYPE_CHECKING:
    from inference.forward_config import AdapterForwardConfig

    from .translate import ServedModel

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


def generate_config(args: argparse.Namespace, model: "ServedModel") -> "AdapterForwardConfig":
    """The request `generate` runs, built as the server builds one (app.translate: the chat template,
    BOS as the model says, special-token texts in the prompt kept as text, the one validation): a chat
    completion with --chat, else a completion. `model`: the ServedModel of app.serve.served_model."""
    import msgspec

    from .errors import request_error_from_msgspec
    from .protocol import ChatCompletionRequest, CompletionRequest
    from .translate import chat_plan, completion_plan

    fields = {"model": model.name, "temperature": args.temperature, "top_p": args.top_p}
    fields |= {"top_k": args.top_k, "seed": args.seed, "stop": args.stop or None}
    try:
        if args.chat:
            messages = [{"role": "user", "content": args.prompt}]
            body = {"messages": messages, "max_completion_tokens": args.max_tokens}
            return chat_plan(msgspec.convert(fields | body, ChatCompletionRequest), model, "cli").config
        body = {"prompt": args.prompt, "max_tokens": args.max_tokens}
        return completion_plan(msgspec.convert(fields | body, CompletionRequest), model, "cli").configs[0]
    except msgspec.ValidationError as exc:
        raise request_error_from_msgspec(exc) from None


def _generate(args: argparse.Namespace) -> int:
    from inference.adapter import InferenceAdapter

    from .serve import served_model
    from .settings import Settings

    path = resolve_model(args.model)
    model = served_model(Settings(model=str(path)), path)  # the tokenizer and template, as `serve` reads them
    cfg = generate_config(args, model)  # before the weights load: a bad request fails at once
    adapter = InferenceAdapter.load(path, backend=args.backend)
    finish, text = None, ""
    for event in adapter.generate(cfg):
        print(event.text, end="", flush=True)
        text += event.text
        finish = event.finish_reason or finish
    print(f"\n[finish_reason={finish}]", file=sys.stderr)
    if not text.strip() and not args.chat and not getattr(model.template, "is_fallback", True):
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
