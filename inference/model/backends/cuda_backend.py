"""CUDA backend: the NumpyBackend op set as launches of cuda/*.cu through a PyCUDA-shaped driver.

The driver is injectable: by default pycuda (imported lazily, only GPU hosts have it); the tests pass
tests/kernels/fake_driver.py, which runs these very launches on the CPU emulator. Activations are
`DeviceArray`s (float32, rows along axis 0 possibly strided: q/k/v are column ranges of one fused
projection); weights stay quantized on the device as raw GGUF rows (`DeviceWeight`); both live in
cuda_memory.py. Every launcher asserts shapes and dtypes and checks the launch against the kernel's
limits; a CUDA error becomes a BackendError naming the kernel.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import BackendError, OutOfMemoryError
from .base import KeepInPlace, blocks_stored_bytes
from .cuda_memory import ActivationPool, DeviceArray, DeviceWeight, SplitWeight

log = logging.getLogger("gguf_serve.backend")

# Where cuda/ lives: a wheel carries it inside the package (pyproject.toml maps cuda/ to inference/cuda/);
# a checkout or an editable install has it at the repository's top level, beside inference/.
# inference/model/backends/ -> inference/cuda (a wheel) or the repository root (a checkout)
KERNEL_DIRS = (Path(__file__).resolve().parents[2] / "cuda", Path(__file__).resolve().parents[3] / "cuda")


def kernel_dir(candidates: tuple[Path, ...] = KERNEL_DIRS) -> Path:
    """The directory of the kernel sources (*.cu and common.cuh): the first candidate holding common.cuh.
    Raises FileNotFoundError naming every directory it looked in."""
    for d in candidates:
        if (d / "common.cuh").is_file():
            return d
    looked = " and ".join(str(d / "common.cuh") for d in candidates)
    raise FileNotFoundError(f"CUDA kernel sources not found: looked for {looked}; reinstall gguf-serve")


CUDA_DIR = kernel_dir()  # nvcc needs a real directory for -I, so the package must be installed unzipped
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
MAX_SMEM = 48 * 1024  # static + dynamic shared memory per block without an opt-in
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_HEAD_DIM = 128  # attention kernels: a lane owns dims lane, lane + 32, ... < 128
DECODE_SPLIT = 256  # keys per split of the decode attention
ACTIVATION_RESERVE = 512 << 20  # device bytes kept free for activations when sizing the KV cache
_UPLOAD_CACHE = 16  # host arrays (positions, slots, block tables, ...) kept uploaded, by identity


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


@dataclass
class _Kernel:
    fn: object
    name: str
    max_threads: int
    static_smem: int
    arg_format: str | None = None


@dataclass(frozen=True)
class _SeqMeta:
    info: DeviceArray  # int32 [n_seqs, 4] = (query_start, query_len, context_len, block_table_start)
    tables: DeviceArray  # int32, every block table concatenated
    n: int
    max_query_len: int
    max_context: int


class _Pycuda:
    """pycuda.driver plus pycuda.compiler.SourceModule: the device layer CudaBackend talks to."""

    def __init__(self):
        import pycuda.driver as drv  # noqa: PLC0415 - optional dependency, GPU hosts only
        from pycuda.compiler import SourceModule  # noqa: PLC0415

        self._drv = drv
        self.SourceModule = SourceModule

    def __getattr__(self, name):
        return getattr(self._drv, name)


def _close_at_exit(ref) -> None:
    backend = ref()
    if backend is not None:
        backend.close()


# ---- the backend -------------------------------------------------------------------------------------
class CudaBackend:
    """The op set of NumpyBackend on a CUDA device (see numpy_backend.py for the semantics)."""

    name = "cuda"

    def __init__(
        self,
        device: int = 0,
        *,
        driver=None,
        debug: bool | None = None,
        decode_split: int = DECODE_SPLIT,
        activation_reserve: int = ACTIVATION_RESERVE,
    ):
        """`driver`: pycuda.driver's API plus `SourceModule` (default: pycuda). `debug` (default: env
        GGUF_SERVE_CUDA_DEBUG=1) synchronizes after every launch, so an asynchronous fault names its
        kernel, and poisons recycled activation memory with NaN."""
        self._drv = driver if driver is not None else _Pycuda()
        self.debug = os.environ.get("GGUF_SERVE_CUDA_DEBUG") == "1" if debug is None else debug
        self.decode_split = decode_split
        self.activation_reserve = activation_reserve
        try:
            self._drv.init()
            dev = self._drv.Device(device)
            self._ctx = dev.retain_primary_context()
            self._ctx.push()
            major, minor = dev.compute_capability()
            self.device_name = dev.name()
        except self._drv.Error as exc:
            raise BackendError(f"CUDA device {device} unusable: {exc}") from exc
        self.arch = f"sm_{major}{minor}"
        if self.arch not in TARGET_ARCHS:
            log.warning("CUDA device %s is %s; the kernels are compile-checked for %s only",
                        self.device_name, self.arch, ", ".join(TARGET_ARCHS))  # fmt: skip
        self._modules: dict[str, object] = {}
        self._kernels: dict[str, _Kernel] = {}
        self._pool = ActivationPool(self._drv, poison=self.debug)
        self._uploads: OrderedDict[int, tuple[object, object]] = OrderedDict()
        self._last_kernel = "(none yet)"
        self.weight_bytes = 0
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))
        started = time.monotonic()
        for cu in sorted(CUDA_DIR.glob("*.cu")):  # at start-up: a kernel that fails to build fails here
            self._module(cu.name)
        log.info("CUDA backend on %s (%s): %d kernel files ready in %.1f s (pycuda caches the builds)",
                 self.device_name, self.arch, len(self._modules), time.monotonic() - started)  # fmt: skip

    # ---- compilation and launching -------------------------------------------------------------------
    def _module(self, cu: str):
        if cu not in self._modules:
            try:
                self._modules[cu] = self._drv.SourceModule(
                    (CUDA_DIR / cu).read_text(),
                    no_extern_c=True,
                    include_dirs=[str(CUDA_DIR)],
                    options=list(NVCC_OPTIONS),
                    arch=self.arch,
                )
            except Exception as exc:  # pycuda.driver.CompileError
                raise BackendError(f"compiling {cu} for {self.arch} failed: {exc}") from exc
        return self._modules[cu]

    def _kernel(self, cu: str, name: str) -> _Kernel:
        k = self._kernels.get(name)
        if k is not None:
            return k
        fn = self._module(cu).get_function(name)
        k = _Kernel(fn, name, int(fn.max_threads_per_block), int(fn.shared_size_bytes))
        self._kernels[name] = k
        return k

    def _launch(self, k: _Kernel, *args, block, grid, shared: int = 0) -> None:
        grid = (*grid, 1, 1)[:3]
        if 0 in grid:
            return  # nothing to compute (an empty batch of rows)
        threads = block[0] * block[1] * block[2]
        if not (0 < threads <= k.max_threads and block[2] <= 64):
            raise BackendError(f"{k.name}: block {block} exceeds the kernel's {k.max_threads} threads")
        if any(g > m for g, m in zip(grid, MAX_GRID, strict=True)):
            raise BackendError(f"{k.name}: grid {grid} exceeds the device limits {MAX_GRID}")
        if shared + k.static_smem > MAX_SMEM:
            raise BackendError(f"{k.name}: {shared} + {k.static_smem} B shared memory > {MAX_SMEM} B")
        fmt = "".join("P" if a is None or isinstance(a, DeviceArray) else a.dtype.char for a in args)
        if k.arg_format is None:
            k.fn.prepare(fmt)
            k.arg_format = fmt
        assert fmt == k.arg_format, f"{k.name}: arguments {fmt!r}, prepared as {k.arg_format!r}"
        values = [0 if a is None else a.ptr if isinstance(a, DeviceArray) else a for a in args]
        try:
            k.fn.prepared_call(grid, block, *values, shared_size=shared)
            if self.debug:
                self._drv.Context.synchronize()
        except self._drv.Error as exc:
            raise BackendError(
                f"CUDA kernel {k.name} (grid {grid}, block {block}, {shared} B shared) failed: {exc}"
            ) from exc
        self._last_kernel = k.name

    def _driver_call(self, what: str, fn, *args):
        """A memory call; an error here may come from an earlier asynchronous launch, so name that too."""
        try:
            return fn(*args)
        except self._drv.Error as exc:
            raise BackendError(
                f"CUDA {what} failed: {exc} (last kernel launched: {self._last_kernel}; "
                "GGUF_SERVE_CUDA_DEBUG=1 synchronizes after each launch to pin a fault to its kernel)"
            ) from exc

    # ---- memory --------------------------------------------------------------------------------------
    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, as cuMemGetInfo reports them."""
        free, total = self._driver_call("cuMemGetInfo", self._drv.mem_get_info)
        return int(free), int(total)

    def empty(self, shape, dtype=np.float32) -> DeviceArray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes == 0:
            return DeviceArray(self, 0, shape, dtype)
        try:
            block = self._pool.take(nbytes)
        except self._drv.Error:  # out of memory: drop the cached buffers and try once more
            self._pool.trim()
            block = self._alloc_or_fail(nbytes, f"activations {tuple(shape)}", pooled=True)
        return DeviceArray(self, int(block.alloc), shape, dtype, owner=block)

    def _alloc_or_fail(self, nbytes: int, what: str, pooled: bool = False):
        try:
            return self._pool.take(nbytes) if pooled else self._drv.mem_alloc(nbytes)
        except self._drv.Error as exc:
            free, total = self.memory_info()
            raise OutOfMemoryError(
                f"out of GPU memory allocating {what}: {_mib(nbytes)} needed, {_mib(free)} free of "
                f"{_mib(total)} ({_mib(self.weight_bytes)} of weights loaded): {exc}"
            ) from exc

    def _persistent(self, nbytes: int, shape, dtype, what: str) -> DeviceArray:
        # weights and KV cache: exact-size allocations outside the pool, alive as long as their arrays
        alloc = self._alloc_or_fail(nbytes, what)
        return DeviceArray(self, int(alloc), shape, dtype, owner=alloc)

    def to_device(self, a: np.ndarray, persistent: bool = False, what: str = "array") -> DeviceArray:
        a = np.ascontiguousarray(a)
        if persistent:
            out = self._persistent(a.nbytes, a.shape, a.dtype, what)
        else:
            out = self.empty(a.shape, a.dtype)
        if a.nbytes:
            self._driver_call("cuMemcpyHtoD", self._drv.memcpy_htod, out.ptr, a)
        return out

    def to_host(self, x: DeviceArray) -> np.ndarray:
        if x.contiguous:
            out = np.empty(x.shape, x.dtype)
            if out.nbytes:
                self._driver_call("cuMemcpyDtoH", self._drv.memcpy_dtoh, out, x.ptr)
            return out
        # strided rows: copy the spanned range, then pick the rows out on the host
        inner = math.prod(x.shape[1:])
        span = np.empty((x.shape[0], x.row_stride), x.dtype)
        needed = span.reshape(-1)[: (x.shape[0] - 1) * x.row_stride + inner]
        self._driver_call("cuMemcpyDtoH", self._drv.memcpy_dtoh, needed, x.ptr)
        return span[:, :inner].reshape(x.shape)

    def _uploaded(self, key: object, build):
        """build() once per host object (identity): positions, slots and block tables of a batch are
        uploaded once per forward, not once per layer. Host arrays handed to ops must not be mutated."""
        hit = self._uploads.get(id(key))
        if hit is not None and hit[0] is key:
            self._uploads.move_to_end(id(key))
            return hit[1]
        value = build()
        self._uploads[id(key)] = (key, value)  # holding `key` keeps its id from being reused
        if len(self._uploads) > _UPLOAD_CACHE:
            self._uploads.popitem(last=False)
        return value

    def _int32_on_device(self, a: np.ndarray) -> DeviceArray:
        return self._uploaded(a, lambda: self.to_device(np.asarray(a, np.int32)))

    def alloc_kv(self, shape: tuple[int, ...], count: int) -> list[DeviceArray]:
        """`count` zeroed float32 caches of `shape`; fails up front, with both numbers, when they and the
        activation reserve do not fit in the free device memory."""
        nbytes = math.prod(shape) * 4
        need = count * nbytes
        free, total = self.memory_info()
        if need + self.activation_reserve > free:
            raise OutOfMemoryError(
                f"the KV cache does not fit on {self.device_name}: {count} x {list(shape)} float32 = "
                f"{_mib(need)} + {_mib(self.activation_reserve)} kept for activations, but only "
                f"{_mib(free)} of {_mib(total)} are free after loading {_mib(self.weight_bytes)} of "
                "weights; lower kv_cache_tokens"
            )
        caches = [self._persistent(nbytes, shape, np.float32, "the KV cache") for _ in range(count)]
        for c in caches:
            self._driver_call("cuMemsetD32", self._drv.memset_d32, c.ptr, 0, c.size)
        return caches

    def kv_bytes_per_element(self) -> int:
        return 4  # float32 caches

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._uploads.clear()
        self._pool.trim()
        try:
            self._ctx.pop()
        except Exception as exc:  # at exit the context may already be gone
            log.debug("CUDA context pop failed: %s", exc)

    # ---- weights -------------------------------------------------------------------------------------
    def load_weight(self, tensor) -> DeviceWeight | DeviceArray:
        """2-D GGUF tensors stay quantized on the device; 1-D ones (norms, biases) become float32 arrays."""
        if len(tensor.shape) == 1:
            from ...gguf.loader import dequantize  # noqa: PLC0415

            out = self.to_device(np.asarray(dequantize(tensor), np.float32), True, f"tensor {tensor.name}")
            self.weight_bytes += out.nbytes
            return out
        if int(tensor.ggml_type) not in QUANT_TYPES:
            raise BackendError(f"tensor {tensor.name}: GGML type {tensor.ggml_type} has no CUDA kernel")
        suffix, qk, size = QUANT_TYPES[int(tensor.ggml_type)]
        if len(tensor.shape) != 2:
            raise BackendError(f"tensor {tensor.name}: {len(tensor.shape)}-D weights are not supported")
        n, k = tensor.shape
        if k % qk or k % 32:
            raise BackendError(f"tensor {tensor.name}: row length {k} is not a multiple of {max(qk, 32)}")
        raw = np.asarray(tensor.data).view(np.uint8).reshape(n, -1)
        assert raw.shape[1] == k // qk * size, f"tensor {tensor.name}: {raw.shape[1]} bytes per row"
        self.weight_bytes += raw.nbytes
        return DeviceWeight(self.to_device(raw, True, f"tensor {tensor.name}"), suffix, n, k)

    def stored_bytes(self, tensor) -> int:
        return blocks_stored_bytes(tensor)  # device bytes: matrices stay quantized, vectors float32

    def fuse(self, parts: list) -> DeviceWeight | SplitWeight | DeviceArray:
        """Stacks output rows (q|k|v, gate|up, or their biases) so one launch serves them all; parts of
        different quant types stay separate launches into column ranges of one output."""
        if all(isinstance(p, DeviceArray) for p in parts):
            return self._concat(parts)
        k = parts[0].k
        assert all(p.k == k for p in parts), "fused weights must share their row length"
        n = sum(p.n for p in parts)
        if len({p.suffix for p in parts}) > 1:
            return SplitWeight(list(parts), n, k)
        return DeviceWeight(self._concat([p.raw for p in parts]), parts[0].suffix, n, k)

    def layer_arena(self, sizes: list[int]) -> KeepInPlace:
        return KeepInPlace()  # each weight was uploaded into its own allocation, read whole by one launch

    def _concat(self, parts: list[DeviceArray]) -> DeviceArray:
        # along axis 0, device to device; the parts are freed by the caller dropping them
        assert all(p.contiguous and p.shape[1:] == parts[0].shape[1:] for p in parts), "concat: shapes"
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        out = self._persistent(sum(p.nbytes for p in parts), shape, parts[0].dtype, "fused weights")
        offset = 0
        for p in parts:
            self._driver_call("cuMemcpyDtoD", self._drv.memcpy_dtod, out.ptr + offset, p.ptr, p.nbytes)
            offset += p.nbytes
        return out

    # ---- checks --------------------------------------------------------------------------------------
    @staticmethod
    def _check(a, name: str, ndim: int, dtype=np.float32, contiguous: bool = True) -> None:
        if not isinstance(a, DeviceArray):
            raise BackendError(f"{name}: expected a DeviceArray, got {type(a).__name__} (host memory?)")
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}"
        assert a.ndim == ndim, f"{name}: shape {a.shape}, expected {ndim} dims"
        assert a.contiguous or not contiguous, f"{name}: not contiguous (row stride {a.row_stride})"

    # ---- ops -----------------------------------------------------------------------------------------
    def embed(self, table: DeviceWeight, ids: np.ndarray) -> DeviceArray:
        # table [V, D] quantized, ids [T] host -> [T, D]
        if ids.size and (ids.min() < 0 or ids.max() >= table.n):
            raise ValueError(f"token id out of range [0, {table.n}): {ids.min()}..{ids.max()}")
        return self._embed_rows(table.raw, table.suffix, table.n, table.k, self._int32_on_device(ids))

    def gather_rows(self, x: DeviceArray, rows: np.ndarray) -> DeviceArray:
        """x[rows] for a host index array: the embed kernel on x read as an F32 table."""
        self._check(x, "gather x", ndim=2)
        rows = np.asarray(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= x.shape[0]):
            raise IndexError(f"rows {rows.min()}..{rows.max()} outside [0, {x.shape[0]})")
        return self._embed_rows(x, "f32", x.shape[0], x.shape[1], self._int32_on_device(rows))

    def _embed_rows(self, table: DeviceArray, suffix: str, v: int, d: int, ids: DeviceArray) -> DeviceArray:
        assert d % 8 == 0, f"embed: row length {d} is not a multiple of 8"
        out = self.empty((ids.size, d))
        self._launch(
            self._kernel("embed.cu", f"embed_{suffix}"), table, ids, out, np.int32(v), np.int32(d),
            block=(128, 1, 1), grid=(ids.size, 1),
        )  # fmt: skip
        return out

    def rmsnorm(self, x: DeviceArray, w: DeviceArray, eps: float) -> DeviceArray:
        self._check(x, "rmsnorm x", ndim=2)
        assert w.shape == (x.shape[1],), f"rmsnorm w {w.shape} vs x {x.shape}"
        out = self.empty(x.shape)
        self._launch(
            self._kernel("rmsnorm.cu", "rmsnorm_f32"), x, w, out, np.int32(x.shape[1]), np.float32(eps),
            block=(256, 1, 1), grid=(x.shape[0], 1),
        )  # fmt: skip
        return out

    def linear(
        self,
        x: DeviceArray,
        w: DeviceWeight | SplitWeight,
        bias: DeviceArray | None = None,
        kv_only: np.ndarray | None = None,
    ):
        # x [T, K], w [N, K] -> [T, N], every row alike (kv_only is a cpu-backend precision choice)
        self._check(x, "linear x", ndim=2)
        t, k = x.shape
        assert k == w.k, f"linear: x has {k} columns, weight rows have {w.k}"
        assert bias is None or bias.shape == (w.n,), f"linear bias {bias.shape} vs {w.n} rows"
        y = self.empty((t, w.n))
        if t == 0:
            return y
        if isinstance(w, DeviceWeight):
            self._linear_into(y, x, w, bias)
            return y
        col = 0
        for part in w.parts:
            cols = y[:, col : col + part.n]
            b = None if bias is None else bias[col : col + part.n]
            if t == 1:  # a single row: the kernel writes straight into the column range
                self._linear_into(cols, x, part, b)
            else:  # the kernels write rows N apart: compute the part, then copy it into its columns
                tmp = self.empty((t, part.n))
                self._linear_into(tmp, x, part, b)
                self._copy_rows(cols, tmp)
            col += part.n
        return y

    def _linear_into(self, y: DeviceArray, x: DeviceArray, w: DeviceWeight, bias) -> None:
        t, k = x.shape
        assert y.shape == (t, w.n) and (y.contiguous or t == 1), f"linear out {y!r} for {t} x {w.n}"
        args = (w.raw, x, bias, y, np.int32(w.n), np.int32(k), np.int32(t))
        if t <= MATVEC_MAX_T:
            name = f"matvec_{w.suffix}_{'t1' if t == 1 else 't8'}"
            self._launch(self._kernel("matvec.cu", name), *args, block=(32, 4, 1), grid=(-(-w.n // 4), 1))
        else:
            grid = (-(-w.n // 64), -(-t // 64))
            self._launch(self._kernel("matmul.cu", f"matmul_{w.suffix}"), *args, block=(256, 1, 1), grid=grid)

    def _copy_rows(self, dst: DeviceArray, src: DeviceArray) -> None:
        # 2-D strided copy: rows of src (contiguous) into rows of dst (row_stride apart)
        assert dst.shape == src.shape and src.contiguous and dst.dtype == src.dtype
        item = src.dtype.itemsize
        copy = self._drv.Memcpy2D()
        copy.set_src_device(src.ptr)
        copy.set_dst_device(dst.ptr)
        copy.src_pitch = src.row_stride * item
        copy.dst_pitch = dst.row_stride * item
        copy.width_in_bytes = math.prod(src.shape[1:]) * item
        copy.height = src.shape[0]
        self._driver_call("cuMemcpy2D", lambda: copy(aligned=True))

    def rope(self, x: DeviceArray, positions: np.ndarray, inv_freq, style: str) -> None:
        # x [T, H, hd], rows possibly strided (q or k inside the fused qkv); rotated in place
        if style not in ("normal", "neox"):
            raise ValueError(f"rope style {style!r} is not one of 'normal', 'neox'")
        self._check(x, "rope x", ndim=3, contiguous=False)
        t, h, hd = x.shape
        half = inv_freq.shape[0]
        assert 2 * half <= hd and positions.shape == (t,), (
            f"rope: x {x.shape}, {half} freqs, {positions.shape}"
        )
        freqs = inv_freq if isinstance(inv_freq, DeviceArray) else self._uploaded(
            inv_freq, lambda: self.to_device(np.asarray(inv_freq, np.float32))
        )  # fmt: skip
        self._launch(
            self._kernel("rope.cu", "rope_f32"), x, self._int32_on_device(positions), freqs, np.int32(h),
            np.int32(hd), np.int32(half), np.int32(style == "neox"), np.int32(x.row_stride),
            block=(128, 1, 1), grid=(t, 1),
        )  # fmt: skip

    def kv_write(self, k_cache, v_cache, k: DeviceArray, v: DeviceArray, slots: np.ndarray) -> None:
        # caches [num_blocks, block_size, n_kv, hd]; k, v [T, n_kv, hd], rows possibly strided alike
        self._check(k_cache, "kv_write k_cache", ndim=4)
        self._check(v_cache, "kv_write v_cache", ndim=4)
        self._check(k, "kv_write k", ndim=3, contiguous=False)
        self._check(v, "kv_write v", ndim=3, contiguous=False)
        t, n_kv, hd = k.shape
        num_slots = k_cache.shape[0] * k_cache.shape[1]
        assert v.shape == k.shape and k.row_stride == v.row_stride, f"kv_write k {k!r} vs v {v!r}"
        assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (n_kv, hd), (
            f"kv_write cache {k_cache!r}"
        )
        assert slots.shape == (t,) and (t == 0 or slots.max() < num_slots), (
            f"kv_write slots beyond {num_slots}"
        )
        self._launch(
            self._kernel("kv_write.cu", "kv_write_f32"), k_cache, v_cache, k, v, self._int32_on_device(slots),
            np.int32(n_kv * hd), np.int32(k.row_stride), block=(128, 1, 1), grid=(t, 1),
        )  # fmt: skip

    def copy_block(self, k_cache: DeviceArray, v_cache: DeviceArray, src: int, dst: int) -> None:
        for cache in (k_cache, v_cache):
            self._check(cache, "copy_block cache", ndim=4)
            to, frm = cache[dst], cache[src]
            self._driver_call("cuMemcpyDtoD", self._drv.memcpy_dtod, to.ptr, frm.ptr, frm.nbytes)

    def _seq_meta(self, seqs, num_blocks: int, block_size: int) -> _SeqMeta:
        tables = [np.asarray(s.block_table, np.int32) for s in seqs]
        for s, tab in zip(seqs, tables, strict=True):
            need = -(-s.context_len // block_size)
            assert 1 <= s.query_len <= s.context_len and len(tab) >= need, f"attention: bad sequence {s}"
            assert tab[:need].min() >= 0 and tab[:need].max() < num_blocks, f"block table beyond {num_blocks}"
        offsets = np.cumsum([0] + [len(tab) for tab in tables])[:-1]
        info = np.array(
            [(s.query_start, s.query_len, s.context_len, o) for s, o in zip(seqs, offsets, strict=True)],
            np.int32,
        )
        return _SeqMeta(
            self.to_device(info), self.to_device(np.concatenate(tables)), len(seqs),
            max(s.query_len for s in seqs), max(s.context_len for s in seqs),
        )  # fmt: skip

    def attention(self, q: DeviceArray, k_cache, v_cache, seqs, sliding_window: int | None = None):
        # q [T, H, hd], rows possibly strided -> [T, H, hd]; causal over each sequence's cached context
        self._check(q, "attention q", ndim=3, contiguous=False)
        self._check(k_cache, "attention k_cache", ndim=4)
        self._check(v_cache, "attention v_cache", ndim=4)
        t, h, hd = q.shape
        num_blocks, block_size, n_kv, hd_c = k_cache.shape
        if hd > MAX_HEAD_DIM:
            raise BackendError(f"attention: head_dim {hd} > {MAX_HEAD_DIM}, the CUDA kernels' limit")
        assert hd == hd_c and h % n_kv == 0 and v_cache.shape == k_cache.shape, (
            f"attention: q {q.shape}, cache {k_cache.shape}"
        )
        meta = self._uploaded(seqs, lambda: self._seq_meta(seqs, num_blocks, block_size))
        out = self.empty((t, h, hd))
        common = (
            np.int32(h),
            np.int32(n_kv),
            np.int32(hd),
            np.int32(block_size),
            np.int32(sliding_window or 0),
        )
        scale = np.float32(1.0 / np.sqrt(hd))
        if meta.max_query_len > 1:  # prefill chunks (decode rows of the same batch ride along)
            smem = (32 * (hd + 1) + 32 * hd + 4 * hd + 4 * 32) * 4
            self._launch(
                self._kernel("attention_prefill.cu", "attention_prefill_f32"), q, k_cache, v_cache, out,
                meta.info, meta.tables, *common, scale, np.int32(q.row_stride),
                block=(32, 4, 1), grid=(-(-meta.max_query_len // 4), h, meta.n), shared=smem,
            )  # fmt: skip
            return out
        n_splits = -(-meta.max_context // self.decode_split)
        nw = 4 if hd <= 80 else 2
        part_ml = self.empty((meta.n, h, n_splits, 2))
        part_acc = self.empty((meta.n, h, n_splits, hd))
        self._launch(
            self._kernel("attention_decode.cu", "attention_decode_split_f32"), q, k_cache, v_cache,
            part_ml, part_acc, meta.info, meta.tables, *common, scale, np.int32(self.decode_split),
            np.int32(q.row_stride),
            block=(32, nw, 1), grid=(n_splits, h, meta.n), shared=nw * (32 * (hd + 1) + hd + 66) * 4,
        )  # fmt: skip
        self._launch(
            self._kernel("attention_decode.cu", "attention_decode_combine_f32"), part_ml, part_acc, out,
            meta.info, np.int32(h), np.int32(hd), np.int32(n_splits), block=(32, 1, 1), grid=(h, meta.n),
        )  # fmt: skip
        return out

    def swiglu(self, gate_up: DeviceArray) -> DeviceArray:
        # gate_up [T, 2F] -> [T, F]
        self._check(gate_up, "swiglu gate_up", ndim=2)
        t, two_f = gate_up.shape
        f = two_f // 2
        out = self.empty((t, f))
        self._launch(
            self._kernel("swiglu.cu", "swiglu_f32"), gate_up, out, np.int32(f),
            block=(256, 1, 1), grid=(-(-f // 256), t),
        )  # fmt: skip
        return out

    def add(self, x: DeviceArray, y: DeviceArray) -> None:
        # x += y, in place
        self._check(x, "add x", ndim=x.ndim)
        self._check(y, "add y", ndim=x.ndim)
        assert x.shape == y.shape, f"add: {x.shape} vs {y.shape}"
        grid = (min(-(-x.size // 256), 4096), 1)
        self._launch(self._kernel("add.cu", "add_f32"), x, y, np.int32(x.size), block=(256, 1, 1), grid=grid)

    def argmax(self, logits: DeviceArray) -> np.ndarray:
        """Greedy tokens [B] int32 computed on the device: moves 4 bytes a row instead of the logits."""
        self._check(logits, "argmax logits", ndim=2)
        out = self.empty((logits.shape[0],), np.int32)
        self._launch(
            self._kernel("argmax.cu", "argmax_f32"), logits, out, np.int32(logits.shape[1]),
            block=(1024, 1, 1), grid=(logits.shape[0], 1),
        )  # fmt: skip
        return out.get()
