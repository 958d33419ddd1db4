"""SentencePiece-style vocabularies (`tokenizer.ggml.model == "llama"`) as tiktoken merge ranks."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import TokenizerError

# How tiktoken reproduces llama.cpp's SentencePiece merging (llm_tokenizer_spm_session):
#
# llama.cpp starts from the UTF-8 characters of "▁" + text (spaces escaped as "▁"), then repeatedly
# merges the adjacent pair whose concatenation is the vocabulary token with the highest score (ties:
# leftmost pair); a character that is no token becomes its byte-fallback tokens <0xNN>.
# tiktoken starts from bytes and repeatedly merges the adjacent pair whose concatenation has the
# lowest rank (ties: leftmost). So the ranks are laid out as
#   1. every proper prefix (2+ bytes) of a multi-byte character that occurs in the vocabulary, then the
#      character itself: these merge before anything else, so every known character is whole before
#      the first token merge, as in llama.cpp. A character that occurs in no token never becomes a
#      symbol a token merge could use (tokens hold whole characters); its bytes, or a prefix it shares
#      with a known character, expand to byte-fallback ids;
#   2. every multi-character token in order of descending score: the same merges in the same order.
#      Equal scores occur only for runs of "▁" (-1e9 in Llama/Mistral/Phi-3 vocabularies); putting the
#      longer run first grows a run from the left, which is what llama.cpp's leftmost tie rule does;
#   3. the 256 single bytes (never the result of a merge, so their ranks do not matter).
# tiktoken's ranks are its output, so `rank_to_id` maps them back to token ids; -1 marks a rank that
# stands for several byte-fallback ids (`expand`).
#
# tiktoken returns a pre-split piece that is itself a token without merging: the same result as long as
# every token is what merging its own characters gives (true of the test vocabularies; see the tests).
# tiktoken's merge loop is quadratic in the piece length, so the text is split where no token can span
# the cut: before every "▁" that follows another character, unless a token contains such a pair; else
# at line breaks, unless a token contains one; else not at all.

SPACE = "▁"
# (pattern, what a token must not contain for the pattern's cuts to be safe)
SPLIT_PATTERNS = ((r"▁*[^▁]+|▁+", re.compile("[^▁]▁")), (r"[^\n]+|\n+", re.compile("\n")), (r"(?s:.+)", None))

NORMAL, BYTE = 1, 6


@dataclass(frozen=True)
class SpmRanks:
    mergeable_ranks: dict[bytes, int]
    rank_to_id: list[int]  # -1: see expand
    expand: dict[int, tuple[int, ...]]  # rank -> byte-fallback ids of an unknown character or prefix
    pattern: str


def build_spm_ranks(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]) -> SpmRanks:
    """Ranks that make tiktoken merge like llama.cpp's SentencePiece tokenizer (see the comment above)."""
    byte_ids = _byte_fallback_ids(tokens, types)
    text_ids = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty == NORMAL and t}
    builder = _RankBuilder()
    for char in sorted({c for t in text_ids for c in t if len(c.encode()) > 1}):
        _add_character(builder, char, text_ids, byte_ids)
    multi = [i for t, i in text_ids.items() if len(t) > 1]
    for i in sorted(multi, key=lambda i: (-scores[i], -len(tokens[i].encode()), i)):
        builder.add(tokens[i].encode(), (i,))
    for b in range(256):
        char_id = text_ids.get(chr(b)) if b < 0x80 else None
        builder.add(bytes([b]), (char_id if char_id is not None else byte_ids[b],))
    pattern = _split_pattern([tokens[i] for i in multi])
    return SpmRanks(builder.ranks, builder.rank_to_id, builder.expand, pattern)


def _split_pattern(multi_char_tokens: list[str]) -> str:
    for pattern, unsafe in SPLIT_PATTERNS:
        if unsafe is None or not any(unsafe.search(t) for t in multi_char_tokens):
            return pattern
    raise AssertionError("the last pattern is always safe")


def escape(text: str, *, prefix: bool) -> str:
    """llama.cpp's SPM input: spaces as "▁", plus the leading "▁" of add_space_prefix."""
    return (SPACE if prefix else "") + text.replace(" ", SPACE)


class _RankBuilder:
    def __init__(self):
        self.ranks: dict[bytes, int] = {}
        self.rank_to_id: list[int] = []
        self.expand: dict[int, tuple[int, ...]] = {}

    def add(self, key: bytes, ids: tuple[int, ...]) -> None:
        if key in self.ranks:
            return
        rank = len(self.rank_to_id)
        self.ranks[key] = rank
        self.rank_to_id.append(ids[0] if len(ids) == 1 else -1)
        if len(ids) > 1:
            self.expand[rank] = ids


def _add_character(builder: _RankBuilder, char: str, text_ids: dict[str, int], byte_ids: list[int]) -> None:
    data = char.encode()
    for n in range(2, len(data)):
        builder.add(data[:n], tuple(byte_ids[b] for b in data[:n]))
    char_id = text_ids.get(char)
    builder.add(data, (char_id,) if char_id is not None else tuple(byte_ids[b] for b in data))


def _byte_fallback_ids(tokens: Sequence[str], types: Sequence[int]) -> list[int]:
    ids: dict[int, int] = {}
    for i, (text, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty == BYTE:
            ids.setdefault(parse_byte_token(text, i), i)
    missing = [f"<0x{b:02X}>" for b in range(256) if b not in ids]
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise TokenizerError(
            f"SentencePiece vocabulary lacks {len(missing)} byte-fallback tokens ({shown}); "
            "vocabularies without byte fallback are not supported"
        )
    return [ids[b] for b in range(256)]


def parse_byte_token(text: str, token_id: int) -> int:
    """The byte of a byte-fallback token such as "<0x0A>"."""
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return int(text[3:5], 16)
        except ValueError:
            pass
    raise TokenizerError(f"token {token_id} has type BYTE but text {text!r} is not of the form <0xNN>")
