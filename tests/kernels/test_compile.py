"""Compile check: every cuda/*.cu through nvcc/ptxas for sm_80/86/89/90 with -warn-spills -Werror; no spill,
no stack frame, registers within each kernel's declared budget. Prints the resource table (pytest -s)."""

from pathlib import Path

import pytest

from tests.kernels import ptxas

pytestmark = pytest.mark.skipif(ptxas.nvcc_path() is None, reason="nvcc is not on the PATH")


def test_every_kernel_compiles_within_budget():
    resources, failures = ptxas.check_all()
    print("\n" + ptxas.table(resources))
    assert resources, "ptxas reported no kernels"
    assert not failures, "\n".join(failures)
    files = {r.file for r in resources}
    assert files == {p.name for p in ptxas.CUDA_DIR.glob("*.cu")}


def test_every_kernel_file_declares_its_contract():
    for cu in sorted(ptxas.CUDA_DIR.glob("*.cu")):
        text = cu.read_text()
        assert text.startswith('#include "common.cuh"'), f'{cu.name} must start with #include "common.cuh"'
        for word in ("grid", "block", "shared memory", "dtypes", "ptxas-budget"):
            assert word in text.split("extern")[0], f"{cu.name}: header comment lacks '{word}'"
        assert "extern __shared__" not in text, f"{cu.name}: dynamic shared memory only via CUDA_DYN_SMEM"


def test_spills_stack_frames_and_budgets_are_reported():
    broken = Path(__file__).parent / "broken" / "spills.cu"
    resources, failures = ptxas.check_all([broken], archs=("sm_80",))
    text = "\n".join(failures)
    assert "spill" in text.lower() and "stack frame" in text, text
    assert "> budget 16" in text, text
