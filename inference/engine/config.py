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
    # speculative decoding: a draft model (a .gguf path or registry name; "" = none) or prompt lookup
    # proposes up to num_draft_tokens tokens per sequence, the target verifies them in one forward
    draft_model: str = ""
    ngram_draft: bool = False
    num_draft_tokens: int = 4
    draft_token_budget: int = 8  # proposed tokens per step over all decoding sequences (0: none)
    draft_p_min: float = 0.75  # the draft model stops proposing at a token it gives less (llama.cpp's p_min)

    def draft_len(self, num_decoding: int) -> int:
        """Tokens to propose per sequence when num_decoding sequences decode: num_draft_tokens while the
        budget covers them all, fewer as the batch grows, 0 once one each no longer fits (verifying is
        no longer nearly free when the batch alone fills the forward)."""
        return min(self.num_draft_tokens, self.draft_token_budget // max(num_decoding, 1))
