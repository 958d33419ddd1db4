"""CUDA backend: launches cuda/*.cu through PyCUDA (imported lazily: only GPU hosts have it).

Activations are pycuda GPUArrays (float32, C-contiguous); weights stay quantized on the device as raw GGUF
rows (`DeviceWeight`). Every launcher asserts shapes, dtypes and contiguity and checks the launch against
the kernel's limits; a CUDA error becomes a BackendError naming the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendError

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"
# options SourceModule gets besides include_dirs=[CUDA_DIR], arch and no_extern_c=True; the compile check
# (tests/kernels/ptxas.py) uses exactly these
NVCC_OPTIONS: tuple[str, ...] = ("-lineinfo",)
TARGET_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")

# GGML type id -> (kernel suffix, elements per block, bytes per block)
QUANT_TYPES = {
    0: ("f32", 1, 4),
    1: ("f16", 1, 2),
    30: ("bf16", 1, 2),
    2: ("q4_0", 32, 18),
    3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24),
    8: ("q8_0", 32, 34),
    10: ("q2_K", 256, 84),
    11: ("q3_K", 256, 110),
    12: ("q4_K", 256, 144),
    13: ("q5_K", 256, 176),
    14: ("q6_K", 256, 210),
}
MATVEC_MAX_T = 8  # up to 8 tokens share one pass over the weights (matvec_*_t8); more take the tiled matmul
MAX_SMEM = 48 * 1024  # default dynamic + static shared memory without an opt-in
DECODE_SPLIT = 256  # keys per split of the decode attention


@dataclass
class DeviceWeight:
    """A GGUF matrix [N, K] kept quantized on the device: N rows of row_bytes raw bytes."""

    raw: object  # pycuda GPUArray uint8 [N, row_bytes]
    suffix: str
    n: int
    k: int


@dataclass(frozen=True)
class _Launch:
    fn: object
    name: str


class CudaBackend:
    """The op set of NumpyBackend on a CUDA device (see numpy_backend.py for the semantics)."""

    name = "cuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as drv  # noqa: PLC0415 - optional dependency
        import pycuda.gpuarray as gpuarray  # noqa: PLC0415

        drv.init()
        self._drv, self._ga = drv, gpuarray
        self._ctx = drv.Device(device).make_context()
        major, minor = self._ctx.get_device().compute_capability()
        self.arch = f"sm_{major}{minor}"
        self._modules: dict[str, object] = {}

    # ---- compilation and launching -----------------------------------------------------------------
    def _kernel(self, cu: str, name: str) -> _Launch:
        from pycuda.compiler import SourceModule  # noqa: PLC0415

        if cu not in self._modules:
            try:
                self._modules[cu] = SourceModule(
                    (CUDA_DIR / cu).read_text(),
                    no_extern_c=True,
                    include_dirs=[str(CUDA_DIR)],
                    options=list(NVCC_OPTIONS),
                    arch=self.arch,
                )
            except Exception as exc:  # pycuda.driver.CompileError
                raise BackendError(f"compiling {cu} for {self.arch} failed: {exc}") from exc
        return _Launch(self._modules[cu].get_function(name), name)

    def _launch(self, k: _Launch, *args, block, grid, shared=0):
        threads = block[0] * block[1] * block[2]
        assert 0 < threads <= 1024 and shared <= MAX_SMEM, f"{k.name}: block {block}, {shared} B shared"
        assert all(g >= 1 for g in grid) and grid[1] <= 65535, f"{k.name}: grid {grid}"
        try:
            k.fn(*[np.intp(0) if a is None else a for a in args], block=block, grid=grid, shared=shared)
        except self._drv.Error as exc:
            raise BackendError(f"CUDA kernel {k.name} failed: {exc}") from exc

    def _empty(self, shape, dtype=np.float32):
        return self._ga.empty(shape, dtype)

    def _check(self, a, name, dtype=np.float32, ndim=None):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}"
        assert a.flags.c_contiguous, f"{name}: not C-contiguous"
        if ndim is not None:
            assert a.ndim == ndim, f"{name}: shape {a.shape}, expected {ndim} dims"

    def to_device(self, a: np.ndarray):
        return self._ga.to_gpu(np.ascontiguousarray(a))

    # ---- weights -------------------------------------------------------------------------------------
    def load_weight(self, tensor) -> DeviceWeight | object:
        """2-D GGUF tensors stay quantized on the device; 1-D ones (norms, biases) become float32 arrays."""
        if len(tensor.shape) == 1:
            from ..gguf_loader import dequantize  # noqa: PLC0415

            return self.to_device(np.asarray(dequantize(tensor), np.float32))
        if tensor.ggml_type not in QUANT_TYPES:
            raise BackendError(f"tensor {tensor.name}: GGML type {tensor.ggml_type} has no CUDA kernel")
        suffix, qk, size = QUANT_TYPES[tensor.ggml_type]
        n, k = tensor.shape
        if k % qk or k % 8:
            raise BackendError(f"tensor {tensor.name}: row length {k} is not a multiple of {max(qk, 8)}")
        raw = np.ascontiguousarray(np.asarray(tensor.data).view(np.uint8).reshape(n, k // qk * size))
        return DeviceWeight(self.to_device(raw), suffix, n, k)

    def fuse(self, parts: list[DeviceWeight]) -> DeviceWeight:
        # stacks output rows (q|k|v, gate|up): one launch serves them all
        assert len({(p.suffix, p.k) for p in parts}) == 1, "fused weights must share type and row length"
        raw = self._ga.concatenate([p.raw for p in parts])
        return DeviceWeight(raw, parts[0].suffix, sum(p.n for p in parts), parts[0].k)

    # ---- ops -----------------------------------------------------------------------------------------
    def embed(self, table: DeviceWeight, ids: np.ndarray):
        ids = np.ascontiguousarray(ids, np.int32)
        if ids.size and (ids.min() < 0 or ids.max() >= table.n):
            raise ValueError(f"token id out of range [0, {table.n}): {ids.min()}..{ids.max()}")
        out = self._empty((ids.size, table.k))
        self._launch(
            self._kernel("embed.cu", f"embed_{table.suffix}"),
            table.raw, self.to_device(ids), out, np.int32(table.n), np.int32(table.k),
            block=(128, 1, 1), grid=(ids.size, 1),
        )  # fmt: skip
        return out

    def rmsnorm(self, x, w, eps: float):
        self._check(x, "rmsnorm x", ndim=2)
        assert w.shape == (x.shape[1],), f"rmsnorm w {w.shape} vs x {x.shape}"
        out = self._empty(x.shape)
        self._launch(
            self._kernel("rmsnorm.cu", "rmsnorm_f32"), x, w, out, np.int32(x.shape[1]), np.float32(eps),
            block=(256, 1, 1), grid=(x.shape[0], 1),
        )  # fmt: skip
        return out

    def linear(self, x, w: DeviceWeight, bias=None):
        self._check(x, "linear x", ndim=2)
        t, k = x.shape
        assert k == w.k, f"linear: x has {k} columns, weight rows have {w.k}"
        assert bias is None or bias.shape == (w.n,), f"linear bias {bias.shape} vs {w.n} rows"
        y = self._empty((t, w.n))
        args = (w.raw, x, bias, y, np.int32(w.n), np.int32(k), np.int32(t))
        if t <= MATVEC_MAX_T:
            name = f"matvec_{w.suffix}_{'t1' if t == 1 else 't8'}"
            self._launch(self._kernel("matvec.cu", name), *args, block=(32, 4, 1), grid=((w.n + 3) // 4, 1))
        else:
            assert k % 32 == 0, f"matmul needs K % 32 == 0, got {k}"
            grid = ((w.n + 63) // 64, (t + 63) // 64)
            self._launch(self._kernel("matmul.cu", f"matmul_{w.suffix}"), *args, block=(256, 1, 1), grid=grid)
        return y

    def rope(self, x, positions: np.ndarray, inv_freq, style: str) -> None:
        # x [T, H, hd] contiguous; rotated in place
        if style not in ("normal", "neox"):
            raise ValueError(f"rope style {style!r} is not one of 'normal', 'neox'")
        self._check(x, "rope x", ndim=3)
        t, h, hd = x.shape
        half = inv_freq.shape[0]
        assert 2 * half <= hd and positions.shape == (t,), (
            f"rope: x {x.shape}, {half} freqs, {positions.shape}"
        )
        self._launch(
            self._kernel("rope.cu", "rope_f32"), x, self.to_device(np.asarray(positions, np.int32)), inv_freq,
            np.int32(h), np.int32(hd), np.int32(half), np.int32(style == "neox"), np.int32(h * hd),
            block=(128, 1, 1), grid=(t, 1),
        )  # fmt: skip

    def kv_write(self, k_cache, v_cache, k, v, slots: np.ndarray) -> None:
        # caches [num_blocks, block_size, n_kv, hd]; k, v [T, n_kv, hd]
        for a, n in ((k_cache, "k_cache"), (v_cache, "v_cache"), (k, "k"), (v, "v")):
            self._check(a, f"kv_write {n}")
        t, n_kv, hd = k.shape
        assert v.shape == k.shape and k_cache.shape[2:] == (n_kv, hd), (
            f"kv_write {k.shape} vs {k_cache.shape}"
        )
        row = n_kv * hd
        self._launch(
            self._kernel("kv_write.cu", "kv_write_f32"), k_cache, v_cache, k, v,
            self.to_device(np.asarray(slots, np.int32)), np.int32(row), np.int32(row),
            block=(128, 1, 1), grid=(t, 1),
        )  # fmt: skip

    def copy_block(self, k_cache, v_cache, src: int, dst: int) -> None:
        for cache in (k_cache, v_cache):
            self._drv.memcpy_dtod(int(cache[dst].gpudata), int(cache[src].gpudata), cache[src].nbytes)

    def attention(self, q, k_cache, v_cache, seqs, sliding_window: int | None = None):
        self._check(q, "attention q", ndim=3)
        t, h, hd = q.shape
        _, block_size, n_kv, hd_c = k_cache.shape
        assert hd == hd_c <= 128 and h % n_kv == 0, f"attention: q {q.shape}, cache {k_cache.shape}"
        tables = np.concatenate([np.asarray(s.block_table, np.int32) for s in seqs])
        offsets = np.cumsum([0] + [len(s.block_table) for s in seqs])[:-1]
        info = np.array(
            [(s.query_start, s.query_len, s.context_len, o) for s, o in zip(seqs, offsets, strict=True)],
            np.int32,
        )
        info_d, tables_d = self.to_device(info), self.to_device(tables)
        out = self._empty(q.shape)
        common = (
            np.int32(h),
            np.int32(n_kv),
            np.int32(hd),
            np.int32(block_size),
            np.int32(sliding_window or 0),
        )
        scale = np.float32(1.0 / np.sqrt(hd))
        if any(s.query_len != 1 for s in seqs):
            smem = (32 * (hd + 1) + 32 * hd + 4 * hd + 4 * 32) * 4
            grid = (-(-max(s.query_len for s in seqs) // 4), h, len(seqs))
            self._launch(
                self._kernel("attention_prefill.cu", "attention_prefill_f32"), q, k_cache, v_cache, out,
                info_d, tables_d, *common, scale, np.int32(h * hd), block=(32, 4, 1), grid=grid, shared=smem,
            )  # fmt: skip
            return out
        n_splits = -(-max(s.context_len for s in seqs) // DECODE_SPLIT)
        nw = 4 if hd <= 80 else 2
        part_ml = self._empty((len(seqs), h, n_splits, 2))
        part_acc = self._empty((len(seqs), h, n_splits, hd))
        self._launch(
            self._kernel("attention_decode.cu", "attention_decode_split_f32"), q, k_cache, v_cache, part_ml,
            part_acc, info_d, tables_d, *common, scale, np.int32(DECODE_SPLIT), np.int32(h * hd),
            block=(32, nw, 1), grid=(n_splits, h, len(seqs)), shared=nw * (32 * (hd + 1) + hd + 66) * 4,
        )  # fmt: skip
        self._launch(
            self._kernel("attention_decode.cu", "attention_decode_combine_f32"), part_ml, part_acc, out,
            info_d, np.int32(h), np.int32(hd), np.int32(n_splits), block=(32, 1, 1), grid=(h, len(seqs)),
        )  # fmt: skip
        return out

    def swiglu(self, gate_up):
        self._check(gate_up, "swiglu gate_up", ndim=2)
        t, two_f = gate_up.shape
        f = two_f // 2
        out = self._empty((t, f))
        self._launch(
            self._kernel("swiglu.cu", "swiglu_f32"), gate_up, out, np.int32(f),
            block=(256, 1, 1), grid=((f + 255) // 256, t),
        )  # fmt: skip
        return out

    def add(self, x, y) -> None:
        self._check(x, "add x")
        self._check(y, "add y")
        assert x.shape == y.shape, f"add: {x.shape} vs {y.shape}"
        grid = (min((x.size + 255) // 256, 4096), 1)
        self._launch(self._kernel("add.cu", "add_f32"), x, y, np.int32(x.size), block=(256, 1, 1), grid=grid)

    def argmax(self, logits) -> np.ndarray:
        """Greedy tokens [B] int32. Non-greedy rows copy their logits to the host sampler (sampler.py)."""
        self._check(logits, "argmax logits", ndim=2)
        out = self._empty((logits.shape[0],), np.int32)
        self._launch(
            self._kernel("argmax.cu", "argmax_f32"), logits, out, np.int32(logits.shape[1]),
            block=(1024, 1, 1), grid=(logits.shape[0], 1),
        )  # fmt: skip
        return out.get()

    def close(self) -> None:
        self._ctx.pop()
