"""cpu backend: weights stay in their GGUF blocks (views of the mapped file); native kernels compute.

The kernels (cpu/*.c, built by `pip install` into `_cpu`) pick their SIMD path at run time. A linear
splits its rows by what they are for:
- rows whose logits are read (decode tokens, a prompt's last row) take the decode kernel: on AVX-512 VNNI
  hosts, for Q4_0 .. Q8_0 and Q4_K .. Q6_K, int8 activations (one scale per 32 values) and integer dots
  straight from the blocks (matvec_q8: the weights stream at memory speed, 1.3-1.6x the float32 kernel
  on a whole decode step); otherwise float32 through the fused dequantize x vector kernel (matvec). Both
  read each weight byte once for up to 8 rows;
- rows that only fill the KV cache (the rest of a prefill) take int8 activations and integer dot
  products over unpacked weight tiles (matmul_q8), for the same types; other types (F32, F16, BF16,
  Q2_K, Q3_K) stay in float32 (matvec for few rows, cache-sized dequantized tiles handed to sgemm for many).
Which path a row takes depends only on its own sequence, and every kernel gives a row the same result in
any batch: batched output equals solo output.
"""

import logging
from dataclasses import dataclass

import numpy as np

from ...errors import BackendError
from ...gguf.loader import TensorInfo, dequantize
from . import _cpu, limit_blas_threads
from .base import AttentionSeq, KeepInPlace, blocks_stored_bytes

log = logging.getLogger("gguf_serve.backend")

# Up to this many rows, the fused dequantize x vector kernel beats dequantized tiles + sgemm.
MATVEC_ROWS = 8
TILE_BYTES = 1 << 20  # float32 bytes of one dequantized weight tile handed to sgemm (fits in L2)


@dataclass(frozen=True)
class QuantWeight:
    """A GGUF matrix [n, k] as stored in the file: n rows of row_bytes bytes in blocks of ggml_type."""

    raw: np.ndarray  # uint8 [n, row_bytes], a read-only view of the mapped file
    ggml_type: int
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)


@dataclass(frozen=True)
class SplitWeight:
    """Row blocks stacked (q|k|v, gate|up): each part writes its column range of one output; no copy."""

    parts: tuple[QuantWeight, ...]
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


class CpuBackend:
    name = "cpu"

    def __init__(self, threads: int, kv_cache_dtype: str = "f16"):
        if kv_cache_dtype not in ("f16", "f32"):
            raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is not one of 'f16', 'f32'")
        _cpu.set_threads(threads)
        limit_blas_threads(threads)  # the sgemm of prefill tiles shares the same cores
        self.kv_dtype = np.dtype(np.float16 if kv_cache_dtype == "f16" else np.float32)
        self.q8_types = frozenset(_cpu.matmul_q8_types())
        self.q8_decode_types = frozenset(_cpu.matvec_q8_types())  # empty below AVX-512 VNNI
        self._seq_memo: tuple | None = None  # attention metadata of the last batch (every layer reuses it)
        self._rope_memo: tuple | None = None  # cos / sin of the last batch's positions (likewise)
        self._split_memo: tuple | None = None  # the last batch's fill / exact rows (likewise)
        log.info(
            "backend: cpu (%s kernels, %d threads, %s KV cache)", _cpu.simd_level(), threads, kv_cache_dtype
        )

    # -- weights and caches ----------------------------------------------------------------------
    def load_weight(self, tensor: TensorInfo) -> np.ndarray | QuantWeight:
        """[N, K] matrices stay in their blocks; [D] norms and biases become float32."""
        if len(tensor.shape) == 1:
            return np.ascontiguousarray(dequantize(tensor), np.float32)
        if len(tensor.shape) != 2:
            raise BackendError(f"tensor {tensor.name}: {len(tensor.shape)}-D weights are not supported")
        qtype = int(tensor.ggml_type)
        elems, size = _cpu.block_size(qtype)
        n, k = tensor.shape
        if not elems:
            raise BackendError(f"tensor {tensor.name}: GGML type {tensor.ggml_type.name} has no CPU kernel")
        if k % elems:
            raise BackendError(f"tensor {tensor.name}: row length {k} is not a multiple of {elems}")
        raw = np.asarray(tensor.data).view(np.uint8).reshape(n, -1)
        assert raw.shape[1] == k // elems * size, f"tensor {tensor.name}: {raw.shape[1]} bytes per row"
        return QuantWeight(raw, qtype, n, k)

    def stored_bytes(self, tensor: TensorInfo) -> int:
        return blocks_stored_bytes(tensor)  # matrices stay as the file's bytes (mapped), vectors float32

    def fuse(self, parts: list) -> np.ndarray | SplitWeight:
        if all(isinstance(p, np.ndarray) for p in parts):
            return np.concatenate(parts)  # biases
        flat = tuple(q for p in parts for q in (p.parts if isinstance(p, SplitWeight) else (p,)))
        assert all(p.k == flat[0].k for p in flat), "fused weights must share their row length"
        return SplitWeight(flat, sum(p.n for p in flat), flat[0].k)

    def layer_arena(self, sizes: list[int]) -> KeepInPlace:
        return KeepInPlace()

    def alloc_kv(self, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
        # np.zeros maps zero pages lazily: untouched blocks cost no resident memory
        return [np.zeros(shape, self.kv_dtype) for _ in range(count)]

    def kv_bytes_per_element(self) -> int:
        return self.kv_dtype.itemsize

    def copy_block(self, k_cache, v_cache, src: int, dst: int) -> None:
        k_cache[dst] = k_cache[src]
        v_cache[dst] = v_cache[src]

    # -- ops -------------------------------------------------------------------------------------
    def embed(self, table: QuantWeight, ids: np.ndarray) -> np.ndarray:
        # table [V, D] in blocks, ids [T] -> [T, D]: only the rows read are dequantized
        ids = np.ascontiguousarray(ids, np.int32)
        out = np.empty((ids.size, table.k), np.float32)
        _cpu.dequant_rows(
            table.ggml_type, table.raw, table.raw.shape[1], table.n, table.k, ids, 0, ids.size, out
        )
        return out

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        x = _c32(x)
        out = np.empty_like(x)
        _cpu.rmsnorm(x, w, eps, x.shape[0], x.shape[1], out)
        return out

    def linear(
        self,
        x: np.ndarray,
        w: QuantWeight | SplitWeight,
        bias: np.ndarray | None = None,
        kv_only: np.ndarray | None = None,
    ) -> np.ndarray:
        # x [T, K] -> [T, N]; kv_only [T] bool: rows that only fill the KV cache take int8 activations
        x = _c32(x)
        assert x.shape[1] == w.k, f"linear: x {x.shape} vs weight [{w.n}, {w.k}]"
        y = np.empty((x.shape[0], w.n), np.float32)
        fill, exact = self._row_split(kv_only)
        if fill.size == 0:
            self._exact(x, w, y)
        elif exact.size == 0:
            self._fill(x, w, y)
        else:  # a prefill chunk's last row (its logits are read) beside the rows before it
            y[fill] = self._fill(np.ascontiguousarray(x[fill]), w, np.empty((fill.size, w.n), np.float32))
            y[exact] = self._exact(np.ascontiguousarray(x[exact]), w, np.empty((exact.size, w.n), np.float32))
        if bias is not None:
            y += bias
        return y

    def _row_split(self, kv_only: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        # (fill rows, exact rows) of the batch: found once, every linear of the forward reuses them
        memo = self._split_memo
        if memo is not None and memo[0] is kv_only:
            return memo[1]
        if kv_only is None:
            split = (np.empty(0, np.int64), np.empty(0, np.int64))  # exact.size 0 is never asked for then
        else:
            split = (np.flatnonzero(kv_only), np.flatnonzero(~kv_only))
        self._split_memo = (kv_only, split)
        return split

    def _exact(self, x: np.ndarray, w: QuantWeight | SplitWeight, y: np.ndarray) -> np.ndarray:
        # rows whose logits are read, whatever their count, through a kernel that gives a row the same
        # result in any batch (batch invariance): int8 activations and integer dots (matvec_q8) where the
        # type has that kernel on this host, else float32 activations (matvec); the parts of q | k | v or
        # gate | up in one call where they share a kernel (one team, x prepared once)
        parts = _parts(w)
        q8 = [p.ggml_type in self.q8_decode_types for p in parts]
        if all(q8) or not any(q8):
            _matvec_parts(_cpu.matvec_q8_parts if q8[0] else _cpu.matvec_parts, parts, x, y)
            return y
        flat, off = y.reshape(-1), 0
        for p, use_q8 in zip(parts, q8, strict=True):
            _matvec_parts(_cpu.matvec_q8_parts if use_q8 else _cpu.matvec_parts, (p,), x, flat[off:], w.n)
            off += p.n
        return y

    def _fill(self, x: np.ndarray, w: QuantWeight | SplitWeight, y: np.ndarray) -> np.ndarray:
        # rows that only fill the KV cache: int8 activations (one scale per 32) where the type has the
        # kernel (each row alike at any count), else float32 (matvec for few rows, tiles + sgemm for many)
        t, flat, off, xq = x.shape[0], y.reshape(-1), 0, None
        for p in _parts(w):
            if p.ggml_type in self.q8_types:
                xq = xq if xq is not None else _quantize_q8(x)
                _cpu.matmul_q8(p.ggml_type, p.raw, p.raw.shape[1], p.n, p.k, xq, t, flat[off:], w.n)
            elif t <= MATVEC_ROWS:
                _cpu.matvec(p.ggml_type, p.raw, p.raw.shape[1], p.n, p.k, x, t, flat[off:], w.n)
            else:
                _sgemm_tiles(p, x, y[:, off : off + p.n])
            off += p.n
        return y

    def rope(self, x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, style: str) -> None:
        # x [T, H, hd] in place (a view of the fused qkv output: rotated in a contiguous copy)
        if style not in ("normal", "neox"):
            raise ValueError(f"rope style {style!r} is not one of 'normal', 'neox'")
        t, h, hd = x.shape
        target = x if x.flags.c_contiguous and x.dtype == np.float32 else _c32(x)
        _cpu.rope(target, t, h, hd, self._rope_table(positions, inv_freq), inv_freq.shape[0], style == "neox")
        if target is not x:
            x[...] = target

    def kv_write(self, k_cache, v_cache, k: np.ndarray, v: np.ndarray, slots: np.ndarray) -> None:
        # caches [num_blocks, block_size, n_kv, hd]; k, v [T, n_kv, hd]; slots [T]
        k, v = _c32(k), _c32(v)
        row = k.shape[1] * k.shape[2]
        slots = np.ascontiguousarray(slots, np.int32)
        f16 = k_cache.dtype == np.float16
        _cpu.kv_write(k_cache, v_cache, f16, k, v, slots, k.shape[0], row)

    def attention(self, q, k_cache, v_cache, seqs: list[AttentionSeq], sliding_window: int | None = None):
        # q [T, H, hd] -> [T, H, hd] over the paged caches [num_blocks, block_size, n_kv, hd]
        q = _c32(q)
        t, h, hd = q.shape
        starts, lens, contexts, tables = self._seq_arrays(seqs)
        out = np.empty_like(q)
        f16 = k_cache.dtype == np.float16
        _cpu.attention(
            q, t, h, k_cache.shape[2], hd, k_cache, v_cache, f16, k_cache.shape[1], len(seqs),
            starts, lens, contexts, tables, tables.shape[1], sliding_window or 0, out,
        )  # fmt: skip
        return out

    def _rope_table(self, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
        # cos | sin [T, 2, half] of the batch's angles: computed once, every layer's q and k reuse it
        memo = self._rope_memo
        if memo is not None and memo[0] is positions and memo[1] is inv_freq:
            return memo[2]
        pos = np.ascontiguousarray(positions, np.int32)
        cs = np.empty((pos.size, 2, inv_freq.shape[0]), np.float32)
        _cpu.rope_table(pos, pos.size, inv_freq, inv_freq.shape[0], cs)
        self._rope_memo = (positions, inv_freq, cs)
        return cs

    def _seq_arrays(self, seqs: list[AttentionSeq]):
        memo = self._seq_memo
        if memo is not None and memo[0] is seqs:
            return memo[1]
        width = max(s.block_table.size for s in seqs)
        tables = np.zeros((len(seqs), width), np.int32)  # [S, max blocks]
        for i, s in enumerate(seqs):
            tables[i, : s.block_table.size] = s.block_table
        arrays = tuple(np.array([getattr(s, f) for s in seqs], np.int32) for f in _SEQ_FIELDS) + (tables,)
        self._seq_memo = (seqs, arrays)
        return arrays

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        gate_up = _c32(gate_up)
        t, f = gate_up.shape[0], gate_up.shape[1] // 2
        out = np.empty((t, f), np.float32)
        _cpu.swiglu(gate_up, t, f, out)
        return out

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x += y

    def gather_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return x[rows]

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return x


_SEQ_FIELDS = ("query_start", "query_len", "context_len")


def _parts(w: QuantWeight | SplitWeight) -> tuple[QuantWeight, ...]:
    return w.parts if isinstance(w, SplitWeight) else (w,)


def _matvec_parts(kernel, parts: tuple[QuantWeight, ...], x: np.ndarray, y: np.ndarray, ldy=None):
    # y [T, ldy] (columns of the parts side by side) = x [T, K] @ the parts' rows.T
    n = sum(p.n for p in parts)
    kernel(
        tuple(p.ggml_type for p in parts), tuple(p.raw for p in parts), tuple(p.raw.shape[1] for p in parts),
        tuple(p.n for p in parts), parts[0].k, x, x.shape[0], y, ldy or n,
    )  # fmt: skip


def _c32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def _quantize_q8(x: np.ndarray) -> np.ndarray:
    # x [T, K] float32 -> the kernels' packed int8 activations (one scale per 32 values)
    xq = np.empty(_cpu.q8_bytes(x.shape[0], x.shape[1]), np.uint8)
    _cpu.quantize_q8(x, x.shape[0], x.shape[1], xq)
    return xq


def _sgemm_tiles(w: QuantWeight, x: np.ndarray, y: np.ndarray) -> None:
    # y [T, n] = x [T, K] @ W.T, W dequantized TILE_BYTES at a time (cache-resident) for NumPy's sgemm
    rows = max(16, TILE_BYTES // (4 * w.k))
    tile = np.empty((min(rows, w.n), w.k), np.float32)
    for row0 in range(0, w.n, rows):
        m = min(rows, w.n - row0)
        _cpu.dequant_rows(w.ggml_type, w.raw, w.raw.shape[1], w.n, w.k, None, row0, m, tile[:m])
        y[:, row0 : row0 + m] = x @ tile[:m].T
