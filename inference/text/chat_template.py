"""Chat templates: a GGUF's Jinja chat template rendered in a sandbox, as HF transformers renders it."""

import contextlib
import ctypes
import functools
import itertools
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
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

# Bounds of one render (a template comes from the GGUF file: it is untrusted code). Its output is a
# prompt: 16 Mi characters is 4x the default request body limit. The strings and lists a template builds
# with operators, `~`, calls and filters are checked against the same size, and ints against
# _MAX_INT_BITS (Python prints no int of more than 4,300 digits anyway).
MAX_OUTPUT_CHARS = 16 * 2**20
RENDER_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 1.0  # each of the two renders that decide, at load, how content parts are passed
_MAX_INT_BITS = 2**14
# a %-format or {}-format field whose width or precision (8 digits or more) could exceed the bound
_WIDTH = re.compile(r"%[-+ #0]*\d*\.?\d{8,}|\{[^{}]*:[^{}]*\d{8,}")
_PROBE = "<<gguf-serve probe>>"

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
        return _render(self._template, context, _Budget(self.max_output_chars, self.timeout_s))

    def render_marked(
        self,
        messages: Sequence[Mapping[str, Any]],
        special_texts: frozenset[str],
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
        specials = _Specials.of(special_texts)
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


class _GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant spans for training; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _OverBudget(BaseException):
    """A render ran past a bound. A BaseException, so that no `except Exception` (or ValueError) in
    Jinja's runtime or filters swallows it on its way out of the template; _render turns it into a
    TemplateError."""


class _Budget:
    """The bounds of one render: output characters, and a deadline. At the deadline a timer raises
    _OverBudget in the rendering thread (PyThreadState_SetAsyncExc: it interrupts any loop of template
    code, costs nothing per line, and cannot reach beyond `watch`)."""

    def __init__(self, max_chars: int, timeout_s: float):
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.size = 0
        self.timed_out = False

    def add(self, chunk: str) -> None:
        self.size += len(chunk)
        if self.size > self.max_chars:
            raise _OverBudget(f"chat template output exceeds {self.max_chars} characters")

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        thread, lock, active = threading.get_ident(), threading.Lock(), [True]

        def interrupt() -> None:
            with lock:
                if active[0]:
                    self.timed_out = True
                    _set_async_exc(thread, _OverBudget)

        timer = threading.Timer(self.timeout_s, interrupt)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            with lock:
                active[0] = False
            timer.cancel()
            if self.timed_out:  # scheduled but maybe not raised yet: it must not fire after we return
                _set_async_exc(thread, None)

    def message(self, exc: _OverBudget) -> str:
        if self.timed_out:
            return f"chat template rendering takes longer than {self.timeout_s:g} s"
        return str(exc)


def _set_async_exc(thread: int, exc: type[BaseException] | None) -> None:
    """Raises `exc` in `thread` at its next bytecode boundary; None clears a pending one."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), None if exc is None else ctypes.py_object(exc)
    )


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` (string concatenation) routed through the environment's check."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Environment(ImmutableSandboxedEnvironment):
    """A sandbox that fails on unsafe attribute access instead of quietly rendering an empty string, and
    that checks what operators, calls, filters and `~` build against MAX_OUTPUT_CHARS: the results, and
    before they run, the operations that would build far more in one step (`'a' * 10**9`, a width of
    10**9, a replace, join or power that explodes)."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return self.checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_arguments(__obj, args, kwargs)
        return __self.checked(super().call(__context, __obj, *args, **kwargs))

    @staticmethod
    def checked(value: Any) -> Any:
        """`value`, if its size is within the bound."""
        if isinstance(value, str | list | tuple | dict):
            _check_size(len(value))
        return value


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuses, before computing it, an operation whose result would exceed the bound."""
    sized = (str, list, tuple)
    if operator == "*" and isinstance(left, int) and isinstance(right, sized):
        left, right = right, left
    if operator == "*" and isinstance(left, sized) and isinstance(right, int):
        _check_size(len(left) * max(right, 0))
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        _check_size(len(left) + len(right))
    elif operator == "*" and isinstance(left, int) and isinstance(right, int):
        _check_bits(left.bit_length() + right.bit_length())
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        _check_bits(abs(left).bit_length() * right if abs(left) > 1 else 0)
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))


def _check_arguments(obj: Any, args: tuple, kwargs: dict) -> None:
    """Refuses a call of a str method that would build more than the bound in one step (the result
    of every call is checked afterwards too; these are the ones that could allocate far more first)."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format and str.format_map
    receiver = getattr(method, "__self__", None)
    if isinstance(receiver, str):
        _check_str_method(receiver, getattr(method, "__name__", ""), args, kwargs)


def _check_str_method(text: str, name: str, args: tuple, kwargs: dict) -> None:
    values = (*args, *kwargs.values())
    if name in ("format", "format_map"):
        _check_format(text, values)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_size(len(text) + text.count(args[0]) * max(len(args[1]) - len(args[0]), 0))
    elif name == "join" and args and isinstance(args[0], list | tuple):
        _check_size(len(text) * len(args[0]) + sum(len(x) for x in args[0] if isinstance(x, str)))
    elif name == "expandtabs" and values and isinstance(values[0], int):
        _check_size(len(text) + text.count("\t") * values[0])
    elif name == "indent" and values:  # the filter: each line gets `width` (spaces, or a string)
        width = (
            values[0] if isinstance(values[0], int) else len(values[0]) if isinstance(values[0], str) else 0
        )
        _check_size(len(text) + (text.count("\n") + 1) * width)
    else:  # ljust, rjust, center, zfill: a width
        for value in values:
            if isinstance(value, int):
                _check_size(value)


def _check_format(fmt: str, values: tuple) -> None:
    if _WIDTH.search(fmt) or any(isinstance(v, int) and abs(v) > MAX_OUTPUT_CHARS for v in values):
        raise _OverBudget(f"chat template formats a field wider than {MAX_OUTPUT_CHARS} characters")


def _check_bits(bits: int) -> None:
    if bits > _MAX_INT_BITS:
        raise _OverBudget(f"chat template computes an integer of more than {_MAX_INT_BITS} bits")


def _check_size(size: int) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise _OverBudget(f"chat template builds a value of {size} items (more than {MAX_OUTPUT_CHARS})")


def _bounded_filter(name: str, function: Any) -> Any:
    """A filter checked like a call (Jinja calls filters directly, not through Environment.call): no
    int argument beyond the bound, the amplifying ones (indent, replace, format, join) estimated first,
    the result checked."""
    first = 1 if hasattr(function, "jinja_pass_arg") else 0  # after the context or environment argument

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        value, rest = (args[first], args[first + 1 :]) if len(args) > first else (None, ())
        for arg in (*rest, *kwargs.values()):
            if isinstance(arg, int):
                _check_size(abs(arg))
        if name in ("indent", "replace", "format") and isinstance(value, str):
            _check_str_method(value, name, rest, kwargs)
        if name == "join" and isinstance(value, list | tuple):
            _check_str_method(rest[0] if rest and isinstance(rest[0], str) else "", "join", (value,), {})
        return _Environment.checked(function(*args, **kwargs))

    return bounded


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
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class _Loaded:
    template: jinja2.Template
    iterates_content: bool  # a `for` loops over something named like content: maybe content parts


@functools.lru_cache(maxsize=64)
def _load(source: str) -> _Loaded:
    """Parses once (linear in the source, like the checks on its syntax tree), then compiles."""
    env = _environment()
    try:
        tree = env.parse(source)
        iterates = _iterates_content(tree)
        return _Loaded(env.from_string(tree), iterates)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None
    except _OverBudget as e:  # Jinja folds constant expressions while compiling
        raise TemplateError(str(e)) from None


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
    context = {
        "messages": [{"role": "user", "content": content}],
        "add_generation_prompt": True,
        "tools": None,
        "bos_token": "",
        "eos_token": "",
    }
    try:
        return _PROBE in _render(_load(source).template, context, _Budget(MAX_OUTPUT_CHARS, PROBE_TIMEOUT_S))
    except TemplateError:  # a template that cannot render the probe at all gets plain strings
        return False


def _render(template: jinja2.Template, context: dict[str, Any], budget: _Budget) -> str:
    """The template's output, its size and time bounded by `budget`; TemplateError for any failure."""
    out: list[str] = []
    try:
        with budget.watch():
            for chunk in template.generate(context):
                budget.add(chunk)
                out.append(chunk)
    except TemplateError:
        raise
    except _OverBudget as e:
        raise TemplateError(budget.message(e)) from None
    except Exception as e:  # the template is untrusted code: any failure in it is a template error
        where = _template_line(e.__traceback__)
        raise TemplateError(f"chat template failed{where}: {type(e).__name__}: {e}") from None
    return "".join(out)


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


class _Specials:
    """Where special-token texts start in a string: each whole occurrence (leftmost, longest first, as
    the tokenizer matches them), and a tail that begins one (text that the template, or the next
    string, could complete)."""

    def __init__(self, texts: frozenset[str]):
        ordered = sorted(texts, key=len, reverse=True)
        firsts = "".join(sorted({re.escape(t[0]) for t in texts}))
        self._whole = re.compile(f"(?=[{firsts}])(?:{'|'.join(map(re.escape, ordered))})") if texts else None
        self._first = re.compile(f"[{firsts}]") if texts else None
        self._heads = frozenset(t[:k] for t in texts for k in range(1, len(t)))
        self._longest = max(map(len, texts), default=0)

    @classmethod
    @functools.lru_cache(maxsize=8)
    def of(cls, texts: frozenset[str]) -> "_Specials":
        return cls(texts)

    def starts(self, text: str) -> list[int]:
        if self._whole is None:
            return []
        found = [m.start() for m in self._whole.finditer(text)]
        tail = max(len(text) - self._longest + 1, found[-1] + 1 if found else 0)
        heads = (m.start() for m in self._first.finditer(text, tail) if text[m.start() :] in self._heads)
        return found + list(itertools.islice(heads, 1))

    def first(self, strings: Iterator[str]) -> str | None:
        for text in strings:
            if self._whole is not None and (m := self._whole.search(text)):
                return m.group()
        return None


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


def _mark(value: Any, specials: _Specials, marker: str) -> Any:
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
