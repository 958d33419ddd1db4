"""API request -> AdapterForwardConfig: semantic checks, chat template, tokenization. Typed, explicit."""

from dataclasses import dataclass
from typing import Any

import msgspec
from llguidance.gbnf_to_lark import gbnf_to_lark, is_lark_syntax

from inference.errors import ContextLengthError, RequestError
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.text.grammar import GrammarSpec, check_grammar
from inference.text.tool_syntax import ToolSyntax

from .errors import APIError
from .protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    DeveloperMessage,
    ImageURLPart,
    Message,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    StructuredOutputs,
    TextPart,
    TokenizeRequest,
    TokenizeResponse,
    ToolMessage,
)
from .tool_use import call_arguments, check_tool_messages, tool_use


@dataclass(frozen=True)
class ServedModel:
    """The model as the API process sees it: metadata only (tokenizer, template), never the weights."""

    name: str  # what clients pass as `model`
    aliases: frozenset[str]  # other accepted names (the --model value)
    tokenizer: Any  # inference.text.tokenizer.Tokenizer
    template: Any  # inference.text.chat_template.ChatTemplate
    context_length: int
    created: int  # unix time the server started, for /v1/models
    max_num_seqs: int  # n (times prompts) may not exceed what the engine decodes together
    kv_cache_tokens: int  # prompt + max_tokens of one sequence must fit in the KV cache's whole blocks

    @property
    def vocab_size(self) -> int:
        """Ids with a token, [0, vocab_size): a model's padded embedding rows beyond them are refused."""
        return self.tokenizer.vocab_size

    def check_name(self, requested: str | None) -> None:
        if requested is not None and requested != self.name and requested not in self.aliases:
            raise APIError(
                404,
                f"The model `{requested}` does not exist. This server serves `{self.name}`.",
                param="model",
                code="model_not_found",
            )


@dataclass(frozen=True)
class CompletionPlan:
    request_id: str  # cmpl-...
    configs: tuple[AdapterForwardConfig, ...]  # one per prompt; choice j of prompt i is index i*n + j
    n: int
    echo: tuple[str, ...] | None  # per prompt: its text, when echo
    logprobs: int | None
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatPlan:
    request_id: str  # chatcmpl-...
    config: AdapterForwardConfig
    top_logprobs: int | None  # None: no logprobs
    stream: bool
    include_usage: bool
    tool_syntax: ToolSyntax | None = None  # parse tool calls out of the output with it


# -- /v1/completions -------------------------------------------------------------------------------


def completion_plan(req: CompletionRequest, model: ServedModel, request_id: str) -> CompletionPlan:
    model.check_name(req.model)
    if req.suffix is not None:
        raise RequestError("suffix is not supported by this server", "suffix", "unsupported_parameter")
    if req.best_of is not None and req.best_of != 1:
        raise RequestError(
            "best_of > 1 is not supported by this server; use n", "best_of", "unsupported_parameter"
        )
    _check_stream_options(req.stream, req.stream_options)
    _check_sequences(_prompt_count(req.prompt), req.n, model)  # before tokenizing any
    prompts = _prompts(req.prompt, model)
    sampling = _sampling(req, model, req.logprobs)
    grammar = _request_grammar(req)
    configs = []
    for i, ids in enumerate(prompts):
        max_tokens = _max_tokens(req.max_tokens, len(ids), model, "prompt")
        configs.append(
            _config(
                req,
                model,
                f"{request_id}-{i}",
                ids,
                sampling,
                max_tokens,
                prompt_logprobs=req.logprobs if req.echo else None,
                grammar=grammar,
                prompt_param=_prompt_param(req.prompt, i),
            )
        )
    echo = (
        tuple(_prompt_text(req.prompt, i, ids, model) for i, ids in enumerate(prompts)) if req.echo else None
    )
    return CompletionPlan(
        request_id, tuple(configs), req.n, echo, req.logprobs, req.stream, _include_usage(req)
    )


def _prompt_count(prompt: str | list) -> int:
    """How many prompts `prompt` holds, from its shape alone."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return 1
    return max(len(prompt), 1)


def _check_sequences(prompts: int, n: int, model: ServedModel, at_least: str = "") -> None:
    if prompts * n > model.max_num_seqs:
        raise RequestError(
            f"{at_least}{prompts} prompt(s) x n = {n} is {prompts * n} sequences; this server runs at most "
            f"max_num_seqs = {model.max_num_seqs} together",
            "n",
        )


class _PromptShape(msgspec.Struct):
    """A completions body with only what a cheap check needs; the prompt left undecoded."""

    prompt: msgspec.Raw = msgspec.Raw(b"")
    n: Any = 1


PEEK_BYTES = 64 * 1024  # bodies larger than this get check_completion_body before they are decoded


def check_completion_body(body: bytes, model: ServedModel) -> None:
    """The prompts x n check on a large completions body before it is decoded: decoding 700k
    one-character prompts alone holds the event loop (and the GIL) for 0.2 s, to then refuse them.
    Counts the prompt's strings from its raw bytes (quotes not after a backslash, a lower bound) or
    its id lists (brackets); anything it cannot judge is left to the full decode."""
    try:
        shape = msgspec.json.decode(body, type=_PromptShape)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return  # the full decode reports it precisely
    raw = bytes(shape.prompt)
    n = shape.n if type(shape.n) is int and shape.n >= 1 else 1
    first = raw[1:].lstrip()[:1] if raw.startswith(b"[") else b""
    if first == b'"':
        strings = (raw.count(b'"') - raw.count(b'\\"')) // 2
        _check_sequences(strings, n, model, at_least="at least ")
    elif first == b"[":
        _check_sequences(raw.count(b"[") - 1, n, model)


def _prompts(prompt: str | list, model: ServedModel) -> list[list[int]]:
    """Prompt token ids: one string, a list of strings, one list of ids, or a list of id lists."""
    if isinstance(prompt, str):
        return [_encode_prompt(prompt, model)]
    if not prompt:
        raise RequestError("prompt must not be empty", "prompt")
    kinds = {type(p) for p in prompt}
    if kinds == {str}:
        return [_encode_prompt(p, model) for p in prompt]
    if kinds == {int}:
        return [_check_ids(prompt, model, "prompt")]
    if kinds == {list}:
        return [_check_ids(p, model, f"prompt[{i}]") for i, p in enumerate(prompt)]
    raise RequestError(
        "prompt must be a string, a list of strings, a list of token ids, or a list of "
        "token-id lists (not a mix)",
        "prompt",
    )


def _encode_prompt(text: str, model: ServedModel) -> list[int]:
    ids = model.tokenizer.encode(text)  # special-token texts in user text stay text; BOS as the model says
    if not ids:
        raise RequestError("prompt must not be empty", "prompt")
    return ids


def _check_ids(ids: list[int], model: ServedModel, param: str) -> list[int]:
    if not ids:
        raise RequestError(f"{param} must not be empty", param)
    return list(ids)  # each id's range: AdapterForwardConfig.validate, naming `param`


def _prompt_param(prompt: str | list, i: int) -> str:
    """The parameter that holds prompt i: `prompt`, or `prompt[i]` in a list of token-id lists."""
    return f"prompt[{i}]" if isinstance(prompt, list) and isinstance(prompt[0], list) else "prompt"


def _prompt_text(prompt: str | list, i: int, ids: list[int], model: ServedModel) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt[i], str):
        return prompt[i]
    return model.tokenizer.decode(ids)


# -- /v1/chat/completions --------------------------------------------------------------------------


def chat_plan(req: ChatCompletionRequest, model: ServedModel, request_id: str) -> ChatPlan:
    model.check_name(req.model)
    _check_chat_unsupported(req)
    _check_stream_options(req.stream, req.stream_options)
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("top_logprobs requires logprobs to be true", "top_logprobs")
    if req.n > model.max_num_seqs:
        raise RequestError(f"n = {req.n} exceeds this server's max_num_seqs = {model.max_num_seqs}", "n")
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise RequestError("set max_completion_tokens or max_tokens, not both", "max_tokens")
    tools = tool_use(req, model)
    ids = chat_prompt_ids(req.messages, model, tools=tools.definitions if tools else None)
    top = (req.top_logprobs or 0) if req.logprobs else None
    sampling = _sampling(req, model, top)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = _max_tokens(requested, len(ids), model, "messages", param)
    grammar = _request_grammar(req)
    if tools is not None and tools.grammar is not None:
        if grammar is not None:
            field = grammar.param.split(".")[0]
            raise RequestError(
                f"{field} cannot constrain the output while tools may be called; set tool_choice to none, "
                f"or leave {field} out",
                field,
            )
        grammar = tools.grammar
    config = _config(req, model, request_id, ids, sampling, max_tokens, grammar=grammar)
    syntax = tools.syntax if tools else None
    return ChatPlan(request_id, config, top, req.stream, _include_usage(req), syntax)


def chat_prompt_ids(
    messages: list[Message],
    model: ServedModel,
    *,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """The chat template's text for `messages` (and `tools`), encoded with special tokens (the template
    adds BOS): only the template's own markup becomes control tokens; the messages' text stays text."""
    tok = model.tokenizer
    check_tool_messages(messages, model)
    text, plain = model.template.render_marked(
        template_messages(messages), tok.specials, add_generation_prompt=add_generation_prompt, tools=tools
    )
    return tok.encode(text, allow_special=True, add_bos=False, plain_at=plain)


# -- /tokenize and /detokenize (vLLM's shapes) -------------------------------------------------------


def tokenize_response(req: TokenizeRequest, model: ServedModel) -> TokenizeResponse:
    """The ids of `prompt`, or of `messages` rendered by the chat template (add_special_tokens: BOS)."""
    model.check_name(req.model)
    tok = model.tokenizer
    if (req.prompt is None) == (req.messages is None):
        raise RequestError("send exactly one of prompt and messages", "prompt")
    if req.prompt is not None:
        add = True if req.add_special_tokens is None else req.add_special_tokens
        ids = tok.encode(req.prompt, add_bos=None if add else False)
    else:
        ids = chat_prompt_ids(req.messages, model, add_generation_prompt=req.add_generation_prompt)
        if req.add_special_tokens and tok.bos_id is not None:
            ids = [tok.bos_id, *ids]
    strs = [tok.token_text(t) for t in ids] if req.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=model.context_length, tokens=ids, token_strs=strs)


def detokenize_response(req: DetokenizeRequest, model: ServedModel) -> DetokenizeResponse:
    model.check_name(req.model)
    bad = [t for t in req.tokens if t >= model.vocab_size]
    if bad:
        raise RequestError(f"token id {bad[0]} is outside the vocabulary [0, {model.vocab_size})", "tokens")
    return DetokenizeResponse(prompt=model.tokenizer.decode(req.tokens))


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Protocol messages -> the plain dicts a chat template reads (text parts kept as parts)."""
    out = []
    for i, m in enumerate(messages):
        role = "system" if isinstance(m, DeveloperMessage) else type(m).__struct_config__.tag
        if isinstance(m, AssistantMessage) and m.content is None and not m.tool_calls:
            raise RequestError(
                f"messages[{i}]: an assistant message needs content or tool_calls; both are missing",
                f"messages[{i}].content",
            )
        item: dict[str, Any] = {"role": role, "content": _content(m.content, i)}
        if getattr(m, "name", None) is not None:
            item["name"] = m.name
        if isinstance(m, AssistantMessage) and m.tool_calls:
            item["tool_calls"] = [
                _template_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls)
            ]
        if isinstance(m, ToolMessage):
            item["tool_call_id"] = m.tool_call_id
        out.append(item)
    return out


def _template_call(call, param: str) -> dict[str, Any]:
    """An earlier tool call as templates read it: arguments as an object (HF transformers' convention)."""
    arguments = call_arguments(call.function.arguments, f"{param}.function.arguments")
    return {
        "id": call.id,
        "type": call.type,
        "function": {"name": call.function.name, "arguments": arguments},
    }


def _content(content: str | list | None, i: int) -> str | list[dict[str, str]] | None:
    if content is None or isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, ImageURLPart):
            raise RequestError(
                "image content is not supported: this server serves text models",
                f"messages[{i}].content[{j}]",
                "unsupported_content",
            )
        assert isinstance(part, TextPart)
        parts.append({"type": "text", "text": part.text})
    return parts


def _check_chat_unsupported(req: ChatCompletionRequest) -> None:
    unsupported = {
        "functions": bool(req.functions),
        "function_call": req.function_call not in (None, "none"),
        "audio": req.audio is not None,
        "modalities": req.modalities not in (None, ["text"]),
        "prediction": req.prediction is not None,
    }
    for param, used in unsupported.items():
        if used:
            raise RequestError(f"{param} is not supported by this server", param, "unsupported_parameter")


# -- structured output: response_format, structured_outputs or grammar -> one GrammarSpec -----------

_CONSTRAINT_FIELDS = ("response_format", "structured_outputs", "grammar")
_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def _request_grammar(req: ChatCompletionRequest | CompletionRequest) -> GrammarSpec | None:
    """The one constraint of a request, checked by llguidance (a grammar it rejects: 400 with its
    reason, naming the field); a second constraint field is refused."""
    given = [name for name in _CONSTRAINT_FIELDS if _constrains(req, name)]
    if len(given) > 1:
        raise RequestError(
            f"a request takes one output constraint; this one sets both {given[0]} and {given[1]}", given[1]
        )
    if not given:
        return None
    if given[0] == "response_format":
        spec = _response_grammar(req)
    elif given[0] == "structured_outputs":
        spec = _structured_grammar(req.structured_outputs)
    else:
        spec = GrammarSpec(kind="lark", source=_gbnf_to_lark(req.grammar, "grammar"), param="grammar")
    check_grammar(spec)
    return spec


def _constrains(req, name: str) -> bool:
    value = getattr(req, name, None)  # completions have no response_format
    if name == "response_format":
        return isinstance(value, ResponseFormatJSONObject | ResponseFormatJSONSchema)
    return value is not None and value != ""  # grammar "": none, as llama.cpp reads it


def _response_grammar(req: ChatCompletionRequest) -> GrammarSpec:
    """json_schema, or JSON mode, which needs the word JSON somewhere in the messages, as OpenAI's API
    requires: a model that is not asked for JSON is only forced into it."""
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        schema = {} if fmt.json_schema.schema is None else fmt.json_schema.schema
        return GrammarSpec(kind="json_schema", source=msgspec.json.encode(schema).decode())
    texts = [m.content if isinstance(m.content, str) else _part_texts(m.content) for m in req.messages]
    if not any("json" in t.lower() for t in texts):
        raise RequestError(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
            "'json_object'.",
            "messages",
        )
    return GrammarSpec(kind="json_object")


def _structured_grammar(so: StructuredOutputs) -> GrammarSpec:
    """vLLM's structured_outputs: exactly one of its constraints, its JSON options on JSON ones only."""
    kind = _structured_kind(so)
    param = f"structured_outputs.{kind}"
    for unsupported in ("structural_tag", "disable_additional_properties"):
        if getattr(so, unsupported) not in (None, False):
            raise RequestError(
                f"structured_outputs.{unsupported} is not supported by this server",
                f"structured_outputs.{unsupported}",
                "unsupported_parameter",
            )
    options = _json_options(so, kind)
    if kind in ("json", "json_object"):
        return _json_spec(so, options, param)
    if kind == "regex":
        return GrammarSpec(kind="regex", source=so.regex, param=param)
    if kind == "choice":
        return GrammarSpec(kind="choice", source=msgspec.json.encode(so.choice).decode(), param=param)
    return GrammarSpec(kind="lark", source=_lark_or_gbnf(so.grammar, param), param=param)


def _structured_kind(so: StructuredOutputs) -> str:
    given = [k for k in _STRUCTURED_KINDS if getattr(so, k) is not None]
    kinds = ", ".join(_STRUCTURED_KINDS[:-1])
    if not given:
        raise RequestError(f"structured_outputs needs one of {kinds}; it has none", "structured_outputs")
    if len(given) > 1:
        raise RequestError(
            f"structured_outputs takes one of {kinds}; this one sets both {given[0]} and {given[1]}",
            f"structured_outputs.{given[1]}",
        )
    return given[0]


def _json_spec(so: StructuredOutputs, options: dict[str, Any], param: str) -> GrammarSpec:
    """json (a schema) or json_object, with the whitespace options as the schema's x-guidance."""
    if so.json_object is False:
        raise RequestError(
            "structured_outputs.json_object: false asks for nothing; set true or leave it out", param
        )
    if so.json_object and not options:
        return GrammarSpec(kind="json_object", param=param)
    schema = {"type": "object"} if so.json_object else _schema(so.json, param)
    if options and schema is not False:  # the false schema allows nothing, options or not
        base = {} if schema is True else schema
        schema = {**base, "x-guidance": {**base.get("x-guidance", {}), **options}}
    return GrammarSpec(kind="json_schema", source=msgspec.json.encode(schema).decode(), param=param)


def _json_options(so: StructuredOutputs, kind: str) -> dict[str, Any]:
    """llguidance's JSON options (x-guidance) for structured_outputs' whitespace fields."""
    set_ = [
        k for k in ("disable_any_whitespace", "whitespace_pattern") if getattr(so, k) not in (None, False)
    ]
    if set_ and kind not in ("json", "json_object"):
        raise RequestError(
            f"structured_outputs.{set_[0]} applies to json and json_object only",
            f"structured_outputs.{set_[0]}",
        )
    if len(set_) > 1:
        raise RequestError(
            "set disable_any_whitespace or whitespace_pattern, not both",
            "structured_outputs.whitespace_pattern",
        )
    if so.disable_any_whitespace:
        return {"whitespace_flexible": False}
    return {} if so.whitespace_pattern is None else {"whitespace_pattern": so.whitespace_pattern}


def _schema(value: dict | bool | str, param: str) -> dict | bool:
    """A JSON schema given as an object, a boolean, or their JSON text."""
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError as e:
            raise RequestError(f"{param}: the schema text is not JSON: {e}", param) from None
    if not isinstance(value, dict | bool):
        raise RequestError(
            f"{param}: a JSON schema is an object or a boolean, got {type(value).__name__}", param
        )
    return value


def _lark_or_gbnf(text: str, param: str) -> str:
    """Lark as it is; GBNF converted (llguidance's rule, as vLLM's guidance backend: Lark has a %llguidance
    line or a `start:` rule)."""
    return text if is_lark_syntax(text) else _gbnf_to_lark(text, param)


def _gbnf_to_lark(text: str, param: str) -> str:
    """llama.cpp's GBNF -> llguidance's Lark (a grammar starting with %llguidance is Lark already, as
    llama.cpp's llguidance build reads it)."""
    if text.lstrip().startswith("%llguidance"):
        return text
    try:
        return gbnf_to_lark(text)
    except Exception as e:  # noqa: BLE001 - the converter raises plain Exception (e.g. an undefined rule)
        raise RequestError(f"{param}: the GBNF grammar cannot be converted: {e}", param) from None


def _part_texts(content: list | None) -> str:
    return " ".join(p.text for p in content or () if isinstance(p, TextPart))


# -- shared ----------------------------------------------------------------------------------------


def _check_stream_options(stream: bool, options) -> None:
    if options is not None and not stream:
        raise RequestError("stream_options is only allowed when stream is true", "stream_options")


def _include_usage(req) -> bool:
    return bool(req.stream and req.stream_options is not None and req.stream_options.include_usage)


def _sampling(req, model: ServedModel, logprobs: int | None) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=0 if (req.top_k or 0) >= model.vocab_size else max(req.top_k or 0, 0),  # >= V: keeps all
        min_p=req.min_p or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=_logit_bias(req.logit_bias),
        seed=None if req.seed is None else req.seed % (1 << 63),  # any int64 -> the RNG's range
        logprobs=logprobs,
    )


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """JSON's string keys -> token ids; ids and values are checked by AdapterForwardConfig.validate."""
    out = {}
    for key, value in (bias or {}).items():
        try:
            out[int(key)] = float(value)
        except ValueError:
            raise RequestError(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
    return out


def _max_tokens(
    requested: int | None, prompt_len: int, model: ServedModel, prompt_param: str, param: str = "max_tokens"
) -> int:
    """The completion budget; OpenAI's context-length error when prompt + completion do not fit."""
    limit = min(model.context_length, model.kv_cache_tokens)
    if requested is None:
        if prompt_len >= limit:
            raise _context_error(model, prompt_len, 1, prompt_param)
        return limit - prompt_len
    if prompt_len + requested > model.context_length:
        raise _context_error(model, prompt_len, requested, prompt_param)
    if prompt_len + requested > model.kv_cache_tokens:
        raise RequestError(
            f"prompt ({prompt_len} tokens) + {param} ({requested}) exceed this server's KV cache of "
            f"{model.kv_cache_tokens} tokens (setting kv_cache_tokens)",
            param,
        )
    return requested


def _context_error(
    model: ServedModel, prompt_len: int, completion: int, prompt_param: str
) -> ContextLengthError:
    total, limit = prompt_len + completion, model.context_length
    if prompt_param == "messages":  # OpenAI's wording for each endpoint
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested {total} "
            f"tokens ({prompt_len} in the messages, {completion} in the completion). Please reduce the "
            "length of the messages or completion."
        )
    else:
        message = (
            f"This model's maximum context length is {limit} tokens, however you requested {total} "
            f"tokens ({prompt_len} in your prompt; {completion} for the completion). Please reduce your "
            "prompt; or completion length."
        )
    return ContextLengthError(message, prompt_param, "context_length_exceeded")


def _config(
    req,
    model: ServedModel,
    request_id: str,
    ids: list[int],
    sampling: SamplingParams,
    max_tokens: int,
    prompt_logprobs: int | None = None,
    grammar: GrammarSpec | None = None,
    prompt_param: str = "messages",
) -> AdapterForwardConfig:
    """The engine's request, validated: the one check of the request limits (inference/limits.py)."""
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    cfg = AdapterForwardConfig(
        request_id=request_id,
        prompt_ids=tuple(ids),
        sampling=sampling,
        max_tokens=max_tokens,
        n=req.n,
        stop=stop,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
        prompt_logprobs=prompt_logprobs,
        grammar=grammar,
        cache_salt=req.cache_salt,
    )
    cfg.validate(vocab_size=model.vocab_size, context_length=model.context_length, prompt_param=prompt_param)
    return cfg
