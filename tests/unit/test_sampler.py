"""Sampler: seeded determinism, batch independence, filters, penalties, raw logprobs, distribution."""

import numpy as np
import pytest

from inference.engine.sampler import (
    Sampler,
    SequenceSampling,
    apply_top_k,
    inverse_cdf,
    log_softmax,
    nucleus,
    process_logits,
)
from inference.forward_config import SamplingParams as SP

V = 1000
FULL_V = 151936  # Qwen2 vocabulary
PROMPT = (1, 2, 3)
SAMPLER = Sampler()


@pytest.fixture(autouse=True)
def no_float_warnings():
    """Every NaN, overflow or divide-by-zero in the sampler fails the test (underflow in exp is fine)."""
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        yield


def fixed_logits(steps: int, vocab: int = V, scale: float = 2.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((steps, vocab)) * scale).astype(np.float32)


def state(params: SP, vocab: int = V, prompt=PROMPT) -> SequenceSampling:
    return SequenceSampling(params, prompt, vocab)


def generate(params: SP, logits: np.ndarray) -> list[int]:
    """One sequence, one step per row of logits [steps, V], recording each token as the engine does."""
    s, out = state(params, logits.shape[1]), []
    for row in logits:
        out.append(SAMPLER.sample(row[None], [s])[0].token_id)
        s.record(out[-1])
    return out


def reference_log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


RICH = SP(
    temperature=0.9,
    top_p=0.95,
    top_k=200,
    min_p=0.01,
    repetition_penalty=1.1,
    frequency_penalty=0.3,
    seed=1234,
)


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_tokens_in_100_of_100_runs():
    logits = fixed_logits(32)
    runs = {tuple(generate(RICH, logits)) for _ in range(100)}
    assert len(runs) == 1
    assert len(set(runs.pop())) > 8  # the tokens really are sampled, not a constant


def test_different_seeds_give_different_tokens():
    logits = fixed_logits(32)
    runs = {tuple(generate(SP(temperature=1.0, seed=seed), logits)) for seed in range(10)}
    assert len(runs) == 10


def test_unseeded_sequences_use_fresh_entropy():
    logits = fixed_logits(32)
    assert generate(SP(temperature=1.0), logits) != generate(SP(temperature=1.0), logits)


def test_negative_and_huge_seeds_are_accepted():
    logits = fixed_logits(8)
    assert generate(SP(seed=-1), logits) == generate(SP(seed=-1), logits)
    assert len(generate(SP(seed=2**63 - 1), logits)) == 8


def test_seeded_row_is_independent_of_its_batch():
    alone_params = SP(temperature=0.8, top_p=0.9, presence_penalty=0.5, logprobs=3, seed=7)
    others = [
        SP(temperature=1.0, seed=1),
        SP(temperature=1.0),  # unseeded
        SP(temperature=0.0),  # greedy
        SP(temperature=1.5, top_k=5, seed=2),
        SP(min_p=0.2, repetition_penalty=1.3, seed=3),
        SP(temperature=0.5, top_p=0.5, logprobs=5),
        SP(logit_bias={4: 5.0}, frequency_penalty=1.0),
    ]
    steps = fixed_logits(32 * 8, seed=1).reshape(32, 8, V)  # [step, row, V]
    alone = generate(alone_params, steps[:, 3])
    batch = [state(p) for p in others[:3] + [alone_params] + others[3:]]  # the seeded row sits at index 3
    together = []
    for logits in steps:
        picked = SAMPLER.sample(logits, batch)
        for s, t in zip(batch, picked, strict=True):
            s.record(t.token_id)
        together.append(picked[3].token_id)
    assert together == alone


def test_greedy_rows_draw_no_random_numbers_and_random_rows_draw_one():
    greedy, sampled = state(SP(temperature=0.0, seed=5)), state(SP(temperature=1.0, seed=5))
    before = greedy.rng.bit_generator.state
    SAMPLER.sample(fixed_logits(2), [greedy, sampled])
    assert greedy.rng.bit_generator.state == before
    twin = np.random.default_rng(5)
    twin.random()
    assert sampled.rng.bit_generator.state == twin.bit_generator.state


# -- greedy and filters -----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_temperature_zero_is_argmax_with_lowest_id_on_ties(temperature):
    logits = fixed_logits(16)
    logits[5, [10, 700]] = logits[5].max() + 1.0  # a tie: the lower id wins
    picked = SAMPLER.sample(logits, [state(SP(temperature=temperature)) for _ in range(16)])
    expected = logits.argmax(axis=1)
    assert [t.token_id for t in picked] == expected.tolist()
    assert picked[5].token_id == 10


def test_top_k_1_is_greedy():
    logits = fixed_logits(50)
    picked = SAMPLER.sample(logits, [state(SP(temperature=1.5, top_k=1, seed=i)) for i in range(50)])
    assert [t.token_id for t in picked] == logits.argmax(axis=1).tolist()


def test_top_p_tiny_always_picks_the_argmax():
    logits = fixed_logits(200)
    picked = SAMPLER.sample(logits, [state(SP(temperature=2.0, top_p=1e-6, seed=i)) for i in range(200)])
    assert [t.token_id for t in picked] == logits.argmax(axis=1).tolist()


def test_top_k_keeps_every_token_tied_with_the_kth():
    row = np.array([1.0, 3.0, 2.0, 2.0, 0.0], np.float32)
    apply_top_k(row, 2)
    assert np.isneginf(row).tolist() == [True, False, False, False, True]


def test_nucleus_keeps_the_shortest_prefix_and_breaks_ties_by_lowest_id():
    assert nucleus(np.ones(10), 0.25).tolist() == [0, 1, 2]  # 0.2 < 0.25 <= 0.3
    probs = np.array([0.1, 0.5, 0.3, 0.1], np.float32)
    assert sorted(nucleus(probs, 0.45).tolist()) == [1]
    assert sorted(nucleus(probs, 0.75).tolist()) == [1, 2]
    assert sorted(nucleus(probs, 0.85).tolist()) == [0, 1, 2]  # of the tied 0.1s, the lower id


def test_inverse_cdf_never_returns_a_zero_probability_token():
    probs = np.zeros(5000, np.float32)
    probs[[3, 1500, 4095]] = [0.5, 0.25, 0.25]
    for u in [0.0, 0.49, 0.5, 0.74, 0.75, 1.0 - 2**-53]:
        assert inverse_cdf(probs, u) in {3, 1500, 4095}
    assert [inverse_cdf(probs, u) for u in (0.1, 0.6, 0.9)] == [3, 1500, 4095]


def test_min_p_samples_exactly_the_allowed_set():
    probs = np.r_[np.array([0.3, 0.25, 0.2, 0.15, 0.1]) * 0.9, np.full(45, 0.1 / 45)]  # tail p = 0.0022
    logits = np.log(probs).astype(np.float32)[None].repeat(3000, axis=0)
    drawn = SAMPLER.sample(logits, [state(SP(min_p=0.05, seed=i), 50) for i in range(3000)])
    assert {t.token_id for t in drawn} == {0, 1, 2, 3, 4}  # p >= 0.05 * 0.27
    control = SAMPLER.sample(logits, [state(SP(seed=i), 50) for i in range(3000)])
    assert len({t.token_id for t in control}) > 30


def test_min_p_applies_after_temperature():
    logits = np.log(np.array([[0.5, 0.1, 0.4]] * 2000)).astype(np.float32)  # p1 / p_max = 0.2
    cold = SAMPLER.sample(logits, [state(SP(min_p=0.3, seed=i), 3) for i in range(2000)])
    hot = SAMPLER.sample(logits, [state(SP(min_p=0.3, temperature=2.0, seed=i), 3) for i in range(2000)])
    assert {t.token_id for t in cold} == {0, 2}
    assert {t.token_id for t in hot} == {0, 1, 2}  # at T = 2 the ratio is sqrt(0.2) = 0.45


# -- logits processing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SP(
            repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.25, logit_bias={4: 2.5, 7: -1.5}
        ),
        SP(repetition_penalty=0.8, frequency_penalty=-0.7, presence_penalty=-1.0),
        SP(presence_penalty=2.0),
    ],
)
def test_penalties_follow_the_formula(params):
    prompt, output = [1, 2, 3, 3], [3, 4, 4, 5]
    s = state(params, 16, prompt)
    for t in output:
        s.record(t)
    raw = np.linspace(-3.0, 4.5, 16).astype(np.float32)[None]  # negative and positive logits
    expected = raw[0].astype(np.float64)
    for token, bias in params.logit_bias.items():  # 1. bias
        expected[token] += bias
    for token in set(prompt) | set(output):  # 2. repetition on prompt + output
        p = params.repetition_penalty
        expected[token] = expected[token] / p if expected[token] > 0 else expected[token] * p
    for token in set(output):  # 3. OpenAI: l - c * frequency - (c > 0) * presence
        expected[token] -= output.count(token) * params.frequency_penalty + params.presence_penalty
    got = process_logits(raw, [s])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    untouched = np.setdiff1d(np.arange(16), [1, 2, 3, 4, 5, *params.logit_bias])
    assert np.array_equal(got[untouched], raw[0, untouched])


def test_penalties_in_a_batch_touch_only_their_own_row():
    a, b = state(SP(repetition_penalty=2.0), 16, [1]), state(SP(frequency_penalty=1.0), 16, [2])
    b.record(9)
    raw = np.full((2, 16), 3.0, np.float32)
    got = process_logits(raw, [a, b])
    assert np.flatnonzero(got[0] != 3.0).tolist() == [1] and got[0, 1] == 1.5
    assert np.flatnonzero(got[1] != 3.0).tolist() == [9] and got[1, 9] == 2.0


def test_logit_bias_plus_100_forces_and_minus_100_bans():
    logits = fixed_logits(100)
    forced = SAMPLER.sample(
        logits, [state(SP(temperature=1.0, logit_bias={17: 100.0}, seed=i)) for i in range(100)]
    )
    assert {t.token_id for t in forced} == {17}
    top = int(logits[0].argmax())
    banned = [state(SP(temperature=2.0, logit_bias={top: -100.0}, seed=i)) for i in range(500)]
    drawn = SAMPLER.sample(np.repeat(logits[:1], 500, axis=0), banned)
    assert top not in {t.token_id for t in drawn}
    assert (
        SAMPLER.sample(logits[:1], [state(SP(temperature=0.0, logit_bias={top: -100.0}))])[0].token_id != top
    )
    assert np.isneginf(process_logits(logits[:1], banned[:1])[0, top])


# -- logprobs ---------------------------------------------------------------------------------------


def test_logprobs_are_the_raw_log_softmax_most_likely_first():
    logits = fixed_logits(6)
    params = SP(temperature=0.7, top_k=5, repetition_penalty=1.5, logit_bias={3: 4.0}, logprobs=5, seed=3)
    picked = SAMPLER.sample(logits, [state(params) for _ in range(6)])
    for row, token in zip(logits, picked, strict=True):
        ref = reference_log_softmax(row)
        lp = token.logprobs
        assert lp.chosen.token_id == token.token_id
        assert abs(lp.chosen.logprob - ref[token.token_id]) < 1e-6
        assert [a.token_id for a in lp.top] == np.argsort(-ref, kind="stable")[:5].tolist()
        np.testing.assert_allclose([a.logprob for a in lp.top], np.sort(ref)[::-1][:5], atol=1e-6)
    np.testing.assert_allclose(
        log_softmax(logits), np.array([reference_log_softmax(r) for r in logits]), atol=1e-6
    )


def test_logprobs_zero_gives_only_the_chosen_token_and_none_gives_nothing():
    logits = fixed_logits(2)
    zero, none = SAMPLER.sample(logits, [state(SP(logprobs=0, seed=1)), state(SP(seed=1))])
    assert zero.logprobs.top == () and zero.logprobs.chosen.token_id == zero.token_id
    assert none.logprobs is None


def test_logprobs_with_ties_list_lower_ids_first():
    row = np.zeros((1, 8), np.float32)
    row[0, [6, 2]] = 1.0
    (t,) = SAMPLER.sample(row, [state(SP(temperature=0.0, logprobs=3), 8)])
    assert [a.token_id for a in t.logprobs.top] == [2, 6, 0]
    assert t.token_id == 2


# -- numerical safety at the real vocabulary size ---------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SP(temperature=2.0, logprobs=20),
        SP(temperature=2.0, top_p=1e-6),
        SP(temperature=2.0, top_p=0.999, top_k=100_000, min_p=1e-4, logit_bias={0: -100.0, 1: -100.0}),
        SP(temperature=1e-4, repetition_penalty=1.5, logprobs=3),  # tiny but not greedy: logits / T
    ],
)
def test_extreme_settings_give_valid_tokens_at_full_vocab(params):
    logits = fixed_logits(4, FULL_V, scale=30.0)
    logits[2] = 0.0  # all equal
    logits[3, 0] = -np.inf  # the model itself masked a token
    picked = SAMPLER.sample(logits, [state(SP(**{**_fields(params), "seed": i}), FULL_V) for i in range(4)])
    assert all(0 < t.token_id < FULL_V for t in picked[:2] + picked[3:]) and 0 <= picked[2].token_id < FULL_V
    if params.top_p < 1e-3 or params.temperature < 1e-3:
        assert [picked[0].token_id, picked[1].token_id, picked[3].token_id] == logits[[0, 1, 3]].argmax(
            1
        ).tolist()
    if params.top_p < 1e-3:
        assert picked[2].token_id == 0  # all-equal logits: the lowest id
    for t in picked:
        if t.logprobs is not None:
            assert np.isfinite(t.logprobs.chosen.logprob) and all(
                np.isfinite(a.logprob) for a in t.logprobs.top
            )


def _fields(params: SP) -> dict:
    return {f: getattr(params, f) for f in params.__struct_fields__}


# -- distribution -----------------------------------------------------------------------------------

P5 = np.array([0.4, 0.25, 0.2, 0.1, 0.05])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SP(), P5),
        (SP(temperature=0.5), P5**2 / (P5**2).sum()),
        (SP(top_k=3), np.r_[P5[:3], 0, 0] / P5[:3].sum()),
        (SP(top_p=0.7), np.r_[P5[:3], 0, 0] / P5[:3].sum()),  # 0.65 < 0.7: the third token is kept
    ],
)
def test_sampling_distribution_matches_the_probabilities(params, expected):
    """Chi-square over 20,000 draws (100 seeded sequences x 200 steps); df <= 4, p = 0.001 is at 18.5."""
    states = [state(SP(**{**_fields(params), "seed": i}), 5) for i in range(100)]
    logits = np.log(P5).astype(np.float32)[None].repeat(100, axis=0)
    counts = np.zeros(5)
    for _ in range(200):
        for t in SAMPLER.sample(logits, states):
            counts[t.token_id] += 1
    allowed = expected > 0
    assert counts[~allowed].sum() == 0
    want = expected[allowed] * counts.sum()
    chi2 = ((counts[allowed] - want) ** 2 / want).sum()
    assert chi2 < 25.0, (counts, want)


# -- JSON mode ------------------------------------------------------------------------------------------

TINY_JSON = [b"{", b"}", b"x", b' "', b"{}", None]  # id 5: end of generation


class TinyTokenizer:
    """What GrammarVocabulary reads of a tokenizer, over TINY_JSON (one token per character)."""

    vocab_size, eog_ids, bos_id = len(TINY_JSON), frozenset([5]), None

    def text_token_bytes(self):
        return list(TINY_JSON)

    def token_bytes(self, token_id):
        return TINY_JSON[token_id] or b"<eos>"

    def encode(self, text, add_bos=False):
        return [TINY_JSON.index(c.encode()) for c in text]


def json_state(params: SP) -> SequenceSampling:
    from inference.text.grammar import GrammarSpec, GrammarVocabulary

    constraint = GrammarVocabulary(TinyTokenizer()).constraint(GrammarSpec(kind="json_object"))
    return SequenceSampling(params, PROMPT, len(TINY_JSON), constraint)


@pytest.mark.parametrize("params", [SP(temperature=0.0), SP(temperature=1.5, seed=3)])
def test_json_mode_samples_only_what_continues_the_object(params):
    logits = np.array([[0, 0, 9, 0, 0, 9]], np.float32)  # "x" and EOG are the model's favourites
    s = json_state(params)
    first = SAMPLER.sample(logits, [s])[0].token_id
    assert first in (0, 4)  # "{" or "{}"
    s.record(first)
    rest = {0: {1, 3}, 4: {5}}[first]  # after "{": "}" or ' "'; after "{}": only EOG
    assert SAMPLER.sample(logits, [s])[0].token_id in rest


def test_json_mode_rows_and_free_rows_sample_together():
    """A batch mixing constrained and unconstrained rows: only the constrained ones are masked."""
    logits = np.array([[0, 0, 9, 0, 0, 1]] * 3, np.float32)  # "x" is the favourite
    states = [
        json_state(SP(temperature=0.0)),
        SequenceSampling(SP(temperature=0.0), PROMPT, 6),
        json_state(SP(temperature=0.0)),
    ]
    assert [t.token_id for t in SAMPLER.sample(logits, states)] == [0, 2, 0]


def test_json_mode_outranks_a_logit_bias_that_bans_every_allowed_token():
    logits = np.array([[1.0, 0, 5, 0, 2.0, 0]], np.float32)
    s = json_state(SP(temperature=0.0, logit_bias={0: -100, 4: -100}))
    picked = SAMPLER.sample(logits, [s])[0]
    assert picked.token_id == 4  # the likelier of the two allowed tokens by the raw logits
    assert picked.logprobs is None
