"""Tiny synthetic GGUFs of every architecture the engine runs, laid out as llama.cpp's converter writes them.

Each file is one transformers' GGUF loader reads as the same model (config from the metadata, weights
through its tensor-name map and llama's reverse Q/K permutation), so the engine and transformers can be
compared on it. What differs per architecture is data in `SPECS`:

- llama: q/k rows in llama.cpp's permuted order (the engine rotates adjacent pairs, transformers undoes the
  permutation and rotates halves: the same model), optionally linear RoPE scaling.
- qwen2: q/k/v biases, NeoX RoPE (halves), no permutation.
- phi3: fused `attn_qkv` ([q; k; v] rows) and fused `ffn_up` ([gate; up] rows), as llama.cpp copies Phi-3's
  `qkv_proj` and `gate_up_proj`; NeoX RoPE.
- mistral: llama.cpp's converter registers MistralForCausalLM under its llama model, so Mistral files say
  `general.architecture = llama`; the window is written as `llama.attention.sliding_window`
  (`add_sliding_window`, the key llama.cpp uses for sliding-window attention), which the engine reads.
  transformers would build MistralForCausalLM for `general.name == "mistral"`, but its weight map then
  asks gguf-py for a "mistral" architecture gguf-py lacks, so the file is named "tiny-mistral" and the
  test moves the Llama transformers loads into its Mistral class.

transformers' GGUF loader reads neither `rope.scaling.*` for llama nor a sliding window, so
`Spec.oracle_config` states those from the spec (never from the engine's reading of the file).
"""

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from tests.unit.gguf_fixtures import CHATML, tiny_vocab

Q = gguf.GGMLQuantizationType
# every type gguf-py can write; 2-D weights take them in turn, so each model holds all of them
WEIGHT_TYPES = (Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)


@dataclass(frozen=True)
class Spec:
    name: str  # file stem and test id
    arch: str  # general.architecture
    general_name: str
    pre: str  # tokenizer.ggml.pre
    tied: bool  # no output.weight: logits use token_embd
    qkv_bias: bool = False
    fused: bool = False  # attn_qkv and ffn_up = gate|up, as phi3
    rope_linear: float | None = None  # rope.scaling.type = linear with this factor
    sliding_window: int | None = None
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 96  # a multiple of 32: ffn_down's rows are quantized in blocks of 32
    rope_base: float = 10000.0
    context: int = 512
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def oracle_config(self) -> dict:
        """Config overrides for transformers: what the file says but its GGUF loader does not read."""
        out = {}
        if self.rope_linear is not None:
            rope = {"rope_type": "linear", "factor": self.rope_linear, "rope_theta": self.rope_base}
            out["rope_parameters"] = rope
        if self.sliding_window is not None:
            out["sliding_window"] = self.sliding_window
        return out


SPECS = {
    s.name: s
    for s in (
        Spec("llama", "llama", "tiny-llama", "gpt-2", tied=True),
        Spec(
            "llama-rope-linear", "llama", "tiny-llama", "gpt-2", tied=False, rope_linear=4.0,
            hidden=128, layers=3, ffn=160, seed=1,
        ),
        Spec("qwen2", "qwen2", "tiny-qwen2", "qwen2", tied=True, qkv_bias=True, rope_base=1e6, seed=2),
        Spec("phi3", "phi3", "tiny-phi3", "gpt-2", tied=False, fused=True, ffn=128, seed=5),
        Spec("mistral", "llama", "tiny-mistral", "gpt-2", tied=False, sliding_window=8, layers=3, seed=4),
    )
}  # fmt: skip


def write_model(spec: Spec, directory: Path) -> Path:
    """Writes `spec` as DIRECTORY/NAME.gguf and returns the path."""
    path = Path(directory) / f"{spec.name}.gguf"
    writer = gguf.GGUFWriter(path, spec.arch)
    _metadata(writer, spec)
    tensors = _tensors(spec, len(tiny_vocab()[0]))
    matrices = [name for name, a in tensors.items() if a.ndim == 2]
    for name, array in tensors.items():
        qtype = Q.F32  # norms and biases: llama.cpp keeps 1-D tensors F32
        if array.ndim == 2:
            qtype = WEIGHT_TYPES[(matrices.index(name) + spec.seed) % len(WEIGHT_TYPES)]
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _metadata(w: gguf.GGUFWriter, s: Spec) -> None:
    tokens, types, merges = tiny_vocab()
    w.add_name(s.general_name)
    w.add_block_count(s.layers)
    w.add_context_length(s.context)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    if s.rope_linear is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s.rope_linear)
    if s.sliding_window is not None:
        w.add_sliding_window(s.sliding_window)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(s.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)


def _tensors(s: Spec, vocab: int) -> dict[str, np.ndarray]:
    """Random float32 weights in GGUF names and numpy-order shapes, scaled by 1/sqrt(fan_in)."""
    rng = np.random.default_rng(s.seed)
    d, f = s.hidden, s.ffn
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n: int, mean: float, scale: float) -> np.ndarray:
        return (mean + scale * rng.standard_normal(n)).astype(np.float32)

    out = {"token_embd.weight": w(vocab, d) * np.float32(np.sqrt(d) / 2)}
    for i in range(s.layers):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = vec(d, 1.0, 0.1)
        if s.fused:
            out[p + "attn_qkv.weight"] = w(q + 2 * kv, d)  # [q; k; v] rows
        else:
            out |= {
                p + "attn_q.weight": w(q, d),
                p + "attn_k.weight": w(kv, d),
                p + "attn_v.weight": w(kv, d),
            }
        if s.qkv_bias:
            out |= {p + "attn_q.bias": vec(q, 0, 0.1), p + "attn_k.bias": vec(kv, 0, 0.1)}
            out[p + "attn_v.bias"] = vec(kv, 0, 0.1)
        out[p + "attn_output.weight"] = w(d, q)
        out[p + "ffn_norm.weight"] = vec(d, 1.0, 0.1)
        if s.fused:
            out[p + "ffn_up.weight"] = w(2 * f, d)  # [gate; up] rows
        else:
            out |= {p + "ffn_gate.weight": w(f, d), p + "ffn_up.weight": w(f, d)}
        out[p + "ffn_down.weight"] = w(d, f)
    out["output_norm.weight"] = vec(d, 1.0, 0.1)
    if not s.tied:
        out["output.weight"] = w(vocab, d)
    return out
