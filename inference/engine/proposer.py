"""Proposers for speculative decoding: up to k next tokens per sequence, which the target then verifies.

Both proposers here are deterministic (the n-gram lookup, the draft model's argmax), so a proposal's
distribution q is a point mass and the rejection step reduces to: accept a proposed token d with
probability p(d), else sample from p with d removed (verify.py)."""

from collections.abc import Sequence as Seq
from typing import Protocol

import numpy as np

from .sequence import Sequence

NGRAM_MAX = 3  # prompt lookup matches the last 3 tokens first, then 2, then 1 (vLLM: prompt_lookup_max/min)
NGRAM_MIN = 1


class Proposer(Protocol):
    def propose(self, wanted: Seq[tuple[Sequence, int]]) -> dict[int, list[int]]:
        """seq_id -> at most k proposed next tokens for each (sequence, k) pair (an empty list: none)."""
        ...

    def release(self, seq: Sequence) -> None:
        """The sequence finished: drop whatever the proposer keeps for it."""
        ...


class NgramProposer:
    """Prompt lookup: the continuation of the latest earlier occurrence of the last n tokens of prompt +
    output, n from NGRAM_MAX down to NGRAM_MIN (the longest suffix that occurred before wins)."""

    def __init__(self, n_max: int = NGRAM_MAX, n_min: int = NGRAM_MIN):
        assert 1 <= n_min <= n_max, (n_min, n_max)
        self.n_max, self.n_min = n_max, n_min

    def propose(self, wanted: Seq[tuple[Sequence, int]]) -> dict[int, list[int]]:
        return {s.seq_id: ngram_lookup(s.token_ids, k, self.n_max, self.n_min) for s, k in wanted}

    def release(self, seq: Sequence) -> None:
        pass


def ngram_lookup(tokens: list[int], k: int, n_max: int = NGRAM_MAX, n_min: int = NGRAM_MIN) -> list[int]:
    """Up to k tokens that followed the latest earlier match of tokens' last n tokens (longest n first)."""
    ids = np.asarray(tokens, np.int64)  # [L]
    last = ids.size - 1
    for n in range(min(n_max, last), n_min - 1, -1):
        # match[e - (n - 1)]: the n tokens ending at e (n - 1 <= e < last) equal the last n tokens
        match = np.ones(last - n + 1, bool)
        for j in range(n):
            match &= ids[n - 1 - j : last - j] == ids[last - j]
        hits = np.flatnonzero(match)
        if hits.size:
            end = int(hits[-1]) + n - 1
            return ids[end + 1 : end + 1 + k].tolist()
    return []
