"""Proposers for speculative decoding: up to k next tokens per sequence, which the target then verifies.

A proposal carries the distribution q each token was drawn from (the draft model sampling a sampled
sequence), or none: the token is deterministic (n-gram lookup, the draft's argmax), q a point mass.
verify.py accepts d with probability min(1, p(d) / q(d)), else draws from max(p - q, 0)."""

from collections.abc import Sequence as Seq
from typing import NamedTuple, Protocol

import numpy as np

from .sequence import Sequence

NGRAM_MAX = 3  # prompt lookup matches the last 3 tokens first, then 2, then 1 (vLLM: prompt_lookup_max/min)
NGRAM_MIN = 1


class Proposal(NamedTuple):
    tokens: list[int]
    probs: np.ndarray | None = None  # [len(tokens), V] float64: q of each token; None: point masses


class Proposer(Protocol):
    def propose(self, wanted: Seq[tuple[Sequence, int]]) -> dict[int, Proposal]:
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

    def propose(self, wanted: Seq[tuple[Sequence, int]]) -> dict[int, Proposal]:
        return {s.seq_id: Proposal(ngram_lookup(s.token_ids, k, self.n_max, self.n_min)) for s, k in wanted}

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
