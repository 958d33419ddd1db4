"""The paged KV cache: per layer, K and V blocks of `block_size` token slots."""

from ..gguf.model_config import ModelConfig
from ..model.backends.base import Backend


class KVCache:
    """k[layer], v[layer]: [num_blocks, block_size, n_kv_heads, head_dim], in the memory and element type
    of the backend that computes on them (float32 host arrays for numpy, float16 by default for cpu,
    device arrays for cuda)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, backend: Backend):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        caches = backend.alloc_kv(shape, 2 * config.num_layers)  # at once: a device backend checks it fits
        self.k = caches[: config.num_layers]
        self.v = caches[config.num_layers :]
        self.num_blocks = num_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_token(config: ModelConfig, bytes_per_element: int) -> int:
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * bytes_per_element

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) * 2
