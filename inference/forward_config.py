"""AdapterForwardConfig: one request as the engine sees it (crosses the process boundary as msgpack)."""

import math

import msgspec

from .errors import ContextLengthError, RequestError
from .text.grammar import GrammarSpec

MAX_N = 128  # choices per request
MAX_LOGPROBS = 20  # alternatives per token, as the OpenAI API
MAX_STOP = 16  # stop strings per request (OpenAI allows 4; we are lenient)
MAX_BIAS = 100.0  # |logit_bias| bound; -100 bans a token
MAX_CACHE_SALT_CHARS = 256


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

    def validate(self, *, vocab_size: int) -> None:
        """Raises RequestError, `param` set, when a value is outside its range for this vocabulary."""
        _check_range("temperature", self.temperature, 0.0, 2.0)
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p = {self.top_p} must be in (0, 1]", "top_p")
        if self.top_k < 0:
            raise RequestError(f"top_k = {self.top_k} must be >= 0 (0 disables top-k)", "top_k")
        _check_range("min_p", self.min_p, 0.0, 1.0)
        if not 0.0 < self.repetition_penalty < math.inf:
            raise RequestError(
                f"repetition_penalty = {self.repetition_penalty} must be > 0 (1 disables it)",
                "repetition_penalty",
            )
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        self._validate_logit_bias(vocab_size)
        if self.logprobs is not None:
            _check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)

    def _validate_logit_bias(self, vocab_size: int) -> None:
        for token_id, bias in self.logit_bias.items():
            _check_token_id("logit_bias", token_id, vocab_size, "logit_bias token id")
            _check_range("logit_bias", bias, -MAX_BIAS, MAX_BIAS, f"logit_bias[{token_id}]")
        if sum(b <= -MAX_BIAS for b in self.logit_bias.values()) >= vocab_size:
            raise RequestError(
                f"logit_bias bans all {vocab_size} tokens; nothing is left to sample", "logit_bias"
            )


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
    grammar: GrammarSpec | None = None  # structured output: every token follows this grammar
    cache_salt: str | None = None  # mixed into the first KV block's hash: prefixes are shared per salt only

    def validate(self, *, vocab_size: int, context_length: int) -> None:
        """Raises RequestError (ContextLengthError for a too-long request), `param` set, on a bad value."""
        self._validate_prompt(vocab_size)
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens = {self.max_tokens} must be at least 1", "max_tokens")
        _check_range("n", self.n, 1, MAX_N)
        self._validate_context(context_length)
        self.sampling.validate(vocab_size=vocab_size)
        self._validate_stop(vocab_size)
        if self.prompt_logprobs is not None:
            _check_range("prompt_logprobs", self.prompt_logprobs, 0, MAX_LOGPROBS)
        if self.cache_salt is not None and not 0 < len(self.cache_salt) <= MAX_CACHE_SALT_CHARS:
            raise RequestError(
                f"cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_CHARS} characters, got "
                f"{len(self.cache_salt)}",
                "cache_salt",
            )
        if self.ignore_eos and self.grammar is not None:
            raise RequestError(
                f"ignore_eos cannot be combined with {self.grammar.param} {self.grammar.kind}: the output "
                "ends with the grammar",
                "ignore_eos",
            )

    def _validate_prompt(self, vocab_size: int) -> None:
        if not self.prompt_ids:
            raise RequestError("the prompt is empty: at least one token is needed", "prompt")
        bad = next((i for i, t in enumerate(self.prompt_ids) if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise RequestError(
                f"prompt token id {self.prompt_ids[bad]} at position {bad} is outside the vocabulary "
                f"[0, {vocab_size})",
                "prompt",
            )

    def _validate_context(self, context_length: int) -> None:
        prompt, completion = len(self.prompt_ids), self.max_tokens
        if prompt + completion > context_length:
            raise ContextLengthError(
                f"This model's maximum context length is {context_length} tokens. However, you requested "
                f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
                "Please reduce the length of the messages or completion.",
                "messages",
                "context_length_exceeded",
            )

    def _validate_stop(self, vocab_size: int) -> None:
        if len(self.stop) > MAX_STOP:
            raise RequestError(f"{len(self.stop)} stop strings given; at most {MAX_STOP} are allowed", "stop")
        if any(not s for s in self.stop):
            raise RequestError(f"stop string {self.stop.index('')} is empty", "stop")
        for token_id in self.stop_token_ids:
            _check_token_id("stop_token_ids", token_id, vocab_size, "stop token id")


def _check_range(param: str, value: float, lo: float, hi: float, name: str | None = None) -> None:
    """lo <= value <= hi, else a RequestError saying which bound was crossed (NaN fails too)."""
    name = name or param
    if value < lo:
        raise RequestError(f"{name} = {value} is less than the minimum of {lo:g}", param)
    if value > hi:
        raise RequestError(f"{name} = {value} is greater than the maximum of {hi:g}", param)
    if not lo <= value <= hi:
        raise RequestError(f"{name} = {value} is not a number in [{lo:g}, {hi:g}]", param)


def _check_token_id(param: str, token_id: int, vocab_size: int, what: str) -> None:
    if not 0 <= token_id < vocab_size:
        raise RequestError(f"{what} {token_id} is outside the vocabulary [0, {vocab_size})", param)
