"""The paged KV cache: per layer, K and V blocks of `block_size` token slots."""

import numpy as np

from .model_config import ModelConfig


class KVCache:
    """k[layer], v[layer]: [num_blocks, block_size, n_kv_heads, head_dim] float32."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        # np.zeros maps zero pages lazily: untouched blocks cost no resident memory
        self.k = [np.zeros(shape, np.float32) for _ in range(config.num_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(config.num_layers)]
        self.num_blocks = num_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_token(config: ModelConfig) -> int:
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) * 2
