"""The NumPy engine against transformers running the same GGUF: last-position logits and 32 greedy tokens."""

import numpy as np
import pytest

from inference.adapter import InferenceAdapter

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

LOGIT_TOL = 1e-2  # max |Δ| of fp32 logits: both dequantize the same blocks, only summation order differs
GREEDY_TOKENS = 32

LONG = (
    "The history of the printing press begins long before Johannes Gutenberg. Woodblock printing was "
    "practised in China by the seventh century, and movable type made of baked clay was described by the "
    "scholar Shen Kuo, who credited an artisan named Bi Sheng with its invention around 1040. Korean "
    "printers later cast type in bronze, and the Jikji, a Buddhist text printed in 1377, is the oldest "
    "surviving book made with movable metal type. In Europe, Gutenberg combined several existing "
    "technologies: a screw press adapted from wine and olive presses, an oil-based ink that adhered to "
    "metal, and a hand mould that let a caster produce large numbers of identical letters quickly. His "
    "workshop in Mainz completed the famous Bible around 1455, with roughly 180 copies, some on vellum "
    "and most on paper. Within fifty years, presses were operating in more than two hundred European "
    "cities, and historians estimate that several million books had been printed by 1500. The effects "
    "were profound. Prices fell, literacy spread beyond the clergy and the aristocracy, and scholars "
    "could compare identical copies of a text rather than relying on manuscripts full of scribal errors. "
    "Pamphlets carried the arguments of the Reformation across borders in weeks rather than years, and "
    "scientific results could be reproduced and checked by readers who never met the author. Some "
    "historians argue that the press changed habits of thought, encouraging standardised spelling, "
    "numbered pages and indexes; others caution that manuscript culture persisted for centuries. "
    "Summarise the main argument of this passage in two sentences."
)
CODE = (
    "import heapq\n\n\n"
    "def dijkstra(graph: dict[str, dict[str, int]], start: str) -> dict[str, int]:\n"
    '    """Shortest distances from start to every reachable node."""\n'
    "    dist = {start: 0}\n"
    "    queue = [(0, start)]\n"
    "    while queue:\n"
    "        d, node = heapq.heappop(queue)\n"
    "        if d > dist.get(node, float('inf')):\n"
    "            continue\n"
    "        for nxt, w in graph[node].items():\n"
)
CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PROMPTS = {
    "short": "The capital of France is",
    "long": LONG,
    "code": CODE,
    "chat": CHAT,
    "french": "Il était une fois, dans un petit village au bord de la mer, une vieille femme qui",
    "chinese": "请用三句话介绍一下长城的历史。",
}
MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b"]
PATH_FIXTURE = {"smollm2-135m": "smollm2_path", "qwen2.5-coder-0.5b": "qwen05_path"}


@pytest.fixture(scope="session", params=MODELS)
def pair(request):
    """(name, our adapter, the oracle) for one model; pytest runs all tests of one model before the next."""
    from tests.engine.oracle import Oracle  # torch + transformers only when an oracle test runs

    name = request.param
    path = request.getfixturevalue(PATH_FIXTURE[name])
    # SmolLM2 reuses the session's engine adapter from conftest instead of dequantizing it twice
    adapter = request.getfixturevalue("smol") if name == "smollm2-135m" else InferenceAdapter.load(path)
    return name, adapter, Oracle(path)


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[oracle] {line}", end="  ")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_last_logits_match_oracle(pair, prompt, capsys):
    name, adapter, oracle = pair
    ids = oracle.encode(PROMPTS[prompt])
    ours = adapter.prefill(ids)
    ref = oracle.last_logits(ids)
    assert ours.shape == ref.shape == (adapter.vocab_size,)
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    delta = float(np.abs(ours - ref).max())
    report(capsys, f"{name:<20} {prompt:<8} {len(ids):>4} tokens  max|Δ logits| = {delta:.3e}")
    assert delta <= LOGIT_TOL, f"{name} {prompt}: max |Δ| {delta:.3e} > {LOGIT_TOL}"
    assert int(np.argmax(ours)) == int(np.argmax(ref))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_match_oracle(pair, prompt, capsys):
    name, adapter, oracle = pair
    ids = oracle.encode(PROMPTS[prompt])
    ours = adapter.greedy(ids, GREEDY_TOKENS)
    ref = oracle.greedy(ids, GREEDY_TOKENS)
    report(capsys, f"{name:<20} {prompt:<8} greedy {GREEDY_TOKENS}: {oracle.decode(ref)!r}")
    assert len(ours) == GREEDY_TOKENS
    assert ours == ref, divergence(oracle, ids, ours, ref)


def divergence(oracle, ids: list[int], ours: list[int], ref: list[int]) -> str:
    """Where the two greedy runs part, and the oracle's top-2 margin there (a near-tie or a real bug?)."""
    i = next(k for k, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b)
    logits = oracle.last_logits(ids + ref[:i])
    top2 = np.sort(logits)[-2:]
    return (
        f"first difference at token {i}: ours {ours[i]} {oracle.decode([ours[i]])!r}, "
        f"oracle {ref[i]} {oracle.decode([ref[i]])!r}; oracle top-2 margin {top2[1] - top2[0]:.3e}, "
        f"oracle logit of ours {logits[ours[i]]:.4f} vs {logits[ref[i]]:.4f}\n"
        f"ours:   {oracle.decode(ours)!r}\noracle: {oracle.decode(ref)!r}"
    )
