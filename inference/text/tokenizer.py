"""Tokenizer from GGUF vocabulary metadata: tiktoken BPE for byte-level and SentencePiece vocabularies."""

import bisect
import codecs
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import tiktoken

from ..errors import TokenizerError
from . import tokenizer_spm as spm
from .pretokenizers import ADD_BOS_BY_DEFAULT, GPT2_BYTE_OF, pre_tokenizer_pattern
from .special_texts import SpecialTexts

log = logging.getLogger(__name__)

MODELS = ("gpt2", "llama")  # tokenizer.ggml.model values: byte-level BPE, SentencePiece


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


SPECIAL_TYPES = (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.USER_DEFINED)  # matched in text as a whole
SKIPPED_TYPES = (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.UNUSED)  # dropped by skip_special

# texts of end-of-generation tokens (from llama.cpp's list); they count when the token is special
EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>",
    "<|return|>", "<|call|>", "<EOT>", "_<EOT>", "<eos>", "</s>", "<end_of_utterance>",
)  # fmt: skip
EOG_ID_KEYS = ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")  # tokenizer.ggml.{key}_token_id


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer-relevant part of GGUF metadata, checked."""

    model: str  # "gpt2" | "llama"
    pre: str
    tokens: list[str]
    types: np.ndarray  # [vocab] int32 TokenType
    scores: list[float] | None  # SentencePiece only
    merges: list[str] | None  # byte-level BPE only
    special_ids: dict[str, int | None]  # "bos", "eos", "eot", ... -> id
    add_bos: bool
    add_space_prefix: bool  # SentencePiece: "▁" before the text

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Vocabulary":
        model = metadata.get("tokenizer.ggml.model")
        if model not in MODELS:
            raise TokenizerError(f"tokenizer.ggml.model is {model!r}; supported: {', '.join(MODELS)}")
        tokens = _string_list(metadata, "tokenizer.ggml.tokens")
        pre = metadata.get("tokenizer.ggml.pre") or "default"
        if model == "gpt2" and "tokenizer.ggml.pre" not in metadata:
            log.warning("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer")
        ids = {key: _token_id(metadata, key, len(tokens)) for key in ("bos", *EOG_ID_KEYS)}
        add_bos = bool(
            metadata.get("tokenizer.ggml.add_bos_token", model == "llama" or pre in ADD_BOS_BY_DEFAULT)
        )
        if add_bos and ids["bos"] is None:
            raise TokenizerError(
                "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing"
            )
        return cls(
            model=model,
            pre=pre,
            tokens=tokens,
            types=_types(metadata, len(tokens)),
            scores=_scores(metadata, len(tokens)) if model == "llama" else None,
            merges=_string_list(metadata, "tokenizer.ggml.merges") if model == "gpt2" else None,
            special_ids=ids,
            add_bos=add_bos,
            add_space_prefix=model == "llama" and bool(metadata.get("tokenizer.ggml.add_space_prefix", True)),
        )

    def ids_of(self, *types: TokenType) -> list[int]:
        return np.flatnonzero(np.isin(self.types, types)).tolist()


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary; immutable, so safe to share between threads."""

    def __init__(self, vocab: Vocabulary):
        self.vocab_size = len(vocab.tokens)
        self.bos_id = vocab.special_ids["bos"]
        self.eos_id = vocab.special_ids["eos"]
        self.add_bos = vocab.add_bos
        self._special = {vocab.tokens[i]: i for i in vocab.ids_of(*SPECIAL_TYPES) if vocab.tokens[i]}
        self.specials = SpecialTexts(self._special)  # what encode(allow_special=True) makes ids of
        self._special_ids = frozenset(self._special.values())
        eog = {vocab.special_ids[key] for key in EOG_ID_KEYS} | {self._special.get(t) for t in EOG_TEXTS}
        self.eog_ids = frozenset(eog - {None})
        self._bytes = _token_bytes(vocab)  # [vocab] raw bytes of each token
        self._spm_prefix = vocab.add_space_prefix
        self._normal = (vocab.types == TokenType.NORMAL).tobytes()  # [vocab] 0/1
        self._skipped = frozenset(vocab.ids_of(*SKIPPED_TYPES))
        self._byte_ids = frozenset(vocab.ids_of(TokenType.BYTE))
        self._engine = _build_engine(vocab, self._bytes)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        """Builds the tokenizer from GGUF metadata; TokenizerError when the vocabulary is unusable."""
        return cls(Vocabulary.from_metadata(metadata))

    # -- encoding -------------------------------------------------------------------------------------

    def encode(
        self,
        text: str,
        *,
        allow_special: bool = False,
        add_bos: bool | None = None,
        plain_at: Sequence[int] = (),
    ) -> list[int]:
        """Token ids of `text`. Texts of special tokens (control, user-defined) become their ids only
        with allow_special (chat templates); otherwise they are ordinary text (user content). With
        allow_special, a special-token text that covers one of the character positions `plain_at` stays
        ordinary text too (in a chat prompt: one that came from a message, not from the template)."""
        ids = []
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos requested but the vocabulary has no BOS token")
            ids.append(self.bos_id)
        after_special = True  # SPM: "▁" goes before the text and before text that follows a special token
        for part in self._split_special(text, plain_at) if allow_special else (text,):
            if isinstance(part, int):
                ids.append(part)
                after_special = True
            elif part:
                ids += self._engine.encode(part, prefix=self._spm_prefix and after_special)
                after_special = False
        return ids

    def _split_special(self, text: str, plain_at: Sequence[int]) -> Iterator[str | int]:
        """Text and special-token ids in order; specials covering a position in plain_at stay text."""
        plain = sorted(plain_at)
        start = 0
        for a, b in self.specials.spans(text):
            i = bisect.bisect_left(plain, a)
            if i < len(plain) and plain[i] < b:
                continue  # it stays in the text around it
            yield text[start:a]
            yield self._special[text[a:b]]
            start = b
        yield text[start:]

    def special_token_id(self, text: str) -> int | None:
        """The id of the special (control, user-defined, unknown) token spelled `text`, if any."""
        return self._special.get(text)

    # -- decoding -------------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], *, skip_special: bool = False, at_start: bool = True) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD. skip_special drops control tokens.
        at_start=False: the ids continue earlier text (SPM keeps the first token's leading space)."""
        self._check_ids(ids)
        if not self._spm_prefix and not skip_special:
            return b"".join([self._bytes[i] for i in ids]).decode("utf-8", errors="replace")
        pieces = _PieceStream(self, skip_special, at_start)
        return b"".join([pieces.piece(i) for i in ids]).decode("utf-8", errors="replace")

    def detokenizer(self, *, skip_special: bool = False, at_start: bool = True) -> "IncrementalDetokenizer":
        """Streaming decode: the pieces joined (after flush) equal decode(all ids) with the same options."""
        return IncrementalDetokenizer(self, skip_special, at_start)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a special token's bytes are its text)."""
        self._check_ids((token_id,))
        return self._bytes[token_id]

    def text_token_bytes(self) -> list[bytes | None]:
        """[vocab] the bytes of every token that stands for text (normal and byte tokens); None for the
        others (control, user-defined, unknown, unused), which are never part of generated text."""
        text = [bool(n) or i in self._byte_ids for i, n in enumerate(self._normal)]
        return [data if t else None for t, data in zip(text, self._bytes, strict=True)]

    def token_text(self, token_id: int) -> str:
        """Display text of one token; one that is not complete UTF-8 shows as "bytes:\\xNN..." (OpenAI)."""
        data = self.token_bytes(token_id)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def _check_ids(self, ids: Sequence[int]) -> None:
        if len(ids) and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(f"token id {bad} is out of range [0, {self.vocab_size})")


class _PieceStream:
    """Token ids -> bytes in order; drops the SPM "▁" prefix exactly where encode added one: from the
    first normal token of the text and of every run of text after a special token."""

    def __init__(self, tok: Tokenizer, skip_special: bool, at_start: bool):
        self._tok = tok
        self._skip = tok._skipped if skip_special else frozenset()
        self._strip = tok._spm_prefix and at_start

    def piece(self, token_id: int) -> bytes:
        tok = self._tok
        data = b"" if token_id in self._skip else tok._bytes[token_id]
        if self._strip and tok._normal[token_id] and data.startswith(b" "):
            data = data[1:]
        self._strip = tok._spm_prefix and token_id in tok._special_ids
        return data


class IncrementalDetokenizer:
    """Token ids in, text deltas out; holds back only the bytes of an incomplete UTF-8 character."""

    def __init__(self, tok: Tokenizer, skip_special: bool, at_start: bool):
        self._tok = tok
        self._pieces = _PieceStream(tok, skip_special, at_start)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text that is now final (possibly "")."""
        self._tok._check_ids((token_id,))
        return self._utf8.decode(self._pieces.piece(token_id))

    def flush(self) -> str:
        """Ends the stream: held-back bytes of an incomplete character become U+FFFD."""
        return self._utf8.decode(b"", final=True)


# -- tiktoken -----------------------------------------------------------------------------------------

Expand = dict[int, tuple[int, ...]]  # tiktoken rank -> the token ids it stands for, where not exactly one


class _Engine:
    """tiktoken over ordinary text. tiktoken outputs ranks; rank_to_id maps them to token ids, -1 marking
    a rank that stands for several ids or none (`expand`)."""

    def __init__(
        self, pattern: str, ranks: dict[bytes, int], rank_to_id: list[int], expand: Expand, spm: bool
    ):
        self._enc = tiktoken.Encoding("gguf", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        self._rank_to_id = rank_to_id
        self._expand = expand
        self._spm = spm

    def encode(self, text: str, *, prefix: bool) -> list[int]:
        if self._spm:
            text = spm.escape(text, prefix=prefix)
        ranks = self._enc.encode_ordinary(text)
        lut = self._rank_to_id
        ids = [lut[r] for r in ranks]
        if self._expand and -1 in ids:
            ids = [i for r in ranks for i in self._expand.get(r, (lut[r],))]
        return ids


def _build_engine(vocab: Vocabulary, token_bytes: list[bytes]) -> _Engine:
    if vocab.model == "llama":
        r = spm.build_spm_ranks(vocab.tokens, vocab.types.tolist(), vocab.scores)
        return _Engine(r.pattern, r.mergeable_ranks, r.rank_to_id, r.expand, spm=True)
    ranks, rank_to_id, expand = _bpe_ranks(vocab, token_bytes)
    return _Engine(pre_tokenizer_pattern(vocab.pre), ranks, rank_to_id, expand, spm=False)


def _bpe_ranks(vocab: Vocabulary, token_bytes: list[bytes]) -> tuple[dict[bytes, int], list[int], Expand]:
    """tiktoken ranks of a byte-level BPE vocabulary: single bytes, then tokens by their first merge.

    tiktoken merges the pair whose concatenation ranks lowest, llama.cpp the pair listed first in
    tokenizer.ggml.merges; ranking each token by the first merge that produces it gives the same order.
    A byte the vocabulary lacks ranks as "no id": llama.cpp drops it from the output too.
    """
    normal = vocab.ids_of(TokenType.NORMAL)
    text_ids = {vocab.tokens[i]: i for i in normal}  # the last of equal texts wins, as in llama.cpp
    singles = {token_bytes[i]: i for i in text_ids.values() if len(token_bytes[i]) == 1}
    merged = [text_ids[t] for t in _merge_results(vocab.merges) if t in text_ids]
    order = [*singles.values(), *(i for i in merged if len(token_bytes[i]) > 1)]
    ranks = {token_bytes[i]: r for r, i in enumerate(order)}
    missing = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
    ranks.update((b, len(order) + n) for n, b in enumerate(missing))
    expand = {len(order) + n: () for n in range(len(missing))}
    return ranks, order + [-1] * len(missing), expand


def _merge_results(merges: list[str]) -> dict[str, None]:
    """The distinct concatenations of tokenizer.ggml.merges ("left right"), in order of first appearance."""
    joined = "\n".join(merges)  # GPT-2 tokens hold no raw space or newline: those are byte characters
    if joined.count(" ") != len(merges) or joined.count("\n") != len(merges) - 1:
        n = next(n for n, m in enumerate(merges) if m.count(" ") != 1 or "\n" in m)
        raise TokenizerError(
            f"tokenizer.ggml.merges[{n}] {merges[n]!r} is not two tokens separated by a space"
        )
    return dict.fromkeys(joined.replace(" ", "").split("\n"))


# -- vocabulary tables --------------------------------------------------------------------------------


def _token_bytes(vocab: Vocabulary) -> list[bytes]:
    """Bytes of every token: normal ones decoded (GPT-2 byte characters or "▁" -> " "), byte-fallback
    tokens <0xNN> as their byte, all others (control, user-defined, ...) as their text."""
    out = [text.encode() for text in vocab.tokens]
    normal = vocab.ids_of(TokenType.NORMAL)
    texts = [vocab.tokens[i] for i in normal]
    if vocab.model == "gpt2":
        decoded = _gpt2_bytes(texts, normal)
    else:
        decoded = [text.replace(spm.SPACE, " ").encode() for text in texts]
    for i, data in zip(normal, decoded, strict=True):
        out[i] = data
    for i in vocab.ids_of(TokenType.BYTE):
        out[i] = bytes([spm.parse_byte_token(vocab.tokens[i], i)])
    return out


def _gpt2_bytes(texts: list[str], ids: list[int]) -> list[bytes]:
    """GPT-2 byte characters -> bytes, all tokens in one NumPy lookup (one byte per character)."""
    ends = np.cumsum([len(t) for t in texts])
    codepoints = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    data = GPT2_BYTE_OF[np.minimum(codepoints, len(GPT2_BYTE_OF) - 1)]
    if (data > 255).any():
        pos = int(np.argmax(data > 255))
        n = int(np.searchsorted(ends, pos, side="right"))
        raise TokenizerError(
            f"token {ids[n]} {texts[n]!r}: {chr(codepoints[pos])!r} is not a GPT-2 byte character"
        )
    blob = data.astype(np.uint8).tobytes()
    ends_list = ends.tolist()
    return [blob[a:b] for a, b in itertools.pairwise([0, *ends_list])]


# -- metadata access ----------------------------------------------------------------------------------


def _string_list(metadata: Mapping[str, Any], key: str) -> list[str]:
    value = metadata.get(key)
    if not isinstance(value, list | tuple) or not value:
        raise TokenizerError(f"GGUF metadata {key} is missing or not a non-empty array")
    if set(map(type, value)) != {str}:
        raise TokenizerError(f"GGUF metadata {key} must be an array of strings")
    return list(value)


def _types(metadata: Mapping[str, Any], n_tokens: int) -> np.ndarray:
    value = metadata.get("tokenizer.ggml.token_type")
    if value is None:
        return np.full(n_tokens, TokenType.NORMAL, np.int32)
    if len(value) != n_tokens:
        raise TokenizerError(
            f"GGUF metadata tokenizer.ggml.token_type has {len(value)} entries for {n_tokens} tokens"
        )
    return np.asarray(value, np.int32)


def _scores(metadata: Mapping[str, Any], n_tokens: int) -> list[float]:
    value = metadata.get("tokenizer.ggml.scores")
    if value is None or len(value) != n_tokens:
        got = "no" if value is None else len(value)
        raise TokenizerError(f"GGUF metadata tokenizer.ggml.scores has {got} entries for {n_tokens} tokens")
    return [float(v) for v in value]


def _token_id(metadata: Mapping[str, Any], name: str, n_tokens: int) -> int | None:
    key = f"tokenizer.ggml.{name}_token_id"
    value = metadata.get(key)
    if value is None:
        return None
    if not 0 <= int(value) < n_tokens:
        raise TokenizerError(f"GGUF metadata {key} = {value} is out of range [0, {n_tokens})")
    return int(value)
