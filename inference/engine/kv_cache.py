"""The paged KV cache: per layer, K and V blocks of `block_size` token slots."""

import numpy as np

from ..gguf.model_config import ModelConfig


def _host_zeros(shape: tuple[int, ...], count: int) -> list[np.ndarray]:
    # np.zeros maps zero pages lazily: untouched blocks cost no resident memory
    return [np.zeros(shape, np.float32) for _ in range(count)]


class KVCache:
    """k[layer], v[layer]: [num_blocks, block_size, n_kv_heads, head_dim] float32, in the memory of the
    backend that computes on them (host arrays unless the backend has `alloc_kv`, e.g. the CUDA one)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, backend=None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        alloc = getattr(backend, "alloc_kv", _host_zeros)
        caches = alloc(shape, 2 * config.num_layers)  # all at once: a device backend checks the total fits
        self.k = caches[: config.num_layers]
        self.v = caches[config.num_layers :]
        self.num_blocks = num_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_token(config: ModelConfig) -> int:
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) * 2
