"""Int8-activation decode matvec (cpu/matvec_q8.c): against float64 math on gguf.quants.dequantize of the
same random blocks and on the activations quantized by the shared rule (cpu/q8_block.h, read back through
quantize_q8's layout), to float32 rounding; against the unquantized activations within the int8 bound;
a row's result bit-identical alone, in any batch, on one thread or all, and part by part."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from inference.model.backends import _cpu
from tests.kernels.test_cpu_q8 import HOST_LEVELS, TYPES, assert_int8_product, k_of, random_blocks

VNNI = _cpu.host_level() == "avx512vnni"
needs_vnni = pytest.mark.skipif(
    not VNNI,
    reason="matvec_q8 runs on AVX-512 VNNI hosts only (this host: "
    f"{_cpu.host_level()}); the backend takes the float32 matvec there",
)
# (n, k in blocks of the type, t): odd row counts, one block, Qwen2.5-0.5B's ffn k = 4864, batches 1 ... 64
SHAPES = [(1, 1, 1), (3, 2, 2), (17, 3, 7), (257, 1, 1), (5, 2, 8), (9, 3, 9), (3, 2, 64), (17, "large", 1),
          (17, "large", 16)]  # fmt: skip


def matvec_q8(types, raws, ns, k, x, ldy=None) -> np.ndarray:
    """y [t, sum(ns)] through an output of row stride sum(ns) + 3 whose extra columns must stay untouched."""
    t, n = x.shape[0], sum(ns)
    ldy = ldy or n + 3
    y = np.full((t, ldy), np.nan, np.float32)
    codes, row_bytes = tuple(int(q) for q in types), tuple(r.shape[1] for r in raws)
    _cpu.matvec_q8_parts(codes, tuple(raws), row_bytes, tuple(ns), k, np.ascontiguousarray(x), t, y, ldy)
    assert np.isnan(y[:, n:]).all(), "wrote past the parts' columns"
    return y[:, :n]


@needs_vnni
@pytest.mark.parametrize("n, blocks, t", SHAPES, ids=[f"n{n}-b{b}-t{t}" for n, b, t in SHAPES])
@pytest.mark.parametrize("qtype", TYPES, ids=[q.name for q in TYPES])
def test_matvec_q8_against_float64(rng, qtype, n, blocks, t):
    k = k_of(qtype, blocks)
    raw = random_blocks(qtype, n, k, rng)
    w = dequantize(raw, qtype).reshape(n, k).astype(np.float64)
    x = rng.standard_normal((t, k)).astype(np.float32)
    # the same integers in float64 to float32 rounding of the per-unit scaling and ~k/32 + 8 sums; the
    # float32 activations within the int8 bound
    assert_int8_product(matvec_q8([qtype], [raw], [n], k, x), x, w, k / 32 + 8)


@needs_vnni
@pytest.mark.parametrize("qtype", TYPES, ids=[q.name for q in TYPES])
def test_matvec_q8_row_independent_of_batch(rng, qtype):
    """Batch invariance: row i of a batch of t is bit-identical to row i alone, for every t up to 20."""
    n, k = 37, k_of(qtype, 3 if qtype.value >= QT.Q2_K.value else 24)
    raw = random_blocks(qtype, n, k, rng)
    x = rng.standard_normal((20, k)).astype(np.float32)
    alone = np.concatenate([matvec_q8([qtype], [raw], [n], k, x[i : i + 1]) for i in range(20)])
    for t in (2, 7, 8, 9, 16, 20):
        np.testing.assert_array_equal(matvec_q8([qtype], [raw], [n], k, x[:t]), alone[:t], err_msg=f"t={t}")


@needs_vnni
@pytest.mark.parametrize("qtype", [QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_matvec_q8_same_on_one_and_all_threads(rng, qtype):
    n, k = 2048, k_of(qtype, "large")  # large enough to run on the whole team
    raw = random_blocks(qtype, n, k, rng)
    x = rng.standard_normal((3, k)).astype(np.float32)
    every = matvec_q8([qtype], [raw], [n], k, x)
    threads = _cpu.threads()
    _cpu.set_threads(1)
    try:
        one = matvec_q8([qtype], [raw], [n], k, x)
    finally:
        _cpu.set_threads(threads)
    np.testing.assert_array_equal(one, every)


@needs_vnni
@pytest.mark.parametrize("t", [1, 3, 9])
def test_matvec_q8_parts_equal_one_call_per_part(rng, t):
    """q | k | v of mixed types (as Qwen2.5's Q5_0 q, k beside a Q8_0 v) in one call = each part alone."""
    types, ns, k = [QT.Q5_0, QT.Q5_0, QT.Q8_0], [64, 16, 16], 256
    raws = [random_blocks(q, n, k, rng) for q, n in zip(types, ns, strict=True)]
    x = rng.standard_normal((t, k)).astype(np.float32)
    together = matvec_q8(types, raws, ns, k, x)
    apart = np.concatenate(
        [matvec_q8([q], [r], [n], k, x) for q, r, n in zip(types, raws, ns, strict=True)], axis=1
    )
    np.testing.assert_array_equal(together, apart)


def test_matvec_q8_types_follow_the_level():
    """The 8 integer types on AVX-512 VNNI; none on any lower level (the float32 matvec takes them)."""
    want = tuple(int(q) for q in TYPES) if VNNI else ()
    assert _cpu.matvec_q8_types() == want
    for level in [lv for lv in HOST_LEVELS if lv != "avx512vnni"]:  # the levels this host can be forced to
        _cpu.force_level(level)
        try:
            assert _cpu.matvec_q8_types() == ()
            raw = random_blocks(QT.Q8_0, 2, 32, np.random.default_rng(0))
            with pytest.raises(ValueError, match="matvec_q8_parts"):
                matvec_q8([QT.Q8_0], [raw], [2], 32, np.ones((1, 32), np.float32))
        finally:
            _cpu.force_level(None)


@needs_vnni
@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q2_K, QT.Q3_K], ids=lambda q: q.name)
def test_matvec_q8_refuses_types_without_the_kernel(qtype):
    raw = np.zeros((2, 256 * 4), np.uint8)
    with pytest.raises(ValueError, match=f"GGML type {int(qtype)} is not supported"):
        matvec_q8([qtype], [raw], [2], 256, np.ones((1, 256), np.float32))
