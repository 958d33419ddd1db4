"""One Llama-family transformer (llama, qwen2, phi3, mistral differ only in ModelConfig data)."""

from dataclasses import dataclass

import numpy as np

from ..gguf.model_config import ModelConfig
from .backends.base import AttentionSeq, Backend
from .weights import LayerWeights, ModelWeights


@dataclass(frozen=True)
class ForwardBatch:
    """Tokens of many sequences packed along one axis (prefill chunks and decode tokens together)."""

    token_ids: np.ndarray  # [T] int32
    positions: np.ndarray  # [T] int32
    slots: np.ndarray  # [T] int32: KV slot (block * block_size + offset) of each token
    seqs: list[AttentionSeq]  # one per sequence, in packing order
    logit_rows: np.ndarray  # [N] int: rows of T whose next-token logits are wanted

    @property
    def kv_only(self) -> np.ndarray:
        """[T] bool: rows whose logits nobody reads (they only fill the KV cache)."""
        mask = np.ones(self.token_ids.shape[0], bool)
        mask[self.logit_rows] = False
        return mask


class LlamaModel:
    def __init__(self, config: ModelConfig, weights: ModelWeights, backend: Backend):
        self.config = config
        self.weights = weights
        self.backend = backend

    def forward(self, batch: ForwardBatch, kv) -> np.ndarray:
        """Runs every token of the batch through the model, filling the KV cache (engine/kv_cache.py's
        KVCache: k[layer], v[layer]); logits [N, V] on the host."""
        ops, w = self.backend, self.weights
        x = ops.embed(w.token_embd, batch.token_ids)  # [T, D]
        kv_only = batch.kv_only
        for i, layer in enumerate(w.layers):
            self._attention_block(x, layer, batch, kv.k[i], kv.v[i], kv_only)
            self._ffn_block(x, layer, kv_only)
        h = ops.rmsnorm(ops.gather_rows(x, batch.logit_rows), w.output_norm, self.config.norm_eps)  # [N, D]
        return ops.to_host(ops.linear(h, w.output))  # [N, V] on the host: the sampler runs there

    def _attention_block(self, x, layer: LayerWeights, batch: ForwardBatch, k_cache, v_cache, kv_only):
        ops, c = self.backend, self.config
        t = x.shape[0]
        h = ops.rmsnorm(x, layer.attn_norm, c.norm_eps)
        qkv = ops.linear(h, layer.wqkv, layer.bqkv, kv_only)  # [T, (H + 2 H_kv) * hd]
        q_end, k_end = c.num_heads * c.head_dim, (c.num_heads + c.num_kv_heads) * c.head_dim
        q = qkv[:, :q_end].reshape(t, c.num_heads, c.head_dim)
        k = qkv[:, q_end:k_end].reshape(t, c.num_kv_heads, c.head_dim)
        v = qkv[:, k_end:].reshape(t, c.num_kv_heads, c.head_dim)
        ops.rope(q, batch.positions, self.weights.inv_freq, c.rope_style)
        ops.rope(k, batch.positions, self.weights.inv_freq, c.rope_style)
        ops.kv_write(k_cache, v_cache, k, v, batch.slots)
        attn = ops.attention(q, k_cache, v_cache, batch.seqs, c.sliding_window)  # [T, H, hd]
        ops.add(x, ops.linear(attn.reshape(t, -1), layer.wo, kv_only=kv_only))

    def _ffn_block(self, x, layer: LayerWeights, kv_only) -> None:
        ops = self.backend
        h = ops.rmsnorm(x, layer.ffn_norm, self.config.norm_eps)
        gate_up = ops.linear(h, layer.w_gate_up, kv_only=kv_only)  # [T, 2F]
        ops.add(x, ops.linear(ops.swiglu(gate_up), layer.w_down, kv_only=kv_only))
