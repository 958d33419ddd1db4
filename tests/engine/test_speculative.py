"""Speculative decoding (n-gram lookup, a draft model): greedy output token for token as without it, alone
and batched, on the numpy and cpu backends; rejected proposals' KV blocks freed; stop strings, max_tokens,
grammars and seeds as without it; sampled output distributed as the target's (chi-square)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from inference.adapter import InferenceAdapter
from inference.engine import verify
from inference.engine.engine import Engine, EngineConfig
from inference.engine.proposer import Proposal, ngram_lookup
from inference.engine.sampler import SequenceSampling, process_logits, sampling_probs
from inference.errors import DraftModelError
from inference.forward_config import AdapterForwardConfig, SamplingParams
from inference.model.backends import BackendConfig
from inference.model.loaded import LoadedModel
from inference.text.grammar import GrammarSpec
from tests.engine.synthetic import SPECS, write_model

GREEDY = SamplingParams(temperature=0.0)
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef add(a, b):\n"
PROMPTS = [CODE, "The capital of France is", "1, 2, 3, 4, 5, 6,", "Once upon a time, in a land far away,"]
PROMPT = [100, 101, 102]  # synthetic ids: the target gives the draft's argmax p = 0.24 next
SAMPLES = 4000
SIGNIFICANCE = 1e-3  # the chi-square tests reject a distribution at p < 1e-3 (fixed seeds: deterministic)


def request(tok, i, text, max_tokens=16, **kw) -> AdapterForwardConfig:
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("ignore_eos", True)
    ids = tuple(tok.encode(text)) if isinstance(text, str) else tuple(text)
    return AdapterForwardConfig(request_id=f"r{i}", prompt_ids=ids, max_tokens=max_tokens, **kw)


def run(engine: Engine, configs, check=None) -> dict:
    """(request id, index) -> (token ids, text, finish reason); check(engine) after every step."""
    for c in configs:
        engine.add_request(c)
    out: dict = {}
    for _ in range(10_000):
        if not engine.has_unfinished():
            break
        for ev in engine.step():
            ids, text, _ = out.get((ev.request_id, ev.index), ([], "", None))
            assert len(ev.token_ids) == ev.completion_tokens - len(ids)
            out[(ev.request_id, ev.index)] = (ids + ev.token_ids, text + ev.text, ev.finish_reason)
        if check is not None:
            check(engine)
    assert not engine.has_unfinished()
    return out


def engines(loaded, draft=None, **kw):
    """A plain engine and one that speculates (a draft model when given, else n-gram lookup)."""
    base = dict(kv_cache_tokens=2048, max_num_seqs=8, block_size=8, draft_p_min=0.0) | kw
    plain = Engine(loaded, EngineConfig(**base))
    spec = Engine(loaded, EngineConfig(**base, ngram_draft=draft is None), draft=draft)
    return plain, spec


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[LoadedModel, LoadedModel]:
    """A tiny 2-layer llama target and its first layer alone as the draft (the same embedding, tied to the
    output): the draft's argmax is the target's on some prompts and not on others."""
    d = tmp_path_factory.mktemp("spec")
    first_layer = replace(SPECS["llama"], name="llama-first-layer", layers=1)
    return LoadedModel.load(write_model(SPECS["llama"], d)), LoadedModel.load(write_model(first_layer, d))


@pytest.fixture(scope="module")
def cpu(smollm2_path) -> InferenceAdapter:
    return InferenceAdapter.load(smollm2_path, backend=BackendConfig(name="cpu", kv_cache_dtype="f16"))


# -- greedy identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("proposer", ["ngram", "self-draft"])
def test_greedy_equals_plain_decoding_alone_and_batched(smol, proposer):
    tok = smol.tokenizer
    plain, spec = engines(smol.loaded, smol.loaded if proposer == "self-draft" else None)
    want = run(plain, [request(tok, i, p) for i, p in enumerate(PROMPTS)])
    alone = run(spec, [request(tok, 0, PROMPTS[0])])
    assert alone[("r0", 0)] == want[("r0", 0)]
    batched = run(spec, [request(tok, i, p) for i, p in enumerate(PROMPTS)])
    assert batched == want
    s = spec.stats()
    assert s.draft_tokens_accepted > 0 and s.kv_blocks_used == 0
    if proposer == "self-draft":  # a model drafting for itself is always right
        assert s.draft_tokens_accepted == s.draft_tokens_proposed
    assert spec.proposer is not None and not getattr(spec.proposer, "_seqs", {})  # released


@pytest.mark.parametrize("proposer", ["ngram", "self-draft"])
def test_greedy_equals_plain_decoding_on_the_cpu_backend(cpu, proposer):
    """The cpu backend's rows that want logits run one float32 path whatever the batch: exact here too."""
    tok = cpu.tokenizer
    plain, spec = engines(cpu.loaded, cpu.loaded if proposer == "self-draft" else None)
    configs = [request(tok, i, p, max_tokens=12) for i, p in enumerate(PROMPTS[:3])]
    assert run(spec, configs) == run(plain, configs)
    assert spec.stats().draft_tokens_accepted > 0


def test_a_different_draft_is_rejected_yet_greedy_output_is_the_targets(synthetic):
    target, draft = synthetic
    plain, spec = engines(target, draft, max_num_seqs=4)
    prompts = [[5, 9, 13, 17, 21, 9, 13], [100, 101, 102], [40] * 6, [7, 77, 177, 27]]
    configs = [request(target.tokenizer, i, p, max_tokens=20) for i, p in enumerate(prompts)]
    assert run(spec, configs) == run(plain, configs)
    s = spec.stats()
    assert 0 < s.draft_tokens_accepted < s.draft_tokens_proposed  # some kept, some rolled back


# -- KV rollback, prefix cache, stops ---------------------------------------------------------------


def test_rejected_tokens_blocks_are_freed_and_the_prefix_cache_stays_right(synthetic):
    target, draft = synthetic
    plain, spec = engines(target, draft, block_size=4)
    prompt = list(range(30, 58))  # 7 full blocks of 4

    def tables_end_at_the_sequence(engine):
        for s in engine.scheduler.running:  # no block past the last token is kept between steps
            assert -(-s.num_computed // 4) <= len(s.block_table) <= -(-s.num_tokens // 4), s.num_tokens

    free_at_start = spec.blocks.num_free
    first = run(spec, [request(target.tokenizer, 0, prompt, max_tokens=30)], tables_end_at_the_sequence)
    assert spec.blocks.num_free == free_at_start
    # the same prompt again comes from the prefix cache (blocks registered from accepted tokens only)
    again = run(spec, [request(target.tokenizer, 1, prompt + first[("r0", 0)][0][:13], max_tokens=20)])
    assert spec.stats().cached_prompt_tokens >= 28 + 12
    want = run(plain, [request(target.tokenizer, 1, prompt + first[("r0", 0)][0][:13], max_tokens=20)])
    assert again == want
    assert spec.blocks.num_free == free_at_start and spec.stats().draft_tokens_accepted > 0


@pytest.mark.parametrize("proposer", ["ngram", "self-draft"])
def test_stop_strings_eos_and_max_tokens_cut_where_plain_decoding_does(cpu, proposer):
    tok = cpu.tokenizer
    plain, spec = engines(cpu.loaded, cpu.loaded if proposer == "self-draft" else None)
    full = run(plain, [request(tok, 0, CODE, max_tokens=24)])[("r0", 0)]
    text = full[1]
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a stop string inside what the proposals run over
    chat = tok.encode(
        cpu.chat_template.render([{"role": "user", "content": "Say hello."}]),
        allow_special=True,
        add_bos=False,
    )
    configs = [
        request(tok, 0, CODE, max_tokens=24, stop=(stop,)),
        request(tok, 1, CODE, max_tokens=24, stop=(stop,), include_stop_str_in_output=True),
        request(tok, 2, CODE, max_tokens=7),
        request(tok, 3, CODE, max_tokens=24, stop_token_ids=(full[0][9],)),  # an id as EOS, mid-run
        request(tok, 4, chat, max_tokens=40, ignore_eos=False),  # ends on the model's EOS
    ]
    got, want = run(spec, configs), run(plain, configs)
    assert got == want
    assert want[("r0", 0)][2] == "stop" and stop not in want[("r0", 0)][1]
    assert len(want[("r2", 0)][0]) == 7 and want[("r2", 0)][2] == "length"
    assert len(want[("r3", 0)][0]) <= 10 and want[("r3", 0)][2] == "stop"
    assert want[("r4", 0)][2] == "stop" and want[("r4", 0)][0][-1] in tok.eog_ids
    s = spec.stats()
    assert s.draft_tokens_accepted > 0 if proposer == "self-draft" else s.draft_tokens_proposed > 0


def test_logprobs_are_the_targets(cpu):
    """On the cpu backend a row's logits do not depend on the rows beside it: the same floats."""
    tok = cpu.tokenizer
    plain, spec = engines(cpu.loaded, cpu.loaded)
    c = request(tok, 0, CODE, max_tokens=10, sampling=SamplingParams(temperature=0.0, logprobs=3))
    events = {}
    for engine in (plain, spec):
        engine.add_request(c)
        lps = []
        while engine.has_unfinished():
            for ev in engine.step():
                lps += ev.logprobs
        events[engine is spec] = lps
    assert len(events[True]) == 10 and events[True] == events[False]  # exactly: one float32 path per row


def test_structured_output_with_speculation_equals_plain(cpu):
    """Proposals are checked against the grammar before they run; the matcher moves through accepted
    tokens only (a rejected proposal would otherwise leave it in a wrong state and the output would fail
    to parse or differ)."""
    tok = cpu.tokenizer
    plain, spec = engines(cpu.loaded, cpu.loaded)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    grammar = GrammarSpec(kind="json_schema", source=json.dumps(schema))
    configs = [
        request(tok, 0, 'JSON: {"a": 1, "b": "x"}\nJSON:', max_tokens=16, grammar=grammar, ignore_eos=False),
        request(tok, 1, CODE, max_tokens=16, grammar=GrammarSpec(kind="regex", source=r"def [a-z]+\(a, b\):"),
                ignore_eos=False),
    ]  # fmt: skip
    got = run(spec, configs)
    assert got == run(plain, configs)
    assert got[("r1", 0)][1] == "def add(a, b):" or got[("r1", 0)][1].startswith("def ")
    assert spec.stats().draft_tokens_proposed > 0


# -- sampling: seeds and the target's distribution ----------------------------------------------------


def test_seeds_are_reproducible_with_speculation(synthetic):
    """The rejection step draws from each sequence's own seeded Generator: the same seed, the same output."""
    target, draft = synthetic
    sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=7)
    outs = []
    for _ in range(2):
        _, spec = engines(target, draft)
        outs.append(run(spec, [request(target.tokenizer, 0, PROMPT, max_tokens=20, n=3, sampling=sampling)]))
        assert 0 < spec.stats().draft_tokens_accepted < spec.stats().draft_tokens_proposed
    assert outs[0] == outs[1]
    assert len({tuple(v[0]) for v in outs[0].values()}) > 1  # the choices differ from each other


def _sampled_pairs(target, draft) -> list[tuple[int, int]]:
    """The first two output tokens of SAMPLES sequences (temperature 1, seeds 0, 1, ...). The first is
    sampled after the prefill as without speculation; the second is the verified one (the draft
    proposes it, the target accepts or corrects it)."""
    config = EngineConfig(
        kv_cache_tokens=4096, max_num_seqs=64, block_size=8, draft_token_budget=128, draft_p_min=0.0
    )
    engine = Engine(target, config, draft=draft)
    pairs = []
    for start in range(0, SAMPLES, 64):
        configs = [
            request(target.tokenizer, i, PROMPT, max_tokens=3, sampling=SamplingParams(seed=i))
            for i in range(start, min(start + 64, SAMPLES))
        ]
        pairs += [tuple(ids[:2]) for ids, _, _ in run(engine, configs).values()]
    s = engine.stats()
    assert s.draft_tokens_proposed == SAMPLES and 0 < s.draft_tokens_accepted < SAMPLES  # each 2nd token
    return pairs


def _target_pair_probs(target) -> dict[tuple[int, int], float]:
    """p(t1) p(t2 | t1) from the target's own forward, for the pairs expected at least 5 times in SAMPLES."""
    adapter, cells = InferenceAdapter(target), {}
    first = _probs(adapter, PROMPT)
    for t1 in np.flatnonzero(first * SAMPLES >= 5):
        second = first[t1] * _probs(adapter, [*PROMPT, int(t1)])
        cells |= {(int(t1), int(t2)): float(second[t2]) for t2 in np.flatnonzero(second * SAMPLES >= 5)}
    return cells


def _probs(adapter, prompt) -> np.ndarray:
    """[V] the distribution temperature 1 samples from after `prompt`."""
    n = adapter.tokenizer.vocab_size
    state = SequenceSampling(SamplingParams(temperature=1.0), prompt, n)
    return sampling_probs(process_logits(adapter.prefill(prompt)[None, :n], [state])[0], state.params)


def _chi_square_p(pairs: list[tuple[int, int]], cells: dict[tuple[int, int], float]) -> float:
    """p-value of Pearson's chi-square of the pairs against the cells' probabilities, the rest pooled in
    one cell. Its survival function is the regularized upper incomplete gamma Q(df / 2, chi2 / 2)."""
    seen = {c: 0 for c in cells}
    for pair in pairs:
        if pair in seen:
            seen[pair] += 1
    obs = np.array([*seen.values(), len(pairs) - sum(seen.values())], np.float64)
    exp = np.array([*cells.values(), 1.0 - sum(cells.values())]) * len(pairs)
    if exp[-1] < 1e-9:  # the cells hold all the mass: no pooled cell
        obs, exp = obs[:-1], exp[:-1]
    chi2, df = float(((obs - exp) ** 2 / exp).sum()), obs.size - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(chi2 / 2)))


def test_sampled_tokens_follow_the_targets_distribution(synthetic):
    """The first two tokens over 4000 seeds against the target's p(t1) p(t2 | t1), chi-square at p > 1e-3.
    The draft samples its proposal from its own softmax q, often rejected: the correction step (a draw
    from max(p - q, 0)) picks many of the second tokens."""
    target, draft = synthetic
    p = _chi_square_p(_sampled_pairs(target, draft), _target_pair_probs(target))
    assert p > SIGNIFICANCE, f"p = {p:.2e}: speculative samples do not follow the target"


def test_without_the_correction_step_the_distribution_test_fails(synthetic, monkeypatch):
    """The test above can fail: sampling from p itself after a rejection (no correction) puts too much
    mass on the draft's tokens, and the same chi-square rejects it."""
    target, draft = synthetic
    monkeypatch.setattr(verify, "corrected_sample", lambda p, _, rng: verify.inverse_cdf(p, rng.random()))
    p = _chi_square_p(_sampled_pairs(target, draft), _target_pair_probs(target))
    assert p < SIGNIFICANCE, f"p = {p:.2e}: the test cannot tell a wrong sampler"


def _point_mass_draws(row: np.ndarray, proposed: int, n: int) -> np.ndarray:
    """[V] counts of next_token over n draws for a deterministic proposal (q a point mass), seed 0."""
    state = SequenceSampling(SamplingParams(seed=0), [1], row.size)
    return np.bincount([verify.next_token(row, proposed, state) for _ in range(n)], minlength=row.size)


def _counts_p(counts: np.ndarray, probs: np.ndarray) -> float:
    cells = {(int(i), 0): float(probs[i]) for i in np.flatnonzero(probs * counts.sum() >= 5)}
    return _chi_square_p([(int(t), 0) for t in np.repeat(np.arange(counts.size), counts)], cells)


def test_a_deterministic_proposal_keeps_the_targets_distribution(monkeypatch):
    """The n-gram path (q a point mass at d): 3000 draws of next_token for a proposal with p(d) = 0.3
    against p, chi-square p > 1e-3; without the correction (a draw from p after a rejection) p < 1e-3."""
    logits = np.log(np.array([0.3, 0.25, 0.2, 0.1, 0.1, 0.05], np.float32))
    probs = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    assert _counts_p(_point_mass_draws(logits, 0, 3000), probs) > SIGNIFICANCE
    monkeypatch.setattr(verify, "corrected_sample", lambda p, _, rng: verify.inverse_cdf(p, rng.random()))
    assert _counts_p(_point_mass_draws(logits, 0, 3000), probs) < SIGNIFICANCE


# -- proposers, vocabulary, load ---------------------------------------------------------------------


def test_ngram_lookup_takes_the_latest_longest_match():
    assert ngram_lookup([1, 2, 3, 4, 1, 2, 3], 3) == [4, 1, 2]
    assert ngram_lookup([1, 2, 3, 9, 2, 3, 7, 2, 3], 2) == [7, 2]  # the latest of two matches
    assert ngram_lookup([8, 2, 3, 5, 9, 3], 3) == [5, 9, 3]  # no 3- or 2-gram: the 1-gram [3]
    assert ngram_lookup([1, 2, 1, 2, 1, 2], 4) == [1, 2]  # up to the end
    assert ngram_lookup([5, 6, 7], 3) == [] and ngram_lookup([1], 3) == []


def test_a_draft_with_another_vocabulary_stops_start_up(smol, synthetic):
    target, draft = synthetic
    with pytest.raises(DraftModelError, match="the target has 49152 tokens, the draft 273"):
        Engine(smol.loaded, EngineConfig(kv_cache_tokens=512), draft=draft)


def test_k_goes_down_then_off_as_the_batch_grows(cpu):
    config = EngineConfig(num_draft_tokens=4, draft_token_budget=8)
    assert [config.draft_len(n) for n in (1, 2, 3, 4, 8, 9, 16)] == [4, 4, 2, 2, 1, 0, 0]
    _, spec = engines(cpu.loaded, cpu.loaded, max_num_seqs=16, draft_token_budget=8)
    run(spec, [request(cpu.tokenizer, i, CODE, max_tokens=4) for i in range(16)])
    assert spec.stats().draft_tokens_proposed == 0  # 16 decoding at once: no speculation


class _AlwaysWrong:
    """Proposes token 0 (never SmolLM2's greedy choice after the test prompt) as often as asked."""

    def __init__(self):
        self.asked: list[int] = []

    def propose(self, wanted):
        self.asked += [k for _, k in wanted]
        return {s.seq_id: Proposal([0] * k) for s, k in wanted}

    def release(self, seq):
        pass


def test_a_sequence_whose_proposals_fail_proposes_fewer(cpu):
    """K per sequence: 1 fewer after a rejection, down to 1; a self-draft (always right) stays at K."""
    plain, spec = engines(cpu.loaded)
    spec.proposer = wrong = _AlwaysWrong()
    configs = [request(cpu.tokenizer, 0, CODE, max_tokens=8)]
    assert run(spec, configs) == run(plain, configs)
    assert wrong.asked == [4, 3, 2, 1, 1, 1]  # the last step has room for none (max_tokens)
    _, right = engines(cpu.loaded, cpu.loaded)
    run(right, [request(cpu.tokenizer, 0, CODE, max_tokens=16)])
    assert (
        right.stats().draft_tokens_proposed == right.stats().draft_tokens_accepted == 3 * 4
    )  # 16 = 1 + 3 (4 + 1)


def test_chunked_prefill_preemption_and_n_beside_verification(synthetic):
    """Verifying rows share forwards with prefill chunks (7 tokens a step), a cache of 12 blocks of 4
    preempts, n = 2 choices fork, the prefix cache serves a repeated prompt: greedy output as plain."""
    target, draft = synthetic
    tight = dict(max_num_batched_tokens=7, block_size=4, kv_cache_tokens=48, max_num_seqs=4)
    prompts = [list(range(30, 44)), [100, 101, 102], list(range(30, 44)), [7, 77, 177, 27, 7, 77]]
    configs = [request(target.tokenizer, i, p, max_tokens=14, n=1 + i % 2) for i, p in enumerate(prompts)]
    want = run(Engine(target, EngineConfig(max_num_batched_tokens=512, kv_cache_tokens=2048)), configs)
    spec = Engine(target, EngineConfig(**tight, draft_p_min=0.0), draft=draft)
    assert run(spec, configs) == want
    s = spec.stats()
    assert s.preemptions > 0 and s.cached_prompt_tokens > 0 and 0 < s.draft_tokens_accepted
    assert s.kv_blocks_used == 0 and not spec.proposer._seqs


def test_the_draft_proposes_only_what_it_is_sure_of(synthetic, tmp_path):
    """draft_p_min: an unrelated random draft (tiny qwen2: its argmax has p < 0.5 mostly) proposes fewer
    tokens at 0.5 than at 0 and none at 1; the output is the target's throughout."""
    target, _ = synthetic
    unsure = LoadedModel.load(write_model(SPECS["qwen2"], tmp_path))
    configs = [request(target.tokenizer, i, p, max_tokens=12) for i, p in enumerate([[5, 9, 13], [40] * 6])]
    want = run(Engine(target, EngineConfig(kv_cache_tokens=2048)), configs)
    proposed = []
    for p_min in (0.0, 0.5, 1.0):
        _, spec = engines(target, unsure, draft_p_min=p_min)
        assert run(spec, configs) == want
        proposed.append(spec.stats().draft_tokens_proposed)
    assert proposed[0] > proposed[1] > proposed[2] == 0, proposed


def test_penalties_and_logit_bias_see_the_accepted_tokens_only(cpu):
    """Each verified row is processed with the counts of the tokens accepted before it: with repetition,
    frequency and presence penalties and a logit_bias the greedy output is still plain decoding's. An
    abort mid-run frees the sequence's blocks and the draft's copy of it."""
    tok = cpu.tokenizer
    plain, spec = engines(cpu.loaded, cpu.loaded)
    sampling = SamplingParams(
        temperature=0.0, repetition_penalty=1.2, frequency_penalty=0.4, presence_penalty=0.3,
        logit_bias={tok.encode(" return")[0]: -3.0},
    )  # fmt: skip
    configs = [request(tok, i, p, max_tokens=16, sampling=sampling) for i, p in enumerate(PROMPTS[:2])]
    got = run(spec, configs)
    assert got == run(plain, configs)
    unpenalized = run(plain, [request(tok, 0, PROMPTS[0], max_tokens=16)])
    assert got[("r0", 0)] != unpenalized[("r0", 0)]  # the penalties changed the output
    assert spec.stats().draft_tokens_accepted > 0
    spec.add_request(request(tok, 9, CODE, max_tokens=16))
    for _ in range(3):
        spec.step()
    spec.abort("r9")
    assert spec.stats().kv_blocks_used == 0 and not spec.proposer._seqs and not spec.has_unfinished()
