"""Tiny synthetic GGUF models (real tensor names, random weights, a gpt2-style byte vocab) for tests."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType

CHATML = (  # the template text holds backslash-n escapes, as real GGUF templates do
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MERGES = ("Ġ t", "h e", "i n", "Ġt he", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t", "Ġ o", "e n", "Ġ w", "o r")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
NORMAL, CONTROL = 1, 3  # tokenizer.ggml.token_type values

# what differs per architecture, as data: the tokenizer's pre-tokenizer and the tensor layout
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"pre": "smollm", "qkv_bias": False, "fused_qkv": False, "fused_gate_up": False, "tied": True},
    "mistral": {"pre": "gpt-2", "qkv_bias": False, "fused_qkv": False, "fused_gate_up": False, "tied": False},
    "qwen2": {"pre": "qwen2", "qkv_bias": True, "fused_qkv": False, "fused_gate_up": False, "tied": False},
    "phi3": {"pre": "default", "qkv_bias": False, "fused_qkv": True, "fused_gate_up": True, "tied": False},
}  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "hidden": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": None,  # hidden // heads unless given (then written as attention.key_length)
    "ffn": 128,
    "context": 256,
    "rope_base": 10000.0,
    "eps": 1e-5,
    "weight_type": "Q8_0",  # 2-D weights; norms and biases stay F32
    "seed": 0,
    "metadata": {},  # key -> value (None removes the key); Typed(value, vtype) for an exact GGUF type
    "tensors": {},  # name -> float32 array written as F32 (None removes the tensor)
}


@dataclass(frozen=True)
class Typed:
    """A metadata value with an explicit GGUF type (an array's item type when value is a list)."""

    value: Any
    vtype: gguf.GGUFValueType


def gpt2_byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable stand-in character of each byte, in GPT-2's vocab order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): 256 byte tokens, one token per merge, then the special tokens."""
    tokens = gpt2_byte_chars() + [m.replace(" ", "") for m in MERGES] + list(SPECIALS)
    types = [NORMAL] * (len(tokens) - len(SPECIALS)) + [CONTROL] * len(SPECIALS)
    return tokens, types, list(MERGES)


def write_tiny_model(path, arch: str = "llama", **overrides) -> Path:
    """Writes a small random model of `arch` and returns its path (knobs: DEFAULTS and ARCH_DEFAULTS).

    Defaults: 2 layers, hidden 64, 4 q / 2 kv heads of 16, ffn 128, context 256, Q8_0 weights, the
    273-token vocabulary of tiny_vocab() (gpt2 BPE, `<|im_start|>` BOS, `<|im_end|>` EOS), ChatML.
    """
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"write_tiny_model: arch {arch!r} is not one of {', '.join(ARCH_DEFAULTS)}")
    unknown = set(overrides) - set(DEFAULTS) - set(ARCH_DEFAULTS["llama"])
    if unknown:
        raise TypeError(f"unknown write_tiny_model options: {sorted(unknown)}")
    o = DEFAULTS | ARCH_DEFAULTS[arch] | overrides
    metadata = _metadata(arch, o) | o["metadata"]
    generated = _tensors(o, len(tiny_vocab()[0]))
    writer = gguf.GGUFWriter(path, metadata.get("general.architecture", arch))
    for key, value in metadata.items():
        if value is not None and key != "general.architecture":
            _add_value(writer, key, value)
    for name, array in (generated | o["tensors"]).items():
        if array is not None:
            quantize = array.ndim == 2 and name not in o["tensors"]  # norms, biases and overrides stay F32
            _add_tensor(writer, name, array, o["weight_type"] if quantize else "F32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _metadata(arch: str, o: dict[str, Any]) -> dict[str, Any]:
    tokens, types, merges = tiny_vocab()
    md = {
        "general.name": f"tiny-{arch}",
        f"{arch}.block_count": o["layers"],
        f"{arch}.context_length": o["context"],
        f"{arch}.embedding_length": o["hidden"],
        f"{arch}.feed_forward_length": o["ffn"],
        f"{arch}.attention.head_count": o["heads"],
        f"{arch}.attention.head_count_kv": o["kv_heads"],
        f"{arch}.rope.freq_base": o["rope_base"],
        f"{arch}.attention.layer_norm_rms_epsilon": o["eps"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": o["pre"],
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": [0.0] * len(tokens),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tokens.index("<|im_start|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>"),
        "tokenizer.ggml.padding_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML,
    }
    if o["head_dim"] is not None:
        md[f"{arch}.attention.key_length"] = md[f"{arch}.attention.value_length"] = o["head_dim"]
    return md


def _tensors(o: dict[str, Any], vocab: int) -> dict[str, np.ndarray]:
    """Random weights, numpy-order shapes, scaled by 1/sqrt(fan_in) so activations stay O(1)."""
    rng = np.random.default_rng(o["seed"])
    d, f = o["hidden"], o["ffn"]
    hd = o["head_dim"] or d // o["heads"]
    q, kv = o["heads"] * hd, o["kv_heads"] * hd

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    out = {"token_embd.weight": w(vocab, d) * np.float32(np.sqrt(d) / 2)}
    for i in range(o["layers"]):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = norm()
        if o["fused_qkv"]:
            out[p + "attn_qkv.weight"] = w(q + 2 * kv, d)
        else:
            out |= {
                p + "attn_q.weight": w(q, d),
                p + "attn_k.weight": w(kv, d),
                p + "attn_v.weight": w(kv, d),
            }
        if o["qkv_bias"]:
            for name, n in (("q", q), ("k", kv), ("v", kv)):
                out[p + f"attn_{name}.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        out[p + "attn_output.weight"] = w(d, q)
        out[p + "ffn_norm.weight"] = norm()
        if o["fused_gate_up"]:
            out[p + "ffn_up.weight"] = w(2 * f, d)
        else:
            out |= {p + "ffn_gate.weight": w(f, d), p + "ffn_up.weight": w(f, d)}
        out[p + "ffn_down.weight"] = w(d, f)
    out["output_norm.weight"] = norm()
    if not o["tied"]:
        out["output.weight"] = w(vocab, d)
    return out


def _add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, type_name: str) -> None:
    qtype = Q[type_name]
    data = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)  # F32: unchanged
    writer.add_tensor(name, data, raw_dtype=qtype)


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, Typed):
        if isinstance(value.value, list):
            writer.add_key_value(key, value.value, V.ARRAY, sub_type=value.vtype)
        else:
            writer.add_key_value(key, value.value, value.vtype)
    elif isinstance(value, list):
        item = _scalar_type(value[0])
        writer.add_key_value(key, value, V.ARRAY, sub_type=V.INT32 if item == V.UINT32 else item)
    else:
        writer.add_key_value(key, value, _scalar_type(value))


def _scalar_type(value: Any) -> gguf.GGUFValueType:
    """llama.cpp's usual choices: counts UINT32, floats FLOAT32 (and INT32 items in arrays, see above)."""
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, int):
        return V.UINT32 if 0 <= value < 1 << 32 else V.INT64
    if isinstance(value, float):
        return V.FLOAT32
    if isinstance(value, str):
        return V.STRING
    raise TypeError(f"no GGUF type for {type(value).__name__} {value!r}")
