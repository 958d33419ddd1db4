"""Chat templates: a GGUF's Jinja chat template rendered in a sandbox, as HF transformers renders it."""

import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import TemplateError

METADATA_KEY = "tokenizer.chat_template"

# HF transformers' default ChatML template, made safe for content=None (assistant turns with tool calls).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A `for` over something named like content (`message['content']`, `m.content`, a local `content`).
_ITERATES_PARTS = re.compile(r"\bfor\s+[\w\s,]+\s+in\s+[\w.\[\]'\"]*content\b")
_PROBE = "<<gguf-serve probe>>"

# Variables render() sets itself; **extra may not shadow them.
_RESERVED = frozenset({"messages", "add_generation_prompt", "tools", "bos_token", "eos_token"})


class ChatTemplate:
    """A compiled chat template; render() turns OpenAI-style messages into one prompt string."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        if not isinstance(source, str):
            raise TemplateError(f"chat template must be a string, got {type(source).__name__}")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.is_fallback = False
        self._template = _compile(source)
        self._keeps_parts = _needs_parts(source)

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], *, bos_token: str = "", eos_token: str = ""
    ) -> "ChatTemplate":
        """The GGUF's `tokenizer.chat_template`, or ChatML (with `is_fallback` set) when the file has none."""
        source = metadata.get(METADATA_KEY)
        if source is not None and not isinstance(source, str):
            raise TemplateError(f"{METADATA_KEY} must be a string, got {type(source).__name__}")
        if not source:
            template = cls(CHATML, bos_token=bos_token, eos_token=eos_token)
            template.is_fallback = True
            return template
        return cls(source, bos_token=bos_token, eos_token=eos_token)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt for `messages`; TemplateError for invalid messages or any failure in the template."""
        shadowed = _RESERVED.intersection(extra)
        if shadowed:
            raise TemplateError(f"template variable {sorted(shadowed)[0]!r} cannot be passed as an extra")
        context = {
            **_plain(extra),
            "messages": _normalise_messages(messages, self._keeps_parts),
            "add_generation_prompt": add_generation_prompt,
            "tools": None if tools is None else _plain(list(tools)),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        return _render(self._template, context)


class _GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant spans for training; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Environment(ImmutableSandboxedEnvironment):
    """A sandbox that fails on unsafe attribute access instead of quietly rendering an empty string."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _raise_exception(message: str) -> None:
    raise TemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson sorts keys and HTML-escapes; templates are written against HF's json.dumps.
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
        default=_json_list,
    )


def _json_list(value: Any) -> list:
    # Jinja filters such as map() and select() return generators: serialise them as the lists they stand for.
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


@functools.cache
def _environment() -> _Environment:
    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None


@functools.lru_cache(maxsize=64)
def _needs_parts(source: str) -> bool:
    """Whether the template iterates content parts and drops plain string content (the probe minja uses).

    Every other template gets text parts joined into one string, which string-aware templates render alike.
    """
    if _ITERATES_PARTS.search(source) is None:
        return False
    parts = [{"type": "text", "text": _PROBE}]
    return not _probe(source, _PROBE) and _probe(source, parts)


def _probe(source: str, content: Any) -> bool:
    context = {
        "messages": [{"role": "user", "content": content}],
        "add_generation_prompt": True,
        "tools": None,
    }
    try:
        return _PROBE in _compile(source).render(context, bos_token="", eos_token="")
    except Exception:  # a template that cannot render the probe at all gets plain strings
        return False


def _render(template: jinja2.Template, context: dict[str, Any]) -> str:
    try:
        return template.render(context)
    except TemplateError:
        raise
    except Exception as e:  # the template is untrusted code: any failure in it is a template error
        where = _template_line(e.__traceback__)
        raise TemplateError(f"chat template failed{where}: {type(e).__name__}: {e}") from None


def _template_line(tb: TracebackType | None) -> str:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f" at line {line}"


def _normalise_messages(messages: Sequence[Mapping[str, Any]], keep_parts: bool) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TemplateError(f"messages must be a list, got {type(messages).__name__}")
    if not messages:
        raise TemplateError("messages must not be empty")
    return [_normalise_message(i, m, keep_parts) for i, m in enumerate(messages)]


def _normalise_message(index: int, message: Mapping[str, Any], keep_parts: bool) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise TemplateError(f"messages[{index}] must be an object, got {type(message).__name__}")
    if "role" not in message:
        raise TemplateError(f"messages[{index}] has no 'role'")
    if not isinstance(message["role"], str):
        raise TemplateError(f"messages[{index}].role must be a string, got {type(message['role']).__name__}")
    plain = _plain(message)
    if "content" in plain:
        plain["content"] = _normalise_content(index, plain["content"], keep_parts)
    return plain


def _normalise_content(index: int, content: Any, keep_parts: bool) -> str | list[dict[str, str]] | None:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TemplateError(
            f"messages[{index}].content must be a string or a list of parts, got {type(content).__name__}"
        )
    texts = [_part_text(index, j, part) for j, part in enumerate(content)]
    if keep_parts:
        return [{"type": "text", "text": text} for text in texts]
    return "\n".join(texts)  # as llama.cpp and vLLM join text parts for string-only templates


def _part_text(index: int, j: int, part: Any) -> str:
    where = f"messages[{index}].content[{j}]"
    if not isinstance(part, dict):
        raise TemplateError(f"{where} must be an object, got {type(part).__name__}")
    kind = part.get("type")
    if kind != "text":
        raise TemplateError(f"{where}: content part type {kind!r} is not supported (only 'text')")
    if not isinstance(part.get("text"), str):
        raise TemplateError(f"{where}.text must be a string")
    return part["text"]


def _plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists: templates see JSON-like data, never the caller's objects."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
