"""EngineConfig: the engine's scheduling and KV-cache sizes. A module of its own (msgspec only), so the API
process builds the Struct from its settings and hands it to the worker as it is, without importing the
engine."""

import msgspec


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_num_seqs: int = 16  # sequences decoded together
    max_num_batched_tokens: int = 512  # tokens per forward (decode tokens + prefill chunks)
    block_size: int = 16  # token slots per KV block
    kv_cache_tokens: int = 32768  # total KV slots; blocks = kv_cache_tokens // block_size
    prefix_caching: bool = True  # full blocks of finished sequences keep their KV for later prompts
