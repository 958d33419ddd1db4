"""tool_choice -> a Lark grammar for llguidance, built from a row of the tool-syntax table.

`required` (or a named function): the output is calls and nothing else. `auto`: free text, and a call
the model begins (its opening written) must be complete and valid: the grammar lets any text through
until the opening, then forces `{"name": <one of the tools>, "<key>": <JSON valid for its parameters>}`.
An opening that is one special token is referenced by id, and the free text may not spell it in plain
text tokens (so every opening the parser sees starts a constrained call); an opening written in text ends
a lazy lexeme, as llguidance's tool-calling example does. A syntax whose calls are the whole output
(Llama 3.x JSON) allows text that does not start with `{`, or calls.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .grammar import GrammarSpec, json_rule
from .tool_syntax import ToolSyntax


@dataclass(frozen=True)
class ToolGrammarRequest:
    syntax: ToolSyntax
    functions: Sequence[tuple[str, Mapping[str, Any]]]  # (name, parameters schema) the calls may use
    required: bool  # at least one call, and no text (required / a named function)
    parallel: bool  # more than one call allowed (parallel_tool_calls and the syntax can carry them)
    special_ids: Mapping[str, int]  # the syntax's open/close texts that are one special token -> its id


def tool_grammar(req: ToolGrammarRequest, param: str = "tools") -> GrammarSpec:
    return GrammarSpec(kind="lark", source=tool_lark(req), param=param)


def tool_lark(req: ToolGrammarRequest) -> str:
    s = req.syntax
    calls = " | ".join(f"call_{i}" for i in range(len(req.functions)))
    rules = [_start(req), f"calls: {_calls(req)}", f"call: {calls}"]
    for i, (name, parameters) in enumerate(req.functions):
        head = _lit(f'{{"name": "{name}", "{s.args_key}": ')
        rules.append(f'call_{i}: {head} args_{i}{" PAST_ID?" if s.id_key else ""} "}}"')
        rules.append(f"args_{i}: {json_rule(dict(parameters))}")
    if s.id_key:  # the template writes past calls with an id after the arguments: the model may too
        rules.append(f'PAST_ID: /, "{s.id_key}": "[A-Za-z0-9]{{{s.id_chars}}}"/')
    return "\n".join(rules) + "\n"


def _start(req: ToolGrammarRequest) -> str:
    s = req.syntax
    if req.required:
        return _seq("start:", _open(req), "calls")
    if not s.open:  # the calls are the whole output: text must not start like one
        return "start: TEXT | calls\nTEXT: /([^{](.|\\n)*)?/"
    if s.open in req.special_ids:  # any text that does not spell the opening, then the opening token
        spelt = f"/(?s:.*){re.escape(s.open)}(?s:.*)/"
        return f"start: TEXT | TEXT {_open(req)} calls\nTEXT: /(?s:.*)/ & ~{spelt}"
    # any text up to the opening (a lazy lexeme ends at its first match)
    return f"start: TEXT | head calls\nhead[lazy]: TEXT {_lit(s.open)}\nTEXT: /(.|\\n)*/"


def _open(req: ToolGrammarRequest) -> str:
    """The opening of the first call (omitted in auto with a text opening: `head` ends with it)."""
    s = req.syntax
    if not s.open:
        return ""
    if s.open in req.special_ids or req.required:
        return _tag(req, s.open)
    return ""


def _calls(req: ToolGrammarRequest) -> str:
    """Everything after the first opening."""
    s = req.syntax
    if s.array:
        return _seq('"["', "call", '(", " call)*' if req.parallel else "", '"]"', _tag(req, s.close))
    one = _seq(_lit(s.pad), "call", _lit(s.pad), _tag(req, s.close))
    if not (req.parallel and s.parallel):
        return one
    return _seq(one, "(" + _seq(_lit(s.between), _tag(req, s.open), one) + ")*")


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _tag(req: ToolGrammarRequest, text: str) -> str:
    if not text:
        return ""
    special = req.special_ids.get(text)
    return f"<[{special}]>" if special is not None else _lit(text)


def _lit(text: str) -> str:
    return json.dumps(text) if text else ""
