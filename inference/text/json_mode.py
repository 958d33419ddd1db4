"""JSON mode (`response_format: {"type": "json_object"}`): at every step, only the tokens that can continue
one JSON object (RFC 8259) are sampled, and end-of-generation only once that object is closed.

A byte-level pushdown recognizer does the checking. `JsonVocabulary` (one per tokenizer, shared by all
requests) caches, for each recognizer mode, the tokens valid there; `JsonConstraint` (one per sequence)
holds the recognizer state and turns it into a boolean mask over the vocabulary.

A token's validity from a state depends on the whole stack only when it closes containers (`}` or `]`
outside a string): those few tokens are checked against the real state at each step; all others are
checked once per mode (mode, its detail, the innermost container) and the result is reused.

Whitespace between tokens of JSON is allowed, as in the RFC, but at most MAX_GAP bytes in one gap, so a
model cannot fill max_tokens with newlines (llama.cpp's json grammar bounds it the same way). After the
top-level object closes, nothing but an end-of-generation token may follow.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

MAX_GAP = 32  # whitespace bytes between two JSON tokens
_DYNAMIC_CACHE = 4096  # full states whose closing-token results are kept

_WS = frozenset(b" \t\n\r")
_ESCAPES = frozenset(b'"\\/bfnrt')
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
_CLOSERS = (ord("}"), ord("]"))


# Modes. Structural ones take whitespace; STRING, ESCAPE and HEX are inside a string ("detail": key or
# value); the number modes follow RFC 8259's grammar, and a number ends at the first byte it cannot take.
START, VALUE, ARRAY_FIRST, OBJECT_FIRST, KEY, COLON, AFTER, DONE = range(8)
STRING, ESCAPE, HEX = range(8, 11)
MINUS, ZERO, INT, DOT, FRAC, EXP_MARK, EXP_SIGN, EXP = range(11, 19)
LITERAL = 19
_NUMBER_ENDS = frozenset((ZERO, INT, FRAC, EXP))  # modes where a number is complete
_STRUCTURAL = frozenset((START, VALUE, ARRAY_FIRST, OBJECT_FIRST, KEY, COLON, AFTER))


class State(NamedTuple):
    """Recognizer state: mode, its detail, open containers ("{" / "[" per level), whitespace in this gap.

    detail: STRING / ESCAPE: "key" | "value"; HEX: ("key" | "value", hex digits seen);
    LITERAL: the bytes of true / false / null still to come; otherwise None.
    """

    mode: int
    detail: object
    stack: str
    gap: int


INITIAL = State(START, None, "", 0)


def step(s: State, b: int) -> State | None:
    """The state after byte b, or None when b cannot continue a JSON object from s."""
    mode = s.mode
    if mode == STRING:
        if b == 0x22:  # '"'
            return State(COLON if s.detail == "key" else AFTER, None, s.stack, 0)
        if b == 0x5C:  # '\'
            return State(ESCAPE, s.detail, s.stack, 0)
        return s if b >= 0x20 else None  # control characters must be escaped
    if mode == ESCAPE:
        if b == 0x75:  # 'u'
            return State(HEX, (s.detail, 0), s.stack, 0)
        return State(STRING, s.detail, s.stack, 0) if b in _ESCAPES else None
    if mode == HEX:
        kind, seen = s.detail
        if b not in _HEX:
            return None
        return State(STRING, kind, s.stack, 0) if seen == 3 else State(HEX, (kind, seen + 1), s.stack, 0)
    if mode == LITERAL:
        rest = s.detail
        if b != rest[0]:
            return None
        return State(AFTER, None, s.stack, 0) if len(rest) == 1 else State(LITERAL, rest[1:], s.stack, 0)
    if mode >= MINUS:
        nxt = _number_step(mode, b)
        if nxt is not None:
            return State(nxt, None, s.stack, 0)
        if mode not in _NUMBER_ENDS:
            return None
        return step(State(AFTER, None, s.stack, 0), b)  # the number is complete; b comes after it
    return _structural_step(s, b)


def _number_step(mode: int, b: int) -> int | None:
    """The next number mode for byte b, or None when b does not continue the number."""
    digit, exp = b in _DIGITS, b in (0x65, 0x45)  # 'e', 'E'
    if mode == MINUS:
        return ZERO if b == 0x30 else INT if digit else None
    if mode == ZERO:  # no digit may follow a leading zero
        return DOT if b == 0x2E else EXP_MARK if exp else None
    if mode == INT:
        return INT if digit else DOT if b == 0x2E else EXP_MARK if exp else None
    if mode == DOT:
        return FRAC if digit else None
    if mode == FRAC:
        return FRAC if digit else EXP_MARK if exp else None
    if mode == EXP_MARK and b in (0x2B, 0x2D):  # '+', '-'
        return EXP_SIGN
    return EXP if digit else None  # EXP_MARK, EXP_SIGN, EXP


def _structural_step(s: State, b: int) -> State | None:
    mode, stack = s.mode, s.stack
    if b in _WS:
        return State(mode, None, stack, s.gap + 1) if mode != DONE and s.gap < MAX_GAP else None
    if mode == START:
        return State(OBJECT_FIRST, None, "{", 0) if b == 0x7B else None
    if mode == COLON:
        return State(VALUE, None, stack, 0) if b == 0x3A else None
    if mode in (OBJECT_FIRST, KEY):
        if b == 0x22:
            return State(STRING, "key", stack, 0)
        return _close(stack) if b == 0x7D and mode == OBJECT_FIRST else None
    if mode == AFTER:
        top = stack[-1]
        if b == 0x2C:  # ','
            return State(KEY if top == "{" else VALUE, None, stack, 0)
        if (b == 0x7D and top == "{") or (b == 0x5D and top == "["):
            return _close(stack)
        return None
    if mode == ARRAY_FIRST and b == 0x5D:
        return _close(stack)
    if mode in (VALUE, ARRAY_FIRST):
        return _value_start(stack, b)
    return None  # DONE


def _close(stack: str) -> State:
    rest = stack[:-1]
    return State(AFTER if rest else DONE, None, rest, 0)


def _value_start(stack: str, b: int) -> State | None:
    if b == 0x7B:
        return State(OBJECT_FIRST, None, stack + "{", 0)
    if b == 0x5B:
        return State(ARRAY_FIRST, None, stack + "[", 0)
    if b == 0x22:
        return State(STRING, "value", stack, 0)
    if b in _LITERALS:
        return State(LITERAL, _LITERALS[b], stack, 0)
    if b == 0x2D:
        return State(MINUS, None, stack, 0)
    if b in _DIGITS:
        return State(ZERO if b == 0x30 else INT, None, stack, 0)
    return None


def run(s: State | None, data: bytes) -> State | None:
    """The state after all of data, or None as soon as a byte is rejected."""
    for b in data:
        if s is None:
            return None
        s = step(s, b)
    return s


class JsonVocabulary:
    """The tokens of one vocabulary as the recognizer sees them, and the per-mode results it caches.

    token_bytes: [V] the bytes of each token; None for tokens that are never text (control, unused, ...).
    eog_ids: end-of-generation ids, allowed once the object is closed.
    """

    def __init__(self, token_bytes: Sequence[bytes | None], eog_ids: Sequence[int]):
        self.size = len(token_bytes)
        self.data = [b or b"" for b in token_bytes]
        text = np.array([bool(b) for b in token_bytes])  # [V] a text token with at least one byte
        self.eog = frozenset(eog_ids)
        self.eog_ids = np.asarray(sorted(self.eog), np.int64)
        first = np.array([d[0] if d else 0 for d in self.data], np.int64)  # [V]
        self._first = np.where(text, first, 256)  # 256: a byte no mode takes
        self._lead_ws = np.array([len(d) - len(d.lstrip(b" \t\n\r")) for d in self.data], np.int64)
        self._closes = np.array([any(c in d for c in _CLOSERS) for d in self.data])  # [V]
        # [V] stays inside a string: no '"', no '\', no control byte
        self._plain = np.array([_plain(d) for d in self.data]) & text
        self._by_mode: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._dynamic: dict[State, np.ndarray] = {}

    def allowed(self, s: State) -> np.ndarray:
        """[V] bool: the tokens that can follow state s."""
        fixed, closing = self._mode_tokens(s)
        mask = fixed.copy()
        mask[self._closing_valid(s, closing)] = True
        if s.gap and s.mode in _STRUCTURAL:  # whitespace so far in this gap counts against MAX_GAP
            mask &= self._lead_ws <= MAX_GAP - s.gap
        if s.mode == DONE:
            mask[self.eog_ids] = True
        return mask

    def _mode_tokens(self, s: State) -> tuple[np.ndarray, np.ndarray]:
        """([V] bool, valid from s among tokens that close nothing; ids of closing candidates to check)."""
        key = (s.mode, s.detail, s.stack[-1:])
        hit = self._by_mode.get(key)
        if hit is not None:
            return hit
        probe = State(s.mode, s.detail, s.stack[-1:], 0)  # such tokens never look below the innermost level
        takes = np.array([step(probe, b) is not None for b in range(256)] + [False])  # [257]
        candidates = takes[self._first]  # [V]
        fixed = np.zeros(self.size, bool)
        if s.mode == STRING:
            fixed |= candidates & self._plain  # cannot leave the string
            candidates &= ~self._plain
        closing = candidates & self._closes
        for t in np.flatnonzero(candidates & ~self._closes):
            fixed[t] = run(probe, self.data[t]) is not None
        hit = self._by_mode[key] = (fixed, np.flatnonzero(closing))
        return hit

    def _closing_valid(self, s: State, candidates: np.ndarray) -> np.ndarray:
        """Ids among candidates (tokens with '}' or ']') that are valid from the full state s."""
        hit = self._dynamic.get(s)
        if hit is None:
            hit = np.array([t for t in candidates.tolist() if run(s, self.data[t]) is not None], np.int64)
            if len(self._dynamic) >= _DYNAMIC_CACHE:
                self._dynamic.clear()
            self._dynamic[s] = hit
        return hit


def _plain(data: bytes) -> bool:
    return not any(b == 0x22 or b == 0x5C or b < 0x20 for b in data)


class JsonConstraint:
    """One sequence's place in the JSON grammar."""

    def __init__(self, vocab: JsonVocabulary):
        self.vocab = vocab
        self.state = INITIAL

    @property
    def complete(self) -> bool:
        return self.state.mode == DONE

    def allowed(self) -> np.ndarray:
        """[V] bool: the tokens that may come next."""
        return self.vocab.allowed(self.state)

    def advance(self, token_id: int) -> None:
        """Moves past a sampled token (an end-of-generation token once complete changes nothing)."""
        if self.complete and token_id in self.vocab.eog:
            return
        nxt = run(self.state, self.vocab.data[token_id])
        if nxt is None:
            raise ValueError(f"token {token_id} {self.vocab.data[token_id]!r} does not continue the JSON")
        self.state = nxt
