"""`gguf-serve serve`: settings -> Litestar app under uvicorn, listening at once; the model is fetched and
loaded behind a 503 /health; SIGTERM drains, exits 0."""

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

from inference.engine.config import EngineConfig
from inference.errors import GGUFServeError
from inference.gguf.registry import MODELS, ProgressLog, fetch_model, local_model
from inference.model.backends import BackendConfig

from .engine_client import EngineClient
from .metrics import Metrics
from .server import create_app
from .settings import Settings, SettingsError, add_arguments, from_args, is_loopback
from .startup import Loader, Startup
from .translate import ServedModel

log = logging.getLogger("gguf_serve")

DRAIN_RESERVE_S = 1.0  # of shutdown_grace_s, kept for stopping the worker after the drain


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM/SIGINT starts a drain and which then exits normally (status 0)
    instead of re-raising the signal as uvicorn does; `fatal` is set when start-up failed."""

    def __init__(self, config: uvicorn.Config, grace_s: float):
        super().__init__(config)
        self.grace_s = grace_s
        self.engine: EngineClient | None = None  # set once start-up has one
        self.fatal: BaseException | None = None

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
        if not self.should_exit and self.engine is not None:
            log.info("signal %d: draining for up to %.1f s", sig, self.grace_s)
            self.engine.begin_drain(max(self.grace_s - DRAIN_RESERVE_S, 0.0))
        super().handle_exit(sig, frame)

    def fail(self, exc: BaseException) -> None:
        """Start-up failed: stop serving; main() reports `exc` and exits 1."""
        self.fatal = exc
        self.should_exit = True


def served_name(settings: Settings) -> str:
    """What clients pass as `model`: served_model_name, else the registry key or the file's stem."""
    return settings.served_model_name or (
        settings.model if settings.model in MODELS else Path(settings.model).expanduser().stem
    )


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
    name = served_name(settings)
    return ServedModel(
        name=name,
        aliases=frozenset({settings.model, path.stem} - {name}),
        tokenizer=tokenizer,
        template=template,
        context_length=config.context_length,
        created=int(time.time()),
        max_num_seqs=settings.max_num_seqs,
        kv_cache_tokens=settings.kv_cache_tokens // settings.block_size * settings.block_size,  # whole blocks
    )


def check_draft_vocabulary(model: ServedModel, draft: Path) -> None:
    """Start-up stops (DraftModelError) when the draft's vocabulary is not the model's: what differs."""
    from inference.errors import DraftModelError
    from inference.gguf.loader import load_gguf
    from inference.text.tokenizer import Tokenizer
    from inference.text.vocab_compare import vocabulary_difference

    diff = vocabulary_difference(model.tokenizer, Tokenizer.from_metadata(load_gguf(draft).metadata))
    if diff is not None:
        raise DraftModelError(f"the draft model {draft.name} cannot draft for {model.name}: {diff}")


def model_path(name: str, startup: Startup) -> Path:
    """The GGUF file of a model setting: a local path as is, a registry model from the cache or fetched
    (progress in the log and in /health)."""
    if name not in MODELS:
        return local_model(name)
    startup.set("fetching", f"{name}: looking in the cache")
    progress = ProgressLog(name, on_text=lambda text: startup.set("fetching", text))
    return fetch_model(name, progress=progress)


def loader(settings: Settings, metrics: Metrics) -> Loader:
    """Start-up's blocking part, run after the server listens: the model file, its metadata, the engine
    client (whose start() then spawns the worker)."""

    def load(startup: Startup) -> tuple[ServedModel, EngineClient]:
        path = model_path(settings.model, startup)
        draft = model_path(settings.draft_model, startup) if settings.draft_model else None
        startup.set("loading", f"reading the tokenizer and chat template of {path.name}")
        model = served_model(settings, path)
        if draft is not None:
            check_draft_vocabulary(model, draft)
        engine = EngineClient(
            path,
            backend=BackendConfig(
                name=settings.backend, threads=settings.threads, kv_cache_dtype=settings.kv_cache_dtype
            ),
            max_waiting=settings.max_waiting,
            request_timeout_s=settings.request_timeout_s,
            metrics=metrics,
            log_level=settings.log_level,
            stream_buffer_events=settings.stream_buffer_events,
            stall_timeout_s=settings.worker_stall_timeout_s,
            engine_config=engine_config(settings, "" if draft is None else str(draft)),
        )
        startup.set("loading", f"starting the worker process for {path.name}")
        return model, engine

    return load


def engine_config(settings: Settings, draft_path: str = "") -> EngineConfig:
    """The engine's part of the settings; `draft_path`: the draft model's file, fetched."""
    return EngineConfig(
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        block_size=settings.block_size,
        kv_cache_tokens=settings.kv_cache_tokens,
        prefix_caching=settings.prefix_caching,
        draft_model=draft_path,
        ngram_draft=settings.ngram_draft,
        num_draft_tokens=settings.num_draft_tokens,
        draft_token_budget=settings.draft_token_budget,
        draft_p_min=settings.draft_p_min,
    )


def build(settings: Settings) -> DrainingServer:
    """The uvicorn server around the app for these settings. Only what fails fast is checked here (a
    missing local model file); the fetch and the model's metadata come after the server listens."""
    if settings.cache_dir:  # the registry reads the cache location from the environment
        os.environ["GGUF_SERVE_CACHE_DIR"] = settings.cache_dir
    for name in (settings.model, settings.draft_model):
        if name and name not in MODELS:
            local_model(name)  # FetchError now, not after listening
    metrics = Metrics(served_name(settings))
    load = loader(settings, metrics)

    def load_and_track(startup: Startup) -> tuple[ServedModel, EngineClient]:
        model, engine = load(startup)
        server.engine = engine  # SIGTERM drains it from now on
        return model, engine

    app = create_app(settings, metrics, load_and_track, on_fatal=lambda exc: server.fail(exc))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(settings.shutdown_grace_s - DRAIN_RESERVE_S, 0.0) + 0.5,
        access_log=settings.log_level == "debug",
    )
    server = DrainingServer(config, settings.shutdown_grace_s)
    return server


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
        server = build(settings)
    except (GGUFServeError, OSError) as exc:
        print(f"gguf-serve: error: {exc}", file=sys.stderr)
        return 1
    log.info("serving %s on http://%s:%d", settings.model, settings.host, settings.port)
    server.run()
    if server.fatal is not None:
        print(f"gguf-serve: error: {server.fatal}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
