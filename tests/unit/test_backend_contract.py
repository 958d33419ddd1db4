"""Every backend implements the contract of backends/base.py: each op, with the Protocol's parameters."""

import inspect
import re

import pytest

from inference.model.backends.base import Backend
from inference.model.backends.cpu_backend import CpuBackend
from inference.model.backends.cuda_backend import CudaBackend
from inference.model.backends.numpy_backend import NumpyBackend

OPS = [
    name for name, member in vars(Backend).items() if inspect.isfunction(member) and not name.startswith("_")
]


def _params(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_the_contract_names_every_op_the_transformer_calls():
    from inference.model import transformer

    source = inspect.getsource(transformer)
    called = set(re.findall(r"ops\.(\w+)\(", source))
    assert called, "the transformer calls its backend as `ops`"
    assert called <= set(OPS), f"ops the contract lacks: {sorted(called - set(OPS))}"


@pytest.mark.parametrize("backend", [NumpyBackend, CpuBackend, CudaBackend], ids=lambda b: b.__name__)
@pytest.mark.parametrize("op", OPS)
def test_backend_implements_op_with_the_contract_parameters(backend, op):
    impl = getattr(backend, op, None)
    assert impl is not None, f"{backend.__name__} lacks {op}"
    assert _params(impl) == _params(getattr(Backend, op)), f"{backend.__name__}.{op}: parameters differ"


@pytest.mark.parametrize("backend", [NumpyBackend, CpuBackend, CudaBackend], ids=lambda b: b.__name__)
def test_backend_has_a_name(backend):
    assert backend.name in ("numpy", "cpu", "cuda")


def test_a_backend_with_other_parameters_is_caught():
    class Drifted(NumpyBackend):
        def rope(self, x, positions, freqs, style):  # renamed parameter
            pass

    assert _params(Drifted.rope) != _params(Backend.rope)
