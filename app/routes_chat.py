"""POST /v1/chat/completions: the chat template renders the messages; n choices; SSE or whole."""

from collections.abc import AsyncIterator

from litestar import Request, Response

from .engine_client import Generation
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
    Reply,
    chat_logprobs,
    collect,
    json_post,
    new_id,
    off_loop,
    service_of,
    sse_response,
    submit,
)
from .translate import ChatPlan, chat_plan


@json_post("/v1/chat/completions", ChatCompletionRequest, "Create a chat completion", "OpenAI")
async def create_chat_completion(
    data: ChatCompletionRequest, request: Request
) -> Response[ChatCompletionResponse]:
    svc = service_of(request)
    plan = await off_loop(chat_plan, data, svc.model, new_id("chatcmpl"))
    gen = submit(request, (plan.config,))
    reply = Reply(svc, plan.request_id)
    if plan.stream:
        return sse_response(_stream(plan, svc.model.tokenizer, gen, reply), gen)
    n = plan.config.n
    text: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    tokens, cached = [0] * n, 0
    for event in await collect(gen, request):
        text[event.index].append(event.text)
        if plan.top_logprobs is not None:
            logprobs[event.index] += chat_logprobs(svc.model.tokenizer, event.token_ids, event.logprobs)
        finish[event.index] = event.finish_reason or finish[event.index]
        tokens[event.index] = max(tokens[event.index], event.completion_tokens)
        cached = max(cached, event.cached_tokens)
    choices = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content="".join(text[i])),
            finish_reason=finish[i],
            logprobs=ChatLogprobs(content=logprobs[i]) if plan.top_logprobs is not None else None,
        )
        for i in range(n)
    ]
    usage = _usage(plan, sum(tokens), cached)
    return Response(reply.body(ChatCompletionResponse, choices, usage), status_code=200)


def _usage(plan: ChatPlan, completion_tokens: int, cached: int) -> Usage:
    return Usage.of(len(plan.config.prompt_ids), completion_tokens, cached)


async def _stream(plan: ChatPlan, tokenizer, gen: Generation, reply: Reply) -> AsyncIterator[bytes]:
    tokens, cached = [0] * plan.config.n, 0
    for i in range(plan.config.n):  # the role comes first, once per choice
        yield reply.frame(
            ChatCompletionChunk, [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))]
        )
    async for event in gen.events():
        tokens[event.index] = max(tokens[event.index], event.completion_tokens)
        cached = max(cached, event.cached_tokens)
        logprobs = None
        if plan.top_logprobs is not None and event.token_ids:
            logprobs = ChatLogprobs(content=chat_logprobs(tokenizer, event.token_ids, event.logprobs))
        if event.text or logprobs is not None:
            delta = ChatChunkChoice(index=event.index, delta=ChatDelta(content=event.text), logprobs=logprobs)
            yield reply.frame(ChatCompletionChunk, [delta])
        if event.finish_reason is not None:
            finished = ChatChunkChoice(
                index=event.index, delta=ChatDelta(), finish_reason=event.finish_reason
            )
            yield reply.frame(ChatCompletionChunk, [finished])
    if plan.include_usage:
        yield reply.frame(ChatCompletionChunk, [], _usage(plan, sum(tokens), cached))
