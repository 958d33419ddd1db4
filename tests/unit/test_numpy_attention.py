"""NumPy backend attention over the paged KV cache against a float64 loop written from the definition.

Decode queries of a batch are attended together (padded to their group's longest context); this checks
that path and the per-sequence one on mixed batches, with GQA, sliding windows and shuffled block tables.
"""

import numpy as np
import pytest

from inference.model.backends.base import AttentionSeq
from inference.model.backends.numpy_backend import NumpyBackend, _decode_groups

BS = 16


def make_batch(rng, n_heads, n_kv, hd, shapes):
    """q and caches with shuffled block tables; shapes = [(query_len, context_len)]."""
    need = [-(-ctx // BS) for _, ctx in shapes]
    perm = rng.permutation(sum(need) + 2).astype(np.int32)
    k_cache = rng.standard_normal((perm.size, BS, n_kv, hd), dtype=np.float32)
    v_cache = rng.standard_normal((perm.size, BS, n_kv, hd), dtype=np.float32)
    seqs, start, used = [], 0, 0
    for (qlen, ctx), n in zip(shapes, need, strict=True):
        seqs.append(AttentionSeq(start, qlen, ctx, perm[used : used + n]))
        start, used = start + qlen, used + n
    return rng.standard_normal((start, n_heads, hd), dtype=np.float32), k_cache, v_cache, seqs


def reference(q, k_cache, v_cache, seqs, window):
    """Query i of a sequence sits at position context_len - query_len + i and sees keys p <= that
    position (and p > position - window); head h reads kv head h // (H / n_kv)."""
    n_heads, hd = q.shape[1:]
    group = n_heads // k_cache.shape[2]
    out = np.zeros(q.shape, np.float64)
    for s in seqs:
        keys = [(s.block_table[p // BS], p % BS) for p in range(s.context_len)]
        k = np.array([k_cache[b, o] for b, o in keys], np.float64)  # [C, n_kv, hd]
        v = np.array([v_cache[b, o] for b, o in keys], np.float64)
        for i in range(s.query_len):
            pos = s.context_len - s.query_len + i
            lo = pos - window + 1 if window else 0
            for h in range(n_heads):
                scores = k[max(lo, 0) : pos + 1, h // group] @ q[s.query_start + i, h] / np.sqrt(hd)
                p = np.exp(scores - scores.max())
                out[s.query_start + i, h] = p @ v[max(lo, 0) : pos + 1, h // group] / p.sum()
    return out


SHAPES = {
    "decodes": [(1, 1), (1, 5), (1, 16), (1, 17), (1, 40), (1, 300), (1, 33)],
    "mixed": [(7, 7), (1, 20), (3, 50), (1, 2), (1, 64), (16, 16)],
    "one-decode": [(1, 90)],
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n_heads, n_kv", [(9, 3), (14, 2), (4, 4)])
@pytest.mark.parametrize("window", [None, 8])
def test_attention_matches_definition(shapes, n_heads, n_kv, window):
    rng = np.random.default_rng(len(shapes) * 100 + n_heads)
    q, k_cache, v_cache, seqs = make_batch(rng, n_heads, n_kv, 32, shapes)
    out = NumpyBackend().attention(q, k_cache, v_cache, seqs, window)
    np.testing.assert_allclose(out, reference(q, k_cache, v_cache, seqs, window), atol=2e-6, rtol=1e-5)


def test_decode_groups_cover_each_sequence_once_with_bounded_padding():
    rng = np.random.default_rng(0)
    contexts = rng.integers(1, 4000, 64)
    seqs = [AttentionSeq(i, 1, int(c), np.zeros(1, np.int32)) for i, c in enumerate(contexts)]
    groups = _decode_groups(seqs)
    assert sorted(s.query_start for g in groups for s in g) == list(range(64))
    for g in groups:
        assert len(g) * max(s.context_len for s in g) <= 2 * sum(s.context_len for s in g)
    assert len(groups) < 64  # and they do share: similar contexts go together
    short_and_long = [AttentionSeq(i, 1, c, None) for i, c in enumerate([5, 6, 5000])]
    assert [len(g) for g in _decode_groups(short_and_long)] == [2, 1]
