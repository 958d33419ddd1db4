"""`gguf-serve serve`: settings -> model metadata -> Litestar app under uvicorn; SIGTERM drains, exits 0."""

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path

import uvicorn

from inference.errors import GGUFServeError
from inference.gguf.registry import MODELS, resolve_model
from inference.model.backends import BackendConfig

from .engine_client import EngineClient
from .metrics import Metrics
from .server import create_app
from .settings import Settings, SettingsError, add_arguments, from_args, is_loopback
from .translate import ServedModel

log = logging.getLogger("gguf_serve")

DRAIN_RESERVE_S = 1.0  # of shutdown_grace_s, kept for stopping the worker after the drain


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM/SIGINT starts a drain and which then exits normally (status 0)
    instead of re-raising the signal as uvicorn does."""

    def __init__(self, config: uvicorn.Config, engine: EngineClient, grace_s: float):
        super().__init__(config)
        self.engine = engine
        self.grace_s = grace_s

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        if not self.should_exit:
            log.info("signal %d: draining for up to %.1f s", sig, self.grace_s)
            self.engine.begin_drain(max(self.grace_s - DRAIN_RESERVE_S, 0.0))
        super().handle_exit(sig, frame)


def served_model(settings: Settings, path: Path) -> ServedModel:
    """Tokenizer, chat template and limits from the GGUF's metadata (the weights stay in the worker)."""
    from inference.gguf.loader import load_gguf
    from inference.gguf.model_config import ModelConfig
    from inference.text.chat_template import ChatTemplate
    from inference.text.tokenizer import Tokenizer

    gguf = load_gguf(path)
    config = ModelConfig.from_gguf(gguf)
    tokenizer = Tokenizer.from_metadata(gguf.metadata)

    def text(token_id: int | None) -> str:
        return "" if token_id is None else tokenizer.decode([token_id])

    template = ChatTemplate.from_metadata(
        gguf.metadata, bos_token=text(tokenizer.bos_id), eos_token=text(tokenizer.eos_id)
    )
    name = settings.served_model_name or (settings.model if settings.model in MODELS else path.stem)
    return ServedModel(
        name=name,
        aliases=frozenset({settings.model, path.stem} - {name}),
        tokenizer=tokenizer,
        template=template,
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        created=int(time.time()),
        max_num_seqs=settings.max_num_seqs,
        kv_cache_tokens=settings.kv_cache_tokens,
    )


def build(settings: Settings) -> tuple[DrainingServer, EngineClient]:
    """The uvicorn server around the app for these settings (resolves and reads the model first)."""
    if settings.cache_dir:  # model_registry reads the cache location from the environment
        os.environ["GGUF_SERVE_CACHE_DIR"] = settings.cache_dir
    path = resolve_model(settings.model)
    model = served_model(settings, path)
    metrics = Metrics(model.name)
    engine = EngineClient(
        path,
        backend=BackendConfig(
            name=settings.backend, threads=settings.threads, kv_cache_dtype=settings.kv_cache_dtype
        ),
        max_waiting=settings.max_waiting,
        request_timeout_s=settings.request_timeout_s,
        metrics=metrics,
        log_level=settings.log_level,
        engine_config={
            "max_num_seqs": settings.max_num_seqs,
            "max_num_batched_tokens": settings.max_num_batched_tokens,
            "block_size": settings.block_size,
            "kv_cache_tokens": settings.kv_cache_tokens,
            "prefix_caching": settings.prefix_caching,
        },
    )
    app = create_app(settings, model, engine, metrics)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(settings.shutdown_grace_s - DRAIN_RESERVE_S, 0.0) + 0.5,
        access_log=settings.log_level == "debug",
    )
    return DrainingServer(config, engine, settings.shutdown_grace_s), engine


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gguf-serve serve` (one per setting, plus --config)."""
    add_arguments(parser)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the exit status (2: bad settings, 1: model error)."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="gguf-serve serve", description="Serve a GGUF model over HTTP")
        add_serve_arguments(parser)
        args = parser.parse_args(args)
    try:
        settings = from_args(args)
    except SettingsError as exc:
        print(f"gguf-serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.api_key and not is_loopback(settings.host):
        log.warning(
            "listening on %s without an API key: anyone who can reach port %d can use this server; "
            "set api_key_file (or GGUF_SERVE_API_KEY)",
            settings.host,
            settings.port,
        )
    try:
        server, _ = build(settings)
    except (GGUFServeError, OSError) as exc:
        print(f"gguf-serve: error: {exc}", file=sys.stderr)
        return 1
    log.info("serving %s on http://%s:%d", settings.model, settings.host, settings.port)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
