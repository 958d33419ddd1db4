"""gguf_loader: real files against gguf.GGUFReader, a table of broken files, and a seeded mutation fuzz."""

import collections
import os
import random
import re
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from inference.errors import GGUFError
from inference.gguf import loader as gguf_loader
from inference.gguf.loader import (
    SUPPORTED_TYPES,
    TensorInfo,
    dequantize,
    load_gguf,
    open_reader,
    read_metadata,
)
from inference.gguf.model_config import ModelConfig
from inference.text.tokenizer import Tokenizer
from tests.unit.gguf_fixtures import Typed, tiny_vocab, write_tiny_model

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


# ---- real files ----


def type_counts(g) -> dict[str, int]:
    return dict(collections.Counter(t.ggml_type.name for t in g.tensors.values()))


def test_smollm2_loads(smollm2_path):
    g = load_gguf(smollm2_path)
    assert (g.version, g.architecture, len(g.tensors)) == (3, "llama", 272)
    assert type_counts(g) == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert g.tensors["token_embd.weight"].shape == (49152, 576)
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(g.metadata["tokenizer.chat_template"]) == 368
    assert g.metadata["tokenizer.ggml.bos_token_id"] == 1


def test_qwen05_loads(qwen05_path):
    g = load_gguf(qwen05_path)
    assert (g.version, g.architecture, len(g.tensors)) == (3, "qwen2", 291)
    assert type_counts(g) == {"Q5_0": 133, "Q8_0": 13, "Q4_K": 12, "Q6_K": 12, "F32": 121}
    assert g.tensors["blk.0.attn_q.bias"].shape == (896,)
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 151936
    assert len(g.metadata["tokenizer.chat_template"]) == 2507
    assert (g.metadata["tokenizer.ggml.bos_token_id"], g.metadata["tokenizer.ggml.eos_token_id"]) == (
        151643,
        151645,
    )


def test_read_metadata_is_load_gguf_metadata(smollm2_path):
    assert read_metadata(smollm2_path) == load_gguf(smollm2_path).metadata


def test_every_llama_cpp_vocab_file_loads(llama_cpp_models):
    paths = sorted(llama_cpp_models.glob("ggml-vocab-*.gguf"))
    assert len(paths) >= 19
    for path in paths:
        g = load_gguf(path)
        tokens = g.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) > 1000 and all(isinstance(t, str) for t in tokens), path.name


def file_offset(view: np.ndarray) -> int:
    """Byte offset of a view into the file mapping it was made from (np.memmap or mmap.mmap)."""
    base = view
    while isinstance(base, np.ndarray) and base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    start = base.ctypes.data if isinstance(base, np.memmap) else np.frombuffer(base, np.uint8, 1).ctypes.data
    return view.ctypes.data - start


def assert_matches_reader(path: Path) -> None:
    """GGUFReader's metadata contents(), and every tensor with its name, dtype, shape and file offset."""
    g, reader = load_gguf(path), gguf.GGUFReader(path)
    assert g.metadata == {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(g.tensors) == [t.name for t in reader.tensors]
    for ref in reader.tensors:
        t = g.tensors[ref.name]
        assert (t.ggml_type, t.data.dtype, t.data.shape) == (ref.tensor_type, ref.data.dtype, ref.data.shape)
        assert t.shape == tuple(int(d) for d in reversed(ref.shape)) and t.n_elements == ref.n_elements
        assert (file_offset(t.data), t.nbytes) == (ref.data_offset, ref.n_bytes), ref.name


@pytest.mark.slow
def test_real_models_match_gguf_reader(smollm2_path, qwen05_path):
    assert_matches_reader(smollm2_path)
    assert_matches_reader(qwen05_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "gpt-2", "bert-bge", "deepseek-coder"])
def test_llama_cpp_vocab_files_match_gguf_reader(llama_cpp_models, name):
    assert_matches_reader(llama_cpp_models / f"ggml-vocab-{name}.gguf")  # GGUFReader: ~1 s per MB here


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "mistral"])
@pytest.mark.parametrize("weight_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_1"])
def test_tiny_models_match_gguf_reader(tmp_path, arch, weight_type):
    path = write_tiny_model(tmp_path / "m.gguf", arch, weight_type=weight_type)
    assert_matches_reader(path)
    assert open_reader(path).tensors[0].name == "token_embd.weight"


def test_tiny_model_vocabulary_makes_a_working_tokenizer(tmp_path):
    tokenizer = Tokenizer.from_metadata(read_metadata(write_tiny_model(tmp_path / "m.gguf", "qwen2")))
    tokens = tiny_vocab()[0]
    assert tokenizer.encode(" the cat") == [tokens.index("Ġthe"), tokens.index("Ġ"), tokens.index("c"), 265]
    assert tokenizer.decode(tokenizer.encode("héllo wörld ✓")) == "héllo wörld ✓"
    assert tokenizer.encode("<|im_start|>", allow_special=True) == [tokens.index("<|im_start|>")]


# ---- dequantize ----


def q8_0_reference(raw: np.ndarray) -> np.ndarray:
    """Q8_0 decoded independently: per 34-byte block, an f16 scale times 32 int8 values."""
    blocks = raw.reshape(-1, 34)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [blocks, 1]
    return (scale * blocks[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(raw.shape[0], -1)


def write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_dequantize_q8_0_against_numpy_twin(smollm2_path):
    t = next(t for t in load_gguf(smollm2_path).tensors.values() if t.ggml_type == Q.Q8_0)
    t = TensorInfo(t.name, t.ggml_type, (512, t.shape[1]), t.data[:512])  # the first 512 rows
    out = dequantize(t)
    assert out.dtype == np.float32 and out.shape == t.shape
    np.testing.assert_array_equal(out, q8_0_reference(t.data))


@pytest.mark.parametrize("weight_type", ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_dequantize_round_trips_what_was_written(tmp_path, weight_type):
    weight = np.random.default_rng(1).standard_normal((48, 64)).astype(np.float32)
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("w", gguf.quants.quantize(weight, Q[weight_type]), raw_dtype=Q[weight_type])
    write(writer)
    t = load_gguf(path).tensors["w"]
    expected = gguf.quants.dequantize(gguf.quants.quantize(weight, Q[weight_type]), Q[weight_type])
    assert t.shape == (48, 64) and t.n_elements == 48 * 64
    np.testing.assert_array_equal(dequantize(t), expected)
    tolerance = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 2e-2}.get(weight_type, 0.25)
    assert np.abs(dequantize(t) - weight).max() < tolerance * np.abs(weight).max()


def test_dequantize_every_real_type(smollm2_path, qwen05_path):
    seen = set()
    for path in (smollm2_path, qwen05_path):
        for t in load_gguf(path).tensors.values():
            if t.ggml_type not in seen:
                seen.add(t.ggml_type)
                head = TensorInfo(
                    t.name, t.ggml_type, (min(t.shape[0], 8), *t.shape[1:]), t.data[:8]
                )  # 8 rows
                out = dequantize(head)
                assert out.shape == head.shape and out.dtype == np.float32 and np.isfinite(out).all(), t.name
                assert 0 < np.abs(out).max() < 1e3, t.name
    assert {q.name for q in seen} == {"F32", "Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q6_K"}


def test_dequantize_rejects_an_unsupported_type():
    t = TensorInfo("blk.0.attn_q.weight", Q.IQ2_XXS, (4, 256), np.zeros((4, 66), np.uint8))
    with pytest.raises(GGUFError, match="type IQ2_XXS is not supported; supported: F32, F16, BF16, Q4_0"):
        dequantize(t)


def test_supported_types_are_the_thirteen_listed():
    assert [q.name for q in SUPPORTED_TYPES] == [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    ]  # fmt: skip


def test_token_strings_that_are_not_utf8_round_trip(tmp_path):
    tokens = tiny_vocab()[0]
    tokens[100] = b"\xff\xfe\x80"  # GGUFWriter writes bytes as they are
    g = load_gguf(write_tiny_model(tmp_path / "m.gguf", metadata={"tokenizer.ggml.tokens": tokens}))
    assert g.metadata["tokenizer.ggml.tokens"][100].encode("utf-8", "surrogateescape") == b"\xff\xfe\x80"
    assert g.metadata["tokenizer.ggml.tokens"][:100] == tokens[:100]


def test_architecture_missing_is_a_gguf_error(tmp_path):
    g = load_gguf(write_tiny_model(tmp_path / "m.gguf"))
    g.metadata.pop("general.architecture")
    with pytest.raises(GGUFError, match="general.architecture is missing"):
        _ = g.architecture


def test_missing_file_is_a_gguf_error(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        load_gguf(tmp_path / "absent.gguf")
    with pytest.raises(GGUFError, match="cannot open: not a regular file"):
        read_metadata(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(GGUFError, match="cannot open: not a regular file"):
        load_gguf(tmp_path / "fifo")  # and does not block


# ---- broken files: each a byte edit of a valid tiny model ----


class Layout:
    """Byte offsets of the parts of a valid file, found with gguf.GGUFReader."""

    def __init__(self, path: Path):
        self.reader = gguf.GGUFReader(path)
        self.size = path.stat().st_size

    def at(self, part: np.ndarray) -> int:
        return part.ctypes.data - self.reader.data.ctypes.data

    def kv(self, key: str, part: int) -> int:
        """Offset of a key/value's part: 0 key length, 1 key, 2 type, 3 value (string length, item type)."""
        return self.at(self.reader.fields[key].parts[part])

    def tensor(self, name: str, part: str) -> int:
        parts = next(t.field.parts for t in self.reader.tensors if t.name == name)
        index = ["name_len", "name", "n_dims", "dims", "type", "offset"].index(part)
        return self.at(parts[index])

    def tensor_offset(self, name: str) -> int:
        return int(next(t.field.parts[5][0] for t in self.reader.tensors if t.name == name))


Edit = Callable[[bytearray, Layout], bytes | bytearray]


def kv(key: str, part: int, plus: int = 0) -> Callable[[Layout], int]:
    return lambda lay: lay.kv(key, part) + plus


def ti(name: str, part: str, plus: int = 0) -> Callable[[Layout], int]:
    return lambda lay: lay.tensor(name, part) + plus


def offset_of(name: str, plus: int = 0) -> Callable[[Layout], int]:
    return lambda lay: lay.tensor_offset(name) + plus


def put(fmt: str, at: Callable[[Layout], int], value: int | Callable[[Layout], int]) -> Edit:
    def edit(buf: bytearray, lay: Layout) -> bytearray:
        struct.pack_into(
            fmt if fmt[0] in "<>" else "<" + fmt, buf, at(lay), value(lay) if callable(value) else value
        )
        return buf

    return edit


def replace(old: bytes, new: bytes) -> Edit:
    def edit(buf: bytearray, lay: Layout) -> bytearray:
        assert buf.count(old) == 1 and len(old) == len(new)
        return buf.replace(old, new)

    return edit


def both(first: Edit, second: Edit) -> Edit:
    return lambda buf, lay: second(first(buf, lay), lay)


def cut(at: Callable[[Layout], int]) -> Edit:
    return lambda buf, lay: buf[: at(lay)]


EMBD, K, DOWN, NORM = (
    "token_embd.weight",
    "blk.0.attn_k.weight",
    "blk.1.ffn_down.weight",
    "output_norm.weight",
)


def case(name: str, edit: Edit, message: str):
    return pytest.param(edit, message, id=name)


BROKEN = [
    case("empty", cut(lambda lay: 0), "truncated: 0 bytes, a GGUF header needs 24"),
    case("truncated-header", cut(lambda lay: 20), "truncated: 20 bytes"),
    case("truncated-early", cut(kv("general.name", 1, 3)), "metadata key/value count = 21 cannot fit"),
    case(
        "truncated-key",
        cut(kv("tokenizer.chat_template", 1, 3)),
        "truncated: metadata key #20 of declared length",
    ),
    case(
        "truncated-vocab",
        cut(kv("tokenizer.ggml.tokens", 5 + 2 * 272 + 1)),
        "truncated: metadata tokenizer.ggml.tokens[272] of declared length",
    ),
    case(
        "truncated-tensor-infos", cut(ti(K, "dims", 4)), "tensor count = 20 cannot fit in the 205 bytes left"
    ),
    case(
        "truncated-tensor-info",
        cut(ti(NORM, "dims", 4)),
        f"truncated: tensor {NORM} dimensions needs 8 bytes",
    ),
    case("truncated-data", cut(lambda lay: lay.size - 100), "extends beyond the end of the file"),
    case("wrong-magic", replace(b"GGUF\x03", b"GGUX\x03"), "GGUF magic invalid: b'GGUX'"),
    case("version-99", put("I", lambda lay: 4, 99), "GGUF version 99 not supported (supported: 2, 3)"),
    case("version-1", put("I", lambda lay: 4, 1), "GGUF version 1 not supported"),
    case("big-endian", put(">I", lambda lay: 4, 3), "big-endian GGUF files are not supported"),
    case("huge-tensor-count", put("Q", lambda lay: 8, 1 << 50), "tensor count = 1125899906842624 cannot fit"),
    case(
        "huge-kv-count",
        put("Q", lambda lay: 16, 1 << 62),
        "metadata key/value count = 4611686018427387904 cannot fit",
    ),
    case(
        "key-length-2^62",
        put("Q", lambda lay: 24, 1 << 62),
        "metadata key #0 is 4611686018427387904 bytes long, the limit is 65535",
    ),
    case(
        "string-length-2^62",
        put("Q", kv("general.name", 3), 1 << 62),
        "metadata general.name is 4611686018427387904 bytes long, the limit is 16777216",
    ),
    case(
        "string-past-eof",
        put("Q", kv("general.name", 3), 1 << 20),
        "truncated: metadata general.name of declared length 1048576 needs 1048576 bytes",
    ),
    case(
        "huge-array-count",
        put("Q", kv("tokenizer.ggml.tokens", 4), 1 << 60),
        "metadata tokenizer.ggml.tokens array length = 1152921504606846976 cannot fit",
    ),
    case(
        "unknown-value-type",
        put("I", kv("general.name", 2), 13),
        "metadata general.name: unknown value type 13",
    ),
    case(
        "unknown-array-item-type",
        put("I", kv("tokenizer.ggml.merges", 3), 99),
        "metadata tokenizer.ggml.merges array items: unknown value type 99",
    ),
    case(
        "wrong-metadata-type",
        put("I", kv("llama.block_count", 2), V.FLOAT32),
        "metadata llama.block_count must be an integer, got float",
    ),
    case(
        "vocab-lengths-differ",
        both(
            put("I", kv("tokenizer.ggml.scores", 3), V.UINT16),
            put("Q", kv("tokenizer.ggml.scores", 4), 2 * 273),
        ),
        "tokenizer.ggml.tokens has 273, tokenizer.ggml.scores has 546",
    ),
    case(
        "bool-byte-2",
        put("B", kv("tokenizer.ggml.add_bos_token", 3), 2),
        "tokenizer.ggml.add_bos_token: bool byte 2 is neither 0 nor 1",
    ),
    case(
        "duplicate-key",
        replace(b"tokenizer.ggml.eos_token_id", b"tokenizer.ggml.bos_token_id"),
        "metadata key 'tokenizer.ggml.bos_token_id' appears twice",
    ),
    case("key-not-ascii", replace(b"general.name", b"general.nam\xff"), "metadata key #1 is not ASCII"),
    case(
        "tensor-beyond-eof",
        put("Q", ti(DOWN, "offset"), lambda lay: lay.size // 32 * 32),
        f"tensor {DOWN}: data [",
    ),
    case("overlapping-tensors", put("Q", ti(K, "offset"), offset_of("blk.0.attn_q.weight")), "overlap"),
    case("misaligned-offset", put("Q", ti(K, "offset"), offset_of(K, 8)), f"tensor {K}: offset"),
    case(
        "dim-2^60",
        put("Q", ti(EMBD, "dims", 8), 1 << 60),
        f"tensor {EMBD}: shape (1152921504606846976, 64) has",
    ),
    case("zero-dim", put("Q", ti(EMBD, "dims"), 0), f"tensor {EMBD}: shape (273, 0) has a zero dimension"),
    case("five-dims", put("I", ti(EMBD, "n_dims"), 5), f"tensor {EMBD}: dimension count 5, must be 1..4"),
    case("unknown-type-id", put("I", ti(K, "type"), 99), f"tensor {K}: unknown type id 99; supported: F32"),
    case(
        "unsupported-type",
        put("I", ti(K, "type"), Q.IQ2_XXS),
        f"tensor {K}: type IQ2_XXS is not supported; supported: F32, F16",
    ),
    case(
        "row-not-whole-blocks",
        put("Q", ti(K, "dims"), 48),
        f"tensor {K}: row length 48 is not a multiple of Q8_0's block 32",
    ),
    case(
        "duplicate-tensor",
        replace(b"blk.0.attn_k.weight", b"blk.0.attn_q.weight"),
        "tensor blk.0.attn_q.weight appears twice",
    ),
    case("tensor-name-not-utf8", replace(K.encode(), b"blk.0.attn_k.weigh\xff"), "name is not valid UTF-8"),
    case("empty-tensor-name", put("Q", ti(K, "name_len"), 0), "has an empty name"),
    case(
        "tensor-name-too-long",
        put("Q", ti(K, "name_len"), 64),
        "tensor #3 name is 64 bytes long, the limit is 63",
    ),
]

BROKEN_MODELS = [  # structurally fine, wrong for the architecture
    case(
        "missing-tensor",
        replace(b"blk.1.ffn_down.weight", b"blk.1.ffn_dowX.weight"),
        f"tensor {DOWN} is missing",
    ),
    case("wrong-shape", put("Q", ti(K, "dims", 8), 16), f"tensor {K} has shape (16, 64), expected (32, 64)"),
]


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> tuple[bytes, Layout]:
    path = write_tiny_model(tmp_path_factory.mktemp("valid") / "tiny.gguf", "llama", weight_type="Q8_0")
    ModelConfig.from_gguf(load_gguf(path))
    return path.read_bytes(), Layout(path)


def broken_copy(tmp_path: Path, valid_file, edit: Edit) -> Path:
    data, layout = valid_file
    path = tmp_path / "broken.gguf"
    path.write_bytes(bytes(edit(bytearray(data), layout)))
    return path


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("edit", "message"), BROKEN)
def test_broken_file_is_a_gguf_error(tmp_path, valid_file, edit, message):
    path = broken_copy(tmp_path, valid_file, edit)
    with pytest.raises(GGUFError, match=re.escape(message)) as info:
        load_gguf(path)
    assert str(path) in str(info.value)
    try:  # reads only up to the tensor infos: the same error, or none
        read_metadata(path)
    except GGUFError as exc:
        assert str(exc) == str(info.value)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("edit", "message"), BROKEN_MODELS)
def test_broken_model_is_a_gguf_error(tmp_path, valid_file, edit, message):
    g = load_gguf(broken_copy(tmp_path, valid_file, edit))
    with pytest.raises(GGUFError, match=re.escape(message)):
        ModelConfig.from_gguf(g)


def test_tensor_past_the_last_block_is_a_gguf_error(tmp_path):
    extra = {"blk.2.attn_norm.weight": np.ones(64, np.float32)}
    g = load_gguf(write_tiny_model(tmp_path / "m.gguf", tensors=extra))
    with pytest.raises(GGUFError, match=re.escape("tensor blk.2.attn_norm.weight lies past the last block")):
        ModelConfig.from_gguf(g)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (
            {"general.alignment": Typed(48, V.UINT32)},
            "general.alignment must be a power of two uint32, got int 48",
        ),
        ({"general.alignment": Typed(32, V.UINT64)}, "general.alignment must be UINT32, got value type 10"),
        (
            {"tokenizer.ggml.scores": [0.0] * 10},
            "tokenizer.ggml.tokens has 273, tokenizer.ggml.scores has 10",
        ),
        (
            {"tokenizer.ggml.token_type": [1.5] * 273},
            "tokenizer.ggml.token_type must be an array of integers",
        ),
        ({"tokenizer.ggml.tokens": [1] * 273}, "tokenizer.ggml.tokens must be an array of strings"),
        ({"llama.context_length": "8192"}, "llama.context_length must be an integer, got str '8192'"),
        ({"llama.rope.freq_base": True}, "llama.rope.freq_base must be a number, got bool True"),
        ({"tokenizer.ggml.bos_token_id": -1.0}, "tokenizer.ggml.bos_token_id must be an integer"),
    ],
    ids=[
        "alignment-48",
        "alignment-u64",
        "vocab-lengths",
        "token-type-floats",
        "tokens-ints",
        "ctx-str",
        "rope-bool",
        "bos-float",
    ],  # fmt: skip
)
def test_wrong_metadata_is_a_gguf_error(tmp_path, metadata, message):
    path = write_tiny_model(tmp_path / "m.gguf", metadata=metadata)
    with pytest.raises(GGUFError, match=re.escape(message)):
        read_metadata(path)


def test_metadata_arrays_have_a_total_item_budget(tmp_path, monkeypatch):
    path = write_tiny_model(tmp_path / "m.gguf")  # 273 tokens, 273 types, 273 scores, 14 merges
    monkeypatch.setattr(gguf_loader, "MAX_ARRAY_ITEMS", 600)
    with pytest.raises(
        GGUFError, match="tokenizer.ggml.scores array length = 273 takes the metadata arrays past 600"
    ):
        read_metadata(path)


def test_custom_alignment_is_honoured(tmp_path):
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    for i in range(3):
        writer.add_tensor(f"t{i}", np.full((3, 5), i, np.float32))
    write(writer)
    g = load_gguf(path)
    assert all(file_offset(t.data) % 64 == 0 for t in g.tensors.values())
    assert [float(t.data[0, 0]) for t in g.tensors.values()] == [0.0, 1.0, 2.0]
    data = bytearray(path.read_bytes())
    layout = Layout(path)
    struct.pack_into("<Q", data, layout.tensor("t1", "offset"), layout.tensor_offset("t1") + 32)
    path.write_bytes(data)
    with pytest.raises(GGUFError, match="tensor t1: offset 96 is not a multiple of the alignment 64"):
        load_gguf(path)


# ---- mutation fuzz ----

EXTREMES_64 = [0, 1, 2, 7, 255, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 50, 1 << 60, 1 << 62]
EXTREMES_64 += [(1 << 63) - 1, 1 << 63, (1 << 64) - 1]
EXTREMES_32 = [0, 1, 2, 5, 8, 9, 13, 16, 99, 255, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]


def mutate(data: bytes, header_end: int, rng: random.Random, i: int) -> bytes:
    """One corrupted copy: byte flips, extreme 4/8-byte integers in the header, or a truncation (by i % 4)."""
    buf = bytearray(data)
    kind = i % 4
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(header_end)] = rng.randrange(256)
    elif kind in (1, 2):
        fmt, values = ("<Q", EXTREMES_64) if kind == 1 else ("<I", EXTREMES_32)
        value = rng.choice(values + [len(data), len(data) - 1, rng.randrange(1 << 8 * struct.calcsize(fmt))])
        at = rng.randrange(header_end - 8)
        struct.pack_into(fmt, buf, at - at % 4 if rng.random() < 0.5 else at, value)
    else:
        buf = buf[: rng.randrange(header_end if rng.random() < 0.5 else len(buf))]
    if rng.random() < 0.2:  # and sometimes a flip anywhere, tensor data included
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def probe(path: Path) -> tuple[str, int]:
    """(outcome, peak bytes allocated) of load_gguf + ModelConfig.from_gguf; tracemalloc sees NumPy too."""
    tracemalloc.start()
    g = None
    try:
        g = load_gguf(path)
        ModelConfig.from_gguf(g)
        outcome = "valid model"
    except GGUFError as exc:
        outcome = ("model: " if g is not None else "") + normalise(str(exc).removeprefix(f"{path}: "))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if g is not None:  # whatever loads can be used: every tensor dequantizes, GGUFReader agrees
        for t in g.tensors.values():
            dequantize(t)
        open_reader(path)
    return outcome, peak


def normalise(message: str) -> str:
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    message = re.sub(r"\b(blk\.\d+\.)?[a-z_]+\.(weight|bias)\b", "<tensor>", message)
    return re.sub(r"\d+", "N", message)[:90]


def test_memory_probe_sees_numpy_and_list_allocations():
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        waste = np.ones(1 << 18), list(range(1 << 16))  # what trusting a declared count would cost
        assert tracemalloc.get_traced_memory()[1] - before >= waste[0].nbytes + 8 * len(waste[1])
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mutation_fuzz_raises_only_gguf_errors(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", "llama", weight_type="Q4_0")
    data, header_end = path.read_bytes(), gguf.GGUFReader(path).data_offset
    rng, outcomes, worst = random.Random(20240601), collections.Counter(), (0, -1)
    started = time.perf_counter()
    for i in range(2400):
        copy = tmp_path / f"m{i}.gguf"
        copy.write_bytes(mutate(data, header_end, rng, i))
        outcome, peak = probe(copy)
        copy.unlink()
        outcomes[outcome] += 1
        worst = max(worst, (peak, i))
        assert peak < 2 * len(data), f"mutation {i}: {peak} bytes allocated for a {len(data)}-byte file"
    elapsed = time.perf_counter() - started
    print(f"\n{sum(outcomes.values())} mutations of {len(data)} bytes in {elapsed:.1f} s")
    print(f"largest allocation: {worst[0]} bytes (mutation {worst[1]})")
    for outcome, n in outcomes.most_common():
        print(f"{n:6d}  {outcome}")
    assert len(outcomes) >= 20, "the fuzz should reach many different checks"
