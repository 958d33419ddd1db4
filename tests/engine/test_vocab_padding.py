"""A model whose embedding and output rows outnumber its tokens (vocabulary padding, as Qwen2 and many
converted models have): ids in the gap have no token, so the engine never samples nor reports one."""

from pathlib import Path

import numpy as np
import pytest

from inference.adapter import InferenceAdapter
from inference.engine.engine import Engine, EngineConfig
from inference.errors import ModelConfigError
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.gguf.loader import load_gguf
from inference.gguf.model_config import ModelConfig
from tests.unit.gguf_fixtures import tiny_vocab, write_tiny_model

TOKENS = len(tiny_vocab()[0])  # 273
ROWS = TOKENS + 16  # 289: embedding and output rows, as {arch}.vocab_size says
HIDDEN = 64
PAD_LOGIT_GAP = 20.0  # the padded rows' logits beat every real token's by at least this much


def write_padded_model(path: Path) -> Path:
    """273 tokens, 289 embedding and output rows; the 16 padding output rows are +-40 * e_i, so one of
    each pair gets a logit of 40 * |h_i| whatever the hidden state h, far above the real rows' logits."""
    rng = np.random.default_rng(3)
    embd = (rng.standard_normal((ROWS, HIDDEN)) * 4 / np.sqrt(HIDDEN)).astype(np.float32)
    output = (rng.standard_normal((ROWS, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)  # logits ~ N(0, 1)
    eye = np.eye(HIDDEN, dtype=np.float32)[:8]
    output[TOKENS:] = 40.0 * np.concatenate([eye, -eye])  # [16, hidden]
    return write_tiny_model(
        path,
        tied=False,
        metadata={"llama.vocab_size": ROWS},
        tensors={"token_embd.weight": embd, "output.weight": output},
    )


@pytest.fixture(scope="module")
def padded(tmp_path_factory) -> InferenceAdapter:
    return InferenceAdapter.load(write_padded_model(tmp_path_factory.mktemp("padded") / "padded.gguf"))


PROMPT = (1, 80, 200, 7, 271)


def test_the_fixture_pads_and_its_padding_dominates(padded):
    assert padded.vocab_size == ROWS and padded.tokenizer.vocab_size == TOKENS
    logits = padded.prefill(list(PROMPT))  # [289]
    assert logits[TOKENS:].max() > logits[:TOKENS].max() + PAD_LOGIT_GAP


def test_temperature_1_never_samples_a_padded_id(padded):
    """64 seeds x 8 tokens at temperature 1: every id has a token, and so has every logprob alternative."""
    engine = Engine(padded.loaded, EngineConfig(max_num_seqs=16, kv_cache_tokens=2048))
    for seed in range(64):
        sampling = SamplingParams(temperature=1.0, seed=seed, logprobs=5)
        engine.add_request(
            AdapterForwardConfig(
                request_id=f"s{seed}", prompt_ids=PROMPT, sampling=sampling, max_tokens=8, ignore_eos=True,
                prompt_logprobs=3,
            )
        )  # fmt: skip
    sampled, alternatives, steps = [], [], 0
    while engine.has_unfinished():
        for event in engine.step():
            sampled += event.token_ids
            alternatives += [a.token_id for lp in event.logprobs for a in lp.top]
            alternatives += [a.token_id for lp in event.prompt_logprobs or () if lp for a in lp.top]
        steps += 1
        assert steps < 1000
    assert len(sampled) == 64 * 8
    assert max(sampled) < TOKENS and max(alternatives) < TOKENS
    assert len(set(sampled)) > 20  # temperature 1 over the real tokens, not one forced id


def test_more_tokens_than_rows_is_refused_at_load(tmp_path):
    """The reverse gap: tokens without an embedding row would index past the matrix."""
    rows = TOKENS - 3
    path = write_tiny_model(
        tmp_path / "short.gguf",
        metadata={"llama.vocab_size": rows},
        tensors={"token_embd.weight": np.zeros((rows, HIDDEN), np.float32)},
    )
    with pytest.raises(ModelConfigError, match=f"{TOKENS} tokens but llama.vocab_size is {rows}"):
        ModelConfig.from_gguf(load_gguf(path))
