"""Verification of proposed tokens against the target's logits (Leviathan et al. 2023, Chen et al. 2023):
a sequence keeps a proposal when the target would have picked it, and the first token it would not have
picked is replaced by one drawn from the corrected distribution, so the output follows the target exactly.
"""

import numpy as np

from .sampler import SequenceSampling, inverse_cdf, process_logits, sample_row, sampling_probs


def next_token(logits: np.ndarray, proposed: int | None, state: SequenceSampling) -> int:
    """The sequence's next token from the target's raw logits [V] at one position, given the token
    proposed there (None past the proposals: the bonus token, picked as plain decoding picks it).

    The result equals `proposed` when the proposal is accepted. `state` must already hold every token
    before this position (penalty counts, grammar), so the row is processed as plain decoding would.
    Greedy: the argmax. Sampled, the proposal being a point mass q at d: accept d with probability
    min(1, p(d) / q(d)) = p(d); else draw from max(p - q, 0) normalised, i.e. p without d.
    """
    x = process_logits(logits[None], [state])[0]  # [V] bias, penalties, grammar mask
    if state.greedy:
        return int(np.argmax(x))
    if proposed is None:
        return sample_row(x, state.params, state.rng)
    p = sampling_probs(x, state.params)  # [V] float64, sums to 1
    if state.rng.random() < p[proposed]:
        return proposed
    return corrected_sample(p, proposed, state.rng)


def corrected_sample(p: np.ndarray, rejected: int, rng: np.random.Generator) -> int:
    """One draw from max(p - q, 0) / Z for q the point mass at the rejected proposal: p with it removed."""
    residual = p.copy()
    residual[rejected] = 0.0  # a rejected token had p < 1, so some mass is left
    return inverse_cdf(residual, rng.random())
