"""Speculative decoding's settings: `--ngram-draft` alone is a switch, one proposer at a time, and the
vocabulary check that stops start-up names what differs."""

import argparse

import pytest

from app.settings import SettingsError, add_arguments, from_args, load_settings
from inference.text.tokenizer import Tokenizer
from inference.text.vocab_compare import vocabulary_difference
from tests.unit.gguf_fixtures import tiny_vocab


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), env={})


def test_a_bool_flag_alone_means_true_and_still_takes_a_value():
    assert _parse(["--ngram-draft"]).ngram_draft is True
    assert _parse(["--ngram-draft", "false"]).ngram_draft is False
    assert _parse(["--prefix-caching", "false", "--num-draft-tokens", "3"]).num_draft_tokens == 3
    assert _parse([]).ngram_draft is False


def test_a_draft_model_and_ngram_lookup_together_are_refused():
    said = r"set draft_model \(command line flag --draft-model\) or ngram_draft \(environment variable "
    with pytest.raises(SettingsError, match=said + r"GGUF_SERVE_NGRAM_DRAFT\), not both"):
        load_settings({"draft_model": "qwen2.5-coder-0.5b"}, {"GGUF_SERVE_NGRAM_DRAFT": "true"})


def test_num_draft_tokens_must_be_positive():
    with pytest.raises(SettingsError, match="num_draft_tokens"):
        load_settings({"num_draft_tokens": "0"}, {})


def _tokenizer(tokens: list[str], eos: str = "<|im_end|>") -> Tokenizer:
    _, types, merges = tiny_vocab()
    return Tokenizer.from_metadata({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": tokens.index(eos),
    })  # fmt: skip


def test_vocabulary_difference_names_the_first_difference():
    tokens = tiny_vocab()[0]
    target = _tokenizer(tokens)
    assert vocabulary_difference(target, _tokenizer(tokens)) is None
    changed = [*tokens[:100], tokens[100] + "x", *tokens[101:]]
    assert vocabulary_difference(target, _tokenizer(changed)) == (
        "token 100 is b'\\xa7' (text) in the target, b'\\xa7x' (text) in the draft"
    )
    assert vocabulary_difference(target, _tokenizer(tokens, "<|endoftext|>")) == (
        "eos_id is 272 in the target, 270 in the draft"
    )
