"""Prefill (FlashAttention-style) and split decode attention over the paged KV cache, against the NumPy
backend. Tolerance: 2e-5 absolute on outputs of magnitude ~1 (online softmax and expf vs one-pass NumPy)."""

import numpy as np
import pytest

from inference.model.backends.base import AttentionSeq
from inference.model.backends.numpy_backend import NumpyBackend

ref = NumpyBackend()
BS = 16  # block_size of the paged cache


def make_batch(rng, H, n_kv, hd, shapes):
    """Caches with shuffled block tables; shapes = [(query_len, context_len)]. Returns q, caches, seqs."""
    need = [-(-ctx // BS) for _, ctx in shapes]
    num_blocks = sum(need) + 3
    perm = rng.permutation(num_blocks).astype(np.int32)
    k_cache = rng.standard_normal((num_blocks, BS, n_kv, hd), dtype=np.float32)
    v_cache = rng.standard_normal((num_blocks, BS, n_kv, hd), dtype=np.float32)
    seqs, start, used = [], 0, 0
    for qlen, ctx in shapes:
        seqs.append(AttentionSeq(start, qlen, ctx, perm[used : used + need[len(seqs)]]))
        start, used = start + qlen, used + need[len(seqs) - 1]
    q = rng.standard_normal((start, H, hd), dtype=np.float32)
    return q, k_cache, v_cache, seqs


def pack(seqs):
    tables = np.concatenate([s.block_table for s in seqs]).astype(np.int32)
    offsets = np.cumsum([0] + [len(s.block_table) for s in seqs])[:-1]
    rows = [(s.query_start, s.query_len, s.context_len, o) for s, o in zip(seqs, offsets, strict=True)]
    info = np.array(rows, np.int32)
    return info, tables


def run_prefill(gpu, q, k_cache, v_cache, seqs, window):
    T, H, hd = q.shape
    n_kv = k_cache.shape[2]
    info, tables = pack(seqs)
    out = np.empty_like(q)
    smem = (32 * (hd + 1) + 32 * hd + 4 * hd + 4 * 32) * 4
    gpu.fn("attention_prefill.cu", "attention_prefill_f32")(
        gpu.In(q), gpu.In(k_cache), gpu.In(v_cache), gpu.Out(out), gpu.In(info), gpu.In(tables),
        np.int32(H), np.int32(n_kv), np.int32(hd), np.int32(BS), np.int32(window or 0),
        np.float32(1 / np.sqrt(hd)), np.int32(H * hd),
        block=(32, 4, 1), grid=(-(-max(s.query_len for s in seqs) // 4), H, len(seqs)), shared=smem,
    )  # fmt: skip
    return out


def run_decode(gpu, q, k_cache, v_cache, seqs, window, split_len):
    T, H, hd = q.shape
    n_kv = k_cache.shape[2]
    info, tables = pack(seqs)
    n_splits = -(-max(s.context_len for s in seqs) // split_len)
    nw = 4 if hd <= 80 else 2
    part_ml = np.empty((len(seqs), H, n_splits, 2), np.float32)
    part_acc = np.empty((len(seqs), H, n_splits, hd), np.float32)
    smem = nw * (32 * (hd + 1) + hd + 32 + 2 + 32) * 4
    gpu.fn("attention_decode.cu", "attention_decode_split_f32")(
        gpu.In(q), gpu.In(k_cache), gpu.In(v_cache), gpu.Out(part_ml), gpu.Out(part_acc), gpu.In(info),
        gpu.In(tables), np.int32(H), np.int32(n_kv), np.int32(hd), np.int32(BS), np.int32(window or 0),
        np.float32(1 / np.sqrt(hd)), np.int32(split_len), np.int32(H * hd),
        block=(32, nw, 1), grid=(n_splits, H, len(seqs)), shared=smem,
    )  # fmt: skip
    out = np.zeros_like(q)
    gpu.fn("attention_decode.cu", "attention_decode_combine_f32")(
        gpu.In(part_ml), gpu.In(part_acc), gpu.InOut(out), gpu.In(info), np.int32(H), np.int32(hd),
        np.int32(n_splits), block=(32, 1, 1), grid=(H, len(seqs)),
    )  # fmt: skip
    return out


HEADS = [(9, 3), (14, 2), (7, 1), (4, 4)]  # GQA ratios 3, 7, 7, 1 (smollm2, qwen 0.5b, ...)


@pytest.mark.parametrize("H, n_kv", HEADS, ids=[f"{h}q{k}kv" for h, k in HEADS])
@pytest.mark.parametrize("window", [None, 8])
def test_prefill(gpu, rng, H, n_kv, window):
    # a fresh prompt, a chunked-prefill continuation, a decode row mixed in, a prompt of exactly one block
    shapes = [(37, 37), (5, 50), (1, 17), (16, 16)]
    q, kc, vc, seqs = make_batch(rng, H, n_kv, 64, shapes)
    got = run_prefill(gpu, q, kc, vc, seqs, window)
    np.testing.assert_allclose(got, ref.attention(q, kc, vc, seqs, window), atol=2e-5, rtol=1e-5)


def test_prefill_head_dim_128(gpu, rng):
    q, kc, vc, seqs = make_batch(rng, 4, 2, 128, [(9, 40)])
    np.testing.assert_allclose(
        run_prefill(gpu, q, kc, vc, seqs, None), ref.attention(q, kc, vc, seqs), atol=2e-5
    )


@pytest.mark.parametrize("H, n_kv", HEADS, ids=[f"{h}q{k}kv" for h, k in HEADS])
@pytest.mark.parametrize("window", [None, 40])
def test_decode(gpu, rng, H, n_kv, window):
    shapes = [(1, 1), (1, 16), (1, 17), (1, 100), (1, 300)]  # 300 keys: 5 splits of 64
    q, kc, vc, seqs = make_batch(rng, H, n_kv, 64, shapes)
    got = run_decode(gpu, q, kc, vc, seqs, window, split_len=64)
    np.testing.assert_allclose(got, ref.attention(q, kc, vc, seqs, window), atol=2e-5, rtol=1e-5)


def test_decode_head_dim_128_one_split(gpu, rng):
    q, kc, vc, seqs = make_batch(rng, 4, 2, 128, [(1, 70), (1, 3)])
    got = run_decode(gpu, q, kc, vc, seqs, None, split_len=128)
    np.testing.assert_allclose(got, ref.attention(q, kc, vc, seqs), atol=2e-5, rtol=1e-5)
