"""The Litestar app: routes, exception handlers, the engine client's lifespan. create_app() builds it."""

from contextlib import asynccontextmanager
from importlib import metadata

import msgspec
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from inference.errors import RequestError

from .auth import require_api_key
from .engine_client import EngineClient
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
from .routes_common import Service, json_post, service_of
from .routes_completions import create_completion
from .settings import Settings
from .translate import ServedModel, chat_prompt_ids


def _version() -> str:
    try:
        return metadata.version("gguf-serve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


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
    model = service_of(request).model
    model.check_name(data.model)
    if (data.prompt is None) == (data.messages is None):
        raise RequestError("send exactly one of prompt and messages", "prompt")
    if data.prompt is not None:
        add = True if data.add_special_tokens is None else data.add_special_tokens
        ids = model.tokenizer.encode(data.prompt, add_bos=None if add else False)
    else:
        ids = chat_prompt_ids(data.messages, model, add_generation_prompt=data.add_generation_prompt)
        if data.add_special_tokens and model.tokenizer.bos_id is not None:
            ids = [model.tokenizer.bos_id, *ids]
    strs = [model.tokenizer.token_text(t) for t in ids] if data.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=model.context_length, tokens=ids, token_strs=strs)


@json_post("/detokenize", DetokenizeRequest, "Detokenize token ids", "Tokenizer")
async def detokenize(data: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = service_of(request).model
    model.check_name(data.model)
    bad = [t for t in data.tokens if t >= model.vocab_size]
    if bad:
        raise RequestError(f"token id {bad[0]} is outside the vocabulary [0, {model.vocab_size})", "tokens")
    return DetokenizeResponse(prompt=model.tokenizer.decode(data.tokens))


# -- operations ------------------------------------------------------------------------------------


@get("/health", summary="200 when the model is loaded and serving, else 503", tags=["Operations"])
async def health(request: Request) -> Response[Health]:
    state = service_of(request).engine.health
    return Response(
        Health(status="ok" if state == "ready" else state), status_code=200 if state == "ready" else 503
    )


@get("/metrics", summary="Prometheus metrics", tags=["Operations"], media_type=CONTENT_TYPE)
async def metrics(request: Request) -> Response[str]:
    return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE)


# -- the app ---------------------------------------------------------------------------------------

RETRY_AFTER_S = 5  # on a 503 that does not say otherwise: loading, a restarting worker, a drain


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


def create_app(settings: Settings, model: ServedModel, engine: EngineClient, metrics_: Metrics) -> Litestar:
    """The app; its lifespan starts the worker (the model loads while /health says 503) and stops it."""
    service = Service(settings=settings, model=model, engine=engine, metrics=metrics_, version=_version())

    @asynccontextmanager
    async def lifespan(app: Litestar):
        complete_openapi(app)
        await engine.start()
        try:
            yield
        finally:
            await engine.stop(timeout_s=2.0)

    protected = Router(
        path="/",
        guards=[require_api_key],
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
        middleware=[retry_after_on_503],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        state=State({"service": service, "max_body_bytes": settings.max_body_bytes}),
        openapi_config=OpenAPIConfig(
            title="gguf-serve",
            version=service.version,
            description="OpenAI-compatible inference server for GGUF models",
            openapi_router=Router(path="/schema", guards=docs_guards, route_handlers=[]),
        ),
        logging_config=None,
        debug=False,
    )
