"""POST /v1/chat/completions: the chat template renders the messages; n choices; SSE or whole."""

import time
from collections.abc import AsyncIterator

from litestar import Request, Response, post
from msgspec import UNSET, UnsetType

from . import sse
from .engine_client import Generation, GenerationFailed
from .errors import APIError
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    Usage,
)
from .routes_common import (
    Service,
    StrictJSON,
    chat_logprobs,
    collect,
    error_status,
    new_id,
    require_json,
    service_of,
    sse_response,
)
from .translate import ChatPlan, chat_plan


@post(
    "/v1/chat/completions",
    dto=StrictJSON[ChatCompletionRequest],
    return_dto=None,
    status_code=200,
    before_request=require_json,
    summary="Create a chat completion",
    tags=["OpenAI"],
)
async def create_chat_completion(
    data: ChatCompletionRequest, request: Request
) -> Response[ChatCompletionResponse]:
    svc = service_of(request)
    plan = chat_plan(data, svc.model, new_id("chatcmpl"))
    gen = svc.engine.submit((plan.config,))
    created = int(time.time())
    if plan.stream:
        return sse_response(_stream(svc, plan, gen, created), gen)
    n = plan.config.n
    text: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    tokens = [0] * n
    for event in await collect(gen, request):
        text[event.index].append(event.text)
        if plan.top_logprobs is not None:
            logprobs[event.index] += chat_logprobs(svc.model.tokenizer, event.token_ids, event.logprobs)
        finish[event.index] = event.finish_reason or finish[event.index]
        tokens[event.index] = max(tokens[event.index], event.completion_tokens)
    choices = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content="".join(text[i])),
            finish_reason=finish[i],
            logprobs=ChatLogprobs(content=logprobs[i]) if plan.top_logprobs is not None else None,
        )
        for i in range(n)
    ]
    body = ChatCompletionResponse(
        id=plan.request_id,
        created=created,
        model=svc.model.name,
        system_fingerprint=svc.fingerprint,
        choices=choices,
        usage=_usage(plan, sum(tokens)),
    )
    return Response(body, status_code=200)


def _usage(plan: ChatPlan, completion_tokens: int) -> Usage:
    prompt = len(plan.config.prompt_ids)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens
    )


async def _stream(svc: Service, plan: ChatPlan, gen: Generation, created: int) -> AsyncIterator[bytes]:
    def chunk(choices: list[ChatChunkChoice], usage: Usage | UnsetType = UNSET) -> bytes:
        return sse.frame(
            ChatCompletionChunk(
                id=plan.request_id,
                created=created,
                model=svc.model.name,
                system_fingerprint=svc.fingerprint,
                choices=choices,
                usage=usage,
            )
        )

    tokens = [0] * plan.config.n
    try:
        for i in range(plan.config.n):  # the role comes first, once per choice
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        async for event in gen.events():
            tokens[event.index] = max(tokens[event.index], event.completion_tokens)
            logprobs = None
            if plan.top_logprobs is not None and event.token_ids:
                logprobs = ChatLogprobs(
                    content=chat_logprobs(svc.model.tokenizer, event.token_ids, event.logprobs)
                )
            if event.text or logprobs is not None:
                yield chunk(
                    [
                        ChatChunkChoice(
                            index=event.index, delta=ChatDelta(content=event.text), logprobs=logprobs
                        )
                    ]
                )
            if event.finish_reason is not None:
                yield chunk(
                    [ChatChunkChoice(index=event.index, delta=ChatDelta(), finish_reason=event.finish_reason)]
                )
        if plan.include_usage:
            yield chunk([], _usage(plan, sum(tokens)))
    except (GenerationFailed, APIError) as exc:
        yield sse.error_frame(error_status(exc).body())
    finally:
        gen.close()
    yield sse.DONE
