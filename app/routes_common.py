"""What the route modules share: the service on app.state, strict JSON bodies, the envelope of each
response, running a request (whole or streamed), logprobs."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from litestar import Request, post
from litestar.background_tasks import BackgroundTask
from litestar.dto import AbstractDTO
from litestar.response import Stream
from litestar.typing import FieldDefinition
from msgspec import UNSET, UnsetType

from inference.errors import RequestError
from inference.events import TokenEvent, TokenLogprobs

from . import sse
from .delivery import hold
from .engine_client import EngineClient, Generation, GenerationFailed
from .errors import APIError, request_error_from_undecodable
from .metrics import Metrics
from .protocol import CompletionLogprobs, CompletionRequest, TokenLogprob, TopLogprob, Usage
from .settings import Settings
from .translate import PEEK_BYTES, ServedModel, check_completion_body

T = TypeVar("T")


@dataclass
class Service:
    """Everything a handler needs; lives on app.state.service."""

    settings: Settings
    model: ServedModel
    engine: EngineClient
    metrics: Metrics
    version: str

    @property
    def fingerprint(self) -> str:
        return f"fp_gguf-serve-{self.version}-{self.engine.backend_used or self.settings.backend}"


def service_of(request: Request) -> Service:
    return request.app.state.service


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """function(*args) in a worker thread: tokenizing and template rendering, which would hold the
    event loop (and every stream and /health with it) for as long as they take."""
    return await asyncio.to_thread(function, *args)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Reply:
    """What every response and chunk of one request repeats: its id, creation time, model, fingerprint."""

    def __init__(self, svc: Service, request_id: str):
        self.svc, self.id, self.created = svc, request_id, int(time.time())

    def body(self, kind: type[T], choices: list, usage: Usage | UnsetType = UNSET) -> T:
        """A `kind` (a response or a chunk Struct); a chunk carries `usage` only when it is given."""
        return kind(
            id=self.id,
            created=self.created,
            model=self.svc.model.name,
            system_fingerprint=self.svc.fingerprint,
            choices=choices,
            usage=usage,
        )

    def frame(self, kind: type, choices: list, usage: Usage | UnsetType = UNSET) -> bytes:
        """The SSE event of a chunk."""
        return sse.frame(self.body(kind, choices, usage))


# -- request bodies --------------------------------------------------------------------------------


class StrictJSON(AbstractDTO[T], Generic[T]):
    """Decodes the body straight into the msgspec Struct (strict types: "5" is not an int), so every
    error names its parameter; Litestar's OpenAPI schema still shows the Struct as the body. A large
    completions body gets its cheap prompts x n check first (decoding holds the event loop)."""

    def decode_bytes(self, value: bytes) -> Any:
        model = service_of(self.asgi_connection).model  # None until loaded (a guard answers 503 then)
        if self.model_type is CompletionRequest and len(value) > PEEK_BYTES and model is not None:
            check_completion_body(value, model)
        try:
            return msgspec.json.decode(value, type=self.model_type)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
            raise request_error_from_undecodable(exc, value) from None

    def decode_builtins(self, value: Any) -> Any:
        try:
            return msgspec.convert(value, type=self.model_type)
        except (msgspec.MsgspecError, RecursionError) as exc:
            raise request_error_from_undecodable(exc, None) from None

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: Any = None
    ) -> None:
        return None  # nothing to generate: msgspec decodes the Struct itself

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Any:
        return schema_creator.for_field_definition(FieldDefinition.from_annotation(cls.model_type))

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[Any, None, None]:
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False


def json_post(path: str, body: type, summary: str, tag: str) -> post:
    """The decorator of a POST route whose JSON body `StrictJSON` decodes into the Struct `body`."""
    return post(
        path,
        dto=StrictJSON[body],
        return_dto=None,
        status_code=200,
        before_request=require_json,
        summary=summary,
        tags=[tag],
    )


async def require_json(request: Request) -> None:
    """before_request hook of POST routes: the body must be a non-empty JSON document."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise APIError(
            415,
            f"Content-Type must be application/json, got {media or 'none'}",
            code="unsupported_media_type",
        )
    if not await request.body():
        raise RequestError("the request body is empty; send a JSON object", None, "invalid_json")


# -- running a request -----------------------------------------------------------------------------


def submit(request: Request, configs: tuple) -> Generation:
    """Admits the request's engine requests (429/503 when it cannot); the generation keeps its admission
    slot until the response's last byte is written."""
    return hold(request.scope, service_of(request).engine.submit(configs))


def sse_response(frames: AsyncIterator[bytes], gen: Generation) -> Stream:
    """The SSE response: the endpoint's `frames`, an error frame if generation fails, then [DONE];
    `gen` is closed (aborted if unfinished) once the response is over.

    A client disconnect cancels the stream task wherever it waits, possibly outside the generator
    (in `send`), so the generator's own `finally` may run only when it is garbage-collected; the
    background task runs right after the stream either way."""

    async def release() -> None:
        gen.close()

    events = _with_error_and_done(frames, gen)
    return Stream(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS, background=BackgroundTask(release))


async def _with_error_and_done(frames: AsyncIterator[bytes], gen: Generation) -> AsyncIterator[bytes]:
    try:
        async for frame in frames:
            yield frame
    except (GenerationFailed, APIError) as exc:
        yield sse.error_frame(error_status(exc).body())
    finally:
        gen.close()
    yield sse.DONE


async def collect(gen: Generation, request: Request) -> list[TokenEvent]:
    """All events of a non-streamed request; aborts it when the client disconnects first."""
    events: list[TokenEvent] = []

    async def consume() -> None:
        async for event in gen.events():
            events.append(event)

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not consumer.done():
            raise APIError(
                400, "the client disconnected; the request was aborted", code="client_disconnected"
            )
        consumer.result()  # GenerationFailed / APIError propagate
        return events
    except GenerationFailed as exc:
        raise error_status(exc) from None
    finally:
        watcher.cancel()
        consumer.cancel()
        gen.close()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- logprobs in each endpoint's shape -------------------------------------------------------------


class CompletionLogprobsBuilder:
    """Accumulates tokens, token_logprobs, top_logprobs (dicts) and text_offset for one choice."""

    def __init__(self, tokenizer, offset: int = 0):
        self.tok = tokenizer
        self.offset = offset  # characters before the next token
        self.out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])

    def add_prompt(self, prompt_ids: tuple[int, ...], logprobs: list[TokenLogprobs | None]) -> None:
        for token_id, lp in zip(prompt_ids, logprobs, strict=False):
            self._add(token_id, lp)

    def add(self, token_ids: list[int], logprobs: list[TokenLogprobs] | None) -> None:
        for token_id, lp in zip(token_ids, logprobs or [], strict=True):
            self._add(token_id, lp)

    def _add(self, token_id: int, lp: TokenLogprobs | None) -> None:
        text = self.tok.token_text(token_id)
        self.out.tokens.append(text)
        self.out.text_offset.append(self.offset)
        self.offset += len(text)
        if lp is None:  # the first prompt token has no logprob
            self.out.token_logprobs.append(None)
            self.out.top_logprobs.append(None)
            return
        self.out.token_logprobs.append(lp.chosen.logprob)
        top = {self.tok.token_text(t.token_id): t.logprob for t in lp.top}
        top.setdefault(text, lp.chosen.logprob)  # OpenAI lists the sampled token among the top ones
        self.out.top_logprobs.append(top)

    def take(self) -> CompletionLogprobs:
        """What was added since the last take (streaming); the builder keeps counting offsets."""
        out = self.out
        self.out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        return out


def chat_logprobs(tok, token_ids: list[int], logprobs: list[TokenLogprobs] | None) -> list[TokenLogprob]:
    out = []
    for token_id, lp in zip(token_ids, logprobs or [], strict=True):
        top = [
            TopLogprob(
                token=tok.token_text(t.token_id), logprob=t.logprob, bytes=list(tok.token_bytes(t.token_id))
            )
            for t in lp.top
        ]
        out.append(
            TokenLogprob(
                token=tok.token_text(token_id),
                logprob=lp.chosen.logprob,
                bytes=list(tok.token_bytes(token_id)),
                top_logprobs=top,
            )
        )
    return out


def error_status(exc: Exception) -> APIError:
    if isinstance(exc, GenerationFailed):
        return APIError(exc.status, exc.message, param=exc.param, code=exc.code)
    assert isinstance(exc, APIError)
    return exc
