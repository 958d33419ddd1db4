"""What the engine reports back per step: token events (crosses the process boundary as msgpack)."""

import msgspec


class Logprob(msgspec.Struct, frozen=True, array_like=True):
    token_id: int
    logprob: float  # natural log of the model's raw probability (log_softmax of the logits)


class TokenLogprobs(msgspec.Struct, frozen=True, array_like=True):
    chosen: Logprob  # the sampled (or prompt) token
    top: tuple[Logprob, ...]  # the N most likely alternatives, most likely first


class TokenEvent(msgspec.Struct, kw_only=True):
    """New output of one choice (`index`) of one request since the previous event."""

    request_id: str
    index: int = 0  # choice index when n > 1
    token_ids: list[int] = []  # tokens produced since the last event
    text: str = ""  # UTF-8-safe text delta; a matched stop string is cut off
    logprobs: list[TokenLogprobs] | None = None  # one per token in token_ids, when asked
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"; set on the last event
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far for this choice
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # first event only; None for token 0
    error: str | None = None  # message when finish_reason == "error"
