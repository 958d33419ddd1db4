"""Int8-activation matmul (cpu/quantize_q8.c, cpu/matmul_q8.c): the packed activations against a NumPy
model of their layout, every SIMD path the host supports against the scalar path (equal to float rounding:
integer dots are exact, only the order of the float sums over blocks differs), and all of them against
float64 math on gguf.quants.dequantize of the same random blocks, within the int8 bound
|dy| <= sum_k |w_k| max|x_block(k)| / 254."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from inference.model.backends import _cpu

TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]
LEVELS = ["scalar", "avx2", "avx512", "avx512vnni"]
HOST_LEVELS = LEVELS[: LEVELS.index(_cpu.host_level()) + 1]
# float16 fields of each block: (byte offset, what): d scales, m / dmin offsets; other bytes are random
HALVES = {
    QT.Q4_0: [(0, "d")],
    QT.Q4_1: [(0, "d"), (2, "m")],
    QT.Q5_0: [(0, "d")],
    QT.Q5_1: [(0, "d"), (2, "m")],
    QT.Q8_0: [(0, "d")],
    QT.Q4_K: [(0, "d"), (2, "dmin")],
    QT.Q5_K: [(0, "d"), (2, "dmin")],
    QT.Q6_K: [(208, "d")],
}
# (n, k in blocks of the type, t); "large" k = 4864 (qwen2.5-0.5b's ffn, 19 K-quant super-blocks)
SHAPES = [(1, 1, 1), (3, 2, 2), (17, 3, 7), (257, 1, 16), (3, 2, 64), (17, 3, 130), (17, "large", 16)]
GROUP_BYTES = 768  # cpu/q8.h: 16 blocks of 32 per record: qs [8][16][4], d [16], s [16], s16 [2][16]


def random_blocks(qtype: QT, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, row_bytes] random blocks whose float16 scales are finite and moderate (|d| in 1e-3..2e-2)."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n, k // block, size), dtype=np.uint8)
    for off, what in HALVES[qtype]:
        mag = rng.uniform(0.001, 0.02, raw.shape[:2]) if what != "m" else rng.uniform(0.0, 0.1, raw.shape[:2])
        value = (mag * rng.choice([-1.0, 1.0], raw.shape[:2])).astype(np.float16)
        raw[:, :, off : off + 2] = value.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(n, -1)


def k_of(qtype: QT, blocks) -> int:
    return 4864 if blocks == "large" else blocks * GGML_QUANT_SIZES[qtype][0]


def quantize(x: np.ndarray) -> np.ndarray:
    t, k = x.shape
    xq = np.full(_cpu.q8_bytes(t, k), 0xAA, np.uint8)  # garbage: every byte must be written
    _cpu.quantize_q8(x, t, k, xq)
    return xq


def unpack(xq: np.ndarray, t: int, k: int):
    """The layout of cpu/q8.h in NumPy: (q [t, k] int8, d, s [t, k/32], s16 [t, k/32, 2]) float32."""
    rec = xq.reshape(t, -1, GROUP_BYTES)
    g = rec.shape[1]
    qs = rec[:, :, :512].view(np.int8).reshape(t, g, 8, 16, 4).transpose(0, 1, 3, 2, 4).reshape(t, -1)
    floats = rec[:, :, 512:].copy().view(np.float32).reshape(t, g, 4, 16)  # d, s, s16 half 0, half 1
    d, s = floats[:, :, 0].reshape(t, -1), floats[:, :, 1].reshape(t, -1)
    s16 = floats[:, :, 2:].transpose(0, 1, 3, 2).reshape(t, -1, 2)
    nb = k // 32
    return qs[:, :k], d[:, :nb], s[:, :nb], s16[:, :nb], qs[:, k:], d[:, nb:]


def matmul(qtype: QT, raw: np.ndarray, n: int, k: int, xq: np.ndarray, t: int, level: str) -> np.ndarray:
    """y [t, n] through an output of row stride n + 5 whose extra columns must stay untouched."""
    y = np.full((t, n + 5), np.nan, np.float32)
    _cpu.force_level(level)
    try:
        _cpu.matmul_q8(int(qtype), raw, raw.shape[1], n, k, xq, t, y, n + 5)
    finally:
        _cpu.force_level(None)
    assert np.isnan(y[:, n:]).all(), "wrote past column n"
    return y[:, :n]


def x_hat(x: np.ndarray) -> np.ndarray:
    """The activations the int8 kernels multiply, d * q per block of 32 (quantize_q8's rule), as float64."""
    t, k = x.shape
    q, d, *_ = unpack(quantize(x), t, k)
    return np.repeat(d, 32, axis=1).astype(np.float64) * q


def assert_int8_product(y: np.ndarray, x: np.ndarray, w: np.ndarray, sums: float, what: str = "") -> None:
    """y = x^ @ w.T to float32 rounding of `sums` terms (the integers are exact), and y = x @ w.T within
    the int8 bound: max|x| / 254 per value of each block of 32."""
    rounding = sums * 2.0**-23 * (np.abs(x_hat(x)) @ np.abs(w).T) + 1e-30
    excess = np.abs(y - x_hat(x) @ w.T) / rounding
    assert excess.max() <= 1, f"{what}{excess.max():.2f} x the rounding bound"
    bound = block_max(x).astype(np.float64) @ np.abs(w).T / 254 + rounding
    err = np.abs(y - x.astype(np.float64) @ w.T)
    assert (err <= bound).all(), f"{what}{(err / bound).max():.2f} x the int8 bound"


def block_max(x: np.ndarray) -> np.ndarray:
    """max |x| of the 32-block of every value, [t, k]."""
    t, k = x.shape
    return np.repeat(np.abs(x).reshape(t, -1, 32).max(axis=2), 32, axis=1)


@pytest.mark.parametrize("level", HOST_LEVELS)
def test_quantize_matches_numpy_model_of_the_layout(rng, level):
    t, k = 5, 32 * 21  # 21 blocks: a full group and a partial one
    x = rng.standard_normal((t, k)).astype(np.float32) * rng.uniform(0.01, 100, (t, 1)).astype(np.float32)
    x[1, 64:96] = 0.0  # an all-zero block has d = 0
    _cpu.force_level(level)
    try:
        xq = quantize(x)
    finally:
        _cpu.force_level(None)
    q, d, s, s16, q_pad, d_pad = unpack(xq, t, k)
    amax = np.abs(x).reshape(t, -1, 32).max(axis=2)
    want_d = (amax / np.float32(127)).astype(np.float32)
    np.testing.assert_array_equal(d, want_d)
    inv = np.where(want_d > 0, np.float32(1) / np.where(want_d > 0, want_d, 1), 0).astype(np.float32)
    want_q = np.rint(x * np.repeat(inv, 32, axis=1)).astype(np.int8)  # float32 product, half to even
    np.testing.assert_array_equal(q, want_q)
    assert np.abs(q.astype(int)).max() <= 127
    qsum = q.reshape(t, -1, 2, 16).astype(np.int64).sum(axis=3)
    np.testing.assert_array_equal(s, (d * qsum.sum(axis=2)).astype(np.float32))
    np.testing.assert_array_equal(s16, (d[:, :, None] * qsum).astype(np.float32))
    assert not q_pad.any() and not d_pad.any(), "blocks past k must be zero"
    err = np.abs(x - np.repeat(d, 32, axis=1) * q)
    assert (err <= block_max(x) / 254 * (1 + 1e-6)).all()


def test_quantize_is_the_same_bytes_on_every_path(rng):
    x = rng.standard_normal((7, 4864)).astype(np.float32) * 3
    got = {}
    for level in HOST_LEVELS:
        _cpu.force_level(level)
        try:
            got[level] = quantize(x)
        finally:
            _cpu.force_level(None)
    for level in HOST_LEVELS[1:]:
        np.testing.assert_array_equal(got[level], got["scalar"], err_msg=level)


@pytest.mark.parametrize("n, blocks, t", SHAPES, ids=[f"n{n}-b{b}-t{t}" for n, b, t in SHAPES])
@pytest.mark.parametrize("qtype", TYPES, ids=[q.name for q in TYPES])
def test_matmul_q8_every_path(rng, qtype, n, blocks, t):
    k = k_of(qtype, blocks)
    raw = random_blocks(qtype, n, k, rng)
    w = dequantize(raw, qtype).reshape(n, k).astype(np.float64)
    x = rng.standard_normal((t, k)).astype(np.float32)
    xq = quantize(x)
    ys = {level: matmul(qtype, raw, n, k, xq, t, level) for level in HOST_LEVELS}

    # every path: the float64 product of the same integers, to float32 rounding of ~k/32 + 4 terms, and
    # within the int8 bound of float math on the unquantized x
    for level, y in ys.items():
        assert_int8_product(y, x, w, k / 32 + 4, f"{level}: ")
    rounding = (k / 32 + 4) * 2.0**-23 * (np.abs(x_hat(x)) @ np.abs(w).T) + 1e-30
    for level in HOST_LEVELS[1:]:  # SIMD vs scalar: the same integer dots, sums in another order
        diff = np.abs(ys[level] - ys["scalar"]) / rounding
        assert diff.max() <= 1, f"{level} vs scalar: {diff.max():.2f} x the rounding bound"


@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_matmul_q8_blocks_of_very_different_magnitude(rng, qtype):
    """A scale per 32 values: tiny, huge and all-zero blocks in one row keep their own precision."""
    n, t, k = 9, 4, 512
    raw = random_blocks(qtype, n, k, rng)
    w = dequantize(raw, qtype).reshape(n, k).astype(np.float64)
    x = rng.standard_normal((t, k)).astype(np.float32)
    x *= np.repeat(10.0 ** rng.integers(-4, 4, (t, k // 32)), 32, axis=1).astype(np.float32)
    x[:, 32:64] = 0.0
    xq = quantize(x)
    bound = block_max(x).astype(np.float64) @ np.abs(w).T / 254 + 1e-5 * np.abs(x) @ np.abs(w).T
    for level in HOST_LEVELS:
        err = np.abs(matmul(qtype, raw, n, k, xq, t, level) - x.astype(np.float64) @ w.T)
        assert (err <= bound).all(), f"{level}: {(err / bound).max():.2f} x the int8 bound"


def test_matmul_q8_types_and_sizes():
    assert _cpu.matmul_q8_types() == tuple(int(q) for q in TYPES)
    assert _cpu.q8_bytes(3, 896) == 3 * 2 * GROUP_BYTES
    assert _cpu.q8_bytes(0, 32) == 0


def _args(qtype=QT.Q4_K, n=4, k=512, t=3):
    row = k // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1]
    w = np.zeros((n, row), np.uint8)
    xq = np.zeros(_cpu.q8_bytes(t, k), np.uint8)
    y = np.zeros((t, n), np.float32)
    return [int(qtype), w, row, n, k, xq, t, y, n]


@pytest.mark.parametrize(
    "change, message",
    [
        ({0: int(QT.Q2_K)}, "GGML type 10 is not supported"),
        ({0: int(QT.F16)}, "GGML type 1 is not supported"),
        ({4: 512 + 32}, "k = 544 is not a positive multiple of 256"),
        ({4: 0}, "k = 0 is not a positive multiple of 256"),
        ({2: 287}, "row_bytes = 287, a row of k = 512 needs 288"),
        ({8: 3}, "ldy = 3 < n = 4"),
        ({1: np.zeros((3, 288), np.uint8)}, "w holds 864 bytes, the shapes need 1152"),
        ({5: np.zeros(100, np.uint8)}, "xq holds 100 bytes"),
        ({7: np.zeros((2, 4), np.float32)}, "y holds 32 bytes, the shapes need 48"),
        ({6: -1}, "t = -1 is negative"),
    ],
)
def test_matmul_q8_rejects_bad_arguments(change, message):
    args = _args()
    for i, v in change.items():
        args[i] = v
    with pytest.raises(ValueError, match=message):
        _cpu.matmul_q8(*args)


def test_matmul_q8_legacy_types_need_k_multiple_of_32():
    args = _args(QT.Q8_0, k=64)
    args[4] = 48
    with pytest.raises(ValueError, match="k = 48 is not a positive multiple of 32"):
        _cpu.matmul_q8(*args)


def test_quantize_q8_rejects_bad_arguments():
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="k = 33 is not a positive multiple of 32"):
        _cpu.q8_bytes(2, 33)
    with pytest.raises(ValueError, match="k = 48 is not a positive multiple of 32"):
        _cpu.quantize_q8(x, 2, 48, np.zeros(4096, np.uint8))
    with pytest.raises(ValueError, match="xq holds 100 bytes, the shapes need 1536"):
        _cpu.quantize_q8(x, 2, 64, np.zeros(100, np.uint8))
    with pytest.raises(ValueError, match="x holds 512 bytes, the shapes need 768"):
        _cpu.quantize_q8(x, 3, 64, np.zeros(_cpu.q8_bytes(3, 64), np.uint8))
