"""The harness catches broken kernels (tests/kernels/broken/): missing or divergent barriers, early returns,
bad shuffles, out-of-bounds writes, a flipped scale bit, and arguments of the wrong type."""

from pathlib import Path

import numpy as np
import pytest

from tests.kernels import emulator
from tests.kernels.conftest import make_runner
from tests.kernels.quantdata import synthetic
from tests.kernels.test_quant import check_dequant

BROKEN = Path(__file__).parent / "broken"


@pytest.fixture(params=["emu-default", "emu-random"])
def emus(request):
    return make_runner(request.param)


def test_missing_barrier_is_caught(emus, rng):
    x = rng.standard_normal(512, dtype=np.float32)
    y = np.empty_like(x)
    emus.fn(BROKEN / "missing_sync.cu", "reverse_f32")(
        emus.In(x), emus.Out(y), block=(256, 1, 1), grid=(2, 1)
    )
    want = x.reshape(2, 256)[:, ::-1].reshape(-1)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(y, want)  # reads of never-written shared memory are NaN


def test_missing_barrier_in_a_loop_is_caught(emus, rng):
    x = rng.standard_normal((3, 256), dtype=np.float32)
    y = np.empty((3, 64), np.float32)
    emus.fn(BROKEN / "missing_sync_loop.cu", "rowsum_f32")(
        emus.In(x), emus.Out(y), np.int32(256), block=(64, 1, 1), grid=(3, 1)
    )
    want = np.repeat(x.sum(axis=1, keepdims=True), 64, axis=1)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(y, want, rtol=1e-5)


def test_early_return_before_barrier_is_a_launch_error(emus):
    x = np.ones(256, np.float32)
    with pytest.raises(
        emulator.EmuLaunchError, match="returned while .* waits at __syncthreads at early_return.cu:10"
    ):
        emus.fn(BROKEN / "early_return.cu", "scale_f32")(emus.InOut(x), np.int32(100), block=(256, 1, 1))


def test_divergent_barriers_are_a_launch_error(emus):
    x = np.ones(64, np.float32)
    with pytest.raises(emulator.EmuLaunchError, match="divergent __syncthreads"):
        emus.fn(BROKEN / "divergent_barrier.cu", "divergent_f32")(emus.InOut(x), block=(64, 1, 1))


def test_shuffle_outside_the_mask_is_a_launch_error(emus):
    x = np.ones(32, np.float32)
    with pytest.raises(emulator.EmuLaunchError, match="reads lane 31 outside the mask"):
        emus.fn(BROKEN / "bad_shuffle.cu", "shuffle_f32")(emus.InOut(x), block=(32, 1, 1))


def test_shuffle_deadlock_is_a_launch_error(emus):
    x = np.ones(32, np.float32)
    with pytest.raises(emulator.EmuLaunchError, match="deadlocks .* lanes 0x00000001 never arrive"):
        emus.fn(BROKEN / "deadlock_shuffle.cu", "sum_f32")(emus.InOut(x), block=(32, 1, 1))


def test_out_of_bounds_write_is_caught(emus):
    y = np.zeros(100, np.float32)
    with pytest.raises(emulator.EmuLaunchError, match="out-of-bounds write around argument 0"):
        emus.fn(BROKEN / "out_of_bounds.cu", "fill_f32")(emus.Out(y), np.int32(100), block=(64, 1, 1))


def test_flipped_scale_bit_fails_the_dequant_check(emus, rng):
    from gguf import GGMLQuantizationType as QT

    raw = synthetic(QT.Q8_0, 8, 256, rng)
    check_dequant(emus, raw, QT.Q8_0, 256)  # the real kernel passes ...
    with pytest.raises(AssertionError):  # ... the same check on the broken one fails
        check_dequant(emus, raw, QT.Q8_0, 256, cu=BROKEN / "q8_0_flipped_scale.cu")


@pytest.mark.parametrize(
    "scalar, message",
    [
        (np.int64(5), "4-byte 'i' scalar, got int64"),
        (5, "sized NumPy scalar"),
        (np.float32(5), "got float32"),
    ],
)
def test_scalar_arguments_must_match_the_kernel_type(emu, scalar, message):
    x = np.zeros(4, np.float32)
    with pytest.raises(emulator.EmuLaunchError, match=message):
        emu.fn("add.cu", "add_f32")(emu.InOut(x), emu.In(x), scalar, block=(256, 1, 1))


def test_out_buffer_on_a_const_pointer_is_rejected(emu):
    x = np.zeros(4, np.float32)
    with pytest.raises(emulator.EmuLaunchError, match="Out passed to a const pointer"):
        emu.fn("add.cu", "add_f32")(emu.InOut(x), emu.Out(x), np.int32(4), block=(256, 1, 1))


def test_launch_limits(emu):
    x = np.zeros(4, np.float32)
    add = emu.fn("add.cu", "add_f32")
    with pytest.raises(emulator.EmuLaunchError, match="at most 1024 threads"):
        add(emu.InOut(x), emu.In(x), np.int32(4), block=(2048, 1, 1))
    with pytest.raises(emulator.EmuLaunchError, match="exceeds the 48 KiB"):
        add(emu.InOut(x), emu.In(x), np.int32(4), block=(32, 1, 1), shared=64 * 1024)


def test_random_order_changes_the_schedule_not_the_result(rng):
    """Same kernel, three seeds of random order: identical results (block_sum is order-independent here)."""
    x = rng.standard_normal((4, 896), dtype=np.float32)
    w = np.ones(896, np.float32)
    outs = []
    for seed in (1, 2, 3):
        y = np.empty_like(x)
        mod = emulator.EmuModule(emulator.CUDA_DIR / "rmsnorm.cu", order="random", seed=seed)
        mod.get_function("rmsnorm_f32")(
            emulator.In(x), emulator.In(w), emulator.Out(y), np.int32(896), np.float32(1e-6),
            block=(256, 1, 1), grid=(4, 1),
        )  # fmt: skip
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
