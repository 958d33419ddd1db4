"""Weight rows for the quantized-kernel tests: real blocks out of the GGUF files and synthetic ones."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

# kernel suffix of every GGUF type the kernels support
SUFFIX = {
    QT.F32: "f32",
    QT.F16: "f16",
    QT.BF16: "bf16",
    QT.Q4_0: "q4_0",
    QT.Q4_1: "q4_1",
    QT.Q5_0: "q5_0",
    QT.Q5_1: "q5_1",
    QT.Q8_0: "q8_0",
    QT.Q2_K: "q2_K",
    QT.Q3_K: "q3_K",
    QT.Q4_K: "q4_K",
    QT.Q5_K: "q5_K",
    QT.Q6_K: "q6_K",
}
# byte offsets of the float16 super-scales (d, dmin) inside a k-quant block: random bytes elsewhere are valid
_K_SCALES = {QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}


def row_bytes(qtype: QT, k: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    assert k % block == 0, f"{qtype.name}: K={k} is not a multiple of {block}"
    return k // block * size


def synthetic(qtype: QT, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, row_bytes] uint8 rows of type qtype, with weights of a plausible magnitude."""
    if qtype in _K_SCALES:
        raw = rng.integers(0, 256, size=(n, row_bytes(qtype, k)), dtype=np.uint8)
        blocks = raw.reshape(n, -1, GGML_QUANT_SIZES[qtype][1])
        for off in _K_SCALES[qtype]:
            scale = rng.uniform(0.001, 0.02, size=blocks.shape[:2]).astype(np.float16)
            blocks[:, :, off : off + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
        return raw
    w = rng.standard_normal((n, k), dtype=np.float32) * 0.05
    if qtype == QT.F32:
        return w.view(np.uint8)
    if qtype == QT.F16:
        return w.astype(np.float16).view(np.uint8)
    if qtype == QT.BF16:
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    return quantize(w, qtype)


def dequant(raw: np.ndarray, qtype: QT) -> np.ndarray:
    """The reference: gguf.quants.dequantize ([n, K] float32)."""
    if qtype == QT.BF16:  # gguf's BF16 path also works, but is spelled out here for clarity
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return dequantize(raw, qtype).astype(np.float32)


def real_rows(path: Path, qtype: QT, max_rows: int) -> tuple[str, np.ndarray, int]:
    """(tensor name, [rows, row_bytes] raw rows, K) of the first tensor of `qtype` in the GGUF file."""
    for t in _reader(path).tensors:
        if t.tensor_type == qtype and len(t.shape) == 2:
            k = int(t.shape[0])  # gguf lists dims fastest first
            data = np.asarray(t.data).view(np.uint8).reshape(-1, row_bytes(qtype, k))
            return t.name, np.ascontiguousarray(data[:max_rows]), k
    raise LookupError(f"{path.name} has no 2-D {qtype.name} tensor")


@functools.cache
def _reader(path: Path) -> GGUFReader:
    return GGUFReader(path)  # parsing qwen's 151k-token vocabulary takes seconds: once per session
