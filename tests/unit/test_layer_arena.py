"""LayerArena: the NumPy backend's layers live in one buffer, in the order a forward reads them."""

from dataclasses import dataclass

import numpy as np

from inference.model.backends.numpy_backend import LayerArena


@dataclass(frozen=True)
class Layer:
    norm: np.ndarray
    w: np.ndarray
    bias: np.ndarray | None
    down: np.ndarray


def make_layer(rng, d: int, bias: bool) -> Layer:
    return Layer(
        norm=rng.standard_normal(d, dtype=np.float32),
        w=rng.standard_normal((3 * d, d), dtype=np.float32),
        bias=rng.standard_normal(3 * d, dtype=np.float32) if bias else None,
        down=rng.standard_normal((d, 2 * d), dtype=np.float32),
    )


def test_layers_are_copied_into_one_buffer_in_field_order_on_64_byte_boundaries():
    rng = np.random.default_rng(0)
    layers = [make_layer(rng, 7, bias=True), make_layer(rng, 7, bias=False)]  # odd sizes: padding needed
    sizes = [a.size for lw in layers for a in vars(lw).values() if a is not None]
    arena = LayerArena(sizes)
    placed = [arena.place(lambda lw=lw: lw) for lw in layers]
    addresses = []
    for before, after in zip(layers, placed, strict=True):
        assert after.bias is None if before.bias is None else after.bias is not before.bias
        for name, a in vars(after).items():
            if a is None:
                continue
            np.testing.assert_array_equal(a, getattr(before, name))
            assert a.base is arena.buffer.base and a.flags.c_contiguous, name
            assert a.ctypes.data % 64 == 0, name
            addresses.append(a.ctypes.data)
    assert addresses == sorted(addresses)  # norm, w, bias, down of layer 0, then layer 1
    assert addresses[-1] + placed[-1].down.nbytes <= arena.buffer.ctypes.data + arena.buffer.nbytes
