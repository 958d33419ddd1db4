"""The sandbox chat templates run in: Jinja's immutable sandbox with HF's helpers, bounded in output,
time and the size of what a template builds; every failure is a TemplateError."""

import contextlib
import ctypes
import functools
import json
import re
import threading
from collections.abc import Iterator
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

# Bounds of one render (a template comes from the GGUF file: it is untrusted code). Its output is a
# prompt: 16 Mi characters is 4x the default request body limit. The strings and lists a template builds
# with operators, `~`, calls and filters are checked against the same size, and ints against
# _MAX_INT_BITS (Python prints no int of more than 4,300 digits anyway).
MAX_OUTPUT_CHARS = 16 * 2**20
RENDER_TIMEOUT_S = 5.0
_MAX_INT_BITS = 2**14
# a %-format or {}-format field whose width or precision (8 digits or more) could exceed the bound
_WIDTH = re.compile(r"%[-+ #0]*\d*\.?\d{8,}|\{[^{}]*:[^{}]*\d{8,}")


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


class Budget:
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
def environment() -> _Environment:
    env = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def render(template: jinja2.Template, context: dict[str, Any], budget: Budget) -> str:
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


def parse(source: str) -> nodes.Template:
    try:
        return environment().parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None


def compile_template(tree: nodes.Template) -> jinja2.Template:
    try:
        return environment().from_string(tree)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") from None
    except _OverBudget as e:  # Jinja folds constant expressions while compiling
        raise TemplateError(str(e)) from None
