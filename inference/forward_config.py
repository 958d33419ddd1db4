"""AdapterForwardConfig: one request as the engine sees it (crosses the process boundary as msgpack).

validate() is the one check of a config against the request limits (inference/limits.py) and the model;
the API boundary calls it once per config, and the engine only asserts."""

import msgspec

from . import limits
from .errors import ContextLengthError, RequestError
from .text.grammar import GrammarSpec


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
        _check_range("temperature", self.temperature, *limits.TEMPERATURE)
        low, high = limits.TOP_P
        if not low < self.top_p <= high:
            raise RequestError(f"top_p = {self.top_p} must be in ({low:g}, {high:g}]", "top_p")
        if self.top_k < 0:
            raise RequestError(f"top_k = {self.top_k} must be >= 0 (0 disables top-k)", "top_k")
        _check_range("min_p", self.min_p, *limits.MIN_P)
        if not 0.0 < self.repetition_penalty <= limits.MAX_REPETITION_PENALTY:
            raise RequestError(
                f"repetition_penalty = {self.repetition_penalty} must be in (0, "
                f"{limits.MAX_REPETITION_PENALTY:g}] (1 disables it)",
                "repetition_penalty",
            )
        _check_range("presence_penalty", self.presence_penalty, *limits.PENALTY)
        _check_range("frequency_penalty", self.frequency_penalty, *limits.PENALTY)
        self._validate_logit_bias(vocab_size)
        if self.logprobs is not None:
            _check_range("logprobs", self.logprobs, 0, limits.MAX_LOGPROBS)

    def _validate_logit_bias(self, vocab_size: int) -> None:
        count, most = len(self.logit_bias), limits.MAX_LOGIT_BIAS_TOKENS
        if count > most:
            raise RequestError(f"logit_bias has {count} entries; at most {most} are allowed", "logit_bias")
        bound = limits.MAX_LOGIT_BIAS
        for token_id, bias in self.logit_bias.items():
            _check_token_id("logit_bias", token_id, vocab_size, "logit_bias token id")
            _check_range("logit_bias", bias, -bound, bound, f"logit_bias[{token_id}]")
        if sum(b <= -bound for b in self.logit_bias.values()) >= vocab_size:
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

    def validate(self, *, vocab_size: int, context_length: int, prompt_param: str = "prompt") -> None:
        """Raises RequestError (ContextLengthError for a too-long request), `param` set, on a bad value.

        vocab_size: the ids with a token; prompt_param: the API parameter the prompt came from."""
        self._validate_prompt(vocab_size, prompt_param)
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens = {self.max_tokens} must be at least 1", "max_tokens")
        _check_range("n", self.n, 1, limits.MAX_N)
        self._validate_context(context_length)
        self.sampling.validate(vocab_size=vocab_size)
        self._validate_stop(vocab_size)
        if self.prompt_logprobs is not None:
            _check_range("prompt_logprobs", self.prompt_logprobs, 0, limits.MAX_LOGPROBS)
        most = limits.MAX_CACHE_SALT_CHARS
        if self.cache_salt is not None and not 0 < len(self.cache_salt) <= most:
            raise RequestError(
                f"cache_salt must be a non-empty string of at most {most} characters, got "
                f"{len(self.cache_salt)}",
                "cache_salt",
            )
        if self.ignore_eos and self.grammar is not None:
            raise RequestError(
                f"ignore_eos cannot be combined with {self.grammar.param} {self.grammar.kind}: the output "
                "ends with the grammar",
                "ignore_eos",
            )

    def _validate_prompt(self, vocab_size: int, param: str) -> None:
        if not self.prompt_ids:
            raise RequestError("the prompt is empty: at least one token is needed", param)
        bad = next((i for i, t in enumerate(self.prompt_ids) if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise RequestError(
                f"prompt token id {self.prompt_ids[bad]} at position {bad} is outside the vocabulary "
                f"[0, {vocab_size})",
                param,
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
        count, most = len(self.stop), limits.MAX_STOP_STRINGS
        if count > most:
            raise RequestError(f"{count} stop strings given; at most {most} are allowed", "stop")
        if any(not s for s in self.stop):
            raise RequestError(f"stop string {self.stop.index('')} is empty", "stop")
        most = limits.MAX_STOP_CHARS
        for i, s in enumerate(self.stop):
            if len(s) > most:
                raise RequestError(
                    f"stop string {i} has {len(s)} characters; at most {most} are allowed", "stop"
                )
        count, most = len(self.stop_token_ids), limits.MAX_STOP_TOKEN_IDS
        if count > most:
            raise RequestError(f"{count} stop_token_ids given; at most {most} are allowed", "stop_token_ids")
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
