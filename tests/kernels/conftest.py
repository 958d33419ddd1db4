"""Kernel test harness: the same test body runs through the CPU emulator (default and shuffled thread and
block order) and, on a machine with pycuda and a CUDA device, through PyCUDA (marker `gpu`)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from inference.model.backends.cuda_backend import CUDA_DIR, NVCC_OPTIONS
from tests.kernels import emulator


class EmuRunner:
    """Kernels through tests/kernels/emulator.py; `order` is 'default' or 'random'."""

    In, Out, InOut = emulator.In, emulator.Out, emulator.InOut
    LaunchError = emulator.EmuLaunchError

    def __init__(self, order: str):
        self.name = f"emu-{order}"
        self.order = order
        self._modules: dict[Path, emulator.EmuModule] = {}

    def module(self, cu: str | Path) -> emulator.EmuModule:
        path = CUDA_DIR / cu if isinstance(cu, str) else cu
        if path not in self._modules:
            self._modules[path] = emulator.EmuModule(path, order=self.order)
        return self._modules[path]

    def fn(self, cu: str | Path, kernel: str):
        return self.module(cu).get_function(kernel)


class PycudaRunner:
    """Kernels through pycuda.driver on the first CUDA device, compiled as the CUDA backend compiles them."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule

        self._drv, self._source_module = drv, SourceModule
        self.In, self.Out, self.InOut = drv.In, drv.Out, drv.InOut
        self.LaunchError = drv.Error
        major, minor = drv.Context.get_device().compute_capability()
        self.arch = f"sm_{major}{minor}"
        self._modules: dict[Path, object] = {}

    def module(self, cu: str | Path):
        path = CUDA_DIR / cu if isinstance(cu, str) else cu
        if path not in self._modules:
            self._modules[path] = self._source_module(
                path.read_text(),
                no_extern_c=True,
                include_dirs=[str(path.parent), str(CUDA_DIR)],
                options=list(NVCC_OPTIONS),
                arch=self.arch,
            )
        return self._modules[path]

    def fn(self, cu: str | Path, kernel: str):
        f = self.module(cu).get_function(kernel)

        def call(*args, **kw):
            f(*[np.intp(0) if a is None else a for a in args], **kw)
            self._drv.Context.synchronize()

        return call


def _pycuda_reason() -> str | None:
    from inference.model.backends import cuda_unavailable_reason

    return cuda_unavailable_reason()


RUNNERS = [pytest.param("emu-default", id="emu"), pytest.param("emu-random", id="emu-random")]
if importlib.util.find_spec("pycuda") is not None:  # GPU hosts: the same bodies through the real driver
    RUNNERS.append(pytest.param("pycuda", id="pycuda", marks=pytest.mark.gpu))


@functools.cache
def make_runner(name: str):
    if name == "pycuda":
        if reason := _pycuda_reason():
            pytest.skip(f"pycuda runner: {reason}")
        return PycudaRunner()
    return EmuRunner(name.removeprefix("emu-"))


@pytest.fixture(params=RUNNERS)
def gpu(request):
    """A kernel runner: `gpu.fn("rmsnorm.cu", "rmsnorm_f32")(gpu.In(x), ..., block=..., grid=...)`."""
    return make_runner(request.param)


@pytest.fixture
def emu():
    """The emulator alone, default order (for tests about the emulator itself)."""
    return make_runner("emu-default")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
