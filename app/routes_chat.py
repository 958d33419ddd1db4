"""POST /v1/chat/completions: the chat template renders the messages; n choices; SSE or whole."""

from collections.abc import AsyncIterator

from litestar import Request, Response
from msgspec import UNSET

from inference.text.tool_calls import CallDelta, Piece, ToolCallParser, parse_output

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
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
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
        _choice(plan, i, "".join(text[i]), finish[i], ChatLogprobs(content=logprobs[i])) for i in range(n)
    ]
    usage = _usage(plan, sum(tokens), cached)
    return Response(reply.body(ChatCompletionResponse, choices, usage), status_code=200)


def _choice(plan: ChatPlan, i: int, text: str, finish: str | None, logprobs: ChatLogprobs) -> ChatChoice:
    """One whole choice: with tools, the calls parsed out of the text and the rest as content."""
    message = ChatMessageOut(content=text)
    if plan.tool_syntax is not None:
        out = parse_output(plan.tool_syntax, text)
        if out.calls:
            calls = [
                ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                for c in out.calls
            ]
            message = ChatMessageOut(content=out.content, tool_calls=calls)
    return ChatChoice(
        index=i,
        message=message,
        finish_reason=_finish_reason(finish, message.tool_calls is not UNSET),
        logprobs=logprobs if plan.top_logprobs is not None else None,
    )


def _finish_reason(engine_reason: str | None, called: bool) -> str | None:
    """OpenAI's finish_reason: "tool_calls" when the model ended its turn after calling tools."""
    return "tool_calls" if called and engine_reason == "stop" else engine_reason


def _usage(plan: ChatPlan, completion_tokens: int, cached: int) -> Usage:
    return Usage.of(len(plan.config.prompt_ids), completion_tokens, cached)


async def _stream(plan: ChatPlan, tokenizer, gen: Generation, reply: Reply) -> AsyncIterator[bytes]:
    n = plan.config.n
    tokens, cached = [0] * n, 0
    parsers = [ToolCallParser(plan.tool_syntax) if plan.tool_syntax else None for _ in range(n)]
    for i in range(n):  # the role comes first, once per choice
        yield reply.frame(
            ChatCompletionChunk, [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))]
        )
    async for event in gen.events():
        i, parser = event.index, parsers[event.index]
        tokens[i] = max(tokens[i], event.completion_tokens)
        cached = max(cached, event.cached_tokens)
        logprobs = None
        if plan.top_logprobs is not None and event.token_ids:
            logprobs = ChatLogprobs(content=chat_logprobs(tokenizer, event.token_ids, event.logprobs))
        pieces: list[Piece] = [event.text] if parser is None else parser.push(event.text)
        if event.finish_reason is not None and parser is not None:
            pieces += parser.finish()
        deltas = _deltas(pieces) or ([ChatDelta()] if logprobs is not None else [])
        for k, delta in enumerate(deltas):  # the event's logprobs go with its first delta
            chunk = ChatChunkChoice(index=i, delta=delta, logprobs=logprobs if k == 0 else None)
            yield reply.frame(ChatCompletionChunk, [chunk])
        if event.finish_reason is not None:
            reason = _finish_reason(event.finish_reason, parser is not None and bool(parser.calls))
            finished = ChatChunkChoice(index=i, delta=ChatDelta(), finish_reason=reason)
            yield reply.frame(ChatCompletionChunk, [finished])
    if plan.include_usage:
        yield reply.frame(ChatCompletionChunk, [], _usage(plan, sum(tokens), cached))


def _deltas(pieces: list[Piece]) -> list[ChatDelta]:
    """Content and tool-call pieces as chunk deltas, in order; adjacent content joined."""
    out: list[ChatDelta] = []
    for piece in pieces:
        if isinstance(piece, str):
            if not piece:
                continue
            if out and isinstance(out[-1].content, str) and not out[-1].tool_calls:
                out[-1].content += piece
            else:
                out.append(ChatDelta(content=piece))
        else:
            out.append(ChatDelta(tool_calls=[_call_delta(piece)]))
    return out


def _call_delta(piece: CallDelta) -> ToolCallDelta:
    if piece.id is None:
        return ToolCallDelta(index=piece.index, function=FunctionCallDelta(arguments=piece.arguments))
    return ToolCallDelta(
        index=piece.index,
        id=piece.id,
        type="function",
        function=FunctionCallDelta(name=piece.name, arguments=piece.arguments),
    )
