"""Model output -> content and tool calls, incrementally, for any row of the tool-syntax table.

`ToolCallParser.push(text)` returns what may be sent now, in order: content strings and `CallDelta`s
(the first delta of a call has its id and name and empty arguments; later ones carry argument
fragments). Text that might still be the start of a call's opening is held back until it is decided.
A non-streamed response runs the same parser over the whole text, so both paths agree by construction.

The grammar (tool_grammar.py) writes each call's head literally, `{"name": "<name>", "<key>": `, so the
parser matches literals and lets json.JSONDecoder find where the arguments object ends. Output that
breaks the syntax (a cut call, free text with no grammar) is passed on as content from where it breaks.
"""

import json
import re
import secrets
import string
from dataclasses import dataclass, field

from .tool_syntax import ToolSyntax

_NAME = re.compile(r"[A-Za-z0-9_-]*")
_ID = re.compile(r"[A-Za-z0-9]*")
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


_ID_CHARS = string.ascii_letters + string.digits


def new_call_id(syntax: ToolSyntax) -> str:
    """OpenAI's shape, "call_" + random; or the fixed-length alphanumeric id the template requires."""
    if syntax.id_chars:
        return "".join(secrets.choice(_ID_CHARS) for _ in range(syntax.id_chars))
    return "call_" + secrets.token_hex(12)


@dataclass
class CallDelta:
    index: int  # which call of the choice, from 0
    arguments: str  # a fragment of the arguments' JSON text ("" on the first delta)
    id: str | None = None  # first delta only
    name: str | None = None  # first delta only


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the arguments object's JSON text, as the model wrote it


Piece = str | CallDelta


class ToolCallParser:
    """One choice's output, split into content and calls as it arrives."""

    def __init__(self, syntax: ToolSyntax, new_id=new_call_id):
        self.syntax = syntax
        self.calls: list[ToolCall] = []
        self._new_id = new_id
        self._buf = ""  # received, not yet consumed
        self._held = ""  # consumed since the last piece sent: markup that a broken call gives back
        self._args = ""  # the current call's arguments so far
        self._name_text = ""  # the current call's name, until its first delta
        self._state = "start"
        self._out: list[Piece] = []

    def push(self, text: str) -> list[Piece]:
        self._buf += text
        while getattr(self, "_" + self._state)():
            pass
        return self._take()

    def finish(self) -> list[Piece]:
        """The output ended: held text that never became a call is content."""
        if self._state in ("start", "text", "open", "head", "name", "name_end"):  # no call began
            self._content(self._held + self._buf)
        elif self._state in ("plain", "trailer"):
            self._content(self._buf)
        # else a call began: what is left is its unfinished markup (the output was cut)
        self._buf = self._held = ""
        self._state = "done"
        return self._take()

    # -- states: each consumes what it can and returns whether to run the next state now -------------

    def _start(self) -> bool:
        if self.syntax.open:
            return self._go("text")
        if not self._buf:
            return False
        return self._go("head" if self._buf[0] == "{" else "plain")  # JSON calls begin the output

    def _text(self) -> bool:
        i = self._buf.find(self.syntax.open)
        if i < 0:
            keep = _partial_suffix(self._buf, self.syntax.open)
            self._content(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            return False
        self._content(self._buf[:i])
        self._buf = self._buf[i:]
        return self._expect(self.syntax.open, "open")

    def _open(self) -> bool:
        return self._expect("[" if self.syntax.array else self.syntax.pad, "head")

    def _head(self) -> bool:
        return self._expect('{"name": "', "name")

    def _name(self) -> bool:
        name = _NAME.match(self._buf).group()
        if len(name) == len(self._buf):
            return False  # the name goes on
        if self._buf[len(name)] != '"' or not name:
            return self._broken()
        self._name_text = name
        self._buf = self._buf[len(name) :]
        self._held += name
        return self._go("name_end")

    def _name_end(self) -> bool:
        return self._expect(f'", "{self.syntax.args_key}": ', "key")

    def _key(self) -> bool:
        call = ToolCall(id=self._new_id(self.syntax), name=self._name_text, arguments="")
        self.calls.append(call)
        self._held = self._args = ""
        self._out.append(CallDelta(index=len(self.calls) - 1, arguments="", id=call.id, name=call.name))
        return self._go("arguments")

    def _arguments(self) -> bool:
        if not self._args:
            self._buf = self._buf.lstrip(_WHITESPACE)
            if not self._buf:
                return False
        text = self._args + self._buf
        try:
            _, end = _DECODER.raw_decode(text)
        except json.JSONDecodeError:
            end = None
        fragment = self._buf if end is None else self._buf[: end - len(self._args)]
        self._args += fragment
        self._buf = self._buf[len(fragment) :]
        self.calls[-1].arguments = self._args
        if fragment:
            self._out.append(CallDelta(index=len(self.calls) - 1, arguments=fragment))
        return end is not None and self._go("call_id" if self.syntax.id_key else "call_end")

    def _call_id(self) -> bool:
        """A past call's id, as the template writes it after the arguments (Mistral); not reported."""
        head = f', "{self.syntax.id_key}": "'
        if not self._buf.startswith(head):
            if not self._buf or head.startswith(self._buf):
                return False  # it may still become the id
            return self._go("call_end")  # no id: the call ends here
        rest = self._buf[len(head) :]
        n = _ID.match(rest).end()
        if n == len(rest):
            return False  # the id goes on
        if rest[n] != '"':
            return self._broken()
        self._buf = rest[n + 1 :]
        return self._go("call_end")

    def _call_end(self) -> bool:
        if self.syntax.array:
            return self._expect_one({"}, ": "head", "}]": "close"})
        return self._expect("}" + self.syntax.pad, "close")

    def _close(self) -> bool:
        return self._expect(self.syntax.close, "next")

    def _next(self) -> bool:
        self._held = ""  # the closing markup of a finished call
        if self.syntax.array or not self.syntax.parallel:
            return self._go("trailer")
        return self._expect(self.syntax.between + self.syntax.open, "open", otherwise="trailer")

    def _plain(self) -> bool:
        self._content(self._buf)
        self._buf = ""
        return False

    _trailer = _plain

    def _done(self) -> bool:
        return False

    # -- helpers -------------------------------------------------------------------------------------

    def _go(self, state: str) -> bool:
        self._state = state
        return True

    def _expect(self, literal: str, then: str, otherwise: str | None = None) -> bool:
        """Consumes `literal` and goes to `then`; waits while the text so far may still become it."""
        return self._expect_one({literal: then}, otherwise)

    def _expect_one(self, literals: dict[str, str], otherwise: str | None = None) -> bool:
        for literal, then in literals.items():
            if self._buf.startswith(literal):
                self._buf = self._buf[len(literal) :]
                self._held += literal
                return self._go(then)
        if any(literal.startswith(self._buf) for literal in literals):
            return False
        if otherwise is not None:
            self._content(self._held)
            return self._go(otherwise)
        return self._broken()

    def _broken(self) -> bool:
        """The text leaves the syntax: what was held, and all that follows, is content."""
        self._content(self._held)
        return self._go("trailer")

    def _content(self, text: str) -> None:
        self._held = ""
        if text:
            self._out.append(text)

    def _take(self) -> list[Piece]:
        out, self._out = self._out, []
        return out


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass
class ParsedOutput:
    content: str | None  # None when empty
    calls: list[ToolCall] = field(default_factory=list)


def parse_output(syntax: ToolSyntax, text: str, new_id=new_call_id) -> ParsedOutput:
    """A whole output's content (text outside calls) and its calls."""
    parser = ToolCallParser(syntax, new_id)
    pieces = parser.push(text) + parser.finish()
    content = "".join(p for p in pieces if isinstance(p, str))
    return ParsedOutput(content or None, parser.calls)
