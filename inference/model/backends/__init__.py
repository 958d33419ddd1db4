"""Compute backends: native CPU kernels over GGUF blocks, CUDA via PyCUDA on GPU hosts, and NumPy
(float32, the reference every other backend is tested against)."""

import logging
import os
import shutil
from typing import Literal

import msgspec

from ...errors import BackendError

log = logging.getLogger("gguf_serve.backend")

BACKENDS = ("auto", "cuda", "cpu", "numpy")


class BackendConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Which backend computes, and how: sent to the worker process as it is."""

    name: Literal["auto", "cuda", "cpu", "numpy"] = "auto"
    threads: int = 0  # cpu backend kernel threads (and the worker's BLAS); 0 = usable_cores()
    kv_cache_dtype: Literal["f16", "f32"] = "f16"  # cpu backend; numpy and cuda keep float32


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as a container's cpuset sets it)."""
    return len(os.sched_getaffinity(0))


def cuda_unavailable_reason() -> str | None:
    """None when pycuda imports, a CUDA device exists and nvcc is on PATH; otherwise why not."""
    try:
        import pycuda.driver as drv  # noqa: PLC0415 - optional dependency, imported only here
    except ImportError as exc:
        return f"pycuda is not installed ({exc}); install the 'cuda' extra on a GPU host"
    try:
        drv.init()
        if drv.Device.count() == 0:
            return "no CUDA device found"
    except Exception as exc:  # pycuda raises its own driver errors
        return f"CUDA driver unavailable: {exc}"
    if shutil.which("nvcc") is None:  # pycuda's SourceModule runs nvcc to build cuda/*.cu at start-up
        return "nvcc is not on PATH; install the CUDA toolkit or add its bin/ directory to PATH"
    return None


def cpu_unavailable_reason() -> str | None:
    """None when the native CPU kernels import; otherwise why not (not built, or built for another host)."""
    try:
        from . import _cpu  # noqa: F401, PLC0415 - built by `pip install` from cpu/*.c (setup.py)
    except ImportError as exc:
        return f"the native CPU kernels are not built ({exc}); reinstall with `pip install -e .` (needs gcc)"
    return None


def select_backend(config: BackendConfig | str):
    """Backend instance for a BackendConfig (or a bare name). 'auto': cuda when usable, else cpu, else numpy
    with the reason logged; a backend asked for by name that cannot run raises BackendError."""
    config = BackendConfig(name=config) if isinstance(config, str) else config
    name = config.name
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "numpy":
        return _numpy(config)
    if name in ("auto", "cuda"):
        reason = cuda_unavailable_reason()
        if reason is None:
            from .cuda_backend import CudaBackend

            log.info("backend: cuda (pycuda, a CUDA device and nvcc are present)")
            return CudaBackend()
        if name == "cuda":
            raise BackendError(f"backend 'cuda' requested but {reason}")
        log.info("backend: not cuda (%s)", reason)
    reason = cpu_unavailable_reason()
    if reason is None:
        from .cpu_backend import CpuBackend

        return CpuBackend(threads=config.threads or usable_cores(), kv_cache_dtype=config.kv_cache_dtype)
    if name == "cpu":
        raise BackendError(f"backend 'cpu' requested but {reason}")
    log.warning("backend: numpy, the slow float32 reference (%s)", reason)
    return _numpy(config)


def _numpy(config: BackendConfig):
    from .numpy_backend import NumpyBackend

    limit_blas_threads(config.threads or usable_cores())
    return NumpyBackend()


def limit_blas_threads(n: int) -> None:
    """NumPy's BLAS (OpenBLAS) in this process uses at most n threads (threadpoolctl)."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    threadpool_limits(limits=n, user_api="blas")
