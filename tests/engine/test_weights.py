"""The NumPy backend's weights as a loaded model holds them."""

import numpy as np


def test_a_loaded_model_keeps_every_layer_array_in_one_buffer(smol):
    layers = smol.weights.layers
    bases = {id(a.base) for lw in layers for a in vars(lw).values() if isinstance(a, np.ndarray)}
    assert len(bases) == 1
    first, last = layers[0].attn_norm, layers[-1].w_down
    assert first.ctypes.data < layers[0].wqkv.ctypes.data < layers[1].attn_norm.ctypes.data < last.ctypes.data
