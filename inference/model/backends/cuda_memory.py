"""Device memory of the CUDA backend: DeviceArray (activations, strided row views), the quantized weight
handles, and the caching pool that recycles activation buffers by size class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class DeviceArray:
    """An array in device memory. Rows along axis 0 are `row_stride` elements apart; inside a row the
    elements are contiguous. Supports what model.py does to activations: 2-D column slices (views),
    a row gather by an index array, reshape, and get() to the host."""

    __slots__ = ("backend", "ptr", "shape", "dtype", "row_stride", "owner")

    def __init__(self, backend, ptr: int, shape, dtype, row_stride: int | None = None, owner=None):
        self.backend = backend
        self.ptr = ptr  # device address of element [0, ...]
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        inner = math.prod(self.shape[1:])
        self.row_stride = inner if row_stride is None else row_stride
        self.owner = owner  # keeps the allocation alive as long as any view of it

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def contiguous(self) -> bool:
        return self.ndim < 2 or self.shape[0] <= 1 or self.row_stride == math.prod(self.shape[1:])

    def __repr__(self) -> str:
        return f"DeviceArray({self.shape}, {self.dtype}, row_stride={self.row_stride}, ptr={self.ptr:#x})"

    def __array__(self, *args, **kwargs):
        raise TypeError("a DeviceArray lives in device memory: call .get() to copy it to the host")

    def _view(self, offset: int, shape, row_stride: int | None = None) -> DeviceArray:
        ptr = self.ptr + offset * self.dtype.itemsize
        return DeviceArray(self.backend, ptr, shape, self.dtype, row_stride, self.owner)

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):  # x[rows]: gather rows into a new contiguous array
            return self.backend.gather_rows(self, key)
        if isinstance(key, int | np.integer):
            i = int(key)
            assert 0 <= i < self.shape[0], f"index {i} outside axis 0 of {self.shape}"
            return self._view(i * self.row_stride, self.shape[1:])
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            assert step == 1 and stop >= start, f"DeviceArray rows need a unit-step slice, got {key}"
            return self._view(start * self.row_stride, (stop - start, *self.shape[1:]), self.row_stride)
        if isinstance(key, tuple) and len(key) == 2 and self.ndim == 2 and key[0] == slice(None):
            start, stop, step = key[1].indices(self.shape[1])
            assert step == 1 and stop >= start, f"DeviceArray columns need a unit-step slice, got {key[1]}"
            return self._view(start, (self.shape[0], stop - start), self.row_stride)
        raise TypeError(f"DeviceArray supports x[rows], x[i], x[a:b] and x[:, a:b] (2-D), not {key!r}")

    def reshape(self, *shape) -> DeviceArray:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            shape = tuple(self.size // known if d == -1 else d for d in shape)
        assert math.prod(shape) == self.size, f"cannot reshape {self.shape} to {shape}"
        if self.contiguous:
            return self._view(0, shape)
        # strided rows: only the inside of a row may change shape
        assert shape[0] == self.shape[0], f"cannot reshape strided {self.shape} to {shape}"
        return self._view(0, shape, self.row_stride)

    def get(self) -> np.ndarray:
        """A host copy (waits for the kernels that write it)."""
        return self.backend.to_host(self)


@dataclass
class DeviceWeight:
    """A GGUF matrix [N, K] kept quantized on the device: N rows of row_bytes raw bytes."""

    raw: DeviceArray  # uint8 [N, row_bytes]
    suffix: str
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes


@dataclass
class SplitWeight:
    """Row blocks of different quant types (q|k|v or gate|up): one launch per part, each writing its
    column range of the output."""

    parts: list[DeviceWeight]
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


def _size_class(n: int) -> int:
    # 512-byte steps up to 4 KiB, then 16 steps per power of two: at most 1/16 wasted, few distinct sizes
    if n <= 4096:
        return max(512, -(-n // 512) * 512)
    step = (1 << (n - 1).bit_length()) // 16
    return -(-n // step) * step


class _Block:
    """One pooled allocation; handed back to the pool when the last DeviceArray viewing it dies."""

    __slots__ = ("pool", "alloc", "size")

    def __init__(self, pool, alloc, size):
        self.pool, self.alloc, self.size = pool, alloc, size

    def __del__(self):
        try:
            self.pool.give_back(self.alloc, self.size)
        except Exception:  # interpreter shutdown: the pool may be gone already
            pass


class ActivationPool:
    """Caching allocator for activations: freed buffers return to a free list per size class, so after
    the first steps a forward allocates nothing from the driver (cuMemAlloc/cuMemFree synchronize).
    Reuse needs no events: every launch and copy runs in order on the one default stream."""

    def __init__(self, drv, poison: bool):
        self._drv, self._poison = drv, poison
        self._free: dict[int, list] = {}
        self.cached_bytes = 0

    def take(self, nbytes: int) -> _Block:
        size = _size_class(nbytes)
        free = self._free.get(size)
        if free:
            self.cached_bytes -= size
            alloc = free.pop()
            if self._poison:  # debug: recycled memory reads as NaN, as fresh memory does under the emulator
                self._drv.memset_d8(int(alloc), 0xFF, size)
        else:
            alloc = self._drv.mem_alloc(size)
        return _Block(self, alloc, size)

    def give_back(self, alloc, size: int) -> None:
        self._free.setdefault(size, []).append(alloc)
        self.cached_bytes += size

    def trim(self) -> None:
        self._free.clear()  # the allocations free themselves when collected
        self.cached_bytes = 0
