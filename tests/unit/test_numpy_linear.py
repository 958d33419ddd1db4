"""NumpyBackend.linear: each of its three BLAS forms (gemv per row, (W @ x.T).T, x @ W.T) against float64."""

import numpy as np
import pytest

from inference.model.backends.numpy_backend import GEMV_ROWS, SMALL_GEMM_ROWS, NumpyBackend


@pytest.mark.parametrize("rows", [1, 2, GEMV_ROWS, GEMV_ROWS + 1, SMALL_GEMM_ROWS, SMALL_GEMM_ROWS + 1, 97])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_float64_in_every_form(rows, with_bias):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((300, 128), dtype=np.float32)  # [N, K]
    x = rng.standard_normal((rows, 2 * 128), dtype=np.float32)[:, ::2]  # [T, K], strided like a view
    bias = rng.standard_normal(300, dtype=np.float32) if with_bias else None
    y = NumpyBackend().linear(x, w, bias)
    expected = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else bias)
    assert y.shape == (rows, 300) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)
