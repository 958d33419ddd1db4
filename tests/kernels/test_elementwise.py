"""rmsnorm, rope, add, swiglu, kv_write, argmax against the NumPy backend (the reference)."""

import numpy as np
import pytest

from inference.model.backends.numpy_backend import NumpyBackend

ref = NumpyBackend()


@pytest.mark.parametrize("T, D", [(1, 576), (7, 896), (3, 1001), (2, 64)])
def test_rmsnorm(gpu, rng, T, D):
    x = rng.standard_normal((T, D), dtype=np.float32) * 3
    w = rng.standard_normal(D, dtype=np.float32)
    y = np.empty_like(x)
    gpu.fn("rmsnorm.cu", "rmsnorm_f32")(
        gpu.In(x), gpu.In(w), gpu.Out(y), np.int32(D), np.float32(1e-6), block=(256, 1, 1), grid=(T, 1)
    )
    np.testing.assert_allclose(y, ref.rmsnorm(x, w, 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "T, H, hd, rope_dim, style, base",
    [
        (5, 9, 64, 64, "normal", 1e5),  # smollm2 q
        (3, 3, 64, 64, "normal", 1e5),  # smollm2 k
        (4, 14, 64, 64, "neox", 1e6),  # qwen q
        (1, 2, 64, 64, "neox", 1e6),  # qwen k, one token
        (3, 5, 64, 32, "neox", 1e4),  # partial rotary
        (2, 3, 80, 40, "normal", 1e4),  # partial rotary, odd pair count
    ],
)
def test_rope(gpu, rng, T, H, hd, rope_dim, style, base):
    x = rng.standard_normal((T, H, hd), dtype=np.float32)
    positions = rng.integers(0, 32768, size=T, dtype=np.int32)
    positions[0] = 0
    inv_freq = (1.0 / base ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)).astype(np.float32)
    want = x.copy()
    ref.rope(want, positions, inv_freq, style)
    got = x.copy()
    gpu.fn("rope.cu", "rope_f32")(
        gpu.InOut(got), gpu.In(positions), gpu.In(inv_freq),
        np.int32(H), np.int32(hd), np.int32(rope_dim // 2), np.int32(style == "neox"), np.int32(H * hd),
        block=(128, 1, 1), grid=(T, 1),
    )  # fmt: skip
    # __sincosf after an exact range reduction: ~1e-6 absolute on cos/sin
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=4e-6)
    np.testing.assert_array_equal(got[..., rope_dim:], x[..., rope_dim:])


@pytest.mark.parametrize("n, grid", [(7 * 896, 25), (1, 1), (1001, 2)])
def test_add(gpu, rng, n, grid):
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    want = x.copy()
    ref.add(want, y)
    gpu.fn("add.cu", "add_f32")(gpu.InOut(x), gpu.In(y), np.int32(n), block=(256, 1, 1), grid=(grid, 1))
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("T, F", [(1, 1536), (3, 4864), (2, 1001)])
def test_swiglu(gpu, rng, T, F):
    gate_up = rng.standard_normal((T, 2 * F), dtype=np.float32) * 4
    out = np.empty((T, F), np.float32)
    gpu.fn("swiglu.cu", "swiglu_f32")(
        gpu.In(gate_up), gpu.Out(out), np.int32(F), block=(256, 1, 1), grid=((F + 255) // 256, T)
    )
    np.testing.assert_allclose(out, ref.swiglu(gate_up), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_kv, hd", [(3, 64), (2, 64), (1, 80)])
def test_kv_write(gpu, rng, n_kv, hd):
    num_blocks, bs = 6, 16
    k_cache = rng.standard_normal((num_blocks, bs, n_kv, hd), dtype=np.float32)
    v_cache = rng.standard_normal((num_blocks, bs, n_kv, hd), dtype=np.float32)
    slots = np.array([15, 16, 17, 0, 95, 40], np.int32)  # both sides of a block boundary, first, last
    T = len(slots)
    k = rng.standard_normal((T, n_kv, hd), dtype=np.float32)
    v = rng.standard_normal((T, n_kv, hd), dtype=np.float32)
    want_k, want_v = k_cache.copy(), v_cache.copy()
    ref.kv_write(want_k, want_v, k, v, slots)
    gpu.fn("kv_write.cu", "kv_write_f32")(
        gpu.InOut(k_cache), gpu.InOut(v_cache), gpu.In(k), gpu.In(v), gpu.In(slots),
        np.int32(n_kv * hd), np.int32(n_kv * hd), block=(128, 1, 1), grid=(T, 1),
    )  # fmt: skip
    np.testing.assert_array_equal(k_cache, want_k)
    np.testing.assert_array_equal(v_cache, want_v)


def test_kv_write_skips_negative_slots(gpu, rng):
    cache = rng.standard_normal((2, 4, 1, 8), dtype=np.float32)
    before = cache.copy()
    kv = rng.standard_normal((1, 1, 8), dtype=np.float32)
    gpu.fn("kv_write.cu", "kv_write_f32")(
        gpu.InOut(cache), gpu.InOut(cache.copy()), gpu.In(kv), gpu.In(kv), gpu.In(np.array([-1], np.int32)),
        np.int32(8), np.int32(8), block=(128, 1, 1), grid=(1, 1),
    )  # fmt: skip
    np.testing.assert_array_equal(cache, before)


@pytest.mark.parametrize("B, V", [(1, 49152), (3, 151936), (2, 5)])
def test_argmax(gpu, rng, B, V):
    logits = rng.standard_normal((B, V), dtype=np.float32)
    logits[0, V // 3] = logits[0, V - 1] = 50.0  # a tie: the first index wins, as np.argmax
    out = np.empty(B, np.int32)
    gpu.fn("argmax.cu", "argmax_f32")(
        gpu.In(logits), gpu.Out(out), np.int32(V), block=(1024, 1, 1), grid=(B, 1)
    )
    np.testing.assert_array_equal(out, np.argmax(logits, axis=1))


def test_rope_and_kv_write_on_views_into_a_fused_qkv(gpu, rng):
    """model.py slices q, k, v out of one [T, (H + 2 n_kv) hd] projection: the kernels take row strides."""
    T, H, n_kv, hd = 3, 14, 2, 64
    width = (H + 2 * n_kv) * hd
    qkv = rng.standard_normal((T, width), dtype=np.float32)
    positions = np.array([5, 6, 7], np.int32)
    inv_freq = (1.0 / 1e6 ** (np.arange(0, hd, 2) / hd)).astype(np.float32)
    want = qkv.copy()
    ref.rope(want[:, : H * hd].reshape(T, H, hd), positions, inv_freq, "neox")
    k_view = want[:, H * hd : (H + n_kv) * hd].reshape(T, n_kv, hd)
    ref.rope(k_view, positions, inv_freq, "neox")
    got = qkv.copy()
    rope = gpu.fn("rope.cu", "rope_f32")
    for off, heads in ((0, H), (H * hd, n_kv)):  # q, then k, rotated in place inside the fused buffer
        sub = np.ascontiguousarray(got.reshape(-1)[off:])  # the device pointer would be base + off
        rope(
            gpu.InOut(sub), gpu.In(positions), gpu.In(inv_freq), np.int32(heads), np.int32(hd),
            np.int32(hd // 2), np.int32(1), np.int32(width), block=(128, 1, 1), grid=(T, 1),
        )  # fmt: skip
        got.reshape(-1)[off:] = sub
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=4e-6)
    k_cache = np.zeros((2, 4, n_kv, hd), np.float32)
    v_cache = np.zeros_like(k_cache)
    slots = np.array([1, 2, 4], np.int32)
    k_src = np.ascontiguousarray(got.reshape(-1)[H * hd :])
    v_src = np.ascontiguousarray(got.reshape(-1)[(H + n_kv) * hd :])
    gpu.fn("kv_write.cu", "kv_write_f32")(
        gpu.InOut(k_cache), gpu.InOut(v_cache), gpu.In(k_src), gpu.In(v_src), gpu.In(slots),
        np.int32(n_kv * hd), np.int32(width), block=(128, 1, 1), grid=(T, 1),
    )  # fmt: skip
    flat_k = k_cache.reshape(-1, n_kv, hd)
    np.testing.assert_array_equal(flat_k[slots], got[:, H * hd : (H + n_kv) * hd].reshape(T, n_kv, hd))
    np.testing.assert_array_equal(
        v_cache.reshape(-1, n_kv, hd)[slots], got[:, (H + n_kv) * hd :].reshape(T, n_kv, hd)
    )
