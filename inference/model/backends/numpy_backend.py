"""NumPy backend: the reference implementation of every op, and the CPU compute path."""

import ctypes
import ctypes.util
import dataclasses

import numpy as np

from ...gguf.loader import TensorInfo, dequantize
from .base import AttentionSeq

# Up to this many rows, one gemv per row beats a gemm (OpenBLAS's gemm at 2-4 rows costs about what it
# does at 16): a decode step of 2 sequences takes 39.5 instead of 57.2 ms on SmolLM2, 126 instead of
# 162 ms on Qwen2.5-0.5B; at 3 rows 49.6 / 63.6 and 177 / 190 ms; at 4 Qwen's gemm wins (2-core dev VM).
GEMV_ROWS = 3
# Up to this many rows, `(W @ x.T).T` beats `x @ W.T`: SmolLM2's four layer matrices at T = 16 take
# 0.88 ms against 1.42 ms; from T = 64 on it loses (2.75 against 2.40 ms), on the 2-core dev VM.
SMALL_GEMM_ROWS = 40
ALIGN = 16  # float32 elements: arranged weights start on 64-byte (cache-line, AVX-512) boundaries
_MALLOC_TRIM = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)


class LayerArena:
    """Every layer's arrays in one buffer, in the order a forward reads them (the dataclass field order).

    Decode's small gemvs then stream consecutive memory: SmolLM2's 120 layer products take 15.6 ms
    instead of 17.2 ms per token on the 2-core dev VM. Layers are placed one at a time as they load,
    and each one's originals are freed (and given back to the OS) before the next loads.
    """

    def __init__(self, sizes: list[int]):
        # [sum of padded sizes] float32, each array starting on a 64-byte boundary; pages are committed
        # as they are written, so sizes may overestimate (fused arrays take one padding, not one per part)
        self.buffer = _aligned_empty(sum(_padded(n) for n in sizes))
        self.used = 0

    def place(self, load):
        """load() -> one layer (a dataclass); returns a copy whose arrays are views into the buffer."""
        layer = load()
        moved = {k: self._take(a) for k, a in vars(layer).items() if isinstance(a, np.ndarray)}
        placed = dataclasses.replace(layer, **moved)
        del layer  # the last reference to the originals
        _trim_heap()
        return placed

    def _take(self, a: np.ndarray) -> np.ndarray:
        end = self.used + a.size
        assert end <= self.buffer.size, f"arena of {self.buffer.size} elements is full"
        view = self.buffer[self.used : end].reshape(a.shape)
        view[...] = a
        self.used += _padded(a.size)
        return view


class NumpyBackend:
    """Weights are dequantized to float32 once at load, so every op is a BLAS call or a vector op."""

    name = "numpy"

    def __init__(self):
        # cos/sin of the last (positions, inv_freq) pair: every layer rotates q and k at the same positions
        self._rope_memo: tuple | None = None

    def load_weight(self, tensor: TensorInfo) -> np.ndarray:
        # [N, K] float32, C-contiguous: rows are output features, so `W @ x` streams memory in order
        return np.ascontiguousarray(dequantize(tensor), dtype=np.float32)

    def stored_bytes(self, tensor: TensorInfo) -> int:
        return 4 * tensor.n_elements  # dequantized to float32

    def fuse(self, parts: list[np.ndarray]) -> np.ndarray:
        # stacks output rows: [N1 + N2 + ..., K] (q|k|v, gate|up) so one product serves them all
        return np.concatenate(parts)

    def layer_arena(self, sizes: list[int]) -> "LayerArena":
        # one buffer for the layers' arrays (at most these sizes), filled in the order a forward reads them
        return LayerArena(sizes)

    def alloc_kv(self, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
        # float32 caches; np.zeros maps zero pages lazily: untouched blocks cost no resident memory
        return [np.zeros(shape, np.float32) for _ in range(count)]

    def kv_bytes_per_element(self) -> int:
        return 4

    def gather_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return x[rows]

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return x

    def embed(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        # table [V, D], ids [T] -> [T, D]
        return table[ids]

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        # x [T, D], w [D]; the sum of squares is a dot product per row (float32, as llama.cpp and HF)
        ms = np.einsum("td,td->t", x, x)[:, None] / np.float32(x.shape[1])
        return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * w

    def linear(
        self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, kv_only: np.ndarray | None = None
    ) -> np.ndarray:
        # x [T, K], w [N, K] -> [T, N], every row in float32 (kv_only needs nothing here); gemv streams W at
        # full bandwidth (later rows find it in cache)
        t = x.shape[0]
        if t <= GEMV_ROWS:
            y = np.empty((t, w.shape[0]), np.float32)
            for i in range(t):
                np.matmul(w, x[i], out=y[i])
        elif t <= SMALL_GEMM_ROWS:  # a decode batch: W as the left operand is ~1.6x faster (OpenBLAS)
            y = np.ascontiguousarray((w @ x.T).T)
        else:
            y = x @ w.T
        if bias is not None:
            y += bias
        return y

    def rope(self, x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, style: str) -> None:
        # x [T, H, hd] rotated in place over its first rope_dim = 2 * len(inv_freq) dims
        half = inv_freq.shape[0]
        cos, sin = self._rope_cos_sin(positions, inv_freq)  # [T, 1, half] each
        if style == "neox":  # pairs (i, i + half)
            a, b = x[..., :half].copy(), x[..., half : 2 * half].copy()
            x[..., :half] = a * cos - b * sin
            x[..., half : 2 * half] = a * sin + b * cos
        elif style == "normal":  # adjacent pairs (2i, 2i + 1)
            a, b = x[..., 0 : 2 * half : 2].copy(), x[..., 1 : 2 * half : 2].copy()
            x[..., 0 : 2 * half : 2] = a * cos - b * sin
            x[..., 1 : 2 * half : 2] = a * sin + b * cos
        else:
            raise ValueError(f"rope style {style!r} is not one of 'normal', 'neox'")

    def _rope_cos_sin(self, positions: np.ndarray, inv_freq: np.ndarray):
        memo = self._rope_memo
        if memo is not None and memo[0] is positions and memo[1] is inv_freq:
            return memo[2], memo[3]
        angles = positions.astype(np.float64)[:, None] * inv_freq.astype(np.float64)[None, :]  # [T, half]
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        self._rope_memo = (positions, inv_freq, cos, sin)
        return cos, sin

    def kv_write(self, k_cache, v_cache, k: np.ndarray, v: np.ndarray, slots: np.ndarray) -> None:
        # caches [num_blocks, block_size, n_kv, hd]; k, v [T, n_kv, hd]
        # slots [T] = block * block_size + offset
        # the caches are contiguous, so [num_blocks * block_size, n_kv, hd] is a view indexed by slot
        k_cache.reshape(-1, *k_cache.shape[2:])[slots] = k
        v_cache.reshape(-1, *v_cache.shape[2:])[slots] = v

    def copy_block(self, k_cache, v_cache, src: int, dst: int) -> None:
        k_cache[dst] = k_cache[src]
        v_cache[dst] = v_cache[src]

    def attention(self, q, k_cache, v_cache, seqs: list[AttentionSeq], sliding_window: int | None = None):
        # q [T, H, hd] -> [T, H, hd]; causal over each sequence's cached context; GQA by head groups
        out = np.empty_like(q)
        batched = [s for s in seqs if s.query_len == 1]  # decode queries: attended together, padded
        batched = batched if len(batched) > 1 else []
        for group in _decode_groups(batched):
            rows = [s.query_start for s in group]
            out[rows] = _attend_decodes(q[rows], k_cache, v_cache, group, sliding_window)
        for s in seqs:
            if s.query_len > 1 or not batched:
                rows = slice(s.query_start, s.query_start + s.query_len)
                out[rows] = _attend_one(q[rows], k_cache, v_cache, s, sliding_window)
        return out

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        # gate_up [T, 2F] -> [T, F] = silu(gate) * up
        f = gate_up.shape[1] // 2
        gate, up = gate_up[:, :f], gate_up[:, f:]
        return gate / (1.0 + np.exp(-gate)) * up

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x += y


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _trim_heap() -> None:
    # glibc keeps freed blocks below its (adaptive) mmap threshold in the heap: without this, the
    # dequantized originals stay resident (Qwen2.5-0.5B: +0.5 GB RSS). Other C libraries: nothing to do.
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _aligned_empty(n: int) -> np.ndarray:
    # [n] float32 starting on a 64-byte boundary (malloc'd memory is only 16-byte aligned)
    raw = np.empty(n + ALIGN, np.float32)
    skip = (-raw.ctypes.data % (4 * ALIGN)) // 4
    return raw[skip : skip + n]


def _gather(cache: np.ndarray, s: AttentionSeq) -> np.ndarray:
    # [num_blocks, bs, n_kv, hd] -> [n_kv, context_len, hd]
    blocks = cache[s.block_table]
    flat = blocks.reshape(-1, *cache.shape[2:])[: s.context_len]
    return flat.transpose(1, 0, 2)


def _mask(length: int, context_len: int, sliding_window: int | None) -> np.ndarray:
    # [L, C] True where query i (at position C - L + i) must not see key j: causal, and the window
    q_pos = np.arange(context_len - length, context_len)[:, None]
    k_pos = np.arange(context_len)[None, :]
    masked = k_pos > q_pos
    if sliding_window:
        masked |= k_pos <= q_pos - sliding_window
    return masked


def _attend_one(q, k_cache, v_cache, s: AttentionSeq, sliding_window: int | None):
    length, n_heads, hd = q.shape
    k, v = _gather(k_cache, s), _gather(v_cache, s)  # [n_kv, C, hd]
    n_kv = k.shape[0]
    qg = q.transpose(1, 0, 2).reshape(n_kv, n_heads // n_kv, length, hd)  # [n_kv, group, L, hd]
    scores = (qg @ k[:, None].transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(hd))  # [n_kv, g, L, C]
    if length > 1 or (sliding_window and s.context_len > sliding_window):  # one decode query sees all of C
        scores = np.where(_mask(length, s.context_len, sliding_window), -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = probs @ v[:, None]  # [n_kv, g, L, hd]
    return out.reshape(n_heads, length, hd).transpose(1, 0, 2)


def _decode_groups(seqs: list[AttentionSeq]) -> list[list[AttentionSeq]]:
    """Decode sequences by context length, grouped so that padding to a group's longest context at most
    doubles the keys it reads (short contexts never pay for one long one)."""
    groups: list[list[AttentionSeq]] = []
    total = 0  # context tokens in the last group
    for s in sorted(seqs, key=lambda s: s.context_len):
        if groups and s.context_len * (len(groups[-1]) + 1) <= 2 * (total + s.context_len):
            groups[-1].append(s)
            total += s.context_len
        else:
            groups.append([s])
            total = s.context_len
    return groups


def _attend_decodes(q, k_cache, v_cache, seqs: list[AttentionSeq], sliding_window: int | None):
    # q [B, H, hd]: one query per sequence, at position context_len - 1 -> [B, H, hd]
    b, n_heads, hd = q.shape
    bs, n_kv = k_cache.shape[1], k_cache.shape[2]
    context = np.array([s.context_len for s in seqs])  # [B]
    pos = np.minimum(np.arange(context.max())[None, :], context[:, None] - 1)  # [B, C] clamped to real keys
    tables = np.zeros((b, -(-context.max() // bs)), np.int64)  # [B, max blocks]
    for i, s in enumerate(seqs):
        tables[i, : s.block_table.size] = s.block_table
    slots = np.take_along_axis(tables, pos // bs, axis=1) * bs + pos % bs  # [B, C]
    k = k_cache.reshape(-1, n_kv, hd)[slots].transpose(0, 2, 3, 1)  # [B, n_kv, hd, C]
    v = v_cache.reshape(-1, n_kv, hd)[slots].transpose(0, 2, 1, 3)  # [B, n_kv, C, hd]
    qg = q.reshape(b, n_kv, n_heads // n_kv, hd)  # [B, n_kv, group, hd]
    scores = (qg @ k) * np.float32(1.0 / np.sqrt(hd))  # [B, n_kv, group, C]
    key = np.arange(context.max())[None, :]
    masked = key >= context[:, None]  # [B, C]: padding
    if sliding_window:
        masked |= key <= context[:, None] - 1 - sliding_window
    scores = np.where(masked[:, None, None, :], -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs @ v).reshape(b, n_heads, hd)  # [B, n_kv, group, hd] -> [B, H, hd]
