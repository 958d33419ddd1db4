"""CPU matvec and dequant_rows against gguf.quants.dequantize + float64 NumPy, every GGML type x every SIMD
level this host supports, on random blocks and odd shapes.

Tolerances, and why:
- dequant_rows: the scalar path is the definition and matches gguf-py bit for bit on x86-64. The SIMD paths
  compute s * q + m with one rounding (FMA) where gguf-py rounds twice, so they may differ by an ulp of
  max(|s q|, |m|) <= 2 max|w| of the row: |diff| <= 3e-7 * max|w_row|.
- matvec: float32 accumulation in another order than the float64 reference (and the FMA above):
  |y - y_ref| <= 1e-5 * sum_k |W[j, k] x[i, k]| per output.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from inference.model.backends import _cpu

TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
TYPES += [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]
FLOATS = {QT.F32, QT.F16, QT.BF16}
ALL_LEVELS = ["scalar", "avx2", "avx512", "avx512vnni"]
LEVELS = ALL_LEVELS[: ALL_LEVELS.index(_cpu.host_level()) + 1]
# byte offsets of the float16 scales (d, and m or dmin) inside each block; every other byte is random
SCALES = {
    QT.Q4_0: (0,),
    QT.Q4_1: (0, 2),
    QT.Q5_0: (0,),
    QT.Q5_1: (0, 2),
    QT.Q8_0: (0,),
    QT.Q2_K: (80, 82),
    QT.Q3_K: (108,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
}
TS = [1, 2, 3, 5, 8, 16, 64]
NS = [1, 3, 17, 257]


@pytest.fixture(params=LEVELS)
def level(request):
    _cpu.force_level(request.param)
    request.addfinalizer(lambda: _cpu.force_level(None))
    return request.param


def row_bytes(qtype: QT, k: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return k // block * size


def random_rows(qtype: QT, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, row_bytes] uint8: random quant fields with finite, moderate f16 scales; random floats."""
    if qtype in FLOATS:
        w = rng.standard_normal((n, k), dtype=np.float32)
        if qtype == QT.F16:
            return w.astype(np.float16).view(np.uint8)
        if qtype == QT.BF16:
            return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return w.view(np.uint8)
    raw = rng.integers(0, 256, size=(n, row_bytes(qtype, k)), dtype=np.uint8)
    blocks = raw.reshape(n, -1, GGML_QUANT_SIZES[qtype][1])
    for off in SCALES[qtype]:
        scale = rng.uniform(-0.05, 0.05, size=blocks.shape[:2]).astype(np.float16)
        blocks[:, :, off : off + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return raw


def reference(raw: np.ndarray, qtype: QT) -> np.ndarray:
    return dequantize(raw, qtype).astype(np.float32)


def ks(qtype: QT) -> list[int]:
    """k of 1-3 blocks (floats: odd lengths, so masked and scalar tails run)"""
    if qtype in FLOATS:
        return [1, 3, 17, 35]
    return [b * GGML_QUANT_SIZES[qtype][0] for b in (1, 2, 3)]


def matvec(qtype: QT, raw: np.ndarray, k: int, x: np.ndarray, ldy: int) -> np.ndarray:
    """y [t, ldy] float32 (columns >= n left NaN) from the kernel"""
    n, t = raw.shape[0], x.shape[0]
    y = np.full((t, ldy), np.nan, dtype=np.float32)
    _cpu.matvec(int(qtype), raw, raw.shape[1], n, k, x, t, y, ldy)
    return y


def check_matvec(qtype: QT, raw: np.ndarray, k: int, t: int, rng: np.random.Generator) -> None:
    n = raw.shape[0]
    w = reference(raw, qtype).astype(np.float64)
    x = rng.standard_normal((t, k), dtype=np.float32)
    y = matvec(qtype, raw, k, x, ldy=n + 3)
    ref = x.astype(np.float64) @ w.T  # [t, n]
    bound = np.abs(x).astype(np.float64) @ np.abs(w).T
    err = np.abs(y[:, :n] - ref)
    assert np.all(err <= 1e-5 * bound), f"max err/bound {np.max(err / bound):.2e} at t={t}"
    assert np.isnan(y[:, n:]).all(), "matvec wrote past column n of a row"


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_matvec_small(qtype: QT, n: int, level: str):
    rng = np.random.default_rng([int(qtype), n])
    for k in ks(qtype):
        raw = random_rows(qtype, n, k, rng)
        for t in TS:
            check_matvec(qtype, raw, k, t, rng)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_matvec_large_k(qtype: QT, level: str):
    """k = 4864 (a real down projection), enough rows to run on the whole OpenMP team"""
    rng = np.random.default_rng(int(qtype))
    k = 4864 + (5 if qtype in FLOATS else 0)  # floats: a ragged tail too
    raw = random_rows(qtype, 67, k, rng)
    for t in (1, 5, 16):
        check_matvec(qtype, raw, k, t, rng)


@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q8_0, QT.Q6_K, QT.F16], ids=lambda q: q.name)
def test_matvec_same_on_one_and_all_threads(qtype: QT):
    """each output column is computed by one thread in a fixed order: the team size cannot change it"""
    rng = np.random.default_rng(7)
    raw = random_rows(qtype, 301, 1024, rng)
    x = rng.standard_normal((3, 1024), dtype=np.float32)
    threads = _cpu.threads()
    try:
        _cpu.set_threads(1)
        one = matvec(qtype, raw, 1024, x, 301)
    finally:
        _cpu.set_threads(threads)
    assert np.array_equal(one, matvec(qtype, raw, 1024, x, 301))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_matvec_row_independent_of_batch(qtype: QT, level: str):
    """an activation row's result is bit-identical whatever rows it is batched with (the engine's
    batch invariance: a decode row gives the same logits alone and in a batch of 16)"""
    rng = np.random.default_rng([int(qtype), 11])
    k = ks(qtype)[-1] * (4 if qtype in FLOATS else 1)
    raw = random_rows(qtype, 9, k, rng)
    x = rng.standard_normal((17, k), dtype=np.float32)
    alone = np.concatenate([matvec(qtype, raw, k, x[i : i + 1], 9) for i in range(17)])
    for t in (2, 3, 5, 8, 9, 17):
        batched = matvec(qtype, raw, k, x[:t], 9)
        assert np.array_equal(batched, alone[:t]), f"t={t}: rows differ from their solo results"


PART_TYPES = [(QT.Q4_1, QT.Q8_0, QT.Q4_1), (QT.Q5_0, QT.Q5_0, QT.Q8_0), (QT.Q4_K, QT.Q6_K)]
PART_TYPES += [(QT.F16, QT.F32, QT.BF16)]


@pytest.mark.parametrize("types", PART_TYPES, ids=lambda ts: "-".join(q.name for q in ts))
@pytest.mark.parametrize("t", [1, 3, 9])
def test_matvec_parts_equal_one_call_per_part(types: tuple[QT, ...], t: int, level: str):
    """q | k | v in one call (one team over all parts' rows) gives every column the bits that one matvec
    per part gives it: odd part sizes (a row pair straddling two parts) and small parts included"""
    rng = np.random.default_rng([int(q) for q in types] + [t])
    k = 256 * 3
    sizes = [67, 5, 33][: len(types)]
    raws = [random_rows(q, n, k, rng) for q, n in zip(types, sizes, strict=True)]
    x = rng.standard_normal((t, k), dtype=np.float32)
    ldy = sum(sizes) + 3  # a strided output, as a fused projection's is not
    want = np.full((t, ldy), np.nan, np.float32)
    off = 0
    for q, raw, n in zip(types, raws, sizes, strict=True):
        flat = want.reshape(-1)[off:]
        _cpu.matvec(int(q), raw, raw.shape[1], n, k, x, t, flat, ldy)
        off += n
    got = np.full((t, ldy), np.nan, np.float32)
    qtypes, row_bytes = tuple(int(q) for q in types), tuple(r.shape[1] for r in raws)
    _cpu.matvec_parts(qtypes, tuple(raws), row_bytes, tuple(sizes), k, x, t, got, ldy)
    assert np.array_equal(got[:, : sum(sizes)], want[:, : sum(sizes)])
    assert np.isnan(got[:, sum(sizes) :]).all(), "columns past the parts were written"


def test_matvec_parts_rejects_bad_parts():
    raw = random_rows(QT.Q8_0, 4, 64, np.random.default_rng(0))
    x, y = np.zeros((1, 64), np.float32), np.zeros((1, 8), np.float32)
    q8 = int(QT.Q8_0)
    with pytest.raises(ValueError, match="four tuples of one length"):
        _cpu.matvec_parts((q8, q8), (raw,), (raw.shape[1],), (4,), 64, x, 1, y, 8)
    with pytest.raises(ValueError, match="w holds"):
        _cpu.matvec_parts((q8, q8), (raw, raw), (raw.shape[1],) * 2, (4, 5), 64, x, 1, y, 9)
    with pytest.raises(ValueError, match="ldy"):
        _cpu.matvec_parts((q8, q8), (raw, raw), (raw.shape[1],) * 2, (4, 4), 64, x, 1, y, 7)
    with pytest.raises(ValueError, match="type 99 is not supported"):
        _cpu.matvec_parts((q8, 99), (raw, raw), (raw.shape[1],) * 2, (4, 4), 64, x, 1, y, 8)


def check_dequant(qtype: QT, raw: np.ndarray, k: int, rows: np.ndarray | None, row0: int, nrows: int, level):
    ref = reference(raw, qtype)[rows if rows is not None else slice(row0, row0 + nrows)]
    out = np.full((nrows, k), np.nan, dtype=np.float32)
    _cpu.dequant_rows(int(qtype), raw, raw.shape[1], raw.shape[0], k, rows, row0, nrows, out)
    if level == "scalar":
        np.testing.assert_array_equal(out, ref)
    else:
        atol = 3e-7 * np.abs(ref).max(axis=1, keepdims=True)
        assert np.all(np.abs(out - ref) <= atol), f"max diff {np.abs(out - ref).max():.3e}"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_dequant_rows(qtype: QT, level: str):
    rng = np.random.default_rng(100 + int(qtype))
    for k in [*ks(qtype), 4864 + (5 if qtype in FLOATS else 0)]:
        raw = random_rows(qtype, 17, k, rng)
        check_dequant(qtype, raw, k, None, 0, 17, level)  # every row
        check_dequant(qtype, raw, k, None, 5, 7, level)  # a tile in the middle
        ids = np.array([3, 16, 3, 0, 3, 9], dtype=np.int32)  # a token lookup, with repeats
        check_dequant(qtype, raw, k, ids, 0, len(ids), level)


def test_dequant_rows_many_rows_on_the_team(level: str):
    rng = np.random.default_rng(3)
    raw = random_rows(QT.Q4_K, 300, 512, rng)
    check_dequant(QT.Q4_K, raw, 512, None, 0, 300, level)


# ---- the launchers refuse what the kernels cannot do -----------------------------------------------


def test_matvec_rejects_short_weights():
    raw = random_rows(QT.Q8_0, 4, 64, np.random.default_rng(0))
    x, y = np.zeros((1, 64), np.float32), np.zeros((1, 5), np.float32)
    with pytest.raises(ValueError, match="w holds"):
        _cpu.matvec(int(QT.Q8_0), raw, raw.shape[1], 5, 64, x, 1, y, 5)


def test_matvec_rejects_short_activations_and_output():
    raw = random_rows(QT.Q8_0, 4, 64, np.random.default_rng(0))

    def call(x: np.ndarray, t: int, y: np.ndarray, ldy: int) -> None:
        _cpu.matvec(int(QT.Q8_0), raw, raw.shape[1], 4, 64, x, t, y, ldy)

    with pytest.raises(ValueError, match="x holds"):
        call(np.zeros((1, 63), np.float32), 1, np.zeros(4, np.float32), 4)
    with pytest.raises(ValueError, match="y holds"):
        call(np.zeros((2, 64), np.float32), 2, np.zeros(7, np.float32), 4)  # needs ldy + n = 8
    with pytest.raises(ValueError, match="ldy"):
        call(np.zeros((1, 64), np.float32), 1, np.zeros(8, np.float32), 3)


@pytest.mark.parametrize("qtype", [QT.IQ2_XXS, QT.TQ1_0, QT.I8])
def test_rejects_unsupported_type(qtype: QT):
    raw = np.zeros((2, 512), np.uint8)
    x, y = np.zeros((1, 256), np.float32), np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="not supported"):
        _cpu.matvec(int(qtype), raw, 512, 2, 256, x, 1, y, 2)
    with pytest.raises(ValueError, match="not supported"):
        _cpu.dequant_rows(int(qtype), raw, 512, 2, 256, None, 0, 2, np.zeros((2, 256), np.float32))


def test_rejects_k_not_a_multiple_of_the_block():
    raw = np.zeros((2, 36), np.uint8)
    x, y = np.zeros((1, 48), np.float32), np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="multiple"):
        _cpu.matvec(int(QT.Q8_0), raw, 36, 2, 48, x, 1, y, 2)
    with pytest.raises(ValueError, match="multiple"):  # row_bytes that is not k's
        _cpu.matvec(int(QT.Q8_0), np.zeros((2, 68), np.uint8), 68, 2, 32, x, 1, y, 2)


def test_dequant_rows_rejects_bad_rows():
    raw = random_rows(QT.Q4_0, 4, 32, np.random.default_rng(0))
    out = np.zeros((2, 32), np.float32)
    with pytest.raises(ValueError, match="outside"):
        _cpu.dequant_rows(int(QT.Q4_0), raw, 18, 4, 32, np.array([1, 4], np.int32), 0, 2, out)
    with pytest.raises(ValueError, match="outside"):
        _cpu.dequant_rows(int(QT.Q4_0), raw, 18, 4, 32, None, 3, 2, out)
    with pytest.raises(ValueError, match="out holds"):
        _cpu.dequant_rows(int(QT.Q4_0), raw, 18, 4, 32, None, 0, 3, out)
