"""Model weights: dequantized once at load, q/k/v and gate/up fused so each layer is 4 matrix products."""

from dataclasses import dataclass
from functools import partial

import numpy as np

from ..gguf.loader import GGUFFile, dequantize
from ..gguf.model_config import ModelConfig


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # [D]
    wqkv: np.ndarray  # [(H + 2 * H_kv) * hd, D]: q rows, then k rows, then v rows
    bqkv: np.ndarray | None  # [(H + 2 * H_kv) * hd]
    wo: np.ndarray  # [D, H * hd]
    ffn_norm: np.ndarray  # [D]
    w_gate_up: np.ndarray  # [2F, D]: gate rows, then up rows
    w_down: np.ndarray  # [D, F]


@dataclass(frozen=True)
class ModelWeights:
    token_embd: np.ndarray  # [V, D]
    layers: list[LayerWeights]
    output_norm: np.ndarray  # [D]
    output: np.ndarray  # [V, D]; the same array as token_embd when tied
    inv_freq: np.ndarray  # [rope_dim / 2] float32, scaling applied

    @property
    def nbytes(self) -> int:
        arrays = [self.token_embd, self.output_norm, *_layer_arrays(self.layers)]
        if self.output is not self.token_embd:
            arrays.append(self.output)
        return sum(a.nbytes for a in arrays)


def _layer_arrays(layers: list[LayerWeights]) -> list:
    return [a for lw in layers for a in vars(lw).values() if a is not None]


def rope_inv_freq(config: ModelConfig, freq_factors: np.ndarray | None) -> np.ndarray:
    """theta_i = base^(-2i / rope_dim), divided by linear scaling and by per-dim factors (Llama 3)."""
    exponents = np.arange(0, config.rope_dim, 2, dtype=np.float64) / config.rope_dim
    inv_freq = 1.0 / (config.rope_base**exponents)
    if config.rope_scaling_type == "linear":
        inv_freq /= config.rope_scaling_factor
    if freq_factors is not None:
        inv_freq /= freq_factors.astype(np.float64)
    return inv_freq.astype(np.float32)


def load_weights(gguf: GGUFFile, config: ModelConfig, backend) -> ModelWeights:
    def get(name: str):
        return backend.load_weight(gguf.tensors[name])

    def opt(name: str) -> np.ndarray | None:
        return get(name) if name in gguf.tensors else None

    token_embd = get("token_embd.weight")
    output = token_embd if config.tied_output else get("output.weight")
    freqs = gguf.tensors.get("rope_freqs.weight")  # llama 3.1 rope scaling: per-dimension factors
    inv_freq = rope_inv_freq(config, None if freqs is None else dequantize(freqs))
    blocks = [t.n_elements for name, t in gguf.tensors.items() if name.startswith("blk.")]
    arena = backend.layer_arena(blocks)  # each layer is placed as it loads
    load_layer = partial(_load_layer, get, opt, backend, config)
    layers = [arena.place(partial(load_layer, i)) for i in range(config.num_layers)]
    return ModelWeights(token_embd, layers, get("output_norm.weight"), output, inv_freq)


def _load_layer(get, opt, backend, config: ModelConfig, i: int) -> LayerWeights:
    p = f"blk.{i}."
    if config.fused_qkv:
        wqkv, bqkv = get(p + "attn_qkv.weight"), opt(p + "attn_qkv.bias")
    else:
        wqkv = backend.fuse([get(p + f"attn_{n}.weight") for n in "qkv"])
        biases = [opt(p + f"attn_{n}.bias") for n in "qkv"]
        bqkv = backend.fuse(biases) if all(b is not None for b in biases) else None
    if config.fused_gate_up:
        w_gate_up = get(p + "ffn_up.weight")
    else:
        w_gate_up = backend.fuse([get(p + "ffn_gate.weight"), get(p + "ffn_up.weight")])
    return LayerWeights(
        attn_norm=get(p + "attn_norm.weight"),
        wqkv=wqkv,
        bqkv=bqkv,
        wo=get(p + "attn_output.weight"),
        ffn_norm=get(p + "ffn_norm.weight"),
        w_gate_up=w_gate_up,
        w_down=get(p + "ffn_down.weight"),
    )
