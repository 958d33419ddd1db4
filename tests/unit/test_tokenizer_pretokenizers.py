"""Pre-tokenizers: the single regexes tiktoken runs equal llama.cpp's lists of regexes applied in turn."""

import pytest
import regex
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.errors import TokenizerError
from inference.text.pretokenizers import DEFAULT, GPT2, PRE_TOKENIZERS, SMOLLM, pre_tokenizer_pattern

# llama.cpp's regex lists (src/llama-vocab.cpp); GPT2 stands for its custom GPT-2 splitter
SEQUENTIAL = {
    "smollm": [r"\p{N}", GPT2],
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
}
FOLDED = {"smollm": SMOLLM, "default": DEFAULT}


def split_in_turn(text: str, patterns: list[str]) -> list[str]:
    """llama.cpp's unicode_regex_split: each regex cuts every piece into its matches and the gaps."""
    pieces = [text] if text else []
    for pattern in patterns:
        pieces = [part for piece in pieces for part in _cut(piece, regex.compile(pattern))]
    return pieces


def _cut(piece: str, pattern: regex.Pattern) -> list[str]:
    parts, end = [], 0
    for m in pattern.finditer(piece):
        parts += [piece[end : m.start()], m.group()]
        end = m.end()
    return [p for p in [*parts, piece[end:]] if p]


def split_once(text: str, pattern: str) -> list[str]:
    return regex.findall(pattern, text)


# characters that exercise every class the regexes distinguish
ALPHABET = (
    "ab Zé語"  # letters
    "0189٣１"  # ASCII and other digits
    " \t\n\r\u3000"  # whitespace
    "'.,!?-_(){}@#%&*\"、¿"  # punctuation (\p{P})
    "$+<=>^~|`€©"  # symbols, some in llama.cpp's default punctuation class
    "stdmlrve"  # contraction letters
    "🚀\u0301"  # emoji, combining mark
)
texts = st.text(alphabet=ALPHABET, max_size=40)


@pytest.mark.parametrize("name", sorted(SEQUENTIAL))
@settings(max_examples=2000, deadline=None)
@given(text=texts)
def test_folded_regex_equals_sequential_split(name, text):
    assert split_once(text, FOLDED[name]) == split_in_turn(text, SEQUENTIAL[name])


@pytest.mark.parametrize(
    ("name", "text", "pieces"),
    [
        ("smollm", "a  123 b", ["a", "  ", "1", "2", "3", " b"]),
        ("smollm", "it's 2x", ["it", "'s", " ", "2", "x"]),
        ("default", "don't 12345!", ["don", "'", "t", " ", "123", "45", "!"]),
        ("default", "x  ++ y", ["x", "  ", "++", " y"]),  # whitespace run ends at punctuation
    ],
)
def test_sequential_examples(name, text, pieces):
    assert split_in_turn(text, SEQUENTIAL[name]) == pieces
    assert split_once(text, FOLDED[name]) == pieces


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
@settings(max_examples=50, deadline=None)
@given(text=texts)
def test_every_pattern_covers_all_text(name, text):
    # tiktoken drops unmatched text, so each pattern must match every character
    assert "".join(split_once(text, PRE_TOKENIZERS[name])) == text


def tiktoken_pieces(text: str, pattern: str) -> list[str]:
    """The pieces tiktoken's (Rust) regex cuts: with every substring of the text a token, each piece
    comes back whole as one token."""
    data = text.encode()
    substrings = {bytes([b]) for b in range(256)} | {
        data[i:j] for i in range(len(data)) for j in range(i + 1, len(data) + 1)
    }
    enc = tiktoken.Encoding(
        "probe", pat_str=pattern, mergeable_ranks={s: r for r, s in enumerate(substrings)}, special_tokens={}
    )
    return [enc.decode_single_token_bytes(r).decode() for r in enc.encode_ordinary(text)]


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2", "smollm", "default"])
@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=24))
def test_tiktoken_cuts_like_python_regex(name, text):
    assert tiktoken_pieces(text, PRE_TOKENIZERS[name]) == split_once(text, PRE_TOKENIZERS[name])


def test_unknown_pre_tokenizer_lists_known_ones():
    with pytest.raises(
        TokenizerError, match=r"'klingon' is not supported; known: .*llama-bpe.*qwen2.*smollm"
    ):
        pre_tokenizer_pattern("klingon")
