"""GGUF files: the header parsed and bounds-checked over an mmap, then tensors as zero-copy NumPy views."""

import codecs
import math
import mmap
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import GGUFError

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
SUPPORTED_TYPES = (
    Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
)  # fmt: skip
VERSIONS = (2, 3)  # v1 used 32-bit lengths; v2 and v3 are the same layout in little-endian files
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 63  # bytes, GGML_MAX_NAME - 1: llama.cpp refuses longer tensor names
MAX_KEY = 65535  # bytes, the GGUF spec's limit on a metadata key
MAX_STRING = 1 << 24  # bytes in one metadata string (chat templates are ~10 KB)
MAX_ARRAY_ITEMS = 1 << 23  # in all metadata arrays together (Qwen2.5: 455k), so Python objects stay < ~1 GB
MAX_ELEMENTS = 1 << 40  # per tensor: far above any real model, far below what would overflow an offset
MAX_ARRAY_DEPTH = 3  # arrays of arrays are legal GGUF; real files use depth 1
DEFAULT_ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT

_SCALARS = {  # value type -> struct format (little-endian); BOOL is read as a byte and checked
    V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
    V.FLOAT32: "f", V.BOOL: "B", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d",
}  # fmt: skip
_MIN_SIZE = {t: struct.calcsize("<" + f) for t, f in _SCALARS.items()} | {V.STRING: 8, V.ARRAY: 12}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_NON_ASCII = re.compile(rb"[\x80-\xff]")  # searched in the mmap itself: no copy
_decode = codecs.utf_8_decode  # takes any buffer: no bytes copy of a memoryview slice
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, kv count
_MIN_KV = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: rows first, e.g. token_embd.weight -> (vocab, hidden)
    data: np.ndarray  # read-only view of the mapped file: F32/F16 typed, other types uint8 (rows, row bytes)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]  # int | float | bool | str | list (arrays, nested for arrays of arrays)
    tensors: dict[str, TensorInfo]  # in file order

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(f"{self.path}: general.architecture is missing or not a string: {arch!r}")
        return arch


@dataclass(frozen=True)
class _RawTensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: fastest-varying (row length) first
    type_id: int
    offset: int  # relative to the start of the data section


def load_gguf(path) -> GGUFFile:
    """Maps and validates a GGUF file; every problem is a GGUFError naming the file, field and value.

    The header is parsed here in pure Python rather than by gguf.GGUFReader, which trusts every declared
    length and count (a corrupted file makes it loop or allocate without bound, or raise IndexError) and
    builds one NumPy view per array element (~9 s for Qwen2.5's 150k-token vocabulary, ~0.3 s here).
    Every length and count is checked against the bytes left before anything is read or allocated.
    Tensor views follow GGUFReader's layout (F32/F16 typed, other types uint8 blocks); tests compare
    metadata and tensors with GGUFReader on real files. Strings are decoded as UTF-8 with
    errors="surrogateescape": valid text is unchanged, and a token holding invalid UTF-8 round-trips
    exactly via `s.encode("utf-8", "surrogateescape")`; keys and tensor names must be valid UTF-8.

    Two passes: the first walks the whole header (every length, count and type, the tensor infos and
    the data layout) decoding only keys and names; the second builds the metadata's Python objects.
    A corrupted length that swallows the rest of the file therefore fails in the first pass, before
    its bytes become a str (which costs up to 4 bytes per byte of binary) or a list of ints (8 per
    byte): a corrupted file never costs more extra memory than a valid one of its size.
    """
    path = Path(path)
    buf = _map(path)
    try:
        walk = _Cursor(buf, decode=False)
        version, n_tensors, scalars = _read_head(walk)
        raw = [
            _read_tensor_info(walk, i) for i in range(walk.count(n_tensors, _MIN_TENSOR_INFO, "tensor count"))
        ]
        align = _alignment(scalars)
        tensors = _layout(buf, raw, -(-walk.pos // align) * align, align)  # data start: header end, padded
        metadata = _read_head(_Cursor(buf))[2]
    except GGUFError as exc:
        raise GGUFError(f"{path}: {exc}") from None
    return GGUFFile(path, version, metadata, tensors)


def read_metadata(path) -> dict[str, Any]:
    """The checked metadata alone (header and key/values, tensor infos not read): for tools and tokenizers."""
    path, buf = Path(path), _map(Path(path))
    try:
        _read_head(_Cursor(buf, decode=False))  # structure first: see load_gguf
        return _read_head(_Cursor(buf))[2]
    except GGUFError as exc:
        raise GGUFError(f"{path}: {exc}") from None


def open_reader(path) -> gguf.GGUFReader:
    """gguf.GGUFReader over a file that passed load_gguf's checks; anything it raises becomes GGUFError."""
    load_gguf(path)
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:
        raise GGUFError(f"{path}: gguf.GGUFReader failed: {type(exc).__name__}: {exc}") from exc


def dequantize(t: TensorInfo) -> np.ndarray:
    """float32 array of t.shape via gguf.quants.dequantize (a read-only view of the file for F32)."""
    if t.ggml_type not in SUPPORTED_TYPES:
        raise GGUFError(f"tensor {t.name}: type {t.ggml_type.name} is not supported; {_supported()}")
    try:
        out = gguf.quants.dequantize(t.data, t.ggml_type)
        return np.asarray(out, dtype=np.float32).reshape(t.shape)
    except Exception as exc:
        raise GGUFError(f"tensor {t.name}: cannot dequantize {t.ggml_type.name}: {exc}") from exc


def _supported() -> str:
    return "supported: " + ", ".join(q.name for q in SUPPORTED_TYPES)


def _map(path: Path) -> mmap.mmap:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block
            raise GGUFError(f"{path}: cannot open: not a regular file")
        if info.st_size < _HEADER.size:
            raise GGUFError(f"{path}: truncated: {info.st_size} bytes, a GGUF header needs {_HEADER.size}")
        with path.open("rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after close
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open: {exc.strerror or exc}") from exc


class _Cursor:
    """Reads little-endian values at `pos`, checking every length against the bytes left first.

    decode=False walks the structure only: metadata strings and arrays are checked and skipped (read as
    None); keys, tensor names and scalar values are still read.
    """

    def __init__(self, buf: mmap.mmap, *, decode: bool = True):
        self.buf, self.pos, self.size, self.decode = buf, 0, len(buf), decode
        self.view = memoryview(buf)  # strings decode from slices of it, without a bytes copy
        self.items_left = MAX_ARRAY_ITEMS

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            left = self.size - self.pos
            raise GGUFError(f"truncated: {what} needs {n} bytes at offset {self.pos}, {left} left")

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        self.need(fmt.size, what)
        out = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return out

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)[0]

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)[0]

    def string(
        self, what: str, *, strict: bool = False, ascii: bool = False, limit: int = MAX_STRING
    ) -> str | None:
        """strict: invalid UTF-8 is an error (names); otherwise bytes round-trip via surrogateescape.

        ascii (keys, which the spec requires to be ASCII) is checked on the mapped bytes before decoding:
        a garbage key of up to MAX_KEY bytes fails without first becoming a str.
        """
        n = self.u64(f"{what} length")
        if n > limit:
            raise GGUFError(f"{what} is {n} bytes long, the limit is {limit}")
        self.need(n, f"{what} of declared length {n}")
        self.pos += n
        if not (strict or ascii or self.decode):
            return None
        raw = self.view[self.pos - n : self.pos]
        if ascii and _NON_ASCII.search(self.buf, self.pos - n, self.pos):
            raise GGUFError(f"{what} is not ASCII, as the GGUF spec requires of keys: {bytes(raw[:64])!r}")
        try:
            return _decode(raw, "strict" if strict else "surrogateescape", True)[0]
        except UnicodeDecodeError:
            raise GGUFError(f"{what} is not valid UTF-8: {bytes(raw[:64])!r}") from None

    def count(self, n: int, item_size: int, what: str) -> int:
        """A declared count, refused before anything is allocated when the items cannot fit in the file."""
        left = self.size - self.pos
        if n * item_size > left:
            raise GGUFError(
                f"{what} = {n} cannot fit in the {left} bytes left at offset {self.pos} ({item_size}+ each)"
            )
        return n

    def array_items(self, n: int, what: str) -> int:
        """Counts items against MAX_ARRAY_ITEMS: no file can make the metadata's Python objects huge."""
        if n > self.items_left:
            raise GGUFError(f"{what} = {n} takes the metadata arrays past {MAX_ARRAY_ITEMS} items")
        self.items_left -= n
        return n


def _read_head(cur: _Cursor) -> tuple[int, int, dict[str, Any]]:
    """(version, tensor count, metadata): the header and every key/value, checked."""
    magic, version, n_tensors, n_kv = cur.unpack(_HEADER, "header")
    if magic != b"GGUF":
        raise GGUFError(f"GGUF magic invalid: {magic!r} (expected b'GGUF')")
    if version not in VERSIONS:
        if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"GGUF version {version} not supported (supported: {', '.join(map(str, VERSIONS))})")
    cur.count(n_kv, _MIN_KV, "metadata key/value count")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key, value = _read_kv(cur, i)
        if key in metadata:
            raise GGUFError(f"metadata key {key!r} appears twice")
        metadata[key] = value
    if cur.decode:
        _check_metadata(metadata)
    return version, n_tensors, metadata


def _read_kv(cur: _Cursor, i: int) -> tuple[str, Any]:
    key = cur.string(f"metadata key #{i}", ascii=True, limit=MAX_KEY)
    type_id = cur.u32(f"metadata {key} value type")
    if key == "general.alignment" and type_id != V.UINT32:  # as llama.cpp and GGUFReader require
        raise GGUFError(f"metadata general.alignment must be UINT32, got value type {type_id}")
    return key, _read_value(cur, _value_type(type_id, f"metadata {key}"), f"metadata {key}", 0)


def _value_type(type_id: int, what: str) -> gguf.GGUFValueType:
    if type_id not in V._value2member_map_:
        raise GGUFError(f"{what}: unknown value type {type_id}")
    return V(type_id)


def _read_value(cur: _Cursor, vtype: gguf.GGUFValueType, what: str, depth: int) -> Any:
    if vtype == V.STRING:
        return cur.string(what)
    if vtype != V.ARRAY:
        return _scalars(cur, vtype, 1, what)[0]
    if depth == MAX_ARRAY_DEPTH:
        raise GGUFError(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
    item_type = _value_type(cur.u32(f"{what} array item type"), f"{what} array items")
    n = cur.count(cur.u64(f"{what} array length"), _MIN_SIZE[item_type], f"{what} array length")
    cur.array_items(n, f"{what} array length")
    if not cur.decode and item_type in _SCALARS:
        cur.need(n * _MIN_SIZE[item_type], f"{what} array of {n}")
        cur.pos += n * _MIN_SIZE[item_type]
        return None
    if item_type == V.STRING:
        return _strings(cur, n, what)
    if item_type == V.ARRAY:
        return [_read_value(cur, V.ARRAY, f"{what}[{j}]", depth + 1) for j in range(n)]
    return _scalars(cur, item_type, n, what)


def _scalars(cur: _Cursor, vtype: gguf.GGUFValueType, n: int, what: str) -> list:
    fmt = struct.Struct(f"<{n}{_SCALARS[vtype]}")
    values = list(cur.unpack(fmt, what))
    if vtype != V.BOOL:
        return values
    if any(v > 1 for v in values):
        raise GGUFError(f"{what}: bool byte {max(values)} is neither 0 nor 1")
    return [bool(v) for v in values]


def _strings(cur: _Cursor, n: int, what: str) -> list[str] | None:
    # the hot loop of a 150k-token vocabulary: locals only, one bounds check per length and per string
    buf, view, pos, size, unpack = cur.buf, cur.view, cur.pos, cur.size, _U64.unpack_from
    out = []
    for j in range(n):
        if size - pos < 8:
            raise GGUFError(f"truncated: {what}[{j}] length needs 8 bytes at offset {pos}, {size - pos} left")
        (k,) = unpack(buf, pos)
        if k > MAX_STRING:
            raise GGUFError(f"{what}[{j}] is {k} bytes long, the limit is {MAX_STRING}")
        if k > size - pos - 8:
            raise GGUFError(
                f"truncated: {what}[{j}] of declared length {k} at offset {pos}, {size - pos - 8} left"
            )
        if cur.decode:
            out.append(_decode(view[pos + 8 : pos + 8 + k], "surrogateescape", True)[0])
        pos += 8 + k
    cur.pos = pos
    return out if cur.decode else None


# ---- metadata types: the keys the engine reads must hold the type it expects ----

_INT, _NUM, _STR, _BOOL = "an integer", "a number", "a string", "a bool"
_INTS, _NUMS, _STRS = "an array of integers", "an array of numbers", "an array of strings"
_INT_OR_INTS = "an integer or an array of integers"
_KINDS = {  # exact keys
    "general.architecture": _STR, "general.name": _STR, "general.file_type": _INT,
    "general.quantization_version": _INT, "tokenizer.ggml.model": _STR, "tokenizer.ggml.pre": _STR,
    "tokenizer.ggml.tokens": _STRS, "tokenizer.ggml.scores": _NUMS, "tokenizer.ggml.token_type": _INTS,
    "tokenizer.ggml.merges": _STRS, "tokenizer.chat_template": _STR, "tokenizer.ggml.add_bos_token": _BOOL,
    "tokenizer.ggml.add_eos_token": _BOOL, "tokenizer.ggml.add_space_prefix": _BOOL,
}  # fmt: skip
_ARCH_KINDS = {  # "{arch}.<suffix>" for any arch
    "block_count": _INT, "context_length": _INT, "embedding_length": _INT, "vocab_size": _INT,
    "feed_forward_length": _INT_OR_INTS, "attention.head_count": _INT_OR_INTS,
    "attention.head_count_kv": _INT_OR_INTS, "attention.key_length": _INT, "attention.value_length": _INT,
    "attention.sliding_window": _INT, "rope.dimension_count": _INT,
    "rope.scaling.original_context_length": _INT,
    "rope.freq_base": _NUM, "rope.scaling.factor": _NUM, "rope.scale_linear": _NUM,
    "attention.layer_norm_rms_epsilon": _NUM, "attention.layer_norm_epsilon": _NUM, "rope.scaling.type": _STR,
}  # fmt: skip
_VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return _is_int(v) or isinstance(v, float)


_CHECKS = {
    _INT: _is_int,
    _NUM: _is_num,
    _STR: lambda v: isinstance(v, str),
    _BOOL: lambda v: isinstance(v, bool),
    _INTS: lambda v: isinstance(v, list) and all(map(_is_int, v)),
    _NUMS: lambda v: isinstance(v, list) and all(map(_is_num, v)),
    _STRS: lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
    _INT_OR_INTS: lambda v: _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
}


def _expected_kind(key: str) -> str | None:
    if key in _KINDS:
        return _KINDS[key]
    if key.endswith("_token_id") and key.startswith("tokenizer.ggml."):
        return _INT
    prefix, _, suffix = key.partition(".")
    return None if prefix in ("general", "tokenizer") else _ARCH_KINDS.get(suffix)


def _check_metadata(md: dict[str, Any]) -> None:
    for key, value in md.items():
        kind = _expected_kind(key)
        if kind is not None and not _CHECKS[kind](value):
            raise GGUFError(f"metadata {key} must be {kind}, got {_describe(value)}")
    lengths = {key: len(md[key]) for key in _VOCAB_ARRAYS if key in md}
    if len(set(lengths.values())) > 1:
        counts = ", ".join(f"{key} has {n}" for key, n in lengths.items())
        raise GGUFError(f"vocabulary arrays differ in length: {counts}")
    _alignment(md)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"an array of {len(value)} ({'/'.join(kinds) or 'empty'})"
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def _alignment(md: dict[str, Any]) -> int:
    align = md.get("general.alignment", DEFAULT_ALIGNMENT)
    if not _is_int(align) or align <= 0 or align & (align - 1) or align >= 1 << 32:
        raise GGUFError(f"metadata general.alignment must be a power of two uint32, got {_describe(align)}")
    return align


# ---- tensor infos and the data section ----


def _read_tensor_info(cur: _Cursor, i: int) -> _RawTensor:
    name = cur.string(f"tensor #{i} name", strict=True, limit=MAX_NAME)
    if not name:
        raise GGUFError(f"tensor #{i} has an empty name")
    n_dims = cur.u32(f"tensor {name} dimension count")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(f"tensor {name}: dimension count {n_dims}, must be 1..{MAX_DIMS}")
    dims = cur.unpack(struct.Struct(f"<{n_dims}Q"), f"tensor {name} dimensions")
    type_id = cur.u32(f"tensor {name} type")
    offset = cur.u64(f"tensor {name} offset")
    return _RawTensor(name, dims, type_id, offset)


def _layout(buf: mmap.mmap, raw: list[_RawTensor], start: int, align: int) -> dict[str, TensorInfo]:
    tensors, spans = {}, []
    for t in raw:
        if t.name in tensors:
            raise GGUFError(f"tensor {t.name} appears twice")
        qtype, nbytes = _check_tensor(t, align)
        begin = start + t.offset
        end = begin + nbytes
        if end > len(buf):
            raise GGUFError(
                f"tensor {t.name}: data [{begin}, {end}) extends beyond the end of the file at {len(buf)}"
            )
        spans.append((begin, end, t.name))
        shape = _np_shape(t)
        tensors[t.name] = TensorInfo(t.name, qtype, shape, _view(buf, qtype, shape, begin, nbytes))
    _check_overlaps(spans)
    return tensors


def _check_tensor(t: _RawTensor, align: int) -> tuple[gguf.GGMLQuantizationType, int]:
    """(type, data bytes), after checking the shape, the type and the offset alignment."""
    if any(d == 0 for d in t.dims):
        raise GGUFError(f"tensor {t.name}: shape {_np_shape(t)} has a zero dimension")
    n = math.prod(t.dims)
    if n >= MAX_ELEMENTS:
        raise GGUFError(f"tensor {t.name}: shape {_np_shape(t)} has {n} elements, limit 2^40")
    if t.type_id not in Q._value2member_map_:
        raise GGUFError(f"tensor {t.name}: unknown type id {t.type_id}; {_supported()}")
    qtype = Q(t.type_id)
    if qtype not in SUPPORTED_TYPES:
        raise GGUFError(f"tensor {t.name}: type {qtype.name} is not supported; {_supported()}")
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if t.dims[0] % block:
        raise GGUFError(
            f"tensor {t.name}: row length {t.dims[0]} is not a multiple of {qtype.name}'s block {block}"
        )
    if t.offset % align:
        raise GGUFError(f"tensor {t.name}: offset {t.offset} is not a multiple of the alignment {align}")
    return qtype, n // block * type_size


def _np_shape(t: _RawTensor) -> tuple[int, ...]:
    return tuple(reversed(t.dims))


def _view(buf: mmap.mmap, qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...], begin: int, nbytes: int):
    """GGUFReader's layout: F32/F16 typed with the numpy shape, other types uint8 (..., bytes per row)."""
    if qtype in (Q.F32, Q.F16):
        dtype = np.float32 if qtype == Q.F32 else np.float16
        return np.frombuffer(buf, dtype, nbytes // np.dtype(dtype).itemsize, begin).reshape(shape)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return np.frombuffer(buf, np.uint8, nbytes, begin).reshape(*shape[:-1], shape[-1] // block * type_size)


def _check_overlaps(spans: list[tuple[int, int, str]]) -> None:
    spans = sorted(spans)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise GGUFError(f"tensors {n0} [{b0}, {e0}) and {n1} [{b1}, {e1}) overlap")
