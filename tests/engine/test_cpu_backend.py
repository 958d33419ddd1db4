"""The cpu backend on the real SmolLM2: its float32 path equals the NumPy reference, and the engine on it
keeps batch invariance (a sequence's tokens alone = batched = chunked)."""

import numpy as np
import pytest

from inference.adapter import InferenceAdapter
from inference.engine.engine import Engine, EngineConfig
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.model.backends import BackendConfig

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived",
]
FLOAT_TOL = 1e-4  # float32 activations and KV: only summation order differs from NumPy (measured 4.1e-5)


@pytest.fixture(scope="module")
def cpu(smollm2_path) -> InferenceAdapter:
    return InferenceAdapter.load(smollm2_path, backend=BackendConfig(name="cpu", kv_cache_dtype="f16"))


def test_float32_path_equals_numpy(smollm2_path, smol):
    exact = InferenceAdapter.load(smollm2_path, backend=BackendConfig(name="cpu", kv_cache_dtype="f32"))
    exact.backend.q8_types = frozenset()  # every linear in float32: fused matvec or tiles + sgemm
    exact.backend.q8_decode_types = frozenset()
    for text in PROMPTS:
        ids = smol.tokenizer.encode(text)
        delta = float(np.abs(exact.prefill(ids) - smol.prefill(ids)).max())
        assert delta <= FLOAT_TOL, f"{text!r}: max |Δ logits| {delta:.3e}"


def _request(adapter, i: int, text: str) -> AdapterForwardConfig:
    ids = tuple(adapter.tokenizer.encode(text))
    return AdapterForwardConfig(
        request_id=f"r{i}",
        prompt_ids=ids,
        max_tokens=12,
        ignore_eos=True,
        sampling=SamplingParams(temperature=0),
    )


def _run(engine: Engine, configs) -> dict[str, list[int]]:
    for c in configs:
        engine.add_request(c)
    out: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for ev in engine.step():
            out.setdefault(ev.request_id, []).extend(ev.token_ids)
    return out


def test_batched_and_chunked_equal_solo_on_cpu(cpu):
    solo = {}
    for i, text in enumerate(PROMPTS):
        solo |= _run(Engine(cpu.loaded, EngineConfig(kv_cache_tokens=1024)), [_request(cpu, i, text)])
    configs = [_request(cpu, i, text) for i, text in enumerate(PROMPTS)]
    batched = _run(Engine(cpu.loaded, EngineConfig(kv_cache_tokens=2048)), configs)
    chunked = _run(Engine(cpu.loaded, EngineConfig(kv_cache_tokens=2048, max_num_batched_tokens=5)), configs)
    assert batched == solo
    assert chunked == solo
