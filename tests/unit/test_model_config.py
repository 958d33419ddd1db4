"""ModelConfig: real models' configs, per-architecture data, validation errors, expected tensors, memory."""

import dataclasses
import re

import numpy as np
import pytest

from inference.engine.kv_cache import KVCache
from inference.errors import GGUFError, ModelConfigError
from inference.gguf.loader import load_gguf
from inference.gguf.model_config import ModelConfig, estimate_memory, expected_tensors
from tests.unit.gguf_fixtures import write_tiny_model

F32_1E5, F32_1E6 = float(np.float32(1e-5)), float(np.float32(1e-6))  # GGUF stores epsilons as float32

SMOLLM2 = ModelConfig(
    arch="llama", vocab_size=49152, hidden_dim=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
    ffn_dim=1536, context_length=8192, rope_base=100000.0, rope_dim=64, rope_style="normal",
    rope_scaling_type="none", rope_scaling_factor=1.0, norm_eps=F32_1E5, qkv_bias=False, tied_output=True,
    sliding_window=None, fused_qkv=False, fused_gate_up=False,
)  # fmt: skip
QWEN05 = ModelConfig(
    arch="qwen2", vocab_size=151936, hidden_dim=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
    ffn_dim=4864, context_length=32768, rope_base=1000000.0, rope_dim=64, rope_style="neox",
    rope_scaling_type="none", rope_scaling_factor=1.0, norm_eps=F32_1E6, qkv_bias=True, tied_output=False,
    sliding_window=None, fused_qkv=False, fused_gate_up=False,
)  # fmt: skip


def tiny_config(tmp_path, arch="llama", **overrides) -> ModelConfig:
    return ModelConfig.from_gguf(load_gguf(write_tiny_model(tmp_path / "m.gguf", arch, **overrides)))


# ---- real models (MODELS.md) ----


def test_smollm2_config(smollm2_path):
    assert ModelConfig.from_gguf(load_gguf(smollm2_path)) == SMOLLM2


def test_qwen05_config(qwen05_path):
    assert ModelConfig.from_gguf(load_gguf(qwen05_path)) == QWEN05


def test_expected_tensors_of_smollm2_are_exactly_its_tensors(smollm2_path):
    g = load_gguf(smollm2_path)
    assert expected_tensors(SMOLLM2) == {name: t.shape for name, t in g.tensors.items()}


def test_expected_tensors_of_qwen05_are_exactly_its_tensors(qwen05_path):
    g = load_gguf(qwen05_path)
    assert expected_tensors(QWEN05) == {name: t.shape for name, t in g.tensors.items()}


# ---- per-architecture data, on tiny models ----


@pytest.mark.parametrize(
    ("arch", "rope_style", "qkv_bias", "tied", "fused_qkv", "fused_gate_up"),
    [
        ("llama", "normal", False, True, False, False),
        ("mistral", "normal", False, False, False, False),
        ("qwen2", "neox", True, False, False, False),
        ("phi3", "neox", False, False, True, True),
    ],
)
def test_architectures_differ_only_in_data(
    tmp_path, arch, rope_style, qkv_bias, tied, fused_qkv, fused_gate_up
):
    c = tiny_config(tmp_path, arch)
    assert (c.rope_style, c.qkv_bias, c.tied_output, c.fused_qkv, c.fused_gate_up) == (
        rope_style, qkv_bias, tied, fused_qkv, fused_gate_up,
    )  # fmt: skip
    assert (c.vocab_size, c.hidden_dim, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        273,
        64,
        2,
        4,
        2,
        16,
    )
    assert (c.ffn_dim, c.context_length, c.rope_dim, c.rope_base) == (128, 256, 16, 10000.0)
    g = load_gguf(tmp_path / "m.gguf")
    assert expected_tensors(c) == {name: t.shape for name, t in g.tensors.items()}


def test_phi3_with_separate_qkv_is_detected(tmp_path):
    c = tiny_config(tmp_path, "phi3", fused_qkv=False)
    assert (c.fused_qkv, c.fused_gate_up) == (False, True)


def test_key_length_sets_head_dim_apart_from_hidden(tmp_path):
    c = tiny_config(tmp_path, head_dim=32)
    assert (c.hidden_dim, c.num_heads, c.head_dim, c.rope_dim) == (64, 4, 32, 32)
    assert expected_tensors(c)["blk.0.attn_q.weight"] == (128, 64)
    assert expected_tensors(c)["blk.0.attn_output.weight"] == (64, 128)


@pytest.mark.parametrize(
    ("metadata", "scaling"),
    [
        ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}, ("linear", 4.0)),
        ({"llama.rope.scaling.factor": 2.0}, ("linear", 2.0)),  # llama.cpp: no type means linear
        ({"llama.rope.scale_linear": 8.0}, ("linear", 8.0)),  # the older key
        ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 1.0}, ("none", 1.0)),
        ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, ("none", 1.0)),
        ({"llama.rope.scaling.factor": 0.0}, ("none", 1.0)),  # llama.cpp: 0 means unset
    ],
)
def test_rope_scaling(tmp_path, metadata, scaling):
    c = tiny_config(tmp_path, metadata=metadata)
    assert (c.rope_scaling_type, c.rope_scaling_factor) == scaling


def test_sliding_window_and_partial_rope(tmp_path):
    c = tiny_config(tmp_path, "mistral", metadata={"mistral.attention.sliding_window": 128})
    assert c.sliding_window == 128
    c = tiny_config(
        tmp_path, "phi3", metadata={"phi3.attention.sliding_window": 0, "phi3.rope.dimension_count": 8}
    )
    assert (c.sliding_window, c.rope_dim) == (None, 8)


def test_vocab_size_from_key_then_tokens_then_embedding_rows(tmp_path):
    no_vocab = {
        k: None for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    }
    assert tiny_config(tmp_path, metadata=no_vocab).vocab_size == 273
    with pytest.raises(
        GGUFError, match=re.escape("tensor token_embd.weight has shape (273, 64), expected (300, 64)")
    ):
        tiny_config(tmp_path, metadata={"llama.vocab_size": 300})


def test_same_per_layer_values_are_accepted(tmp_path):
    assert tiny_config(tmp_path, metadata={"llama.attention.head_count_kv": [2, 2]}).num_kv_heads == 2


# ---- errors from metadata ----


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"general.architecture": "gemma"}, "architecture 'gemma' is not supported; supported: llama"),
        ({"llama.block_count": None}, "metadata llama.block_count is missing"),
        ({"llama.attention.layer_norm_rms_epsilon": None}, "layer_norm_rms_epsilon is missing"),
        ({"llama.attention.head_count": 5}, "embedding_length = 64 is not divisible by head_count = 5"),
        ({"llama.attention.head_count_kv": 3}, "num_heads = 4: not divisible by num_kv_heads = 3"),
        ({"llama.attention.head_count_kv": [2, 1]}, "head_count_kv varies per layer ([2, 1]...)"),
        ({"llama.attention.value_length": 8}, "llama.attention.value_length = 8 differs from key length 16"),
        ({"llama.context_length": 1 << 20}, "context_length = 1048576: must be an integer in [1, 1048576)"),
        ({"llama.block_count": 0}, "num_layers = 0: must be an integer in [1, 4096)"),
        ({"llama.rope.dimension_count": 15}, "rope_dim = 15: must be even and <= head_dim = 16"),
        ({"llama.rope.freq_base": -1.0}, "rope_base = -1.0: must be finite and > 1"),
        ({"llama.attention.layer_norm_rms_epsilon": 0.0}, "norm_eps = 0.0: must be in (0, 1)"),
        ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0},
         "rope_scaling_type = 'yarn': not supported; supported: none, linear"),
        ({"llama.rope.scaling.type": "longrope"}, "rope_scaling_type = 'longrope': not supported"),
    ],
)  # fmt: skip
def test_bad_metadata_is_a_model_config_error(tmp_path, metadata, message):
    with pytest.raises(ModelConfigError, match=re.escape(message)):
        tiny_config(tmp_path, metadata=metadata)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {"blk.0.attn_q.bias": np.zeros(8, np.float32)},
            "tensor blk.0.attn_q.bias has shape (8,), expected (64,)",
        ),
        ({"blk.1.attn_v.bias": None}, "tensor blk.1.attn_v.bias is missing (qwen2 with 2 blocks needs it)"),
        (
            {"output.weight": np.zeros((273, 32), np.float32)},
            "tensor output.weight has shape (273, 32), expected",
        ),
        (
            {"rope_freqs.weight": np.ones(5, np.float32)},
            "tensor rope_freqs.weight has shape (5,), expected (8,)",
        ),
        ({"blk.0.attn_q.bias": None}, "tensor blk.0.attn_q.bias is missing"),  # k and v biases still there
        ({"rope_factors_long.weight": np.ones(8, np.float32)}, "asks for LongRoPE scaling (Phi-3 128k)"),
    ],
    ids=["bias-shape", "bias-missing", "output-shape", "rope-freqs-shape", "partial-biases", "longrope"],
)
def test_tensors_that_contradict_the_metadata_are_gguf_errors(tmp_path, tensors, message):
    with pytest.raises(GGUFError, match=re.escape(message)):
        tiny_config(tmp_path, "qwen2", tensors=tensors)


# ---- validation of the dataclass itself ----


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 9, "num_kv_heads": 4}, "num_heads = 9: not divisible by num_kv_heads = 4"),
        ({"hidden_dim": 0}, "hidden_dim = 0: must be an integer in [1, 65536)"),
        ({"vocab_size": -1}, "vocab_size = -1: must be an integer in [1, 16777216)"),
        ({"num_kv_heads": True}, "num_kv_heads = True: must be an integer"),
        ({"ffn_dim": 1536.0}, "ffn_dim = 1536.0: must be an integer"),
        ({"context_length": 1 << 20}, "context_length = 1048576: must be an integer in [1, 1048576)"),
        ({"rope_dim": 65}, "rope_dim = 65: must be even and <= head_dim = 64"),
        ({"rope_dim": 128}, "rope_dim = 128: must be even and <= head_dim = 64"),
        ({"norm_eps": 1.5}, "norm_eps = 1.5: must be in (0, 1)"),
        ({"norm_eps": float("nan")}, "norm_eps = nan: must be in (0, 1)"),
        ({"rope_base": float("inf")}, "rope_base = inf: must be finite and > 1"),
        ({"rope_style": "gptj"}, "rope_style = 'gptj': not one of normal, neox"),
        ({"rope_scaling_type": "yarn"}, "rope_scaling_type = 'yarn': not supported; supported: none, linear"),
        (
            {"rope_scaling_type": "linear", "rope_scaling_factor": 0.0},
            "rope_scaling_factor = 0.0: must be finite",
        ),
        (
            {"rope_scaling_factor": 2.0},
            "rope_scaling_factor = 2.0: must be 1.0 when rope_scaling_type is 'none'",
        ),
        ({"sliding_window": 0}, "sliding_window = 0: must be None or a positive integer"),
        ({"arch": "gemma"}, "arch = 'gemma': not supported; supported: llama, mistral, qwen2, phi3"),
    ],
)
def test_invalid_config_is_a_model_config_error(changes, message):
    with pytest.raises(ModelConfigError, match=re.escape(message)):
        dataclasses.replace(SMOLLM2, **changes)


def test_model_config_error_is_a_gguf_error():
    assert issubclass(ModelConfigError, GGUFError)


# ---- memory ----


def test_estimate_memory_against_a_hand_computation():
    m = estimate_memory(SMOLLM2, weight_bytes=540_000_000, num_kv_tokens=4096, max_batch_tokens=256)
    assert m.kv_bytes_per_token == 46_080  # 2 * 30 layers * 3 kv heads * 64 * 4 bytes
    assert m.kv_cache == 188_743_680  # 46_080 * 4096
    # T = 256, C = 4096: 256 * (3*576 + (18 + 6)*64 + 5*1536) = 2_801_664 (layer buffers)
    #   + 2 * 256 * 9 * 4096 = 18_874_368 (scores)  + 2 * 3 * 4096 * 64 = 1_572_864 (gathered K, V)
    #   + 256 * 49152 = 12_582_912 (logits)  -> 35_831_808 floats * 4 bytes
    assert m.activations == 143_327_232
    assert m.overhead == 134_217_728 + 43_603_545  # 128 MiB + int(0.05 * 872_070_912)
    assert m.weights == 540_000_000
    assert m.total == 1_049_892_185


def test_estimate_memory_kv_scales_with_dtype_and_context_caps_scores():
    f32 = estimate_memory(SMOLLM2, weight_bytes=0, num_kv_tokens=20_000, max_batch_tokens=1)
    f16 = estimate_memory(SMOLLM2, weight_bytes=0, num_kv_tokens=20_000, max_batch_tokens=1, kv_dtype_bytes=2)
    assert (f32.kv_cache, f16.kv_cache) == (46_080 * 20_000, 23_040 * 20_000)
    assert f32.activations == f16.activations == 4 * (10_944 + 2 * 9 * 8192 + 2 * 3 * 8192 * 64 + 49152)
    assert KVCache.bytes_per_token(SMOLLM2, 4) == f32.kv_bytes_per_token  # the engine's own accounting agrees


def test_estimate_memory_rejects_negative_sizes():
    with pytest.raises(ValueError, match="estimate_memory: sizes must be >= 0"):
        estimate_memory(SMOLLM2, weight_bytes=-1, num_kv_tokens=0, max_batch_tokens=0)
