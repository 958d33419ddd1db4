"""POST /v1/completions: one choice per (prompt, n); streamed as SSE or returned whole."""

from collections.abc import AsyncIterator

from litestar import Request, Response

from inference.events import TokenEvent

from .engine_client import Generation
from .protocol import CompletionChoice, CompletionChunk, CompletionRequest, CompletionResponse, Usage
from .routes_common import (
    CompletionLogprobsBuilder,
    Reply,
    collect,
    json_post,
    new_id,
    off_loop,
    service_of,
    sse_response,
    submit,
)
from .translate import CompletionPlan, completion_plan


class _Choice:
    """One choice as events arrive: text, token count, logprobs, finish reason."""

    def __init__(self, plan: CompletionPlan, prompt: int, tokenizer):
        self.config = plan.configs[prompt]
        self.echo = plan.echo[prompt] if plan.echo is not None else ""
        self.text: list[str] = []
        self.completion_tokens = 0
        self.cached_tokens = 0  # of the prompt, from the prefix cache
        self.finish_reason: str | None = None
        self.started = False
        self.logprobs = CompletionLogprobsBuilder(tokenizer) if plan.logprobs is not None else None

    def add(self, event: TokenEvent) -> tuple[str, bool]:
        """Appends an event; returns (its text, with the echoed prompt first; whether it is the first)."""
        first, self.started = not self.started, True
        prefix = self.echo if first else ""
        if self.logprobs is not None:
            if first and event.prompt_logprobs is not None:
                self.logprobs.add_prompt(self.config.prompt_ids, event.prompt_logprobs)
            elif first and self.echo:
                self.logprobs.offset += len(self.echo)
            self.logprobs.add(event.token_ids, event.logprobs)
        self.text.append(prefix + event.text)
        self.completion_tokens = max(self.completion_tokens, event.completion_tokens)
        self.cached_tokens = max(self.cached_tokens, event.cached_tokens)
        self.finish_reason = event.finish_reason or self.finish_reason
        return prefix + event.text, first


class _Choices:
    def __init__(self, plan: CompletionPlan, tokenizer):
        self.plan = plan
        self.prompt_of = {cfg.request_id: i for i, cfg in enumerate(plan.configs)}
        self.by_index = {
            i * plan.n + j: _Choice(plan, i, tokenizer)
            for i in range(len(plan.configs))
            for j in range(plan.n)
        }

    def index(self, event: TokenEvent) -> int:
        return self.prompt_of[event.request_id] * self.plan.n + event.index

    def usage(self) -> Usage:
        prompt = sum(len(cfg.prompt_ids) for cfg in self.plan.configs)
        completion = sum(c.completion_tokens for c in self.by_index.values())
        n = self.plan.n  # the choices of one prompt share its cached tokens: counted once
        per_prompt = [
            [self.by_index[i * n + j].cached_tokens for j in range(n)] for i in range(len(self.plan.configs))
        ]
        cached = sum(max(c) for c in per_prompt)
        return Usage.of(prompt, completion, cached)


@json_post("/v1/completions", CompletionRequest, "Create a completion", "OpenAI")
async def create_completion(data: CompletionRequest, request: Request) -> Response[CompletionResponse]:
    svc = service_of(request)
    plan = await off_loop(completion_plan, data, svc.model, new_id("cmpl"))
    gen = submit(request, plan.configs)
    reply = Reply(svc, plan.request_id)
    choices = _Choices(plan, svc.model.tokenizer)
    if plan.stream:
        return sse_response(_stream(plan, choices, gen, reply), gen)
    for event in await collect(gen, request):
        choices.by_index[choices.index(event)].add(event)
    out = [
        CompletionChoice(
            index=i,
            text="".join(c.text),
            finish_reason=c.finish_reason,
            logprobs=c.logprobs.out if c.logprobs is not None else None,
        )
        for i, c in sorted(choices.by_index.items())
    ]
    return Response(reply.body(CompletionResponse, out, choices.usage()), status_code=200)


async def _stream(
    plan: CompletionPlan, choices: _Choices, gen: Generation, reply: Reply
) -> AsyncIterator[bytes]:
    async for event in gen.events():
        index = choices.index(event)
        choice = choices.by_index[index]
        text, _ = choice.add(event)
        logprobs = choice.logprobs.take() if choice.logprobs is not None else None
        if text or (logprobs is not None and logprobs.tokens):
            yield reply.frame(CompletionChunk, [CompletionChoice(index=index, text=text, logprobs=logprobs)])
        if event.finish_reason is not None:
            finished = CompletionChoice(index=index, text="", finish_reason=event.finish_reason)
            yield reply.frame(CompletionChunk, [finished])
    if plan.include_usage:
        yield reply.frame(CompletionChunk, [], choices.usage())
