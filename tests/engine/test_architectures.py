"""Every architecture against transformers on synthetic GGUFs: last-position logits and 16 greedy tokens.

The engine runs one transformer for llama, qwen2, phi3 and mistral that differ only in data; the real
models exercise llama and qwen2. Here tests/engine/synthetic.py writes a tiny random model of each
(phi3's fused attn_qkv / gate|up ffn_up, llama with linear RoPE scaling, mistral's sliding window, tied
and untied output, every weight type gguf-py writes) and transformers loads the same file as its own
Llama / Qwen2 / Phi3 / Mistral model in float32 with eager attention.
"""

import os
from dataclasses import replace
from functools import cache

import gguf
import numpy as np
import pytest

from inference.adapter import InferenceAdapter
from tests.engine.synthetic import SPECS, Spec, write_model

pytestmark = pytest.mark.oracle

BACKENDS = ("numpy", "cpu")
# max |Δ logits|, float32 on both sides, the same dequantized blocks, only summation order differs.
# Measured on numpy over every prompt, prefill and greedy step here (|logits| up to 22 on the tied ones, 4
# on the others): llama 1.1e-5, llama-rope-linear 2.4e-6, qwen2 8.6e-6, phi3 2.9e-6, mistral 4.7e-6.
# cpu: int8 activations (one scale per 32 values) into every quantized linear and a float16 KV cache
# (see tests/engine/test_oracle.py for the arithmetic); measured here: CPU_MEASURED.
LOGIT_TOL = {"numpy": 5e-5, "cpu": 0.4}
CPU_MEASURED = "0.03 .. 0.19 prefill, up to 0.25 over greedy steps"  # these five models, 2-core dev VM
GREEDY_TOKENS = 16
# reference top-2 margin below which either token is a correct argmax: twice the backend's tolerance
NEAR_TIE = {"numpy": 1e-3, "cpu": 2 * LOGIT_TOL["cpu"]}

LONG = (
    "The history of the printing press begins long before Johannes Gutenberg. Woodblock printing was "
    "practised in China by the seventh century, and movable type made of baked clay was described by the "
    "scholar Shen Kuo, who credited an artisan named Bi Sheng with its invention around 1040."
)
PROMPTS = {  # (text, parse special tokens)
    "short": ("The capital of France is", False),
    "chat": ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", True),
    "unicode": ("Il était une fois… 长城", False),
    "long": (LONG, False),  # 240 tokens: 30 times mistral's window of 8
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("synthetic")
    return {name: write_model(spec, directory) for name, spec in SPECS.items()}


@pytest.fixture(scope="module")
def references(files):
    """spec name -> the transformers model, loaded on first use."""
    return cache(lambda name: Reference(SPECS[name], files[name]))


@pytest.fixture(scope="module")
def engines(files):
    """(spec name, backend) -> our adapter, loaded on first use."""
    return cache(lambda name, backend: InferenceAdapter.load(files[name], backend=backend))


class Reference:
    """transformers running a synthetic GGUF: float32, eager attention, one thread, offline."""

    def __init__(self, spec: Spec, path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch  # only when an oracle test runs; a missing one fails the test
        from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(1)  # see tests/engine/oracle.py: OpenMP spin on a shared 2-core machine
        hf_logging.disable_progress_bar()
        self.torch = torch
        config = spec.oracle_config()
        window = config.pop("sliding_window", None)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager", **config
        )
        if window is not None:
            # transformers' GGUF path cannot build Mistral (see synthetic.py): the Llama it loaded, the same
            # weights in its Mistral class, which applies the window
            mistral = MistralConfig(**(model.config.to_dict() | {"sliding_window": window}))
            windowed = MistralForCausalLM._from_config(
                mistral, attn_implementation="eager", dtype=torch.float32
            )
            windowed.load_state_dict(model.state_dict(), strict=True)
            model = windowed
        self.model = model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    def step(self, ids: list[int], past):
        """(logits [V] after the last of ids, the KV cache) continuing `past` (None: a fresh sequence)."""
        with self.torch.inference_mode():
            x = self.torch.tensor([ids], dtype=self.torch.long)  # [1, T]
            out = self.model(input_ids=x, past_key_values=past, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].numpy().copy(), out.past_key_values


def encode(engine: InferenceAdapter, prompt: str) -> list[int]:
    text, special = PROMPTS[prompt]
    return engine.tokenizer.encode(text, allow_special=special)


def max_delta(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == np.float32 and np.isfinite(a).all()
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("name", SPECS)
def test_numpy_engine_and_transformers_read_the_same_model(name, files, references, engines):
    """Guards the comparison itself: the engine reads the features, transformers builds the right class
    and honours the scaling / window (without them its logits move far beyond LOGIT_TOL), and both
    tokenizers read the vocabulary alike."""
    spec, engine, ref = SPECS[name], engines(name, "numpy"), references(name)
    c = engine.config
    assert (c.arch, c.tied_output, c.qkv_bias, c.fused_qkv, c.fused_gate_up) == (
        spec.arch, spec.tied, spec.qkv_bias, spec.fused, spec.fused,
    )  # fmt: skip
    assert c.rope_scaling_factor == (spec.rope_linear or 1.0) and c.sliding_window == spec.sliding_window
    kinds = {"llama": "Llama", "qwen2": "Qwen2", "phi3": "Phi3"}
    kind = "Mistral" if spec.sliding_window else kinds[spec.arch]
    assert type(ref.model).__name__ == f"{kind}ForCausalLM"
    assert ref.model.config.tie_word_embeddings == spec.tied
    types = {t.tensor_type.name for t in gguf.GGUFReader(files[name]).tensors}
    assert types >= {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
    for prompt, (text, _) in PROMPTS.items():
        ours = encode(engine, prompt)
        assert ref.tokenizer.encode(text, add_special_tokens=False) == ours, prompt
    if spec.oracle_config():
        plain = Reference(replace(spec, rope_linear=None, sliding_window=None), files[name])
        ids = encode(engine, "long")
        assert max_delta(ref.step(ids, None)[0], plain.step(ids, None)[0]) > 100 * LOGIT_TOL["numpy"]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_last_logits_match_transformers(backend, name, prompt, references, engines):
    engine, ref = engines(name, backend), references(name)
    ids = encode(engine, prompt)
    ours = engine.prefill(ids)
    theirs, _ = ref.step(ids, None)
    delta = max_delta(ours, theirs)
    assert delta <= LOGIT_TOL[backend], f"{name} {prompt} ({len(ids)} tokens): max |Δ logits| {delta:.3e}"


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_tokens_match_transformers(backend, name, prompt, references, engines):
    """16 argmax tokens, each with the KV cache, and the logits of every step, up to the first step where
    transformers' top-2 are within NEAR_TIE (random weights have near-ties: either token is right)."""
    engine, ref = engines(name, backend), references(name)
    ids = encode(engine, prompt)
    ours, our_logits = greedy(engine.prefill, engine.decode, ids)
    past = None

    def ref_next(step_ids):
        nonlocal past
        logits, past = ref.step(step_ids, past)
        return logits

    theirs, their_logits = greedy(ref_next, lambda t: ref_next([t]), ids)
    margins = [float(np.diff(np.sort(x)[-2:])[0]) for x in their_logits]
    n = next((i for i, m in enumerate(margins) if m < NEAR_TIE[backend]), GREEDY_TOKENS)
    if backend == "numpy":  # float32 resolves all but the closest ties; cpu's rounding may meet one early
        assert n >= GREEDY_TOKENS // 2, f"{name} {prompt}: near-tie at step {n} (margins {margins})"
    deltas = [max_delta(a, b) for a, b in zip(our_logits[: n + 1], their_logits[: n + 1], strict=False)]
    assert ours[:n] == theirs[:n], f"{name} {prompt}: ours {ours}, transformers {theirs}; margins {margins}"
    assert max(deltas) <= LOGIT_TOL[backend], f"{name} {prompt}: max |Δ logits| per step {deltas}"


def greedy(first, next_logits, ids: list[int]) -> tuple[list[int], list[np.ndarray]]:
    """GREEDY_TOKENS argmax tokens after ids, and the logits [V] each was chosen from."""
    logits = [first(ids)]
    tokens = [int(np.argmax(logits[-1]))]
    while len(tokens) < GREEDY_TOKENS:
        logits.append(next_logits(tokens[-1]))
        tokens.append(int(np.argmax(logits[-1])))
    return tokens, logits
