"""Tokenizer: llama.cpp's tokenizer test vectors, round trips, special tokens, EOG ids, streaming decode."""

import functools
from pathlib import Path
from typing import Any

import gguf
import pytest

from inference.errors import TokenizerError
from inference.text.tokenizer import Tokenizer

VECTOR_VOCABS = ("qwen2", "gpt-2", "llama-bpe", "llama-spm", "phi-3")
CASES_PER_VOCAB = 46  # inputs in each ggml-vocab-*.gguf.inp of llama.cpp as vendored in 0.3.36
SEPARATOR = "\n__ggml_vocab_test__\n"
FRANCE = "What is the capital of France?"


@functools.cache
def read_metadata(path: Path) -> dict[str, Any]:
    """GGUF key/values as Python values, arrays as lists (until inference/gguf_loader.py provides it)."""
    return {key: field.contents() for key, field in gguf.GGUFReader(path).fields.items()}


@functools.cache
def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_metadata(read_metadata(path))


def vocab_path(models: Path, name: str) -> Path:
    return models / f"ggml-vocab-{name}.gguf"


def vector_cases(models: Path, name: str) -> list[tuple[str, list[int]]]:
    """(input, expected ids) pairs; the .inp file ends with a separator, the .out has one line per input."""
    inputs = vocab_path(models, name).with_suffix(".gguf.inp").read_text(encoding="utf-8")
    outputs = vocab_path(models, name).with_suffix(".gguf.out").read_text(encoding="utf-8").splitlines()
    assert inputs.endswith(SEPARATOR)
    texts = inputs[: -len(SEPARATOR)].split(SEPARATOR)
    assert len(texts) == len(outputs)
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, outputs, strict=True)]


@pytest.fixture(scope="module")
def vocab(llama_cpp_models):
    return lambda name: load_tokenizer(vocab_path(llama_cpp_models, name))


@pytest.fixture(scope="module")
def qwen(vocab):
    return vocab("qwen2")


@pytest.fixture(scope="module")
def spm(vocab):
    return vocab("llama-spm")


@pytest.fixture(scope="module")
def phi3(vocab):
    return vocab("phi-3")


# -- llama.cpp's test vectors (add_special=false, parse_special=false) ----------------------------------


@pytest.mark.parametrize("name", VECTOR_VOCABS)
def test_llama_cpp_vectors(name, vocab, llama_cpp_models):
    tok, cases = vocab(name), vector_cases(llama_cpp_models, name)
    failures = [
        f"  input {text!r}\n  expected {want}\n  got      {got}"
        for text, want in cases
        if (got := tok.encode(text, add_bos=False)) != want
    ]
    assert len(cases) == CASES_PER_VOCAB
    assert not failures, f"{name}: {len(failures)} of {len(cases)} cases differ:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", VECTOR_VOCABS)
def test_vectors_round_trip(name, vocab, llama_cpp_models):
    # every case round-trips, SPM included: decode drops exactly the "▁" that encode put before the text
    tok = vocab(name)
    bad = [
        text
        for text, _ in vector_cases(llama_cpp_models, name)
        if tok.decode(tok.encode(text, add_bos=False)) != text
    ]
    assert not bad, f"{name}: decode(encode(s)) != s for {bad!r}"


# -- special tokens -----------------------------------------------------------------------------------


def test_special_text_is_one_id_only_when_allowed(qwen):
    assert qwen.encode("<|im_start|>", allow_special=True) == [151644]
    plain = qwen.encode("<|im_start|>")
    assert len(plain) > 1 and not set(plain) & {151643, 151644, 151645}
    assert qwen.decode(plain) == "<|im_start|>"


def test_chatml_prompt_with_specials(qwen):
    ids = qwen.encode("<|im_start|>user\nHi<|im_end|>\n", allow_special=True)
    assert ids == [151644, 872, 198, 13048, 151645, 198]
    assert qwen.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n"
    assert qwen.decode(ids, skip_special=True) == "user\nHi\n"


def test_special_token_id(qwen, phi3):
    assert qwen.special_token_id("<|im_end|>") == 151645
    assert qwen.special_token_id("hello") is None
    assert phi3.special_token_id("<|end|>") == 32007


def test_spm_specials_start_a_new_text_run(phi3):
    # llama.cpp (and SentencePiece per text chunk): the text after a special token gets the "▁" prefix
    ids = phi3.encode("<|user|>Hi<|end|>", allow_special=True, add_bos=False)
    assert ids == [32010, *phi3.encode("Hi", add_bos=False), 32007]
    assert phi3.decode(ids) == "<|user|>Hi<|end|>"
    assert phi3.decode([1, *ids], skip_special=True) == "Hi"


# -- BOS / EOS / end of generation ---------------------------------------------------------------------


def test_add_bos_follows_metadata(spm, qwen, vocab):
    assert spm.add_bos and spm.encode("Hi")[0] == spm.bos_id == 1
    assert spm.encode("Hi", add_bos=False) == [6324]
    assert spm.encode("", add_bos=False) == []  # llama.cpp: no space prefix for empty text
    assert not qwen.add_bos and qwen.encode("Hi", add_bos=True) == [151643, 13048]
    assert vocab("llama-bpe").add_bos  # llama.cpp's default for the llama3 pre-tokenizer


def test_eog_ids_of_test_vocabularies(vocab):
    assert vocab("llama-bpe").eog_ids == {128001, 128009}  # <|end_of_text|>, <|eot_id|>
    assert vocab("phi-3").eog_ids == {2, 32000, 32007}  # </s>, <|endoftext|>, <|end|>
    assert vocab("llama-spm").eog_ids == {2}


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def qwen05(qwen05_path):
    return load_tokenizer(qwen05_path)


@pytest.mark.slow
def test_real_models_eog_and_bos(smollm2, qwen05):
    # SmolLM2: EOS 2 <|im_end|> and <|endoftext|> 0; Qwen2.5: EOS 151645 <|im_end|>, <|endoftext|> 151643
    assert smollm2.eog_ids == {0, 2} and (smollm2.bos_id, smollm2.eos_id, smollm2.add_bos) == (1, 2, False)
    assert smollm2.decode([2]) == "<|im_end|>" and smollm2.decode([0]) == "<|endoftext|>"
    assert qwen05.eog_ids == {151643, 151645} and (qwen05.eos_id, qwen05.add_bos) == (151645, False)
    assert qwen05.decode([151645]) == "<|im_end|>" and qwen05.decode([151643]) == "<|endoftext|>"


@pytest.mark.slow
def test_real_models_stable_ids(smollm2, qwen05):
    assert smollm2.encode(FRANCE) == [1780, 314, 260, 3575, 282, 4649, 47]
    assert qwen05.encode(FRANCE) == [3838, 374, 279, 6722, 315, 9625, 30]
    assert smollm2.vocab_size == 49152 and qwen05.vocab_size == 151936


@pytest.mark.slow
def test_smollm_digits_split_before_bpe(smollm2):
    # pre "smollm" = llama.cpp's ["\p{N}", GPT-2]: every digit alone, "\r\n" before a digit stays one piece
    assert smollm2.encode("2024") == [34, 32, 34, 36]
    assert smollm2.encode("\r\n6")[0] == 2738 and smollm2.decode([2738]) == "\r\n"


# -- decoding, token bytes, streaming -----------------------------------------------------------------


def test_token_bytes_and_text(qwen, spm):
    assert qwen.token_bytes(220) == b" " and qwen.token_text(220) == " "
    assert qwen.token_bytes(151644) == b"<|im_start|>"
    assert qwen.token_bytes(156) == b"\xe0" and qwen.token_text(156) == "bytes:\\xe0"
    assert spm.token_bytes(6324) == b" Hi"  # "▁Hi"
    assert spm.token_bytes(spm.encode("\n", add_bos=False)[-1]) == b"\n"  # byte fallback <0x0A>


def test_decode_spm_leading_space(spm):
    ids = spm.encode("Hello", add_bos=False)
    assert spm.decode(ids) == "Hello"
    assert spm.decode(ids, at_start=False) == " Hello"  # a continuation keeps its space
    assert spm.decode([1, *ids]) == "<s>Hello" and spm.decode([1, *ids], skip_special=True) == "Hello"


def test_decode_invalid_utf8_is_replaced(qwen):
    assert qwen.decode([156, 220]) == "\ufffd "


@pytest.mark.parametrize("bad", [[-1], [151936], [5, 10**9]])
def test_out_of_range_ids(qwen, bad):
    with pytest.raises(TokenizerError, match="out of range"):
        qwen.decode(bad)


def stream(tok: Tokenizer, ids: list[int], **options) -> list[str]:
    detok = tok.detokenizer(**options)
    return [detok.push(i) for i in ids] + [detok.flush()]


def test_streaming_holds_back_only_incomplete_characters(spm):
    ids = spm.encode("🦙 ok", add_bos=False)  # "▁" then four byte-fallback tokens, then "▁ok"
    assert stream(spm, ids) == ["", "", "", "", "🦙", " ok", ""]


def test_streaming_matches_decode(phi3):
    ids = phi3.encode("<|user|>\nDé jà vu 🚀<|end|>\n<|assistant|>", allow_special=True)
    for options in ({}, {"skip_special": True}, {"at_start": False}):
        assert "".join(stream(phi3, ids, **options)) == phi3.decode(ids, **options)


def test_streaming_flush_replaces_an_incomplete_tail(qwen):
    assert stream(qwen, [220, 156]) == [" ", "", "\ufffd"]


# -- vocabulary errors --------------------------------------------------------------------------------


def minimal_gpt2(**override) -> dict[str, Any]:
    from inference.text.pretokenizers import gpt2_byte_decoder

    tokens = list(gpt2_byte_decoder())  # the 256 byte characters
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": [*tokens, "ab", "<|end|>"],
        "tokenizer.ggml.token_type": [1] * 257 + [3],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.eos_token_id": 257,
    }
    return meta | override


def test_minimal_vocabulary():
    tok = Tokenizer.from_metadata(minimal_gpt2())
    assert tok.encode("abc") == [256, *tok.encode("c")]  # "ab" by the one merge
    assert tok.eog_ids == {257} and tok.decode(tok.encode("xaby")) == "xaby"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model is 'bert'; supported: gpt2, llama"),
        ({"tokenizer.ggml.pre": "klingon"}, "tokenizer.ggml.pre 'klingon' is not supported; known: .*qwen2"),
        ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens is missing"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries for 258 tokens"),
        ({"tokenizer.ggml.merges": ["ab"]}, r"merges\[0\] 'ab' is not two tokens"),
        ({"tokenizer.ggml.eos_token_id": 999}, "eos_token_id = 999 is out of range"),
        ({"tokenizer.ggml.add_bos_token": True}, "add_bos_token is true but .*bos_token_id is missing"),
        (
            {"tokenizer.ggml.tokens": [*minimal_gpt2()["tokenizer.ggml.tokens"][:256], "a b", "x"]},
            "' ' is not",
        ),
    ],
)
def test_unusable_vocabularies(override, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_metadata(minimal_gpt2(**override))


def test_spm_without_byte_fallback_is_refused():
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "▁a", "a", "▁"],
        "tokenizer.ggml.token_type": [2, 1, 1, 1],
        "tokenizer.ggml.scores": [0.0, -1.0, -2.0, -3.0],
        "tokenizer.ggml.add_bos_token": False,
    }
    with pytest.raises(TokenizerError, match="lacks 256 byte-fallback tokens"):
        Tokenizer.from_metadata(meta)
