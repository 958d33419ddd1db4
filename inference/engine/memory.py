"""Start-up memory check: the model and its KV cache are estimated before loading and refused when they
would not fit in the memory this process may still use."""

import logging
from pathlib import Path

from ..errors import OutOfMemoryError
from ..gguf.loader import GGUFFile
from ..gguf.model_config import MemoryEstimate, ModelConfig, estimate_memory
from ..model.backends.base import Backend

log = logging.getLogger("gguf_serve.engine")

_CGROUP = Path("/sys/fs/cgroup")


def estimate(gguf: GGUFFile, config: ModelConfig, backend: Backend, kv_tokens: int, batch_tokens: int):
    """The engine's host memory on this backend: weights as it stores them, KV cache, activations."""
    weight_bytes = sum(backend.stored_bytes(t) for t in gguf.tensors.values())
    return estimate_memory(
        config,
        weight_bytes=weight_bytes,
        num_kv_tokens=kv_tokens,
        max_batch_tokens=batch_tokens,
        kv_dtype_bytes=backend.kv_bytes_per_element(),
        attention_scores=backend.name == "numpy",
    )


def combined(estimates: list[MemoryEstimate]) -> MemoryEstimate:
    """Two models in one process (a target and its draft): their parts added up; the activations of one
    forward at a time, so the larger of them."""
    return MemoryEstimate(
        weights=sum(e.weights for e in estimates),
        kv_cache=sum(e.kv_cache for e in estimates),
        kv_bytes_per_token=sum(e.kv_bytes_per_token for e in estimates),
        activations=max(e.activations for e in estimates),
        overhead=max(e.overhead for e in estimates),
        total=sum(e.weights + e.kv_cache for e in estimates)
        + max(e.activations for e in estimates)
        + max(e.overhead for e in estimates),
    )


def check_fits(est: MemoryEstimate, available: int | None = None) -> None:
    """Raises OutOfMemoryError, with both numbers, when the estimate exceeds the available memory."""
    available = available_memory() if available is None else available
    log.info(
        "memory estimate: %s (weights %s, KV cache %s, activations %s, overhead %s); available %s",
        _mib(est.total), _mib(est.weights), _mib(est.kv_cache), _mib(est.activations), _mib(est.overhead),
        _mib(available),
    )  # fmt: skip
    if est.total > available:
        raise OutOfMemoryError(
            f"the model and its KV cache need about {_mib(est.total)} (weights {_mib(est.weights)}, KV cache "
            f"{_mib(est.kv_cache)}, activations {_mib(est.activations)}, overhead {_mib(est.overhead)}) but "
            f"only {_mib(available)} are available; lower kv_cache_tokens or max_num_batched_tokens"
        )


def available_memory() -> int:
    """MemAvailable, or less when this process's cgroup (a container) has a lower limit left."""
    avail = _meminfo_available()
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((_CGROUP / "memory.current").read_text())
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible: the host's figure stands
    return avail


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"
