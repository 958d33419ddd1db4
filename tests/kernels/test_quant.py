"""Quantized kernels: dequantization (embed) bit-exact against gguf.quants.dequantize, on blocks out of the
real GGUF files and on synthetic blocks of every type; matvec (T <= 8) and tiled matmul against
x @ W.T of the NumPy backend."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from inference.model.backends.numpy_backend import NumpyBackend
from tests.kernels.quantdata import SUFFIX, dequant, real_rows, synthetic

ref = NumpyBackend()
ALL_TYPES = list(SUFFIX)
REAL = [
    ("smollm2", QT.Q4_1),
    ("smollm2", QT.Q8_0),
    ("qwen05", QT.Q5_0),
    ("qwen05", QT.Q8_0),
    ("qwen05", QT.Q4_K),
    ("qwen05", QT.Q6_K),
]


def run_embed(gpu, cu, kernel, raw, ids, D):
    out = np.empty((len(ids), D), np.float32)
    gpu.fn(cu, kernel)(
        gpu.In(raw), gpu.In(ids), gpu.Out(out), np.int32(raw.shape[0]), np.int32(D), block=(128, 1, 1),
        grid=(len(ids), 1),
    )  # fmt: skip
    return out


def check_dequant(gpu, raw, qtype, D, cu="embed.cu", kernel=None):
    """Decode every row through the embed kernel (rows in a shuffled order); bit-exact or AssertionError."""
    ids = np.random.default_rng(0).permutation(raw.shape[0]).astype(np.int32)
    got = run_embed(gpu, cu, kernel or f"embed_{SUFFIX[qtype]}", raw, ids, D)
    np.testing.assert_array_equal(got, dequant(raw, qtype)[ids])


def assert_close_dot(y, x, w, bias=None):
    """Accumulation order differs from BLAS: error <= 1e-5 of sum |x||w| (plus |bias| rounding)."""
    want = ref.linear(
        x.astype(np.float64), w.astype(np.float64), None if bias is None else bias.astype(np.float64)
    )
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + (
        0 if bias is None else np.abs(bias)
    )
    err = np.abs(y - want)
    bad = err > 1e-5 * scale + 1e-30
    assert not bad.any(), (
        f"{bad.sum()} of {y.size} outputs off; worst {(err / (scale + 1e-30)).max():.3g} of sum|x||w|"
    )


@pytest.fixture(scope="module")
def real_models(request):
    return {
        "smollm2": request.getfixturevalue("smollm2_path"),
        "qwen05": request.getfixturevalue("qwen05_path"),
    }


@pytest.mark.parametrize("model, qtype", REAL, ids=[f"{m}-{q.name}" for m, q in REAL])
def test_dequant_real_blocks(gpu, real_models, model, qtype):
    name, raw, K = real_rows(real_models[model], qtype, max_rows=48)
    check_dequant(gpu, raw, qtype, K)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
def test_dequant_synthetic(gpu, rng, qtype):
    raw = synthetic(qtype, 20, 512, rng)
    check_dequant(gpu, raw, qtype, 512)


def test_embed_rejects_out_of_range_ids_with_nan(gpu, rng):
    raw = synthetic(QT.Q8_0, 4, 64, rng)
    out = run_embed(gpu, "embed.cu", "embed_q8_0", raw, np.array([1, 4, -1], np.int32), 64)
    np.testing.assert_array_equal(out[0], dequant(raw, QT.Q8_0)[1])
    assert np.isnan(out[1:]).all()


def run_linear(gpu, kernel, raw, x, bias, N, K):
    T = x.shape[0]
    y = np.empty((T, N), np.float32)
    b = None if bias is None else gpu.In(bias)
    if kernel.startswith("matvec"):
        block, grid = (32, 4, 1), ((N + 3) // 4, 1)
    else:
        block, grid = (256, 1, 1), ((N + 63) // 64, (T + 63) // 64)
    gpu.fn(kernel.split("_")[0] + ".cu", kernel)(
        gpu.In(raw), gpu.In(x), b, gpu.Out(y), np.int32(N), np.int32(K), np.int32(T), block=block, grid=grid
    )
    return y


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
@pytest.mark.parametrize("path, T", [("t1", 1), ("t8", 8), ("t8", 3), ("mm", 70)])
def test_linear_synthetic(gpu, rng, qtype, path, T):
    N, K = 70, 512  # 70 rows: a partial warp group and a partial 64-row tile
    raw = synthetic(qtype, N, K, rng)
    x = rng.standard_normal((T, K), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if T % 2 else None
    kernel = f"matmul_{SUFFIX[qtype]}" if path == "mm" else f"matvec_{SUFFIX[qtype]}_{path}"
    y = run_linear(gpu, kernel, raw, x, bias, N, K)
    assert_close_dot(y, x, dequant(raw, qtype), bias)


@pytest.mark.parametrize("model, qtype", REAL, ids=[f"{m}-{q.name}" for m, q in REAL])
@pytest.mark.parametrize("path, T", [("t1", 1), ("t8", 5), ("mm", 33)])
def test_linear_real_weights(gpu, rng, real_models, model, qtype, path, T):
    name, raw, K = real_rows(real_models[model], qtype, max_rows=160)
    N = raw.shape[0]
    x = rng.standard_normal((T, K), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    kernel = f"matmul_{SUFFIX[qtype]}" if path == "mm" else f"matvec_{SUFFIX[qtype]}_{path}"
    y = run_linear(gpu, kernel, raw, x, bias, N, K)
    assert_close_dot(y, x, dequant(raw, qtype), bias)


@pytest.mark.slow
@pytest.mark.parametrize("path, T", [("t1", 1), ("t8", 8), ("mm", 130)])
def test_linear_qwen_ffn_down_full(gpu, rng, qwen05_path, path, T):
    """A whole real weight, [896, 4864] (Q4_K or Q6_K in qwen2.5-coder-0.5b)."""
    name, raw, K = real_rows(qwen05_path, QT.Q6_K, max_rows=1 << 30)
    raw = raw[:896]
    x = rng.standard_normal((T, K), dtype=np.float32)
    kernel = "matmul_q6_K" if path == "mm" else f"matvec_q6_K_{path}"
    y = run_linear(gpu, kernel, raw, x, None, raw.shape[0], K)
    assert_close_dot(y, x, dequant(raw, QT.Q6_K))
