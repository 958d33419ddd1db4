"""CudaBackend == NumpyBackend. Without a GPU: the real backend code (launchers, kernels, launch
configurations) over the CPU emulator through tests/kernels/fake_driver.py, on tiny synthetic llama and
qwen2 models. With pycuda and a device (marker `gpu`): greedy tokens on the real models."""

import logging
import shutil
import sys
import types

import numpy as np
import pytest

from inference.engine.kv_cache import KVCache
from inference.errors import BackendError, OutOfMemoryError
from inference.gguf.loader import load_gguf
from inference.gguf.model_config import ModelConfig
from inference.model.backends import cuda_unavailable_reason, select_backend
from inference.model.backends.base import AttentionSeq
from inference.model.backends.cuda_backend import CUDA_DIR, NVCC_OPTIONS, CudaBackend
from inference.model.backends.cuda_memory import SplitWeight
from inference.model.backends.numpy_backend import NumpyBackend
from inference.model.transformer import ForwardBatch, LlamaModel
from inference.model.weights import load_weights
from tests.kernels.fake_driver import FakeDriver
from tests.unit.gguf_fixtures import tiny_vocab, write_tiny_model

BLOCK, NUM_BLOCKS = 4, 16
PROMPT = [17, 250, 3, 99, 42, 7, 180, 64, 5, 211, 33]  # 11 tokens: the prefill takes the tiled matmul
TABLE = np.array([9, 3, 14, 0, 7, 12, 5, 1], np.int32)  # paged: logical block i lives in TABLE[i]
TOL = 1e-3
LAYERS, HIDDEN, KV_ROWS, FFN, VOCAB = 2, 64, 2 * 16, 128, len(tiny_vocab()[0])  # the fixture's defaults


def f32(rows: int, cols: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)


# hidden 64, 2 layers, 4 q / 2 kv heads (head_dim 16), ffn 128, vocab 273 (tests/unit/gguf_fixtures.py)
SPECS = {
    # Q4_0 everywhere but an F32 embedding: q|k|v and gate|up fused into single launches
    "llama": dict(
        decode_split=256,
        suffix="q4_0",
        model=dict(weight_type="Q4_0", tied=False, tensors={"token_embd.weight": f32(VOCAB, HIDDEN, 1) * 4}),
    ),
    # neox rope, qkv bias; v and up in F32 unlike q, k and gate: separate launches into column ranges
    # of one output; a sliding window and 8-key decode splits (some of them empty)
    "qwen2": dict(
        decode_split=8,
        suffix="q8_0",
        model=dict(
            weight_type="Q8_0",
            metadata={"qwen2.attention.sliding_window": 6},
            tensors={f"blk.{i}.{name}.weight": f32(rows, HIDDEN, 10 * i + j) for i in range(LAYERS)
                     for j, (name, rows) in enumerate((("attn_v", KV_ROWS), ("ffn_up", FFN)))},
        ),
    ),
}  # fmt: skip


class Runner:
    """One model on one backend, with its own paged KV cache."""

    def __init__(self, path, backend):
        g = load_gguf(path)
        self.config = ModelConfig.from_gguf(g)
        self.backend = backend
        self.model = LlamaModel(self.config, load_weights(g, self.config, backend), backend)
        self.kv = KVCache(self.config, NUM_BLOCKS, BLOCK, backend=backend)

    def forward(self, *chunks) -> np.ndarray:
        """chunks: (ids, first position, block table) per sequence; logits [n_seqs, V] after each's last."""
        return self.model.forward(packed_batch(chunks), self.kv)


def packed_batch(chunks) -> ForwardBatch:
    ids, positions, slots, seqs, rows, start = [], [], [], [], [], 0
    for tokens, first, table in chunks:
        pos = np.arange(first, first + len(tokens), dtype=np.int32)
        ids.append(np.asarray(tokens, np.int32))
        positions.append(pos)
        slots.append(table[pos // BLOCK] * BLOCK + pos % BLOCK)
        end = first + len(tokens)
        seqs.append(AttentionSeq(start, len(tokens), end, table[: -(-end // BLOCK)]))
        start += len(tokens)
        rows.append(start - 1)
    cat = np.concatenate
    return ForwardBatch(
        cat(ids), cat(positions), cat(slots).astype(np.int32), seqs, np.asarray(rows, np.int64)
    )


def greedy(runner: Runner, n: int) -> tuple[list[int], list[np.ndarray]]:
    tokens, logits = [], [runner.forward((PROMPT, 0, TABLE))[0]]
    while True:
        tokens.append(int(np.argmax(logits[-1])))
        if len(tokens) == n:
            return tokens, logits
        logits.append(runner.forward(([tokens[-1]], len(PROMPT) + len(tokens) - 1, TABLE))[0])


@pytest.fixture(scope="module", params=list(SPECS))
def pair(request, tmp_path_factory):
    """(spec name, NumPy runner, CUDA-over-emulator runner, fake driver) on one tiny model."""
    spec = SPECS[request.param]
    path = write_tiny_model(
        tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf", request.param, **spec["model"]
    )
    fake = FakeDriver()
    cuda = CudaBackend(driver=fake, debug=True, decode_split=spec["decode_split"], activation_reserve=1 << 20)
    yield request.param, Runner(path, NumpyBackend()), Runner(path, cuda), fake
    cuda.close()


def test_greedy_tokens_and_logits_match_numpy(pair):
    name, ref, dev, fake = pair
    want_tokens, want_logits = greedy(ref, 16)
    got_tokens, got_logits = greedy(dev, 16)
    assert got_tokens == want_tokens
    assert len(set(want_tokens)) > 1, "a degenerate model proves little"
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got_logits, want_logits, strict=True))
    assert worst < TOL, f"{name}: logits differ by {worst:.2e}"
    np.testing.assert_allclose(got_logits[-1], want_logits[-1], rtol=0, atol=TOL)
    t = SPECS[name]["suffix"]
    every_kind = {
        f"matmul_{t}", f"matvec_{t}_t1", "attention_prefill_f32", "attention_decode_split_f32",
        "attention_decode_combine_f32", "rope_f32", "kv_write_f32", "swiglu_f32", "add_f32",
    }  # fmt: skip
    assert every_kind <= set(fake.launches)
    split = isinstance(dev.model.weights.layers[0].wqkv, SplitWeight)
    assert split == isinstance(dev.model.weights.layers[0].w_gate_up, SplitWeight) == (name == "qwen2")
    for c in fake.compiled:  # compiled as KERNELS.md says (the fake also insists on no_extern_c=True)
        assert (
            c["options"] == list(NVCC_OPTIONS)
            and c["include_dirs"] == [str(CUDA_DIR)]
            and c["arch"] == "sm_90"
        )


def test_batched_prefill_and_decode_match_numpy(pair):
    # sequence B (blocks 2, 8) is decoding while A (blocks 11, 4, 6) prefills: one launch covers both
    name, ref, dev, _ = pair
    table_a, table_b = np.array([11, 4, 6], np.int32), np.array([2, 8], np.int32)
    a, b = PROMPT[:7], PROMPT[4:9]
    steps = [
        [(b, 0, table_b)],  # B prefills (T = 5: matvec t8)
        [(a[:5], 0, table_a), ([61], 5, table_b)],  # A's first chunk + B's decode: the prefill kernel
        [(a[5:], 5, table_a), ([62], 6, table_b)],  # A's last chunk + B's decode
        [([63], 7, table_a), ([64], 7, table_b)],  # both decode: the split decode kernel, 2 sequences
    ]
    for i, chunks in enumerate(steps):
        got, want = dev.forward(*chunks), ref.forward(*chunks)
        assert got.shape == want.shape == (len(chunks), ref.config.vocab_size)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"{name} step {i}")
    for layer in range(ref.config.num_layers):  # the caches agree too, and copy_block copies a block
        ref.backend.copy_block(ref.kv.k[layer], ref.kv.v[layer], 8, 13)
        dev.backend.copy_block(dev.kv.k[layer], dev.kv.v[layer], 8, 13)
        for got, want in ((dev.kv.k[layer], ref.kv.k[layer]), (dev.kv.v[layer], ref.kv.v[layer])):
            np.testing.assert_allclose(got.get(), want, rtol=0, atol=TOL)
            np.testing.assert_array_equal(got.get()[13], got.get()[8])


def test_empty_logit_rows_launch_nothing(pair):
    # a prefill chunk that completes no sequence wants no logits: [0, V], as the NumPy backend gives
    _, ref, dev, _ = pair
    batch = packed_batch([(PROMPT[:3], 0, TABLE)])
    batch = ForwardBatch(batch.token_ids, batch.positions, batch.slots, batch.seqs, np.zeros(0, np.int64))
    assert dev.model.forward(batch, dev.kv).shape == ref.model.forward(batch, ref.kv).shape == (0, VOCAB)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny") / "llama.gguf", "llama", **SPECS["llama"]["model"]
    )


def test_kernel_failure_names_the_kernel(llama_path):
    backend = CudaBackend(driver=FakeDriver(fail_kernels={"rope_f32"}))
    runner = Runner(llama_path, backend)
    with pytest.raises(BackendError, match=r"CUDA kernel rope_f32 \(grid \(11, 1, 1\), block \(128, 1, 1\)"):
        runner.forward((PROMPT, 0, TABLE))
    backend.close()


def test_kv_cache_that_does_not_fit_fails_with_both_numbers(llama_path):
    backend = CudaBackend(driver=FakeDriver(total_memory=8 << 20), activation_reserve=4 << 20)
    g = load_gguf(llama_path)
    config = ModelConfig.from_gguf(g)
    load_weights(g, config, backend)
    with pytest.raises(OutOfMemoryError, match=r"KV cache does not fit.*= 128\.0 MiB \+ 4\.0 MiB .* only "
                                               r"[\d.,]+ MiB of 8\.0 MiB are free"):  # fmt: skip
        KVCache(config, 1 << 14, 16, backend=backend)  # 2 x 2 layers x 16384 blocks x 16 slots x 32 floats
    backend.close()


def test_weights_that_do_not_fit_fail_at_load(llama_path):
    backend = CudaBackend(driver=FakeDriver(total_memory=64 << 10))
    g = load_gguf(llama_path)
    with pytest.raises(
        OutOfMemoryError, match=r"out of GPU memory allocating tensor .*needed, .* free of 0\.1 MiB"
    ):
        load_weights(g, ModelConfig.from_gguf(g), backend)
    backend.close()


def test_launch_limits_are_checked():
    backend = CudaBackend(driver=FakeDriver())
    q = backend.to_device(np.zeros((1, 2, 256), np.float32))
    cache = backend.alloc_kv((1, 4, 2, 256), 2)
    with pytest.raises(BackendError, match="head_dim 256 > 128"):
        backend.attention(q, cache[0], cache[1], [AttentionSeq(0, 1, 1, np.zeros(1, np.int32))])
    with pytest.raises(BackendError, match=r"swiglu_f32: grid \(1, 65536, 1\) exceeds"):
        backend.swiglu(backend.empty((65536, 2)))
    with pytest.raises(BackendError, match="expected a DeviceArray, got ndarray"):
        backend.rmsnorm(np.zeros((1, 8), np.float32), backend.to_device(np.ones(8, np.float32)), 1e-5)
    backend.close()


def test_device_array_views_and_argmax_match_numpy():
    backend = CudaBackend(driver=FakeDriver())
    host = np.arange(6 * 40, dtype=np.float32).reshape(6, 40) % 37
    x = backend.to_device(host)
    np.testing.assert_array_equal(x[:, 8:24].get(), host[:, 8:24])  # strided rows
    np.testing.assert_array_equal(x[:, 8:24].reshape(6, 2, 8).get(), host[:, 8:24].reshape(6, 2, 8))
    np.testing.assert_array_equal(x[2:5].get(), host[2:5])
    np.testing.assert_array_equal(x[np.array([5, 0, 5])].get(), host[[5, 0, 5]])  # gather (embed kernel)
    np.testing.assert_array_equal(x.reshape(-1, 20)[3].get(), host.reshape(-1, 20)[3])
    np.testing.assert_array_equal(backend.argmax(x), np.argmax(host, axis=1))
    with pytest.raises(TypeError, match="call .get()"):
        np.asarray(x)
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_path", "qwen05_path"])
def test_real_model_over_emulator_matches_numpy(model, request):
    # real shapes and quant mixes (Q4_1; Q5_0 / Q8_0 / F32-bias q|k|v splits, Q4_K and Q6_K down)
    path = request.getfixturevalue(model)
    want_tokens, want_logits = greedy(Runner(path, NumpyBackend()), 2)
    got_tokens, got_logits = greedy(Runner(path, CudaBackend(driver=FakeDriver())), 2)
    assert got_tokens == want_tokens
    for got, want in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


# ---- can the backend be used (--backend auto)? CI has no pycuda and no GPU: a stand-in pycuda.driver ---
NO_NVCC = "nvcc is not on PATH; install the CUDA toolkit or add its bin/ directory to PATH"


@pytest.fixture
def host(monkeypatch):
    """host(devices, nvcc): pycuda reporting `devices` CUDA devices (None = pycuda not installed) and
    `nvcc` as what shutil.which("nvcc") finds."""

    def make(devices: int | None, nvcc: str | None) -> None:
        if devices is None:
            monkeypatch.setitem(sys.modules, "pycuda", None)  # makes `import pycuda.driver` raise
        else:
            drv = types.ModuleType("pycuda.driver")
            drv.init = lambda: None
            drv.Device = types.SimpleNamespace(count=lambda: devices)
            monkeypatch.setitem(sys.modules, "pycuda", types.ModuleType("pycuda"))
            monkeypatch.setattr(sys.modules["pycuda"], "driver", drv, raising=False)
            monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
        which = shutil.which
        monkeypatch.setattr(
            shutil, "which", lambda name, *a, **kw: nvcc if name == "nvcc" else which(name, *a, **kw)
        )

    return make


@pytest.mark.parametrize(
    ("devices", "nvcc", "reason"),
    [
        (1, "/usr/local/cuda/bin/nvcc", None),
        (1, None, NO_NVCC),
        (0, "/usr/local/cuda/bin/nvcc", "no CUDA device found"),
        (0, None, "no CUDA device found"),
        (None, "/usr/local/cuda/bin/nvcc", "pycuda is not installed"),
    ],
)
def test_cuda_unavailable_reason(host, devices, nvcc, reason):
    host(devices, nvcc)
    got = cuda_unavailable_reason()
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


def test_without_nvcc_auto_takes_cpu_and_cuda_fails_naming_nvcc(host, caplog):
    from inference.model.backends.cpu_backend import CpuBackend

    host(1, None)
    with caplog.at_level(logging.INFO, logger="gguf_serve.backend"):
        assert isinstance(select_backend("auto"), CpuBackend)  # the native kernels the install built
    assert f"backend: not cuda ({NO_NVCC})" in caplog.messages
    with pytest.raises(BackendError, match=f"^backend 'cuda' requested but {NO_NVCC}$"):
        select_backend("cuda")


# ---- on a GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("model", ["smollm2_path", "qwen05_path"])
def test_real_model_greedy_matches_numpy_on_gpu(model, request):
    if reason := cuda_unavailable_reason():
        pytest.skip(f"CUDA backend unavailable: {reason}")
    from inference.adapter import InferenceAdapter

    path = request.getfixturevalue(model)
    ref = InferenceAdapter.load(path, backend="numpy")
    dev = InferenceAdapter.load(path, backend="cuda")
    ids = ref.tokenizer.encode('def quicksort(items):\n    """Sort a list of numbers."""\n')
    assert dev.greedy(ids, 64) == ref.greedy(ids, 64)
    dev.backend.close()
