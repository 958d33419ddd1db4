"""Pre-tokenizer regexes of byte-level BPE vocabularies (`tokenizer.ggml.pre`), as llama.cpp splits text."""

import numpy as np

from ..errors import TokenizerError

# llama.cpp (src/llama-vocab.cpp) applies a list of regexes one after another: each regex splits every
# piece left by the previous one into its matches and the gaps between them. tiktoken applies exactly
# one regex and drops unmatched text, so each list is folded into one equivalent regex that matches
# every character. tests/unit/test_tokenizer_pretokenizers.py checks the folding against a sequential
# splitter. `\s+(?!\S)|\s+` stands for llama.cpp's own GPT-2 splitter, which ends in a bare `\s+`.

_CONTRACTIONS_CI = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

LLAMA3 = (
    _CONTRACTIONS_CI
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2 = (
    _CONTRACTIONS_CI + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# llama.cpp: ["\p{N}", GPT2]. Every digit is its own piece, so GPT-2's ` ?\p{N}+` never fires, and a
# whitespace run that ends at a digit ends its piece: `(?!\S)` becomes "not followed by a non-digit".
SMOLLM = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"

# llama.cpp: ["[\p{P}$+<=>^~|]+", GPT2, "\p{N}+", "[0-9][0-9][0-9]"]. Runs of that punctuation class
# (PUNCT) are pieces of their own, so GPT-2 never sees an apostrophe (no contractions), its symbol class
# excludes PUNCT and a whitespace run also ends before PUNCT. "\p{N}+" then cuts the space off " 123",
# and "[0-9]{3}" cuts ASCII digit runs into threes from the left, other digits staying in between.
_PUNCT = r"\p{P}$+<=>^~|"
DEFAULT = (
    rf"[{_PUNCT}]+| ?\p{{L}}+|[0-9]{{3}}|(?:(?![0-9]{{3}})\p{{N}})+| ?[^\s\p{{L}}\p{{N}}{_PUNCT}]+"
    rf"|\s+(?![^\s{_PUNCT}])|\s+"
)

# names as llama.cpp spells them in `tokenizer.ggml.pre`, grouped by the regex list they select there
_PATTERNS = {
    GPT2: ("gpt-2", "phi-2", "mpt", "olmo", "jina-es", "jina-de", "roberta-bpe"),
    LLAMA3: ("llama-bpe", "llama3", "llama-v3", "falcon3", "dbrx", "smaug-bpe"),
    QWEN2: ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"),
    SMOLLM: ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
    DEFAULT: ("default",),
}
PRE_TOKENIZERS: dict[str, str] = {name: pattern for pattern, names in _PATTERNS.items() for name in names}

# llama.cpp turns BOS on for these when the GGUF has no `tokenizer.ggml.add_bos_token`
ADD_BOS_BY_DEFAULT = frozenset(_PATTERNS[LLAMA3])


def pre_tokenizer_pattern(name: str) -> str:
    """The single regex tiktoken uses for the `tokenizer.ggml.pre` value `name`."""
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise TokenizerError(f"tokenizer.ggml.pre {name!r} is not supported; known: {known}") from None


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> the byte it encodes (the inverse of bytes_to_unicode)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    decoder = {chr(b): b for b in printable}
    decoder.update({chr(256 + n): b for n, b in enumerate(others)})
    return decoder


def _gpt2_byte_of() -> np.ndarray:
    table = np.full(0x145, 0xFFFF, np.uint16)  # GPT-2 characters end at U+0143; the last entry means "none"
    for char, byte in gpt2_byte_decoder().items():
        table[ord(char)] = byte
    return table


# code point -> the byte GPT-2 writes as that character, 0xFFFF for characters it never writes
# (index with min(code point, len - 1))
GPT2_BYTE_OF = _gpt2_byte_of()
