"""Verification of proposed tokens against the target's logits (Leviathan et al. 2023, Chen et al. 2023):
a sequence keeps a proposal when the target would have picked it, and the first token it would not have
picked is replaced by one drawn from the corrected distribution, so the output follows the target exactly.
"""

import numpy as np

from .sampler import SequenceSampling, inverse_cdf, process_logits, sample_row, sampling_probs


def next_token(
    logits: np.ndarray, proposed: int | None, state: SequenceSampling, q: np.ndarray | None = None
) -> int:
    """The sequence's next token from the target's raw logits [V] at one position, given the token
    proposed there (None past the proposals: the bonus token, picked as plain decoding picks it) and the
    distribution q [V] it was drawn from (None: a point mass, a deterministic proposal).

    The result equals `proposed` when the proposal is accepted. `state` must already hold every token
    before this position (penalty counts, grammar), so the row is processed as plain decoding would.
    Greedy: the argmax. Sampled: accept d with probability min(1, p(d) / q(d)) (p(d) for a point mass);
    else draw from max(p - q, 0) normalised (p without d for a point mass).
    """
    x = process_logits(logits[None], [state])[0]  # [V] bias, penalties, grammar mask
    if state.greedy:
        return int(np.argmax(x))
    if proposed is None:
        return sample_row(x, state.params, state.rng)
    p = sampling_probs(x, state.params)  # [V] float64, sums to 1
    if q is None:
        q = np.zeros_like(p)
        q[proposed] = 1.0
    if state.rng.random() * q[proposed] < p[proposed]:
        return proposed
    return corrected_sample(p, q, state.rng)


def corrected_sample(p: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from max(p - q, 0) / Z, the target's mass the proposal distribution q lacked (a rejection
    means p(d) < q(d), so p != q and some mass is left)."""
    return inverse_cdf(np.maximum(p - q, 0.0), rng.random())
