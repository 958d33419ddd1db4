"""Backend choice: 'auto' takes the native cpu kernels when built, and says why when it falls back."""

import builtins
import logging

import pytest

from inference.errors import BackendError
from inference.model import backends
from inference.model.backends import BackendConfig, select_backend
from inference.model.backends.cpu_backend import CpuBackend
from inference.model.backends.numpy_backend import NumpyBackend


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(backends, "cuda_unavailable_reason", lambda: "no CUDA device found")


@pytest.fixture
def kernels_missing(monkeypatch):
    real_import = builtins.__import__

    def fake(name, globals=None, locals=None, fromlist=(), level=0):
        if "_cpu" in (fromlist or ()) or name.endswith("._cpu"):
            raise ImportError("cannot import name '_cpu' (the extension was not built)")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_auto_takes_the_cpu_kernels_and_logs_the_simd_path(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="gguf_serve.backend"):
        chosen = select_backend(BackendConfig(name="auto", threads=1, kv_cache_dtype="f32"))
    assert isinstance(chosen, CpuBackend) and chosen.kv_bytes_per_element() == 4
    assert any(m.startswith("backend: cpu (") and "1 threads" in m for m in caplog.messages), caplog.messages


def test_auto_without_the_kernels_falls_back_to_numpy_with_the_reason(no_cuda, kernels_missing, caplog):
    with caplog.at_level(logging.WARNING, logger="gguf_serve.backend"):
        assert isinstance(select_backend("auto"), NumpyBackend)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        "backend: numpy, the slow float32 reference (the native CPU kernels are not built"
    )


def test_cpu_asked_for_without_the_kernels_is_an_error(no_cuda, kernels_missing):
    with pytest.raises(
        BackendError, match=r"^backend 'cpu' requested but the native CPU kernels are not built"
    ):
        select_backend("cpu")


def test_default_threads_are_the_cores_this_process_may_use():
    import os

    assert backends.usable_cores() == len(os.sched_getaffinity(0)) >= 1
