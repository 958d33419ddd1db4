"""Compute backends: NumPy everywhere (the reference), CUDA via PyCUDA on GPU hosts."""

import logging
import shutil

log = logging.getLogger("gguf_serve.backend")

BACKENDS = ("auto", "cuda", "numpy")


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


def select_backend(name: str):
    """Backend instance for 'numpy', 'cuda' or 'auto' (CUDA when usable, else NumPy; logs why)."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "numpy":
        from .numpy_backend import NumpyBackend

        return NumpyBackend()
    reason = cuda_unavailable_reason()
    if reason is None:
        from .cuda_backend import CudaBackend

        log.info("backend: cuda (pycuda, a CUDA device and nvcc are present)")
        return CudaBackend()
    if name == "cuda":
        from ...errors import BackendError

        raise BackendError(f"backend 'cuda' requested but {reason}")
    log.info("backend: numpy (%s)", reason)
    from .numpy_backend import NumpyBackend

    return NumpyBackend()
