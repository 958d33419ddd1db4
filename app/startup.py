"""Start-up after the server listens: fetch and read the model off the event loop, then start the worker;
until then /health says what is happening and the API answers 503."""

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from .engine_client import EngineClient
from .errors import APIError
from .translate import ServedModel

log = logging.getLogger("gguf_serve.startup")

RETRY_AFTER_S = 5


@dataclass
class Startup:
    """What the server does before the engine client exists; the loading thread writes, /health reads."""

    status: Literal["fetching", "loading"] = "loading"
    detail: str = "starting"

    def set(self, status: Literal["fetching", "loading"], detail: str) -> None:
        self.status, self.detail = status, detail


# The blocking part of start-up (fetch, read metadata, build the engine client), run in a thread.
Loader = Callable[[Startup], tuple[ServedModel, EngineClient]]


async def bring_up(
    service: Any, startup: Startup, load: Loader, on_fatal: Callable[[BaseException], None]
) -> None:
    """Runs `load` off the loop, puts the model and the started engine client on `service`; a failure
    goes to `on_fatal` (the server then exits with an error)."""
    try:
        model, engine = await in_daemon_thread(load, startup)
        service.model = model
        await engine.start()  # spawns the worker; /health follows the engine from here on
        service.engine = engine
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure stops the server, with its message
        log.error("start-up failed: %s", exc, exc_info=not isinstance(exc, OSError | ValueError))
        on_fatal(exc)


async def in_daemon_thread(fn: Callable, *args: Any) -> Any:
    """fn(*args) in a daemon thread: a shutdown during a long fetch does not wait for it (as
    asyncio.to_thread's executor would); its temp folder is removed by the next fetch."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(setter: Callable, value: Any) -> None:
        def set_once() -> None:
            if not future.done():
                setter(value)

        try:
            loop.call_soon_threadsafe(set_once)
        except RuntimeError:
            pass  # the loop is closed: the server stopped meanwhile

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            deliver(future.set_exception, exc)
        else:
            deliver(future.set_result, result)

    threading.Thread(target=run, name="model-loader", daemon=True).start()
    return await future


def require_engine(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Litestar guard of the API routes: 503 (code "loading", Retry-After) until the engine client exists."""
    if connection.app.state.service.engine is None:
        startup: Startup = connection.app.state.startup
        raise APIError(
            503,
            f"the model is not ready yet ({startup.status}: {startup.detail})",
            code="loading",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
