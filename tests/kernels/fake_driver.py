"""A PyCUDA-shaped device layer over the CPU emulator, so `CudaBackend(driver=FakeDriver())` runs the real
backend code (the same launchers, kernels, launch configurations and argument formats) without a GPU.

Device memory is host numpy buffers at fake device addresses (256-byte aligned, gaps between them, like
cuMemAlloc), filled with 0xFF (NaN) when allocated. `SourceModule(text, ...)` finds the cuda/*.cu file
with that text and builds it with tests/kernels/emulator.py; its functions support `prepare` /
`prepared_call` (and plain calls) and turn each pointer argument into a view of its allocation from the
pointer to the end: `In` for a `const T*` parameter, `InOut` for a writable one, so unwritten memory keeps
its contents and a write past the allocation is caught by the emulator's guard zones.

Stricter than a GPU where a GPU would silently misbehave: an argument format that disagrees with the
kernel's signature, a pointer outside every allocation or not 16-byte aligned, a block over the kernel's
declared thread budget, a written buffer that aliases another argument, memory calls outside a pushed
context. Errors are `FakeDriver.Error` subclasses, as pycuda's are `pycuda.driver.Error` ones.
"""

from __future__ import annotations

import bisect
import operator
import re
from pathlib import Path

import numpy as np

from inference.model.backends.cuda_backend import CUDA_DIR
from tests.kernels import emulator

_BUDGET = re.compile(r"//\s*ptxas-budget(?:\[(\w+)\])?:\s*registers=(\d+)\s+threads=(\d+)")
_SCALAR = {"i": np.int32, "I": np.uint32, "f": np.float32, "l": np.int64, "q": np.int64, "d": np.float64}
_BASE, _ALIGN, _GAP = 0x7F00_0000_0000, 256, 64 * 1024


class Error(Exception):
    """Base of the fake driver's errors (pycuda.driver.Error)."""


class LaunchError(Error):
    pass


class FakeMemoryError(Error):
    pass


class LogicError(Error):
    pass


class FakeAllocation:
    """A device allocation (pycuda DeviceAllocation): int() is its address; freed by free() or by GC."""

    def __init__(self, driver: FakeDriver, address: int, nbytes: int):
        self._driver, self.address, self.nbytes = driver, address, nbytes
        self.buf = np.full(nbytes, 0xFF, np.uint8)
        self.freed = False

    def __int__(self) -> int:
        return self.address

    __index__ = __int__

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self._driver._release(self)

    def __del__(self):
        self.free()


class FakeFunction:
    """An emulated kernel with pycuda Function's calling conventions and attributes."""

    def __init__(self, driver: FakeDriver, emu_fn: emulator.EmuFunction, max_threads: int, registers: int):
        self._driver, self._fn = driver, emu_fn
        self.max_threads_per_block = max_threads
        self.num_regs = registers
        self.shared_size_bytes = 0  # the emulator checks static + dynamic shared memory itself
        self.local_size_bytes = 0
        self.arg_format: str | None = None
        self.launches = 0

    def prepare(self, arg_types) -> FakeFunction:
        fmt = "".join(arg_types) if not isinstance(arg_types, str) else arg_types
        if len(fmt) != len(self._fn.kinds):
            raise LogicError(f"{self._fn.name}: format {fmt!r} for {len(self._fn.kinds)} parameters")
        for i, (c, kind) in enumerate(zip(fmt, self._fn.kinds, strict=True)):
            if (c == "P") != (kind in "pr"):
                raise LogicError(
                    f"{self._fn.name}: parameter {i} is {kind!r} in the kernel, {c!r} in the format"
                )
        self.arg_format = fmt
        return self

    def prepared_call(self, grid, block, *args, shared_size=0) -> None:
        if self.arg_format is None:
            raise LogicError(f"{self._fn.name}: prepared_call before prepare")
        if not isinstance(block, tuple):  # pycuda would take a non-tuple block for the first argument
            raise LogicError(f"{self._fn.name}: prepared_call needs the block as a tuple, got {block!r}")
        if len(args) != len(self.arg_format):
            raise LogicError(f"{self._fn.name}: {len(args)} arguments for format {self.arg_format!r}")
        values = [
            operator.index(a) if c == "P" else _SCALAR[c](a)
            for c, a in zip(self.arg_format, args, strict=True)
        ]
        self._launch(values, grid, block, shared_size)

    def __call__(self, *args, block, grid=(1, 1), shared=0, stream=None) -> None:
        assert stream is None, "the fake driver has only the default stream"
        values = [int(a) if k in "pr" and not isinstance(a, np.floating) else a
                  for a, k in zip(args, self._fn.kinds, strict=True)]  # fmt: skip
        self._launch(values, grid, block, shared)

    def _launch(self, values, grid, block, shared) -> None:
        d, name = self._driver, self._fn.name
        d._need_context(f"launching {name}")
        if name in d.fail_kernels:
            raise LaunchError(
                f"cuLaunchKernel failed: an illegal memory access was encountered ({name}, injected)"
            )
        block = (*tuple(block), 1, 1)[:3]
        if block[0] * block[1] * block[2] > self.max_threads_per_block:
            raise LaunchError(
                f"cuLaunchKernel failed: too many resources requested for launch ({name}: block {block}, "
                f"launch bounds {self.max_threads_per_block})"
            )
        args, written = [], {}
        for i, (v, kind) in enumerate(zip(values, self._fn.kinds, strict=True)):
            if kind not in "pr":
                args.append(v)
                continue
            if v == 0:
                args.append(None)
                continue
            alloc, offset = d._find(v, f"{name} argument {i}")
            if (alloc.address + offset) % 16:
                raise LaunchError(f"{name} argument {i}: pointer {v:#x} is not 16-byte aligned")
            view = alloc.buf[offset:]
            args.append(emulator.In(view) if kind == "r" else emulator.InOut(view))
            written.setdefault(alloc.address, []).append(kind)
        for address, kinds in written.items():
            if len(kinds) > 1 and "p" in kinds:
                raise LaunchError(
                    f"{name}: a written buffer aliases another argument (allocation {address:#x})"
                )
        try:
            self._fn(*args, block=block, grid=tuple(grid), shared=int(shared))
        except emulator.EmuLaunchError as exc:
            raise LaunchError(f"cuLaunchKernel failed: {exc}") from exc
        self.launches += 1
        d.launches.append(name)


class FakeModule:
    def __init__(self, driver: FakeDriver, cu: Path, order: str | None):
        self._driver = driver
        self._module = emulator.EmuModule(cu, order=order)
        text = cu.read_text()
        budgets = {name or "": (int(regs), int(threads)) for name, regs, threads in _BUDGET.findall(text)}
        self._budget = lambda kernel: budgets.get(kernel) or budgets.get("") or (255, 1024)
        self._functions: dict[str, FakeFunction] = {}

    def get_function(self, name: str) -> FakeFunction:
        if name not in self._functions:
            try:
                fn = self._module.get_function(name)
            except emulator.EmuLaunchError as exc:
                raise LogicError(f"cuModuleGetFunction failed: named symbol not found ({exc})") from exc
            regs, threads = self._budget(name)
            self._functions[name] = FakeFunction(self._driver, fn, threads, regs)
        return self._functions[name]


class FakeContext:
    def __init__(self, driver: FakeDriver):
        self._driver = driver

    def push(self) -> None:
        self._driver._ctx_stack.append(self)

    def pop(self) -> None:
        if not self._driver._ctx_stack or self._driver._ctx_stack[-1] is not self:
            raise LogicError("cuCtxPopCurrent failed: invalid context")
        self._driver._ctx_stack.pop()

    def detach(self) -> None:
        pass

    def get_device(self):
        return FakeDevice(self._driver, 0)


class FakeDevice:
    def __init__(self, driver: FakeDriver, ordinal: int):
        if ordinal != 0:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
        self._driver = driver

    def compute_capability(self) -> tuple[int, int]:
        return self._driver.compute_capability

    def name(self) -> str:
        return "fake CUDA device (CPU emulator)"

    def total_memory(self) -> int:
        return self._driver.total_memory

    def retain_primary_context(self) -> FakeContext:
        return self._driver._primary

    def make_context(self) -> FakeContext:
        ctx = FakeContext(self._driver)
        ctx.push()
        return ctx


class FakeMemcpy2D:
    """pycuda.driver.Memcpy2D, device to device."""

    def __init__(self, driver: FakeDriver):
        self._driver = driver
        self.src = self.dst = None
        self.src_pitch = self.dst_pitch = self.width_in_bytes = self.height = 0

    def set_src_device(self, ptr) -> None:
        self.src = int(ptr)

    def set_dst_device(self, ptr) -> None:
        self.dst = int(ptr)

    def __call__(self, aligned=False) -> None:
        d = self._driver
        d._need_context("cuMemcpy2D")
        if self.width_in_bytes > min(self.src_pitch, self.dst_pitch):
            raise Error("cuMemcpy2D failed: invalid value (width > pitch)")
        for r in range(self.height):
            src = d._bytes(self.src + r * self.src_pitch, self.width_in_bytes, "cuMemcpy2D source")
            d._bytes(self.dst + r * self.dst_pitch, self.width_in_bytes, "cuMemcpy2D destination")[:] = src


class FakeDriver:
    """Stands in for `pycuda.driver` (plus `SourceModule`) in `CudaBackend(driver=...)`.

    total_memory: what mem_get_info reports as total (nothing is reserved up front);
    order: the emulator's thread/block order ('default' or 'random'; env CUDA_EMU_ORDER otherwise);
    fail_kernels: kernel names whose launches fail, to test error reporting."""

    Error, LaunchError, MemoryError, LogicError = Error, LaunchError, FakeMemoryError, LogicError

    def __init__(self, total_memory: int = 8 << 30, order: str | None = None, fail_kernels=(),
                 compute_capability=(9, 0)):  # fmt: skip
        self.total_memory = total_memory
        self.compute_capability = compute_capability
        self.order = order
        self.fail_kernels = set(fail_kernels)
        self.used = 0
        self.launches: list[str] = []
        self.compiled: list[dict] = []  # the SourceModule calls, to check the compile options
        self._allocs: dict[int, FakeAllocation] = {}
        self._starts: list[int] = []
        self._next = _BASE
        self._ctx_stack: list[FakeContext] = []
        self._primary = FakeContext(self)
        driver = self

        class Context:
            @staticmethod
            def synchronize() -> None:
                driver._need_context("cuCtxSynchronize")

            @staticmethod
            def get_device():
                return FakeDevice(driver, 0)

        self.Context = Context

    # ---- driver API ---------------------------------------------------------------------------------
    def init(self, flags: int = 0) -> None:
        pass

    def Device(self, ordinal: int) -> FakeDevice:  # noqa: N802 - pycuda's name
        return FakeDevice(self, ordinal)

    def Memcpy2D(self) -> FakeMemcpy2D:  # noqa: N802
        return FakeMemcpy2D(self)

    def SourceModule(self, source: str, nvcc="nvcc", options=None, keep=False, no_extern_c=False,  # noqa: N802
                     arch=None, code=None, cache_dir=None, include_dirs=()) -> FakeModule:  # fmt: skip
        if not no_extern_c:
            raise Error('compile: the kernels need no_extern_c=True (cuda_fp16.h breaks inside extern "C")')
        if not (isinstance(arch, str) and re.fullmatch(r"sm_\d+", arch)):
            raise Error(f"compile: arch {arch!r} is not 'sm_XX'")
        self.compiled.append(
            {"options": list(options or []), "arch": arch, "include_dirs": list(include_dirs)}
        )
        return FakeModule(self, self._source_file(source, include_dirs), self.order)

    @staticmethod
    def _source_file(source: str, include_dirs) -> Path:
        for d in [*include_dirs, CUDA_DIR]:
            for cu in sorted(Path(d).glob("*.cu")):
                if cu.read_text() == source:
                    return cu
        raise Error("compile: the fake driver builds only sources found as .cu files in include_dirs")

    def mem_get_info(self) -> tuple[int, int]:
        self._need_context("cuMemGetInfo")
        return self.total_memory - self.used, self.total_memory

    def mem_alloc(self, nbytes: int) -> FakeAllocation:
        self._need_context("cuMemAlloc")
        nbytes = int(nbytes)
        if nbytes <= 0:
            raise Error("cuMemAlloc failed: invalid argument")
        if self.used + nbytes > self.total_memory:
            raise FakeMemoryError("cuMemAlloc failed: out of memory")
        address = self._next
        self._next = -(-(address + nbytes + _GAP) // _ALIGN) * _ALIGN
        alloc = FakeAllocation(self, address, nbytes)
        self._allocs[address] = alloc
        bisect.insort(self._starts, address)
        self.used += nbytes
        return alloc

    def memcpy_htod(self, dst, src) -> None:
        self._need_context("cuMemcpyHtoD")
        src = np.ascontiguousarray(src)
        self._bytes(int(dst), src.nbytes, "cuMemcpyHtoD")[:] = src.reshape(-1).view(np.uint8)

    def memcpy_dtoh(self, dst: np.ndarray, src) -> None:
        self._need_context("cuMemcpyDtoH")
        if not dst.flags.c_contiguous:
            raise Error("cuMemcpyDtoH: host buffer is not contiguous")
        dst.reshape(-1).view(np.uint8)[:] = self._bytes(int(src), dst.nbytes, "cuMemcpyDtoH")

    def memcpy_dtod(self, dst, src, nbytes: int) -> None:
        self._need_context("cuMemcpyDtoD")
        data = self._bytes(int(src), int(nbytes), "cuMemcpyDtoD source").copy()
        self._bytes(int(dst), int(nbytes), "cuMemcpyDtoD destination")[:] = data

    def memset_d8(self, dst, value: int, count: int) -> None:
        self._need_context("cuMemsetD8")
        self._bytes(int(dst), int(count), "cuMemsetD8")[:] = value

    def memset_d32(self, dst, value: int, count: int) -> None:
        self._need_context("cuMemsetD32")
        self._bytes(int(dst), 4 * int(count), "cuMemsetD32").view(np.uint32)[:] = value

    # ---- fake memory --------------------------------------------------------------------------------
    def _release(self, alloc: FakeAllocation) -> None:
        self._allocs.pop(alloc.address, None)
        i = bisect.bisect_left(self._starts, alloc.address)
        if i < len(self._starts) and self._starts[i] == alloc.address:
            self._starts.pop(i)
        self.used -= alloc.nbytes

    def _find(self, ptr: int, what: str) -> tuple[FakeAllocation, int]:
        i = bisect.bisect_right(self._starts, ptr) - 1
        alloc = self._allocs.get(self._starts[i]) if i >= 0 else None
        if alloc is None or ptr >= alloc.address + alloc.nbytes:
            raise Error(f"{what}: {ptr:#x} is not in any live device allocation (invalid device pointer)")
        return alloc, ptr - alloc.address

    def _bytes(self, ptr: int, nbytes: int, what: str) -> np.ndarray:
        if nbytes == 0:
            return np.empty(0, np.uint8)
        alloc, offset = self._find(ptr, what)
        if offset + nbytes > alloc.nbytes:
            raise Error(
                f"{what}: {nbytes} bytes at {ptr:#x} run past the allocation's {alloc.nbytes} (invalid value)"
            )
        return alloc.buf[offset : offset + nbytes]

    def _need_context(self, what: str) -> None:
        if not self._ctx_stack:
            raise LogicError(f"{what} failed: invalid device context (no context is current)")
