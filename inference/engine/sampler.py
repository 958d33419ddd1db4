"""Sampler: one next token per row of a [batch, vocab] logits matrix, each row with its own params and RNG."""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..events import Logprob, TokenLogprobs
from ..forward_config import SamplingParams
from ..limits import MAX_LOGIT_BIAS
from ..text.grammar import GrammarConstraint

GREEDY_EPS = 1e-5  # temperatures below this are greedy (as vLLM); also keeps logits / T finite
_NUCLEUS_FIRST_K = 64  # top-p looks at the k most likely tokens first, k growing 8x until the mass is reached
_CDF_BLOCK = 1024  # inverse CDF: block sums first, then a cumsum inside one block


class SequenceSampling:
    """Sampling state of one sequence: its params, its own Generator, and the counts the penalties need.

    The Generator is seeded from params.seed (fresh OS entropy when None) and draws exactly one number
    per non-greedy step, so a sequence's tokens depend only on its seed and its own logits.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        vocab_size: int,
        constraint: GrammarConstraint | None = None,
    ):
        self.params = params
        self.vocab_size = vocab_size
        self.constraint = constraint  # structured output: which tokens may come next
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % (1 << 64))
        self.output_counts: dict[int, int] = {}  # output token id -> times generated
        ids = np.fromiter(params.logit_bias.keys(), np.int64, len(params.logit_bias))
        bias = np.fromiter(params.logit_bias.values(), np.float32, len(params.logit_bias))
        self.bias_ids, self.bias = ids, np.where(bias <= -MAX_LOGIT_BIAS, -np.inf, bias).astype(np.float32)
        self._seen: np.ndarray | None = None  # [vocab] bool: in prompt or output (repetition penalty)
        self.seen_ids = np.empty(0, np.int64)
        if params.repetition_penalty != 1.0:
            self._seen = np.zeros(vocab_size, bool)
            self._seen[np.asarray(prompt_ids, np.int64)] = True
            self.seen_ids = np.flatnonzero(self._seen)

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_EPS

    def record(self, token_id: int) -> None:
        """Appends one output token to the counts (call after each sampled token)."""
        self.output_counts[token_id] = self.output_counts.get(token_id, 0) + 1
        if self.constraint is not None:
            self.constraint.advance(token_id)
        if self._seen is not None and not self._seen[token_id]:
            self._seen[token_id] = True
            self.seen_ids = np.append(self.seen_ids, token_id)


class SampledToken(NamedTuple):
    token_id: int
    logprobs: TokenLogprobs | None  # raw-model logprobs, when params.logprobs is not None


class Sampler:
    """Samples a batch of sequences at once; each row keeps its own params and Generator.

    Order, as vLLM's v1 sampler:
      0. logprobs are taken from the RAW logits (log_softmax of the model output, vLLM's `raw_logprobs`);
      1. logit_bias is added (-100 bans the token: -inf);
      2. repetition penalty on tokens of prompt + output (positive logits / p, negative * p);
      3. frequency and presence penalties on output tokens (OpenAI: l - c * f - (c > 0) * p);
      4. structured output: tokens the grammar does not allow next get -inf (the masks of all constrained
         rows filled together); should logit_bias have banned every token it allows, the most likely of
         those by the raw logits is kept (the format outranks bias);
      5. temperature < 1e-5: argmax of these logits (ties: lowest id), no random number used;
      6. otherwise logits / temperature -> min_p -> top_k -> top_p -> one draw from the row's Generator.
    """

    def sample(self, logits: np.ndarray, states: Sequence[SequenceSampling]) -> list[SampledToken]:
        assert logits.ndim == 2 and logits.shape[0] == len(states), (logits.shape, len(states))
        assert all(s.vocab_size == logits.shape[1] for s in states), logits.shape
        x = process_logits(logits, states)  # [B, V] float32
        # [B]; kept for greedy rows (an argmax of every row is cheaper than copying the greedy ones)
        tokens = np.argmax(x, axis=1)
        for i, s in enumerate(states):
            if not s.greedy:
                tokens[i] = sample_row(x[i], s.params, s.rng)
        logprobs = [_logprobs(logits[i], tokens[i], s.params.logprobs) for i, s in enumerate(states)]
        return [SampledToken(int(t), lp) for t, lp in zip(tokens, logprobs, strict=True)]


# -- logits processing (argmax-changing) -----------------------------------------------------------


def process_logits(logits: np.ndarray, states: Sequence[SequenceSampling]) -> np.ndarray:
    """A float32 copy of `logits` [B, V] with logit_bias, repetition, frequency, presence penalties and the
    grammar masks applied."""
    x = np.array(logits, dtype=np.float32, copy=True)  # [B, V]
    _apply_logit_bias(x, states)
    _apply_repetition_penalty(x, states)
    _apply_frequency_presence(x, states)
    _apply_constraints(x, logits, states)
    return x


def _ragged(ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) that address ids[i] in row i of a [len(ids), V] matrix, all rows at once."""
    rows = np.repeat(np.arange(len(ids)), [a.size for a in ids])
    return rows, np.concatenate(ids) if ids else np.empty(0, np.int64)


def _apply_logit_bias(x: np.ndarray, states: Sequence[SequenceSampling]) -> None:
    rows, cols = _ragged([s.bias_ids for s in states])
    if rows.size:
        x[rows, cols] += np.concatenate([s.bias for s in states])  # (row, id) pairs are unique


def _apply_repetition_penalty(x: np.ndarray, states: Sequence[SequenceSampling]) -> None:
    rows, cols = _ragged([s.seen_ids for s in states])  # empty unless the penalty is on
    if not rows.size:
        return
    p = np.array([s.params.repetition_penalty for s in states], np.float32)[rows]
    seen = x[rows, cols]
    x[rows, cols] = np.where(seen > 0, seen / p, seen * p)


def _apply_frequency_presence(x: np.ndarray, states: Sequence[SequenceSampling]) -> None:
    on = [s.params.frequency_penalty != 0 or s.params.presence_penalty != 0 for s in states]
    counted = [s.output_counts if o else {} for s, o in zip(states, on, strict=True)]
    rows, cols = _ragged([np.fromiter(c.keys(), np.int64, len(c)) for c in counted])
    if not rows.size:
        return
    counts = np.concatenate([np.fromiter(c.values(), np.float32, len(c)) for c in counted])
    freq = np.array([s.params.frequency_penalty for s in states], np.float32)[rows]
    presence = np.array([s.params.presence_penalty for s in states], np.float32)[rows]
    x[rows, cols] -= counts * freq + presence  # every counted token occurs at least once


def _apply_constraints(x: np.ndarray, logits: np.ndarray, states: Sequence[SequenceSampling]) -> None:
    rows = [i for i, s in enumerate(states) if s.constraint is not None]
    if not rows:
        return
    vocab = states[rows[0]].constraint.vocab  # one tokenizer per engine
    allowed = vocab.fill_masks([states[i].constraint for i in rows])  # [R, V] bool
    assert allowed.shape[1] == x.shape[1], (allowed.shape, x.shape)
    whole = len(rows) == len(x)  # every row constrained: mask in place, no gather and scatter
    masked = x if whole else x[rows]  # [R, V]
    np.copyto(masked, np.float32(-np.inf), where=~allowed)
    for k, i in enumerate(rows):  # only logit_bias can have banned all that may come: keep the likeliest
        if states[i].bias_ids.size and not np.isfinite(masked[k]).any():
            ids = np.flatnonzero(allowed[k])
            best = ids[np.argmax(logits[i, ids])]
            masked[k, best] = logits[i, best]
    if not whole:
        x[rows] = masked


# -- random sampling (argmax-invariant filters), row by row -----------------------------------------
# Each step is O(V) on one row that stays in cache; a 2-D pass over [64, 151936] is memory-bound and
# measured slower. Batch-wide work that is cheap per row (bias, penalties, argmax) is vectorised above.


def sample_row(row: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from one row of processed logits [V] (modified in place): T -> min_p -> top_k -> top_p."""
    row /= np.float32(params.temperature)
    apply_min_p(row, params.min_p)
    apply_top_k(row, params.top_k)
    top = row.max()
    assert np.isfinite(top), "every token of a row was filtered out"
    probs = np.exp(np.subtract(row, top, out=row), out=row)  # [V] unnormalised, max 1; filtered: exactly 0
    u = rng.random()  # the one random number of this step
    if params.top_p >= 1.0:
        return inverse_cdf(probs, u)
    cand = nucleus(probs, params.top_p)
    return int(cand[inverse_cdf(probs[cand], u)])


def sampling_probs(row: np.ndarray, params: SamplingParams) -> np.ndarray:
    """[V] float64, summing to 1: the distribution sample_row draws from for processed logits [V]
    (modified in place): T -> min_p -> top_k -> top_p, as there."""
    row /= np.float32(params.temperature)
    apply_min_p(row, params.min_p)
    apply_top_k(row, params.top_k)
    probs = np.exp(row - row.max(), dtype=np.float64)  # [V]; filtered: exactly 0
    if params.top_p < 1.0:
        keep = nucleus(probs, params.top_p)
        probs, kept = np.zeros_like(probs), probs[keep]
        probs[keep] = kept
    return probs / probs.sum()


def apply_min_p(row: np.ndarray, min_p: float) -> None:
    """In place on scaled logits [V]: drops tokens with p < min_p * p_max, i.e. x < x_max + log(min_p)."""
    if min_p > 0:
        row[row < row.max() + np.float32(np.log(min_p))] = -np.inf


def apply_top_k(row: np.ndarray, top_k: int) -> None:
    """In place on logits [V]: keeps the top_k largest and every token tied with the k-th (as vLLM)."""
    if 0 < top_k < row.size:
        kth = np.partition(row, row.size - top_k)[row.size - top_k]
        row[row < kth] = -np.inf


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Ids of the shortest most-likely-first prefix holding top_p of the mass; ties by lowest id.

    probs: [V] unnormalised, >= 0. Looks only at the k most likely tokens, k growing until they hold
    enough mass, so a peaked distribution never sorts the whole vocabulary.
    """
    target = top_p * probs.sum(dtype=np.float64)
    k = _NUCLEUS_FIRST_K
    cand = _most_likely(probs, k)  # ascending ids
    while k < probs.size and probs[cand].sum(dtype=np.float64) < target:
        k *= 8
        cand = _most_likely(probs, k)
    p = probs[cand]
    desc = np.sort(p)[::-1]
    inclusive = np.cumsum(desc, dtype=np.float64)  # the order of tied tokens cannot change these sums
    # kept: the tokens before the one that reaches top_p, and that one
    keep = min(int(np.searchsorted(inclusive, target, side="left")) + 1, p.size)
    edge = desc[keep - 1]  # probability of the last kept token; among tokens tied with it, lowest ids win
    above, tied = cand[p > edge], cand[p == edge]
    return np.concatenate([above, tied[: keep - above.size]])


def _most_likely(probs: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids of tokens with p >= the k-th largest p (more than k on ties), never a zero one."""
    kth = np.partition(probs, probs.size - k)[probs.size - k] if k < probs.size else 0.0
    return np.flatnonzero(probs >= kth) if kth > 0 else np.flatnonzero(probs > 0)


def inverse_cdf(probs: np.ndarray, u: float) -> int:
    """Index i with cdf[i-1] <= u * total < cdf[i] for probs [V] >= 0; a zero-probability i never comes out.

    Two levels (block sums, then a cumsum inside one block) instead of a float64 cumsum over V.
    """
    starts = np.arange(0, probs.size, _CDF_BLOCK)
    block_cdf = np.cumsum(np.add.reduceat(probs, starts), dtype=np.float64)  # [ceil(V / block)]
    target = u * block_cdf[-1]
    b = _search(block_cdf, target)
    local = np.cumsum(probs[starts[b] : starts[b] + _CDF_BLOCK], dtype=np.float64)
    return int(starts[b] + _search(local, target - (block_cdf[b - 1] if b else 0.0)))


def _search(cdf: np.ndarray, x: float) -> int:
    """First i with cdf[i] > x; past the end (rounding), the last i where cdf grows."""
    i = np.searchsorted(cdf, x, side="right")
    return int(min(i, np.searchsorted(cdf, cdf[-1], side="left")))


# -- logprobs (raw model distribution) --------------------------------------------------------------


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) over the last axis, float64; -inf entries are fine while one is finite."""
    top = logits.max(axis=-1, keepdims=True)
    total = np.exp(logits - top).sum(axis=-1)  # pairwise sum: relative error ~1e-7 at V = 151936
    return top[..., 0].astype(np.float64) + np.log(total, dtype=np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, float64."""
    return logits.astype(np.float64) - logsumexp(logits)[..., None]


def top_logprobs(row: np.ndarray, token_id: int, n: int) -> TokenLogprobs:
    """Raw logprob of token_id in logits [V] and of the n most likely tokens (most likely first, ties by id).

    The chosen token may also appear among the n alternatives (the API merges them).
    """
    lse = float(logsumexp(row))
    top = _top_ids(row, n)
    alts = tuple(Logprob(int(t), float(row[t]) - lse) for t in top)
    return TokenLogprobs(Logprob(int(token_id), float(row[token_id]) - lse), alts)


def _top_ids(row: np.ndarray, n: int) -> np.ndarray:
    """[min(n, V)] ids of the n largest logits, largest first; ties (also at the cut) by lowest id."""
    n = min(n, row.size)
    if n == 0:
        return np.empty(0, np.int64)
    kth = np.partition(row, row.size - n)[row.size - n]  # the n-th largest logit
    above = np.flatnonzero(row > kth)
    ids = np.concatenate([above, np.flatnonzero(row == kth)[: n - above.size]])
    return ids[np.lexsort((ids, -row[ids]))]


def _logprobs(row: np.ndarray, token_id: int, n: int | None) -> TokenLogprobs | None:
    return None if n is None else top_logprobs(row, token_id, n)
