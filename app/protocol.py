"""The OpenAI API (and vLLM's tokenize extras) as msgspec Structs; decoding checks types and ranges."""

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from inference import limits
from inference.errors import RequestError

# the request limits come from inference/limits.py (AdapterForwardConfig.validate checks the same numbers)
Temperature = Annotated[float, Meta(ge=limits.TEMPERATURE[0], le=limits.TEMPERATURE[1])]
TopP = Annotated[float, Meta(gt=limits.TOP_P[0], le=limits.TOP_P[1])]
Penalty = Annotated[float, Meta(ge=limits.PENALTY[0], le=limits.PENALTY[1])]
MaxTokens = Annotated[int, Meta(ge=1)]
N = Annotated[int, Meta(ge=1, le=limits.MAX_N)]
TopK = Annotated[int, Meta(ge=-1)]  # -1 or 0: disabled (vLLM uses -1)
MinP = Annotated[float, Meta(ge=limits.MIN_P[0], le=limits.MIN_P[1])]
RepetitionPenalty = Annotated[float, Meta(gt=0.0, le=limits.MAX_REPETITION_PENALTY)]
StopString = Annotated[str, Meta(max_length=limits.MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Meta(max_length=limits.MAX_STOP_STRINGS)]
TokenId = Annotated[int, Meta(ge=0)]
LogitBias = Annotated[dict[str, float], Meta(max_length=limits.MAX_LOGIT_BIAS_TOKENS)]  # id -> bias
CacheSalt = Annotated[str, Meta(min_length=1, max_length=limits.MAX_CACHE_SALT_CHARS)]
MetadataMap = Annotated[  # OpenAI's bounds on `metadata`: 16 pairs, keys <= 64, values <= 512 characters
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]


class _Strict(Struct, kw_only=True, forbid_unknown_fields=True):
    """Requests reject unknown fields: a misspelt parameter is an error, never silently ignored."""


class StreamOptions(_Strict, kw_only=True):
    include_usage: bool = False


class StructuredOutputs(_Strict, kw_only=True):
    """vLLM's `structured_outputs`: exactly one constraint (json, regex, choice, grammar, json_object),
    plus options for the JSON ones. structural_tag and disable_additional_properties are refused."""

    json: dict[str, Any] | bool | str | None = None  # a JSON schema, or its JSON text
    regex: str | None = None  # the whole output matches it
    choice: Annotated[list[str], Meta(min_length=1)] | None = None  # the output is one of these strings
    grammar: str | None = None  # Lark (llguidance's dialect) or GBNF, as vLLM's guidance backend takes
    json_object: bool | None = None  # true: any JSON object
    disable_any_whitespace: bool = False  # JSON without whitespace
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None  # the regex of whitespace between JSON tokens
    structural_tag: str | None = None


class _Sampling(_Strict, kw_only=True):
    """Parameters both endpoints share (OpenAI's, then vLLM's extras)."""

    # fields OpenAI documents as nullable whose null means "the default" (the openai client sends
    # `n=None` as null); after decoding they hold the default
    _null_is_default: ClassVar[tuple[str, ...]] = ("n", "stream")

    def __post_init__(self) -> None:
        nulls = [name for name in self._null_is_default if getattr(self, name) is None]
        if nulls:
            defaults = {f.name: f.default for f in msgspec.structs.fields(self)}
            for name in nulls:
                setattr(self, name, defaults[name])

    model: str
    n: N | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    temperature: Temperature | None = None  # None = 1.0
    top_p: TopP | None = None  # None = 1.0
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None  # token id (as a string) -> bias in [-100, 100]
    seed: int | None = None
    user: str | None = None  # an end-user id: accepted, only logged
    # vLLM extras
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[TokenId], Meta(max_length=limits.MAX_STOP_TOKEN_IDS)] | None = None
    # only requests with the same salt share prefix-cache blocks (none: shared with every unsalted request)
    cache_salt: CacheSalt | None = None
    # structured output (one per request, with chat's response_format): vLLM's and llama.cpp's fields
    structured_outputs: StructuredOutputs | None = None
    grammar: str | None = None  # llama.cpp: a GBNF grammar the output follows


class CompletionRequest(_Sampling, kw_only=True):
    """POST /v1/completions."""

    _null_is_default = ("n", "stream", "echo")

    # A string, strings, token ids, or lists of token ids; element types are checked in translate.
    prompt: str | list[str | int | list[int]]
    max_tokens: MaxTokens | None = 16  # None = up to the context length
    logprobs: Annotated[int, Meta(ge=0, le=limits.MAX_COMPLETION_LOGPROBS)] | None = None
    echo: bool | None = False
    # Known but not supported: a request that sets them gets 400 naming them.
    suffix: str | None = None
    best_of: int | None = None


# -- chat messages ---------------------------------------------------------------------------------


class TextPart(_Strict, kw_only=True, tag="text", tag_field="type"):
    text: str


class ImageURLPart(_Strict, kw_only=True, tag="image_url", tag_field="type"):
    image_url: Any = None  # rejected by translate: this server is text only


ContentPart = TextPart | ImageURLPart
Content = str | list[ContentPart]


class FunctionCall(_Strict, kw_only=True):
    name: str
    arguments: str


class ToolCall(_Strict, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict, kw_only=True, tag="system", tag_field="role"):
    content: Content
    name: str | None = None


class DeveloperMessage(_Strict, kw_only=True, tag="developer", tag_field="role"):
    """OpenAI's newer name for system instructions; rendered with role "system"."""

    content: Content
    name: str | None = None


class UserMessage(_Strict, kw_only=True, tag="user", tag_field="role"):
    content: Content
    name: str | None = None


class AssistantMessage(_Strict, kw_only=True, tag="assistant", tag_field="role"):
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # earlier calls in the conversation; rendered by the template
    refusal: str | None = None


class ToolMessage(_Strict, kw_only=True, tag="tool", tag_field="role"):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class ResponseFormatText(_Strict, kw_only=True, tag="text", tag_field="type"):
    pass


class ResponseFormatJSONObject(_Strict, kw_only=True, tag="json_object", tag_field="type"):
    pass


class JSONSchemaFormat(_Strict, kw_only=True):
    """OpenAI's json_schema response format: the output is JSON that validates against `schema`."""

    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    schema: dict[str, Any] | None = None  # None: any JSON value
    strict: bool | None = None  # the schema is always enforced; strict changes nothing here
    description: str | None = None


class ResponseFormatJSONSchema(_Strict, kw_only=True, tag="json_schema", tag_field="type"):
    json_schema: JSONSchemaFormat


ResponseFormat = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema


# -- tools -----------------------------------------------------------------------------------------

FunctionName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]  # OpenAI's rule for function names


class FunctionDefinition(_Strict, kw_only=True):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of an object; None: takes no arguments
    strict: bool | None = None  # the arguments always validate (grammar); strict changes nothing here


class ChatTool(_Strict, kw_only=True):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Strict, kw_only=True):
    name: str


class NamedToolChoice(_Strict, kw_only=True):
    """tool_choice {"type": "function", "function": {"name": ...}}: that function must be called."""

    type: Literal["function"]
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(_Sampling, kw_only=True):
    """POST /v1/chat/completions."""

    _null_is_default = ("n", "stream", "logprobs")

    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: MaxTokens | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: MaxTokens | None = None  # None (both) = up to the context length
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Meta(ge=0, le=limits.MAX_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None
    # Accepted, and without effect on generation (the README's field table says what happens to each).
    store: bool | None = None  # nothing is stored
    metadata: MetadataMap | None = None  # OpenAI's bounds; only validated
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None  # one tier here
    prompt_cache_key: str | None = None  # prefix caching needs no key
    safety_identifier: str | None = None  # like `user`
    tools: Annotated[list[ChatTool], Meta(max_length=limits.MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" with tools, "none" without
    parallel_tool_calls: bool | None = None  # None: true; false: at most one call
    # Known but not supported: set, they get 400 naming them (translate checks).
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    # Known, and cannot be honoured by a server without reasoning, search or verbosity control: set to
    # anything but null they get 400 "... is not supported by this server" as the body is decoded.
    reasoning_effort: Any = None
    web_search_options: Any = None
    verbosity: Any = None

    _not_supported: ClassVar[tuple[str, ...]] = ("reasoning_effort", "web_search_options", "verbosity")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self._not_supported:
            if getattr(self, name) is not None:
                raise RequestError(f"{name} is not supported by this server", name, "unsupported_parameter")


# -- responses -------------------------------------------------------------------------------------


class _Envelope(Struct, kw_only=True):
    """The fields every response and chunk of both endpoints starts with (a subclass sets `object`;
    a redefined field keeps its place, so the JSON order is id, object, created, ...)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str


class PromptTokensDetails(Struct, kw_only=True):
    cached_tokens: int  # prompt tokens whose KV the prefix cache supplied


class Usage(Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, prompt: int, completion: int, cached: int) -> "Usage":
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )


class CompletionLogprobs(Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct, kw_only=True):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(_Envelope, kw_only=True):
    object: str = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(_Envelope, kw_only=True):
    object: str = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | UnsetType = UNSET  # only in the last chunk, when stream_options.include_usage


class TopLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Struct, kw_only=True):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatMessageOut(Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET  # only when the model called tools


class ChatChoice(Struct, kw_only=True):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(_Envelope, kw_only=True):
    object: str = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(Struct, kw_only=True):
    name: str | UnsetType = UNSET  # the first delta of a call
    arguments: str  # a fragment of the arguments' JSON ("" in the first delta)


class ToolCallDelta(Struct, kw_only=True):
    """A piece of one tool call: the first carries index, id, type and name; later ones, arguments."""

    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: FunctionCallDelta


class ChatDelta(Struct, kw_only=True):
    role: str | UnsetType = UNSET  # only in the first chunk of each choice
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChatChunkChoice(Struct, kw_only=True):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Envelope, kw_only=True):
    object: str = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | UnsetType = UNSET


# -- models, tokenize, errors ----------------------------------------------------------------------


class ModelCard(Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "gguf-serve"
    max_model_len: int  # vLLM's extra: the context length


class ModelList(Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


class TokenizeRequest(_Strict, kw_only=True):
    """POST /tokenize (vLLM): either `prompt` or chat `messages` rendered by the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool | None = None  # None: True for a prompt, False for messages (vLLM)
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(Struct, kw_only=True):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Strict, kw_only=True):
    """POST /detokenize (vLLM)."""

    tokens: list[TokenId]
    model: str | None = None


class DetokenizeResponse(Struct, kw_only=True):
    prompt: str


class ErrorDetail(Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Struct, kw_only=True):
    error: ErrorDetail


class Health(Struct, kw_only=True):
    status: Literal["ok", "fetching", "loading", "worker_down", "shutting_down"]
    detail: str | UnsetType = UNSET  # what the server is doing, when it is not "ok"


def json_bytes(obj: Any) -> bytes:
    return msgspec.json.encode(obj)
