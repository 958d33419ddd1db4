"""Runs cuda/*.cu on the CPU: g++ builds each file with the emulation header, ctypes calls its kernels.

The calling convention is PyCUDA's, so a test body runs unchanged through either:

    mod = EmuModule(CUDA_DIR / "rmsnorm.cu")           # SourceModule(src, no_extern_c=True, ...)
    fn = mod.get_function("rmsnorm_f32")
    fn(In(x), In(w), Out(y), np.int32(D), np.float32(eps), block=(256, 1, 1), grid=(T, 1))

Stricter than a GPU on purpose: scalar arguments must be NumPy scalars of the kernel's exact type and
size (an np.int64 for an `int` fails), Out/InOut cannot go to a `const T*`, Out buffers start as NaN
(0xFF bytes), and every buffer sits between 0xFF guard zones that are checked after the launch, so an
out-of-bounds write is an error and an out-of-bounds read of floats yields NaN.

Thread and block order: `order="random"` (or env CUDA_EMU_ORDER=random, seed CUDA_EMU_SEED) shuffles the
fibers at every scheduling pass and the blocks of the grid.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "cuda"
EMU_DIR = Path(__file__).resolve().parent / "emu"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++20", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
GUARD = 256  # bytes of 0xFF on each side of every buffer
RANDOM_THREADS, RANDOM_BLOCKS = 1, 2

_build_lock = threading.Lock()


class EmuLaunchError(RuntimeError):
    """A kernel launch failed in the emulator (bad barrier, deadlock, bad arguments, out-of-bounds write)."""


# ---- PyCUDA stand-ins --------------------------------------------------------------------------------
@dataclass
class In:
    array: np.ndarray


@dataclass
class Out:
    array: np.ndarray


@dataclass
class InOut:
    array: np.ndarray


# ---- build -------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gguf-serve" / "emu"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        return Path(tempfile.gettempdir())


def _source_hash(cu: Path) -> str:
    h = hashlib.sha256()
    headers = {*cu.parent.glob("*.cuh"), *CUDA_DIR.glob("*.cuh"), *EMU_DIR.glob("*.hpp")}
    for part in [cu, *sorted(headers)]:
        h.update(part.name.encode())
        h.update(part.read_bytes())
    h.update(" ".join([CXX, *CXXFLAGS]).encode())
    return h.hexdigest()[:16]


def _kernel_names(cu: Path) -> list[str]:
    # preprocess with __global__ -> a marker token: finds kernels stamped out by macros too
    cmd = [CXX, "-std=c++20", "-x", "c++", "-E", "-P", "-DCUDA_EMU_SCAN", *_includes(cu), str(cu)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise EmuLaunchError(f"g++ -E failed on {cu.name}:\n{res.stderr[-6000:]}")
    text = res.stdout
    return re.findall(r"CUDA_EMU_KERNEL_MARK\s+void\s+(\w+)\s*\(", text)


def _includes(cu: Path) -> list[str]:
    return [f"-I{cu.parent}", f"-I{CUDA_DIR}", f"-I{EMU_DIR}"]


def build(cu: Path) -> tuple[Path, list[str]]:
    """Compile `cu` (once per source hash) into a shared object; returns it and its kernel names."""
    cu = Path(cu).resolve()
    out = cache_dir() / f"{cu.stem}-{_source_hash(cu)}.so"
    names_file = out.with_suffix(".kernels")
    with _build_lock:
        if out.exists() and names_file.exists():
            return out, names_file.read_text().split()
        names = _kernel_names(cu)
        if not names:
            raise EmuLaunchError(f'{cu.name}: no extern "C" __global__ kernels found')
        with tempfile.TemporaryDirectory() as tmp:
            wrapper = Path(tmp) / f"{cu.stem}_emu.cpp"
            wrapper.write_text(f'#include "{cu}"\n' + "".join(f"CUDA_EMU_EXPORT({n})\n" for n in names))
            so_tmp = Path(tmp) / out.name
            cmd = [CXX, *CXXFLAGS, *_includes(cu), str(wrapper), "-o", str(so_tmp)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise EmuLaunchError(f"g++ failed on {cu.name}:\n{res.stderr[-6000:]}")
            os.replace(so_tmp, out)  # atomic: parallel test runs never see half a file
        names_file.write_text("\n".join(names))
        return out, names


# ---- launch ------------------------------------------------------------------------------------------
_SCALAR_KIND = {"i": "i", "u": "u", "f": "f"}


class EmuFunction:
    def __init__(self, lib: ctypes.CDLL, name: str, module: EmuModule):
        self.name = name
        self._module = module
        self._launch = getattr(lib, f"cuda_emu_launch_{name}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_ulonglong,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        sig = getattr(lib, f"cuda_emu_signature_{name}")
        kinds, sizes = ctypes.create_string_buffer(64), (ctypes.c_size_t * 64)()
        n = sig(kinds, sizes, 64)
        self.kinds = kinds.raw[:n].decode()
        self.sizes = list(sizes[:n])

    def __call__(self, *args, block, grid=(1, 1), shared=0, stream=None):
        if len(args) != len(self.kinds):
            raise EmuLaunchError(f"{self.name} takes {len(self.kinds)} arguments, got {len(args)}")
        block3 = (tuple(block) + (1, 1))[:3]
        grid3 = (tuple(grid) + (1, 1))[:3]
        keep, params, copies = [], (ctypes.c_void_p * len(args))(), []
        for i, (arg, kind, size) in enumerate(zip(args, self.kinds, self.sizes, strict=True)):
            cval = self._marshal(i, arg, kind, size, copies)
            keep.append(cval)
            params[i] = ctypes.cast(ctypes.pointer(cval), ctypes.c_void_p)
        err = ctypes.create_string_buffer(4096)
        order = self._module.order
        flags = (RANDOM_THREADS | RANDOM_BLOCKS) if order == "random" else 0
        rc = self._launch(
            params,
            (ctypes.c_uint * 3)(*grid3),
            (ctypes.c_uint * 3)(*block3),
            int(shared),
            flags,
            self._module.seed,
            err,
            len(err),
        )
        if rc != 0:
            raise EmuLaunchError(f"{self.name}: {err.value.decode(errors='replace')}")
        for i, (buf, wrapper) in enumerate(copies):
            body = buf[GUARD:-GUARD]
            if not (np.all(buf[:GUARD] == 0xFF) and np.all(buf[-GUARD:] == 0xFF)):
                raise EmuLaunchError(f"{self.name}: out-of-bounds write around argument {i}")
            if isinstance(wrapper, Out | InOut):
                wrapper.array.reshape(-1).view(np.uint8)[:] = body

    def _marshal(self, i, arg, kind, size, copies):
        where = f"{self.name} argument {i}"
        if kind in "pr":
            if arg is None or (isinstance(arg, np.integer) and int(arg) == 0):
                return ctypes.c_void_p(0)
            if isinstance(arg, np.ndarray):
                raise EmuLaunchError(f"{where}: wrap arrays in In/Out/InOut, as with pycuda.driver")
            if not isinstance(arg, In | Out | InOut):
                raise EmuLaunchError(f"{where}: expected a buffer (In/Out/InOut), got {type(arg).__name__}")
            if kind == "r" and not isinstance(arg, In):
                raise EmuLaunchError(f"{where}: {type(arg).__name__} passed to a const pointer")
            a = arg.array
            if not a.flags.c_contiguous:
                raise EmuLaunchError(f"{where}: array is not C-contiguous")
            buf = _aligned_bytes(a.nbytes + 2 * GUARD)
            buf[:] = 0xFF
            if isinstance(arg, In | InOut):
                buf[GUARD:-GUARD] = a.reshape(-1).view(np.uint8)
            copies.append((buf, arg))
            return ctypes.c_void_p(buf.ctypes.data + GUARD)
        if not isinstance(arg, np.generic):
            raise EmuLaunchError(
                f"{where}: pass a sized NumPy scalar (np.int32, np.float32), not {type(arg).__name__}"
            )
        if arg.dtype.kind != _SCALAR_KIND.get(kind, "?") or arg.dtype.itemsize != size:
            raise EmuLaunchError(f"{where}: kernel takes a {size}-byte '{kind}' scalar, got {arg.dtype}")
        raw = ctypes.create_string_buffer(arg.tobytes(), size)
        return raw


def _aligned_bytes(n: int, align: int = 256) -> np.ndarray:
    raw = np.empty(n + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n]


class EmuModule:
    """One compiled .cu file; `get_function(name)` mirrors pycuda's SourceModule."""

    def __init__(self, cu: Path | str, order: str | None = None, seed: int | None = None):
        self.path = Path(cu)
        so, self.kernel_names = build(self.path)
        self._lib = ctypes.CDLL(str(so))
        self.order = order or os.environ.get("CUDA_EMU_ORDER", "default")
        if self.order not in ("default", "random"):
            raise ValueError(f"order {self.order!r} is not 'default' or 'random'")
        self.seed = int(seed if seed is not None else os.environ.get("CUDA_EMU_SEED", "12345"))
        self._functions: dict[str, EmuFunction] = {}

    def get_function(self, name: str) -> EmuFunction:
        if name not in self.kernel_names:
            raise EmuLaunchError(
                f"{self.path.name} has no kernel {name!r} (has {', '.join(self.kernel_names)})"
            )
        if name not in self._functions:
            self._functions[name] = EmuFunction(self._lib, name, self)
        return self._functions[name]
