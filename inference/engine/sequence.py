"""Sequence: one choice of one request as it moves through the scheduler and the KV cache."""

import enum
import itertools

from ..forward_config import AdapterForwardConfig
from ..text.output_text import OutputText
from .block_manager import BlockHash, block_hashes, salted_root

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request: AdapterForwardConfig, index: int, sampling, text: OutputText):
        self.seq_id = next(_ids)
        self.request = request
        self.index = index  # choice index (n > 1)
        self.sampling = sampling  # SequenceSampling: per-sequence RNG and penalty counts
        self.text = text
        self.token_ids: list[int] = list(request.prompt_ids)  # prompt, then output
        self.prompt_len = len(request.prompt_ids)
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.block_table: list[int] = []
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.followers: list[Sequence] = []  # n > 1: siblings forked from this one after prefill
        self.prompt_logprobs_sent = False
        self.prompt_lp: list | None = None  # prompt logprobs gathered over prefill chunks
        self.hashes: list[BlockHash] = []  # prefix-cache hashes of token_ids' full blocks, as far as needed
        self.num_registered = 0  # leading blocks of block_table registered in the prefix cache
        self.num_cached_prompt = 0  # prompt tokens the prefix cache supplied when the sequence started
        self.draft_len = 0  # speculative decoding: tokens to propose next (0: not yet verified, the most)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_pending(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return self.num_tokens - self.num_computed

    def block_hashes(self, num_blocks: int, block_size: int) -> list[BlockHash]:
        """Hashes of the first num_blocks full blocks of token_ids (computed once, extended on demand)."""
        if len(self.hashes) < num_blocks:
            parent = self.hashes[-1] if self.hashes else salted_root(self.request.cache_salt)
            head = self.token_ids[: num_blocks * block_size]
            self.hashes += block_hashes(head, block_size, start=len(self.hashes), parent=parent)
        return self.hashes[:num_blocks]

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs were asked for and not sent yet: every prompt position's logits are needed
        (so no prompt KV may come from the prefix cache)."""
        return self.request.prompt_logprobs is not None and not self.prompt_logprobs_sent

    def reset_for_recompute(self) -> None:
        """After preemption: the KV blocks are gone; prompt + output so far will be prefilled again."""
        self.num_computed = 0
        self.num_registered = 0
        self.status = Status.WAITING
        if not self.prompt_logprobs_sent:
            self.prompt_lp = None
