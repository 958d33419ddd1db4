"""EngineStats: the engine's gauges and counters after a step. The worker sends the Struct itself over the
pipe and the API's metrics keep it as it is (no mirror), so a field added here reaches /metrics' table."""

import msgspec


class EngineStats(msgspec.Struct, kw_only=True):
    """Defaults: an engine that has done nothing yet (what a restarted worker starts from)."""

    running: int = 0  # sequences being prefilled or decoded
    waiting: int = 0  # sequences admitted and not yet scheduled
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    preemptions: int = 0  # since the engine started
    cached_prompt_tokens: int = 0  # tokens whose KV the prefix cache supplied at admission, since start
    draft_tokens_proposed: int = 0  # speculative decoding: proposed tokens the target verified, since start
    draft_tokens_accepted: int = 0  # of those, the ones it kept
