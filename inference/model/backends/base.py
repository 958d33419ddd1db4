"""The backend contract: every op the transformer calls, as one typing.Protocol.

model/transformer.py only calls these methods and never looks at what kind of array it holds: host
NumPy arrays (numpy, cpu) or device arrays (cuda). Weights are whatever `load_weight` returns (float32
arrays, quantized blocks on the host or on the device); activations [T, ...] are the backend's arrays
until `to_host` brings the logits back for the sampler. tests/unit/test_backend_contract.py checks
that each backend implements every method with these parameters.
"""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...gguf.loader import TensorInfo


@dataclass(frozen=True)
class AttentionSeq:
    """One sequence of a packed batch: its queries are the last `query_len` of `context_len` tokens."""

    query_start: int  # first row of this sequence in the packed [T, ...] activations
    query_len: int
    context_len: int  # tokens in the KV cache for this sequence, including the new ones
    block_table: np.ndarray  # [ceil(context_len / block_size)] int32


class Arena(Protocol):
    def place(self, load: Any) -> Any:
        """load() -> one layer's weights (a dataclass); returns them as the backend keeps them."""


class KeepInPlace:
    """The arena of backends whose weights stay where load_weight put them (cpu: the mapped file; cuda:
    each upload's own allocation)."""

    @staticmethod
    def place(load):
        return load()


def blocks_stored_bytes(tensor: TensorInfo) -> int:
    """stored_bytes of a backend that keeps matrices in their GGUF blocks and vectors as float32."""
    return 4 * tensor.n_elements if len(tensor.shape) == 1 else tensor.nbytes


class Backend(Protocol):
    name: str  # "numpy", "cpu", "cuda": what "auto" resolved to

    # -- weights and caches ----------------------------------------------------------------------
    def load_weight(self, tensor: TensorInfo) -> Any:
        """A GGUF tensor as the backend computes on it: [N, K] matrices, [D] norms and biases."""

    def stored_bytes(self, tensor: TensorInfo) -> int:
        """Bytes the backend will hold for this tensor once loaded (the start-up memory estimate)."""

    def fuse(self, parts: list) -> Any:
        """Output rows stacked: [N1 + N2 + ..., K] (q|k|v, gate|up) or their biases."""

    def layer_arena(self, sizes: list[int]) -> Arena:
        """Where layers are placed as they load (sizes: elements of every layer tensor)."""

    def alloc_kv(self, shape: tuple[int, ...], count: int) -> list:
        """`count` zeroed caches of [num_blocks, block_size, n_kv_heads, head_dim]."""

    def kv_bytes_per_element(self) -> int:
        """Bytes of one K or V element in the caches alloc_kv returns (4 float32, 2 float16)."""

    def copy_block(self, k_cache, v_cache, src: int, dst: int) -> None:
        """KV block src copied onto dst in one layer's caches (copy-on-write of a shared block)."""

    # -- ops -------------------------------------------------------------------------------------
    def embed(self, table, ids: np.ndarray) -> Any:
        """table [V, D], ids [T] int32 on the host -> [T, D] float32."""

    def rmsnorm(self, x, w, eps: float) -> Any:
        """x [T, D], w [D] -> [T, D]."""

    def linear(self, x, w, bias=None, kv_only: np.ndarray | None = None) -> Any:
        """x [T, K], w [N, K] (+ bias [N]) -> [T, N]. kv_only [T] bool on the host (None: all False) marks
        rows that only fill the KV cache (no logits read from them): a backend may compute those at lower
        precision (the cpu backend's int8 activations); every other row at full float32 precision."""

    def rope(self, x, positions: np.ndarray, inv_freq: np.ndarray, style: str) -> None:
        """x [T, H, hd] rotated in place at positions [T]; style "normal" or "neox"."""

    def kv_write(self, k_cache, v_cache, k, v, slots: np.ndarray) -> None:
        """k, v [T, n_kv, hd] written into one layer's caches at slots [T] (block * block_size + offset)."""

    def attention(self, q, k_cache, v_cache, seqs: list[AttentionSeq], sliding_window: int | None = None):
        """q [T, H, hd] -> [T, H, hd]: causal per sequence over its cached context, GQA by head groups."""

    def swiglu(self, gate_up) -> Any:
        """gate_up [T, 2F] -> [T, F] = silu(gate) * up."""

    def add(self, x, y) -> None:
        """x += y in place."""

    def gather_rows(self, x, rows: np.ndarray) -> Any:
        """x[rows] for a host index array [N]: the rows whose logits are wanted."""

    def to_host(self, x) -> np.ndarray:
        """A host float32 NumPy array with x's contents (the logits, for the sampler)."""
