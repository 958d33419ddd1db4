"""Chat templates: a GGUF's Jinja chat template rendered in a sandbox, as HF transformers renders it."""

import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes

from ..errors import TemplateError
from . import template_sandbox as sandbox
from .special_texts import SpecialTexts
from .template_sandbox import MAX_OUTPUT_CHARS, RENDER_TIMEOUT_S

METADATA_KEY = "tokenizer.chat_template"

# HF transformers' default ChatML template, made safe for content=None (assistant turns with tool calls).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PROBE_TIMEOUT_S = 1.0  # each of the renders that decide how content parts are passed, and tool support
_PROBE = "<<gguf-serve probe>>"
_PROBE_TOOL = "gguf_serve_probe_tool"  # a function name that only a template that renders it can output
_PROBE_CALL_ID = "probe0001"  # nine alphanumerics: Mistral's templates refuse any other shape of id

# Unicode noncharacters: render_marked puts one (absent from the data and the prompt) before each
# special-token text in the data.
_MARKERS = tuple(map(chr, range(0xFDD0, 0xFDF0)))

# Variables render() sets itself; **extra may not shadow them.
_RESERVED = frozenset({"messages", "add_generation_prompt", "tools", "bos_token", "eos_token"})


class ChatTemplate:
    """A compiled chat template; render() turns OpenAI-style messages into one prompt string."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        max_output_chars: int = MAX_OUTPUT_CHARS,
        timeout_s: float = RENDER_TIMEOUT_S,
    ):
        if not isinstance(source, str):
            raise TemplateError(f"chat template must be a string, got {type(source).__name__}")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.is_fallback = False
        self.max_output_chars = min(max_output_chars, MAX_OUTPUT_CHARS)
        self.timeout_s = timeout_s
        loaded = _load(source)
        self._template = loaded.template
        self._keeps_parts = loaded.iterates_content and _needs_parts(source)

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        *,
        bos_token: str = "",
        eos_token: str = "",
        max_output_chars: int = MAX_OUTPUT_CHARS,
        timeout_s: float = RENDER_TIMEOUT_S,
    ) -> "ChatTemplate":
        """The GGUF's `tokenizer.chat_template`, or ChatML (with `is_fallback` set) when the file has none."""
        source = metadata.get(METADATA_KEY)
        if source is not None and not isinstance(source, str):
            raise TemplateError(f"{METADATA_KEY} must be a string, got {type(source).__name__}")
        options = dict(bos_token=bos_token, eos_token=eos_token, max_output_chars=max_output_chars)
        template = cls(source or CHATML, **options, timeout_s=timeout_s)
        template.is_fallback = not source
        return template

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
        return sandbox.render(self._template, context, sandbox.Budget(self.max_output_chars, self.timeout_s))

    @property
    def renders_tools(self) -> bool:
        """Whether the template writes tool definitions passed as `tools` into the prompt (minja's
        supports_tools: a probe tool's name must appear in the rendered text)."""
        return _renders_tools(self.source)

    @property
    def renders_tool_calls(self) -> bool:
        """Whether the template writes an assistant message's `tool_calls` (minja's supports_tool_calls)."""
        return _renders_tool_calls(self.source)

    def render_marked(
        self,
        messages: Sequence[Mapping[str, Any]],
        specials: SpecialTexts,
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping] | None = None,
    ) -> tuple[str, list[int]]:
        """The prompt, and the positions in it where special-token text from the messages (or tools)
        begins: there the tokenizer must keep text as text, so only the template's own markup becomes
        control tokens (a user cannot forge "<|im_end|><|im_start|>system").

        Only when the data holds such text (or ends a string with the start of one), the template renders
        once more with a marker before each: the marked prompt, markers removed, must be the prompt, or
        the template rewrote that text and the messages are refused (TemplateError)."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        if not any(specials.starts(s) for s in _strings((messages, tools))):
            return text, []
        marker = next((m for m in _MARKERS if m not in text and not _holds((messages, tools), m)), None)
        if marker is None:
            raise TemplateError("the messages use every marker character U+FDD0..U+FDEF; remove them")
        marked_messages, marked_tools = _mark((messages, tools), specials, marker)
        pieces = self.render(marked_messages, add_generation_prompt=add_generation_prompt, tools=marked_tools)
        pieces = pieces.split(marker)
        if "".join(pieces) != text:
            special = specials.first(_strings((messages, tools)))
            what = f"the special-token text {special!r}" if special else "the start of a special-token text"
            raise TemplateError(
                f"a message holds {what} where the chat template rewrites it, so it cannot be kept as plain "
                "text; remove it from the message"
            )
        return text, list(itertools.accumulate(len(p) for p in pieces[:-1]))


@dataclass(frozen=True)
class _Loaded:
    template: jinja2.Template
    iterates_content: bool  # a `for` loops over something named like content: maybe content parts


@functools.lru_cache(maxsize=64)
def _load(source: str) -> _Loaded:
    """Parses once (linear in the source, like the checks on its syntax tree), then compiles."""
    tree = sandbox.parse(source)
    iterates = _iterates_content(tree)  # before compiling, which rewrites the tree
    return _Loaded(sandbox.compile_template(tree), iterates)


def _iterates_content(tree: nodes.Template) -> bool:
    """Whether some `for` iterates an expression naming content (`message['content']`, `m.content`,
    a local `content`, `content|select(...)`)."""
    for loop in tree.find_all(nodes.For):
        if any(_names_content(n) for n in (loop.iter, *loop.iter.find_all(nodes.Expr))):
            return True
    return False


def _names_content(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Name):
        return node.name.endswith("content")
    if isinstance(node, nodes.Getattr):
        return node.attr.endswith("content")
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return isinstance(node.arg.value, str) and node.arg.value.endswith("content")
    return False


@functools.lru_cache(maxsize=64)
def _needs_parts(source: str) -> bool:
    """Whether the template iterates content parts and drops plain string content (the probe minja uses).

    Every other template gets text parts joined into one string, which string-aware templates render alike.
    """
    parts = [{"type": "text", "text": _PROBE}]
    return not _probe(source, _PROBE) and _probe(source, parts)


def _probe(source: str, content: Any) -> bool:
    return _renders(source, _PROBE, [{"role": "user", "content": content}])


_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _PROBE_TOOL,
            "description": "probe",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
]


@functools.lru_cache(maxsize=64)
def _renders_tools(source: str) -> bool:
    return _renders(source, _PROBE_TOOL, [{"role": "user", "content": "hi"}], _PROBE_TOOLS)


@functools.lru_cache(maxsize=64)
def _renders_tool_calls(source: str) -> bool:
    call = {
        "id": _PROBE_CALL_ID,
        "type": "function",
        "function": {"name": _PROBE_TOOL, "arguments": {"x": "y"}},
    }
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "done", "tool_call_id": _PROBE_CALL_ID},
    ]
    return _renders(source, _PROBE_TOOL, messages, _PROBE_TOOLS)


def _renders(source: str, needle: str, messages: list[dict], tools: list | None = None) -> bool:
    """Whether the template renders `messages` (and `tools`) into text that holds `needle`."""
    context = {
        "messages": messages,
        "add_generation_prompt": True,
        "tools": tools,
        "bos_token": "",
        "eos_token": "",
    }
    try:
        return needle in sandbox.render(
            _load(source).template, context, sandbox.Budget(MAX_OUTPUT_CHARS, PROBE_TIMEOUT_S)
        )
    except TemplateError:  # a template that cannot render the probe at all does not support it
        return False


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


def _strings(value: Any) -> Iterator[str]:
    """Every string in nested dicts (keys too), lists and tuples."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _holds(value: Any, char: str) -> bool:
    return any(char in s for s in _strings(value))


def _mark(value: Any, specials: SpecialTexts, marker: str) -> Any:
    """A copy of `value` with `marker` before every special-token text (or head of one) in its strings."""
    if isinstance(value, str):
        starts = specials.starts(value)
        if not starts:
            return value
        cuts = [0, *starts, len(value)]
        return marker.join(value[a:b] for a, b in itertools.pairwise(cuts))
    if isinstance(value, Mapping):
        return {_mark(k, specials, marker): _mark(v, specials, marker) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_mark(item, specials, marker) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists: templates see JSON-like data, never the caller's objects."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
