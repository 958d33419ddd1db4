"""The Litestar app: routes, exception handlers, start-up in the lifespan. create_app() builds it."""

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

import msgspec
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .auth import require_api_key
from .cli import version
from .delivery import deliver_within
from .errors import EXCEPTION_HANDLERS
from .metrics import CONTENT_TYPE, Metrics
from .protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    DeveloperMessage,
    FunctionCall,
    Health,
    ImageURLPart,
    ModelCard,
    ModelList,
    StreamOptions,
    SystemMessage,
    TextPart,
    TokenizeRequest,
    TokenizeResponse,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from .routes_chat import create_chat_completion
from .routes_common import Service, json_post, off_loop, service_of
from .routes_completions import create_completion
from .settings import Settings
from .startup import RETRY_AFTER_S, Loader, Startup, bring_up, require_engine
from .translate import ServedModel, detokenize_response, tokenize_response

# -- models ----------------------------------------------------------------------------------------


def _card(model: ServedModel) -> ModelCard:
    return ModelCard(id=model.name, created=model.created, max_model_len=model.context_length)


@get("/v1/models", summary="List models", tags=["OpenAI"])
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(service_of(request).model)])


@get("/v1/models/{model_id:path}", summary="Retrieve a model", tags=["OpenAI"])
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    model = service_of(request).model
    model.check_name(model_id.lstrip("/"))
    return _card(model)


# -- tokenize (vLLM's shapes) ----------------------------------------------------------------------


@json_post("/tokenize", TokenizeRequest, "Tokenize a prompt or chat messages", "Tokenizer")
async def tokenize(data: TokenizeRequest, request: Request) -> TokenizeResponse:
    return await off_loop(tokenize_response, data, service_of(request).model)


@json_post("/detokenize", DetokenizeRequest, "Detokenize token ids", "Tokenizer")
async def detokenize(data: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    return await off_loop(detokenize_response, data, service_of(request).model)


# -- operations ------------------------------------------------------------------------------------


_DETAIL = {
    "loading": "the worker process is loading the model",
    "worker_down": "the worker process died; a new one is starting",
    "shutting_down": "draining: finishing what runs, admitting nothing",
}


@get("/health", summary="200 when the model is loaded and serving, else 503 saying why", tags=["Operations"])
async def health(request: Request) -> Response[Health]:
    engine = service_of(request).engine
    if engine is None:  # fetching the model or reading its metadata
        startup: Startup = request.app.state.startup
        return Response(Health(status=startup.status, detail=startup.detail), status_code=503)
    state = engine.health
    if state == "ready":
        return Response(Health(status="ok"), status_code=200)
    detail = engine.health_detail or _DETAIL.get(state, state)
    return Response(Health(status=state, detail=detail), status_code=503)


@get("/metrics", summary="Prometheus metrics", tags=["Operations"], media_type=CONTENT_TYPE)
async def metrics(request: Request) -> Response[str]:
    return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE)


# -- the app ---------------------------------------------------------------------------------------


def retry_after_on_503(app: ASGIApp) -> ASGIApp:
    """Middleware: every 503 tells the client when to retry (during a drain another replica answers)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers") or [])
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {
                        **message,
                        "headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())],
                    }
            await send(message)

        await app(scope, receive, send_with_retry_after if scope["type"] == "http" else send)

    return middleware


REQUEST_MODELS = (
    CompletionRequest,
    ChatCompletionRequest,
    TokenizeRequest,
    DetokenizeRequest,
    StreamOptions,
    SystemMessage,
    DeveloperMessage,
    UserMessage,
    AssistantMessage,
    ToolMessage,
    TextPart,
    ImageURLPart,
    ToolCall,
    FunctionCall,
)
_BOUNDS = (("ge", "minimum"), ("gt", "exclusive_minimum"), ("le", "maximum"), ("lt", "exclusive_maximum"))


def complete_openapi(app: Litestar) -> None:
    """Adds what Litestar's schema generation leaves out for our request Structs: unknown fields are
    rejected (additionalProperties: false) and bounds that are 0 (e.g. temperature >= 0)."""
    schemas = app.openapi_schema.components.schemas
    for model in REQUEST_MODELS:
        schema = schemas.get(model.__name__)
        if schema is None:
            continue
        schema.additional_properties = False
        for f in msgspec.inspect.type_info(model).fields:
            prop = (schema.properties or {}).get(f.encode_name)
            kind = f.type.types[0] if isinstance(f.type, msgspec.inspect.UnionType) else f.type
            if prop is None or not isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                continue
            for bound, key in _BOUNDS:
                if getattr(kind, bound) is not None and getattr(prop, key) is None:
                    setattr(prop, key, float(getattr(kind, bound)))


def create_app(
    settings: Settings, metrics_: Metrics, load: Loader, on_fatal: Callable[[BaseException], None]
) -> Litestar:
    """The app. It listens at once; its lifespan runs `load` (fetch, metadata, engine client) in a thread
    and starts the worker, while /health says 503 with what it is doing; at shutdown it stops the worker.
    A failing `load` goes to `on_fatal`."""
    # model and engine stay None until start-up has them; require_engine guards the routes that use them
    service = Service(settings=settings, model=None, engine=None, metrics=metrics_, version=version())
    startup = Startup()

    @asynccontextmanager
    async def lifespan(app: Litestar):
        complete_openapi(app)
        task = asyncio.ensure_future(bring_up(service, startup, load, on_fatal))
        try:
            yield
        finally:
            task.cancel()
            if service.engine is not None:
                await service.engine.stop(timeout_s=2.0)

    protected = Router(
        path="/",
        guards=[require_api_key, require_engine],
        route_handlers=[
            list_models,
            retrieve_model,
            create_completion,
            create_chat_completion,
            tokenize,
            detokenize,
        ],
    )
    docs_guards = [] if settings.public_docs else [require_api_key]  # the guard passes when no key is set
    return Litestar(
        route_handlers=[health, metrics, protected],
        lifespan=[lifespan],
        middleware=[deliver_within(settings.stream_idle_timeout_s, metrics_), retry_after_on_503],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        state=State({"service": service, "startup": startup, "max_body_bytes": settings.max_body_bytes}),
        openapi_config=OpenAPIConfig(
            title="gguf-serve",
            version=service.version,
            description="OpenAI-compatible inference server for GGUF models",
            openapi_router=Router(path="/schema", guards=docs_guards, route_handlers=[]),
        ),
        logging_config=None,
        debug=False,
    )
