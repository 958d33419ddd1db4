"""Delivery of responses: a request keeps its admission slot until its response's last byte is written,
and a response whose client has read nothing for stream_idle_timeout_s is cut and its generation aborted."""

import logging
from collections.abc import Callable
from functools import partial

import anyio
import anyio.lowlevel
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .engine_client import Generation
from .metrics import Metrics

log = logging.getLogger("gguf_serve.delivery")

_GENERATIONS = "gguf_serve.generations"  # scope key: the generations this request submitted


def hold(scope: Scope, gen: Generation) -> Generation:
    """Keeps `gen` admitted until the response to the request of `scope` is over (see deliver_within)."""
    assert _GENERATIONS in scope, "the deliver_within middleware is not installed"
    scope[_GENERATIONS].append(gen)
    return gen


def deliver_within(idle_s: float, metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: every send must complete within `idle_s`. The server's socket buffers fill only when
    the client stops reading; a send blocked that long cuts the response and aborts its generations (the
    engine frees their sequences and KV blocks). However the response ends, its generations then release
    their admission slots."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def delivered(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            generations: list[Generation] = []
            scope[_GENERATIONS] = generations
            try:
                with anyio.CancelScope() as response:
                    on_idle = partial(_cut, scope, response, metrics, idle_s)
                    await app(scope, receive, _timed(send, idle_s, on_idle))
            finally:
                for gen in generations:
                    gen.release()

        return delivered

    return middleware


def _timed(send: Send, idle_s: float, on_idle: Callable[[], None]) -> Send:
    async def timed_send(message: Message) -> None:
        with anyio.move_on_after(idle_s) as waited:
            await send(message)
        if waited.cancelled_caught:
            on_idle()
            await anyio.lowlevel.checkpoint()  # the response's cancellation arrives here

    return timed_send


def _cut(scope: Scope, response: anyio.CancelScope, metrics: Metrics, idle_s: float) -> None:
    """The client read nothing for the idle timeout: abort its generations, end the response."""
    generations: list[Generation] = scope[_GENERATIONS]
    unfinished = [gen for gen in generations if not gen.finished]
    if generations:
        metrics.aborted["client_idle"] += 1
    for gen in unfinished:
        gen.close()
    log.warning(
        "%s %s: the client read nothing for %.1f s (stream_idle_timeout_s); response cut, %d generation(s) "
        "aborted",
        scope["method"],
        scope["path"],
        idle_s,
        len(unfinished),
    )
    response.cancel()
