"""Structured outputs on llguidance: a grammar (JSON object, JSON schema, regex, choice, Lark) per request,
one matcher per sequence, and the token masks of every constrained row of a step filled together.

`GrammarSpec` is what crosses the pipe; `check_grammar` refuses a bad one at the API boundary with the
library's reason. In the worker, `GrammarVocabulary` (one per tokenizer) bridges our tokenizer to
llguidance's, caches compiled grammars per spec, and hands each sequence a `GrammarConstraint`.

Special tokens (control, user-defined, unknown, unused) reach llguidance prefixed with 0xFF, its mark
for a token that is never text, so no grammar allows them; end-of-generation ids are its EOS tokens,
allowed once the grammar accepts. Ids past the token list (vocab padding) have no bit in the mask.
"""

import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import llguidance
import llguidance.numpy as llnp
import msgspec
import numpy as np

from ..errors import RequestError

GrammarKind = Literal["json_object", "json_schema", "regex", "choice", "lark"]
MAX_GAP = 32  # whitespace bytes between two JSON tokens, so a model cannot fill max_tokens with newlines
_JSON_DEFAULTS = {  # RFC 8259 escapes (\uXXXX for any character), whitespace gaps bounded
    "whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{0,{MAX_GAP}}}",
    "json_allow_general_unicode_escapes": True,
}
_SPECIAL_MARK = b"\xff"  # llguidance: a token whose bytes start with 0xFF is special, never text
_CACHE_SIZE = 64  # compiled grammars kept per vocabulary
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)  # errors without the parser state and grammar


class GrammarSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One request's constraint: kind, its source text, and the request field that asked for it."""

    kind: GrammarKind
    source: str = ""  # json_schema: the schema as JSON; regex; choice: a JSON list of strings; lark
    param: str = "response_format"  # named in errors


def grammar_text(spec: GrammarSpec) -> str:
    """The llguidance grammar of a spec (not yet checked); ValueError when the source is malformed."""
    if spec.kind == "json_object":
        return _json_grammar({"type": "object"})
    if spec.kind == "json_schema":
        return _json_grammar(json.loads(spec.source))
    if spec.kind == "choice":
        choices = json.loads(spec.source)
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.source)
    return llguidance.LLMatcher.grammar_from_lark(spec.source)


def _json_grammar(schema) -> str:
    """JSON that validates against schema, after at most MAX_GAP whitespace bytes (SentencePiece models
    like to start with a space); with whitespace_flexible false (vLLM's disable_any_whitespace) no
    whitespace is allowed anywhere, that gap included."""
    schema, gap = _json_options(schema)
    gap_rule = f"GAP: /[ \\t\\n\\r]{{0,{MAX_GAP}}}/\n" if gap else ""
    lark = f"start: {'GAP ' if gap else ''}json\n{gap_rule}json: %json {json.dumps(schema)}"
    return llguidance.LLMatcher.grammar_from_lark(lark)


def json_rule(schema) -> str:
    """The Lark body `%json {...}` of JSON that validates against schema, with our whitespace bound and
    escapes; the schema's own x-guidance options win over ours."""
    return f"%json {json.dumps(_json_options(schema)[0])}"


def _json_options(schema) -> tuple:
    """(schema with our x-guidance options under its own, whether whitespace may lead the JSON)"""
    if not isinstance(schema, dict):
        return schema, True
    own = schema.get("x-guidance", {})
    options = {**_JSON_DEFAULTS, **own}
    rigid = own.get("whitespace_flexible") is False and "whitespace_pattern" not in own
    if rigid:
        del options["whitespace_pattern"]
    return {**schema, "x-guidance": options}, not rigid


def check_grammar(spec: GrammarSpec) -> None:
    """Raises RequestError naming spec.param, with llguidance's reason, when the grammar cannot compile."""
    try:
        error = llguidance.LLMatcher.validate_grammar(grammar_text(spec))
    except ValueError as e:
        error = str(e)
    if error:
        raise RequestError(f"{spec.param}: the {spec.kind} grammar is invalid: {_reason(error)}", spec.param)


def _reason(error: str) -> str:
    """llguidance's message on one line, without its position in our generated grammar text and the
    numbered listing of that text (with internal options) that follows: 'at 3(7): failed to compile JSON
    schema: Invalid type: foo\n   1 {...}' -> 'Invalid type: foo'."""
    lines = []
    for line in error.strip().splitlines():
        if re.match(r"^\s+\d+ |^<", line):  # the listing of the grammar text, or <state>/<non-verbose/>
            break
        lines.append(line.strip())
    text = re.sub(r"^at \d+\(\d+\):\s*", "", " ".join(x for x in lines if x))
    return text.removeprefix("failed to compile JSON schema: ")


class GrammarVocabulary:
    """Our tokenizer as llguidance sees it, its compiled grammars, and the thread pool that fills masks.

    Building it walks the whole vocabulary (~0.4 s for 49k tokens): one per engine, made on first use.
    """

    def __init__(self, tokenizer):
        eog = sorted(tokenizer.eog_ids)
        if not eog:
            raise RequestError(
                "a structured output needs an end-of-generation token to end the output, and this model's "
                "vocabulary has none",
                "response_format",
            )
        self.size = tokenizer.vocab_size  # [V] mask width: ids with a token, padding excluded
        self.eog_ids = np.asarray(eog, np.int64)
        self.lltokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(_LLTokenizerSource(tokenizer, eog)), eos_token=eog
        )
        assert self.lltokenizer.vocab_size == self.size, (self.lltokenizer.vocab_size, self.size)
        self.executor = llguidance.LLExecutor()
        self._compiled: OrderedDict[GrammarSpec, llguidance.LLMatcher] = OrderedDict()

    def constraint(self, spec: GrammarSpec) -> "GrammarConstraint":
        """A fresh matcher for one sequence, copied from the spec's compiled grammar (compiled once)."""
        return GrammarConstraint(self, self._matcher(spec).deep_copy())

    def _matcher(self, spec: GrammarSpec) -> llguidance.LLMatcher:
        hit = self._compiled.get(spec)
        if hit is not None:
            self._compiled.move_to_end(spec)
            return hit
        try:
            matcher = llguidance.LLMatcher(self.lltokenizer, grammar_text(spec), log_level=0, limits=_LIMITS)
        except ValueError as e:  # a malformed source: check_grammar refuses it before it gets here
            raise RequestError(f"{spec.param}: the {spec.kind} grammar is invalid: {e}", spec.param) from e
        if matcher.is_error():
            raise RequestError(
                f"{spec.param}: the {spec.kind} grammar is invalid: {matcher.get_error()}", spec.param
            )
        self._compiled[spec] = matcher
        if len(self._compiled) > _CACHE_SIZE:
            self._compiled.popitem(last=False)
        return matcher

    def fill_masks(self, constraints: Sequence["GrammarConstraint"]) -> np.ndarray:
        """[len(constraints), V] bool: the tokens each may take next. The rows not filled since their
        constraint's last token are filled together, in one parallel call (llguidance's threads, without
        the GIL: the engine runs this while the forward runs, and the sampler finds the rows ready)."""
        todo = [c for c in constraints if c.next_mask is None]
        if todo:
            bits = llnp.allocate_token_bitmask(len(todo), self.size)  # [B, ceil(V / 32)] int32
            llnp.fill_next_token_bitmask_par(
                self.executor, [(c.matcher, i) for i, c in enumerate(todo)], bits
            )
            # a matcher that failed (see GrammarConstraint.error) allows only end-of-generation ids
            masks = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, : self.size]  # [B, V]
            for c, mask in zip(todo, masks.view(bool), strict=True):
                c.next_mask = mask
        return np.stack([c.next_mask for c in constraints])


class _LLTokenizerSource:
    """What llguidance.TokenizerWrapper reads: token bytes, special ids, EOS / BOS, and an encoder."""

    def __init__(self, tokenizer, eog: list[int]):
        text = tokenizer.text_token_bytes()  # [V] None for tokens that are never text
        self.tokens = [
            b if b is not None else _SPECIAL_MARK + tokenizer.token_bytes(i) for i, b in enumerate(text)
        ]
        self.special_token_ids = [i for i, b in enumerate(text) if b is None]
        self.eos_token_id = eog[0]
        self.bos_token_id = tokenizer.bos_id
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        # str only: TokenizerWrapper then hands us the valid UTF-8 prefix and tokenizes the rest greedily
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_bos=False)


class GrammarConstraint:
    """One sequence's place in its grammar."""

    def __init__(self, vocab: GrammarVocabulary, matcher: llguidance.LLMatcher):
        self.vocab = vocab
        self.matcher = matcher
        self.next_mask: np.ndarray | None = None  # [V] bool, filled for the matcher's present state

    @property
    def complete(self) -> bool:
        """Nothing more can follow: the output ends here."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    @property
    def error(self) -> str | None:
        """Why the matcher failed, on one line, once it has: a parser limit hit while filling a mask or
        consuming a token (too many Earley items in a row, lexer fuel), or a token it refuses. The
        sequence must then end with an error; the matcher never recovers."""
        return _reason(self.matcher.get_error()) if self.matcher.is_error() else None

    def allowed(self) -> np.ndarray:
        """[V] bool: the tokens that may come next."""
        return self.vocab.fill_masks([self])[0]

    def valid_prefix(self, token_ids: list[int]) -> int:
        """How many of token_ids, in order, the grammar allows from here (the matcher does not move)."""
        return self.matcher.validate_tokens(token_ids)

    def advance(self, token_id: int) -> None:
        """Consumes a sampled token (an end-of-generation token once stopped changes nothing); when the
        matcher cannot take it, `error` says why."""
        if self.matcher.is_stopped() and token_id in self.vocab.eog_ids:
            return
        self.next_mask = None
        self.matcher.consume_token(token_id)  # False: the matcher is now in its error state
