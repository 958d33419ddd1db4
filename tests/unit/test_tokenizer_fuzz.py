"""Tokenizer on random text: round trips, streaming decode, and agreement with independent implementations."""

import itertools

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokenizer import load_tokenizer, read_metadata, vocab_path
from test_tokenizer_pretokenizers import SEQUENTIAL, split_in_turn

from inference.text.pretokenizers import GPT2_BYTE_OF, QWEN2, gpt2_byte_decoder
from inference.text.tokenizer import Tokenizer
from inference.text.tokenizer_spm import SPLIT_PATTERNS, build_spm_ranks

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# random unicode plus the shapes that break tokenizers: emoji sequences, CJK, combining marks, CRLF,
# long whitespace runs, contractions, digit runs, special-token look-alikes
SHAPES = st.sampled_from(
    ["\r\n", "\n\n", "\t", "🦙", "👍🏽", "❤️‍🔥", "🇫🇷", "e\u0301", "\u0327\u0308", "你好", "日本語", "한국어",
     "नमस्ते", "ё", "'s", "'LL", "3.14", "1234567", "<|im_start|>", "<s>", "\u00a0", "\u3000", "\ufeff"]
)  # fmt: skip
RUNS = st.tuples(st.sampled_from(" \t\n"), st.integers(2, 40)).map(lambda cn: cn[0] * cn[1])
WORDS = st.text(alphabet="abcXYZ .,!?", max_size=8)
CHARS = st.characters(exclude_categories=["Cs"])  # any code point but lone surrogates


def texts(exclude: str = "") -> st.SearchStrategy[str]:
    parts = st.lists(st.one_of(CHARS, SHAPES, RUNS, WORDS), max_size=30).map("".join)
    return parts.map(lambda s: "".join(c for c in s if c not in exclude))


# SentencePiece spells a space "▁" (U+2581), so a literal "▁" in the text decodes as a space: the one
# character the SPM vocabularies cannot round-trip. Byte-level BPE represents every string.
SPM_TEXTS = texts(exclude="▁")


@pytest.fixture(scope="module")
def qwen(llama_cpp_models):
    return load_tokenizer(vocab_path(llama_cpp_models, "qwen2"))


@pytest.fixture(scope="module")
def spm(llama_cpp_models):
    return load_tokenizer(vocab_path(llama_cpp_models, "llama-spm"))


def stream(tok, ids, **options) -> list[str]:
    detok = tok.detokenizer(**options)
    return [detok.push(i) for i in ids] + [detok.flush()]


# -- round trips and streaming ------------------------------------------------------------------------


@FUZZ
@given(text=texts())
def test_qwen_round_trip_and_stream(qwen, text):
    check_round_trip_and_stream(qwen, text)


@FUZZ
@given(text=SPM_TEXTS)
def test_spm_round_trip_and_stream(spm, text):
    check_round_trip_and_stream(spm, text)


def check_round_trip_and_stream(tok, text):
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == text
    pieces = stream(tok, ids)
    assert "".join(pieces) == text
    # nothing is held back but an incomplete character: after k tokens the text out is the decoded
    # prefix minus its incomplete tail (which decode shows as U+FFFD)
    if "\ufffd" not in text:
        for k in range(len(ids)):
            assert "".join(pieces[: k + 1]) == tok.decode(ids[: k + 1]).rstrip("\ufffd")


def random_ids(vocab_size: int, hot: range) -> st.SearchStrategy[list[int]]:
    """Ids biased towards `hot` (single-byte tokens) so that broken UTF-8 sequences are common."""
    return st.lists(
        st.one_of(st.integers(hot.start, hot.stop - 1), st.integers(0, vocab_size - 1)), max_size=40
    )


@FUZZ
@given(data=st.data())
def test_streaming_random_ids_matches_decode(qwen, spm, data):
    for tok, hot in ((qwen, range(0, 256)), (spm, range(0, 300))):
        ids = data.draw(random_ids(tok.vocab_size, hot))
        for options in ({}, {"skip_special": True}, {"at_start": False}):
            assert "".join(stream(tok, ids, **options)) == tok.decode(ids, **options)


# -- pure-Python llama.cpp algorithms as oracles --------------------------------------------------------


class LlamaCppBpe:
    """llama.cpp's byte-level BPE: pre-split, bytes as GPT-2 characters, merge the pair listed first."""

    def __init__(self, metadata, split):
        self.split = split
        self.ids = {t: i for i, t in enumerate(metadata["tokenizer.ggml.tokens"])}
        self.rank = {
            tuple(m.split(" ", 1)): n for n, m in reversed(list(enumerate(metadata["tokenizer.ggml.merges"])))
        }
        self.char = {b: c for c, b in gpt2_byte_decoder().items()}

    def encode(self, text: str) -> list[int]:
        return [i for piece in self.split(text) for i in self.encode_piece(piece.encode())]

    def encode_piece(self, piece: bytes) -> list[int]:
        symbols = [self.char[b] for b in piece]
        while len(symbols) > 1:
            ranks = [self.rank.get(pair, float("inf")) for pair in itertools.pairwise(symbols)]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == float("inf"):
                break
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        return [self.ids[s] for s in symbols if s in self.ids]  # a byte the vocabulary lacks is dropped


class LlamaCppSpm:
    """llama.cpp's SentencePiece: "▁" + text, merge the pair forming the best-scored token, byte fallback.
    Only normal tokens merge: llama.cpp would also merge text into "<s>" and the like, which user text
    must never produce."""

    def __init__(self, metadata):
        tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
        typed = list(enumerate(zip(tokens, types, strict=True)))
        self.ids = {t: i for i, (t, ty) in typed if ty == 1}
        self.byte = {int(t[3:5], 16): i for i, (t, ty) in typed if ty == 6}
        self.score = metadata["tokenizer.ggml.scores"]

    def encode(self, text: str) -> list[int]:
        symbols = self.merge(list("▁" + text.replace(" ", "▁"))) if text else []
        return [
            i
            for s in symbols
            for i in ([self.ids[s]] if s in self.ids else [self.byte[b] for b in s.encode()])
        ]

    def merge(self, symbols: list[str]) -> list[str]:
        while len(symbols) > 1:
            candidates = [
                (self.score[i], -n)
                for n, p in enumerate(itertools.pairwise(symbols))
                if (i := self.ids.get(p[0] + p[1])) is not None
            ]
            if not candidates:
                break
            n = -max(candidates)[1]
            symbols[n : n + 2] = [symbols[n] + symbols[n + 1]]
        return symbols


@pytest.fixture(scope="module")
def qwen_oracle(llama_cpp_models):
    return LlamaCppBpe(read_metadata(vocab_path(llama_cpp_models, "qwen2")), regex.compile(QWEN2).findall)


@pytest.fixture(scope="module")
def spm_oracles(llama_cpp_models):
    return [
        (
            load_tokenizer(vocab_path(llama_cpp_models, name)),
            LlamaCppSpm(read_metadata(vocab_path(llama_cpp_models, name))),
        )
        for name in ("llama-spm", "phi-3")
    ]


@FUZZ
@given(text=texts())
def test_qwen_matches_llama_cpp_bpe_algorithm(qwen, qwen_oracle, text):
    assert qwen.encode(text) == qwen_oracle.encode(text)


@FUZZ
@given(text=texts())
def test_spm_matches_llama_cpp_spm_algorithm(spm_oracles, text):
    for tok, oracle in spm_oracles:
        assert tok.encode(text, add_bos=False) == oracle.encode(text)


@pytest.mark.slow
@FUZZ
@given(text=texts())
def test_smollm2_matches_llama_cpp_bpe_algorithm(smollm2_oracle, text):
    tok, oracle = smollm2_oracle
    assert tok.encode(text) == oracle.encode(text)


@pytest.fixture(scope="module")
def smollm2_oracle(smollm2_path):
    split = lambda text: split_in_turn(text, SEQUENTIAL["smollm"])  # noqa: E731
    return load_tokenizer(smollm2_path), LlamaCppBpe(read_metadata(smollm2_path), split)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2", "gpt-2"])
def test_every_bpe_token_is_what_merging_its_bytes_gives(name, llama_cpp_models):
    # tiktoken takes a pre-split piece that is a token as that token without merging; llama.cpp merges
    # (only llama3 skips merging such pieces). Equal results need this property of the vocabulary.
    path = vocab_path(llama_cpp_models, name)
    tok, metadata = load_tokenizer(path), read_metadata(path)
    oracle = LlamaCppBpe(metadata, split=None)
    normal = [i for i, ty in enumerate(metadata["tokenizer.ggml.token_type"]) if ty == 1]
    bad = [i for i in normal if oracle.encode_piece(tok.token_bytes(i)) != [i]]
    assert not bad, f"{len(bad)} tokens, e.g. {[tok.token_text(i) for i in bad[:5]]}"


def test_every_spm_token_is_what_merging_its_characters_gives(spm_oracles):
    for _, oracle in spm_oracles:
        bad = [text for text in oracle.ids if len(text) > 1 and oracle.merge(list(text)) != [text]]
        assert not bad, f"{len(bad)} tokens, e.g. {bad[:5]}"


def synthetic_spm(extra: dict[str, float]) -> dict:
    """A SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, then `extra` (text -> score)."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *extra]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3, *[6] * 256, *[1] * len(extra)],
        "tokenizer.ggml.scores": [0.0] * 259 + list(extra.values()),
        "tokenizer.ggml.bos_token_id": 1,
    }


BASE = {"▁": -9.0, "a": -9.0, "b": -9.0, "é": -9.0, "\n": -9.0, "▁a": -1.0, "ab": -2.0, "▁b": -3.0}


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ({}, SPLIT_PATTERNS[0][0]),  # cut before "▁" runs
        ({"a▁": -4.0, "a▁b": -5.0}, SPLIT_PATTERNS[1][0]),  # a token spans "a▁": cut at line breaks
        ({"a▁": -4.0, "b\n": -5.0}, SPLIT_PATTERNS[2][0]),  # ... and one spans "\n": no cuts
    ],
)
@FUZZ
@given(text=st.text(alphabet="ab \néü", max_size=30))
def test_spm_split_patterns_are_exact(extra, pattern, text):
    metadata = synthetic_spm(BASE | extra)
    keys = ("tokens", "token_type", "scores")
    assert build_spm_ranks(*(metadata[f"tokenizer.ggml.{k}"] for k in keys)).pattern == pattern
    tok = Tokenizer.from_metadata(metadata)
    assert tok.encode(text, add_bos=False) == LlamaCppSpm(metadata).encode(text)
    assert tok.decode(tok.encode(text)) == "<s>" + text


def test_gpt2_byte_table_inverts_the_character_map():
    assert all(GPT2_BYTE_OF[ord(c)] == b for c, b in gpt2_byte_decoder().items())
    assert sorted(gpt2_byte_decoder().values()) == list(range(256))


# -- Hugging Face tokenizers (Rust) reading the same GGUF ----------------------------------------------


@pytest.mark.slow
@pytest.mark.oracle
@FUZZ
@given(text=texts())
def test_qwen25_matches_transformers(qwen05_path, hf_qwen05, text):
    # transformers always matches added tokens in text: compare with allow_special
    ours = load_tokenizer(qwen05_path).encode(text, allow_special=True)
    assert ours == hf_qwen05(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def hf_qwen05(qwen05_path):
    # transformers converts the GGUF vocabulary itself; for Qwen2 it keeps the pre-tokenizer regex.
    # (For SmolLM2 it drops the digit split of pre "smollm", so it is no oracle there.)
    import transformers  # a test dependency: missing, the test fails (no silent skip)

    return transformers.AutoTokenizer.from_pretrained(str(qwen05_path.parent), gguf_file=qwen05_path.name)
