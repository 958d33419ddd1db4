"""CPU rope, attention, rmsnorm, swiglu and kv_write (cpu/*.c) against the NumPy backend, at every SIMD level
this host supports, plus the launchers' checks of sizes and block ids.

Tolerances, and why:
- rope: cos/sin are computed in float64 and rounded to float32 by both; the rotation is one float32 product
  per term (no FMA), so the results agree to the last bit on x86-64. Asserted: |diff| <= 1e-6 * max|x|,
  which leaves room for a libm whose float64 cos/sin differ by an ulp before the rounding.
- attention: float32 everywhere, in another order than the reference (blocked dot products, online
  softmax rescaling, a polynomial exp of ~2 ulp in the SIMD paths). The output is a convex combination of
  V rows, so errors scale with max|v|: |diff| <= 1e-5 * max|v| + 1e-5 relative (observed ~2e-6).
  float16 caches: both sides read the same float16 values widened exactly to float32.
- rmsnorm, swiglu: float32 sums or expf in another order: 1e-5 relative (observed ~3e-7).
- kv_write: a copy, and float16 rounding to nearest even as NumPy's astype: exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.model.backends import _cpu
from inference.model.backends.base import AttentionSeq
from inference.model.backends.numpy_backend import NumpyBackend

ALL_LEVELS = ["scalar", "avx2", "avx512", "avx512vnni"]
LEVELS = ALL_LEVELS[: ALL_LEVELS.index(_cpu.host_level()) + 1]
REF = NumpyBackend()


@pytest.fixture(params=LEVELS)
def level(request):
    _cpu.force_level(request.param)
    request.addfinalizer(lambda: _cpu.force_level(None))
    return request.param


@pytest.fixture
def threads():
    """Set the kernels' thread count for one test: threads(n); restored afterwards."""
    before = _cpu.threads()
    yield _cpu.set_threads
    _cpu.set_threads(before)


# ---- rope -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["neox", "normal"])
@pytest.mark.parametrize(
    "t, h, hd, half",
    [(1, 1, 64, 32), (7, 5, 64, 32), (130, 9, 64, 32), (3, 3, 64, 16), (5, 2, 80, 20), (2, 14, 128, 64)],
)
def test_rope(level, rng, style, t, h, hd, half):
    x = rng.standard_normal((t, h, hd), dtype=np.float32)
    positions = rng.integers(0, 40_000, t).astype(np.int32)
    inv_freq = (10_000.0 ** (-np.arange(half) / half)).astype(np.float32)
    want = x.copy()
    REF.rope(want, positions, inv_freq, style)
    got = x.copy()
    _cpu.rope(got, t, h, hd, rope_table(positions, inv_freq), half, style == "neox")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(x).max())
    np.testing.assert_array_equal(got[..., 2 * half :], x[..., 2 * half :])  # partial rotary: rest untouched


def rope_table(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    cs = np.empty((positions.size, 2, inv_freq.size), np.float32)  # [t, cos | sin, half]
    _cpu.rope_table(positions, positions.size, inv_freq, inv_freq.size, cs)
    return cs


def test_rope_rejects_more_pairs_than_dims():
    x = np.zeros((1, 1, 8), np.float32)
    with pytest.raises(ValueError, match="half"):
        _cpu.rope(x, 1, 1, 8, np.zeros((1, 2, 5), np.float32), 5, True)


def test_rope_rejects_short_buffers():
    x = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="positions"):
        _cpu.rope_table(np.zeros(1, np.int32), 2, np.ones(4, np.float32), 4, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="cs holds"):
        _cpu.rope(x, 2, 3, 8, np.zeros((1, 2, 4), np.float32), 4, True)
    with pytest.raises(ValueError, match="x holds"):
        _cpu.rope(x, 3, 3, 8, np.zeros((3, 2, 4), np.float32), 4, True)


# ---- attention --------------------------------------------------------------------------------------------


def make_batch(rng, n_heads, n_kv, hd, shapes, dtype, block_size=16):
    """q and caches with shuffled block tables (and spare blocks); shapes = [(query_len, context_len)]."""
    need = [-(-ctx // block_size) for _, ctx in shapes]
    perm = rng.permutation(sum(need) + 3).astype(np.int32)
    k_cache = rng.standard_normal((perm.size, block_size, n_kv, hd), dtype=np.float32).astype(dtype)
    v_cache = rng.standard_normal((perm.size, block_size, n_kv, hd), dtype=np.float32).astype(dtype)
    seqs, start, used = [], 0, 0
    for (qlen, ctx), n in zip(shapes, need, strict=True):
        seqs.append(AttentionSeq(start, qlen, ctx, perm[used : used + n]))
        start, used = start + qlen, used + n
    q = 2 * rng.standard_normal((start, n_heads, hd), dtype=np.float32)  # peakier softmax than N(0, 1)
    return q, k_cache, v_cache, seqs


def seq_arrays(seqs, pad=-1):
    """query_start, query_len, context_len [S] and block tables [S, max blocks] padded with `pad`."""
    width = max(s.block_table.size for s in seqs) + 1  # one spare column: the launcher must not read it
    tables = np.full((len(seqs), width), pad, np.int32)
    for i, s in enumerate(seqs):
        tables[i, : s.block_table.size] = s.block_table
    cols = [[s.query_start for s in seqs], [s.query_len for s in seqs], [s.context_len for s in seqs]]
    return *(np.array(c, np.int32) for c in cols), tables


def cpu_attention(q, k_cache, v_cache, seqs, window=None):
    t, h, hd = q.shape
    starts, lens, contexts, tables = seq_arrays(seqs)
    out = np.full_like(q, np.nan)
    f16 = k_cache.dtype == np.float16
    _cpu.attention(
        q, t, h, k_cache.shape[2], hd, k_cache, v_cache, f16, k_cache.shape[1], len(seqs),
        starts, lens, contexts, tables, tables.shape[1], window or 0, out,
    )  # fmt: skip
    return out


def check_attention(q, k_cache, v_cache, seqs, window=None):
    want = REF.attention(q, k_cache.astype(np.float32), v_cache.astype(np.float32), seqs, window)
    got = cpu_attention(q, k_cache, v_cache, seqs, window)
    atol = 1e-5 * float(np.abs(v_cache.astype(np.float32)).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


DECODE = [(1, 1), (1, 15), (1, 16), (1, 17), (1, 300)]
PREFILL = [(15, 15), (16, 16), (5, 17), (100, 300), (1, 1)]  # (5, 17), (100, 300): chunks after cached tokens
BATCHES = {"decode": DECODE, "prefill": PREFILL, "mixed": [(1, 300), (17, 17), (1, 1), (40, 300), (1, 16)]}
GQA = {1: (4, 4), 3: (9, 3), 7: (14, 2)}  # group -> (heads, kv heads)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("group", sorted(GQA))
@pytest.mark.parametrize("window", [None, 7, 100])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_attention(level, rng, dtype, group, window, batch):
    heads, n_kv = GQA[group]
    check_attention(*make_batch(rng, heads, n_kv, 64, BATCHES[batch], dtype), window)


@pytest.mark.parametrize("hd", [24, 80, 128])  # a 16-lane tail, and wider rows than one 64-column slice
@pytest.mark.parametrize("block_size", [1, 5, 32])
def test_attention_head_dims_and_block_sizes(level, rng, hd, block_size):
    shapes = [(1, 70), (1, 3), (33, 70), (2, 2)]
    check_attention(*make_batch(rng, 6, 2, hd, shapes, np.float16, block_size), window=None)
    check_attention(*make_batch(rng, 6, 2, hd, shapes, np.float32, block_size), window=20)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("window", [None, 700])
def test_attention_long_context(level, rng, threads, n_threads, window):
    """One decode sequence alone: its keys are split among the threads and merged; a prefill chunk spans
    several query tiles (MHA: 64 queries a tile)."""
    threads(n_threads)
    check_attention(*make_batch(rng, 9, 3, 64, [(1, 3000)], np.float16), window)
    check_attention(*make_batch(rng, 4, 4, 64, [(150, 1100), (1, 1100)], np.float16), window)


def test_attention_leaves_other_rows_alone(rng):
    q, k_cache, v_cache, seqs = make_batch(rng, 4, 2, 64, [(3, 20), (1, 9)], np.float32)
    seqs = [seqs[0], AttentionSeq(5, 1, 9, seqs[1].block_table)]  # rows 3 and 4 belong to no sequence
    q = np.concatenate([q, q[:2]])
    got = cpu_attention(q, k_cache, v_cache, seqs)
    assert np.isnan(got[3:5]).all() and not np.isnan(got[[0, 1, 2, 5]]).any()


def attention_args(rng, **change):
    """A valid attention call's arguments, some replaced by `change`."""
    q, k_cache, v_cache, seqs = make_batch(rng, 4, 2, 8, [(2, 20), (1, 5)], np.float16)
    starts, lens, contexts, tables = seq_arrays(seqs)
    args = dict(
        q=q, t=q.shape[0], h=4, n_kv=2, hd=8, k_cache=k_cache, v_cache=v_cache, f16=True, block_size=16,
        num_seqs=2, query_start=starts, query_len=lens, context_len=contexts, block_tables=tables,
        max_blocks=tables.shape[1], sliding_window=0, out=np.empty_like(q),
    )  # fmt: skip
    args.update(change)
    return list(args.values())


def test_attention_launcher_accepts_valid_arguments(rng):
    _cpu.attention(*attention_args(rng))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"block_tables": np.array([[0, 99, -1], [1, -1, -1]], np.int32)}, "block 99 outside"),
        ({"block_tables": np.array([[-2, 0, -1], [1, -1, -1]], np.int32)}, "block -2 outside"),
        ({"block_tables": np.zeros(5, np.int32)}, "block_tables holds"),
        ({"q": np.zeros((3, 4, 7), np.float32)}, "q holds"),
        ({"out": np.zeros((2, 4, 8), np.float32)}, "out holds"),
        ({"context_len": np.array([20], np.int32)}, "context_len holds"),
        ({"context_len": np.array([1, 5], np.int32)}, "sequence 0"),  # fewer tokens than queries
        ({"context_len": np.array([20, 60], np.int32)}, "sequence 1"),  # more blocks than the table has
        ({"query_start": np.array([0, 3], np.int32)}, "sequence 1"),  # rows past t
        ({"n_kv": 3}, "not a multiple"),
    ],
)
def test_attention_launcher_rejects(rng, change, message):
    with pytest.raises(ValueError, match=message):
        _cpu.attention(*attention_args(rng, **change))


# ---- rmsnorm, swiglu, kv_write ----------------------------------------------------------------------------


@pytest.mark.parametrize("t, d", [(1, 576), (5, 896), (3, 17)])
def test_rmsnorm(level, rng, t, d):
    x = 3 * rng.standard_normal((t, d), dtype=np.float32)
    w = rng.standard_normal(d, dtype=np.float32)
    out = np.empty_like(x)
    _cpu.rmsnorm(x, w, 1e-5, t, d, out)
    np.testing.assert_allclose(out, REF.rmsnorm(x, w, 1e-5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t, f", [(1, 1536), (4, 4864), (129, 17)])  # 129 x 17: below the threading cut
def test_swiglu(level, rng, t, f):
    gate_up = 4 * rng.standard_normal((t, 2 * f), dtype=np.float32)
    out = np.empty((t, f), np.float32)
    _cpu.swiglu(gate_up, t, f, out)
    np.testing.assert_allclose(out, REF.swiglu(gate_up), rtol=1e-5, atol=1e-6)


def test_swiglu_extreme_gates(level):
    """large |g|: e^-|g| underflows to 0 and the sigmoid saturates, never inf or NaN (tails of 16 masked)"""
    g = np.array([-1e30, -200.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 200.0, 1e30] * 3, np.float32)
    gate_up = np.concatenate([g, np.full(g.size, 2.0, np.float32)])[None, :]
    out = np.empty((1, g.size), np.float32)
    _cpu.swiglu(gate_up, 1, g.size, out)
    assert np.isfinite(out).all()
    with np.errstate(over="ignore"):  # the reference's e^-g overflows to inf for g < -88: g / inf = -0
        want = REF.swiglu(gate_up)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_kv_write(level, rng, dtype):
    n_kv, hd, t = 3, 64, 7
    caches = [rng.standard_normal((4, 16, n_kv, hd), dtype=np.float32).astype(dtype) for _ in range(2)]
    caches += [c.copy() for c in caches]  # the reference writes 0 and 1, the kernel 2 and 3
    k, v = (10 * rng.standard_normal((t, n_kv, hd), dtype=np.float32) for _ in range(2))
    slots = rng.permutation(64)[:t].astype(np.int32)
    REF.kv_write(caches[0], caches[1], k, v, slots)
    _cpu.kv_write(caches[2], caches[3], dtype == np.float16, k, v, slots, t, n_kv * hd)
    np.testing.assert_array_equal(caches[2], caches[0])
    np.testing.assert_array_equal(caches[3], caches[1])


@pytest.mark.parametrize("slot", [-1, 64])
def test_kv_write_rejects_slots_outside_the_cache(slot):
    k_cache, v_cache = np.zeros((4, 16, 2, 8), np.float16), np.zeros((4, 16, 2, 8), np.float16)
    k = np.zeros((2, 2, 8), np.float32)
    with pytest.raises(ValueError, match=f"slots\\[1\\] = {slot}"):
        _cpu.kv_write(k_cache, v_cache, True, k, k, np.array([0, slot], np.int32), 2, 16)
