"""AdapterForwardConfig: one request as the engine sees it (crosses the process boundary as msgpack)."""

import msgspec


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick each next token. Defaults follow the OpenAI API."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # (0, 1]
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0  # [0, 1]
    repetition_penalty: float = 1.0  # > 0; 1 = off (prompt + output tokens, as in vLLM / HF)
    presence_penalty: float = 0.0  # [-2, 2] (output tokens, as in OpenAI)
    frequency_penalty: float = 0.0  # [-2, 2]
    logit_bias: dict[int, float] = {}  # token id -> bias in [-100, 100]
    seed: int | None = None
    logprobs: int | None = None  # None: no logprobs; N >= 0: sampled token + top-N alternatives


class AdapterForwardConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One request for the engine: prompt ids, sampling, stop conditions, what to report."""

    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    max_tokens: int = 16
    n: int = 1
    stop: tuple[str, ...] = ()  # stop strings, matched on text across token boundaries
    stop_token_ids: tuple[int, ...] = ()  # extra stop ids beyond the model's end-of-generation ids
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None  # for completions `echo` + `logprobs`
