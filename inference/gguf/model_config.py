"""ModelConfig: a Llama-family model's shapes and hyper-parameters, read from GGUF metadata and validated."""

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import GGUFError, ModelConfigError
from .loader import GGUFFile


@dataclass(frozen=True)
class ArchSpec:
    rope_style: str  # "normal": rotate adjacent pairs (x0, x1); "neox": rotate halves (x_i, x_{i + d/2})
    fused_gate_up: bool  # ffn_up holds [gate; up] stacked, shape (2 * ffn, hidden), and there is no ffn_gate


# Per-architecture differences are data. fused_qkv is not listed: llama.cpp's phi3 accepts attn_qkv or
# separate q/k/v, so it is read from the file (blk.0.attn_qkv.weight present), as are biases and tying.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(rope_style="normal", fused_gate_up=False),
    "mistral": ArchSpec(rope_style="normal", fused_gate_up=False),
    "qwen2": ArchSpec(rope_style="neox", fused_gate_up=False),
    "phi3": ArchSpec(rope_style="neox", fused_gate_up=True),
}
ROPE_STYLES = ("normal", "neox")
ROPE_SCALING_TYPES = ("none", "linear")
LIMITS = {  # exclusive upper bounds: far above real models, low enough that shapes cannot overflow
    "vocab_size": 1 << 24, "hidden_dim": 1 << 16, "num_layers": 1 << 12, "num_heads": 1 << 12,
    "num_kv_heads": 1 << 12, "head_dim": 1 << 11, "ffn_dim": 1 << 20, "context_length": 1 << 20,
    "rope_dim": 1 << 11,
}  # fmt: skip
DEFAULT_ROPE_BASE = 10000.0  # GGUF spec default for {arch}.rope.freq_base


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    context_length: int
    rope_base: float
    rope_dim: int  # rotary dimensions per head, = head_dim unless partial rotary
    rope_style: str  # see ArchSpec
    rope_scaling_type: str  # "none" | "linear"
    rope_scaling_factor: float  # linear: positions divided by it; 1.0 for "none"
    norm_eps: float
    qkv_bias: bool
    tied_output: bool  # no output.weight: logits use token_embd
    sliding_window: int | None
    fused_qkv: bool  # attn_qkv holds [q; k; v] stacked
    fused_gate_up: bool

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "ModelConfig":
        """Reads, validates, and checks every tensor the model needs against the derived shapes."""
        arch = g.architecture
        if arch not in ARCHITECTURES:
            raise ModelConfigError(
                f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
            )
        m, spec = _Metadata(g.metadata, arch), ARCHITECTURES[arch]
        hidden, heads = m.int("embedding_length"), m.int("attention.head_count")
        head_dim = m.int("attention.key_length", None) or _head_dim(hidden, heads)
        value_dim = m.int("attention.value_length", head_dim)
        if value_dim != head_dim:
            raise ModelConfigError(
                f"{arch}.attention.value_length = {value_dim} differs from key length {head_dim}"
            )
        scaling, factor = _rope_scaling(m)
        config = cls(
            arch=arch,
            vocab_size=_vocab_size(g, m),
            hidden_dim=hidden,
            num_layers=m.int("block_count"),
            num_heads=heads,
            num_kv_heads=m.int("attention.head_count_kv", heads),
            head_dim=head_dim,
            ffn_dim=m.int("feed_forward_length"),
            context_length=m.int("context_length"),
            rope_base=m.float("rope.freq_base", DEFAULT_ROPE_BASE),
            rope_dim=m.int("rope.dimension_count", head_dim),
            rope_style=spec.rope_style,
            rope_scaling_type=scaling,
            rope_scaling_factor=factor,
            norm_eps=m.float("attention.layer_norm_rms_epsilon"),
            qkv_bias=any(f"blk.0.attn_{n}.bias" in g.tensors for n in ("q", "k", "v", "qkv")),
            tied_output="output.weight" not in g.tensors,
            sliding_window=m.int("attention.sliding_window", 0) or None,
            fused_qkv="blk.0.attn_qkv.weight" in g.tensors,
            fused_gate_up=spec.fused_gate_up,
        )
        check_tensors(g, config)
        return config

    def validate(self) -> None:
        """ModelConfigError naming the first field that cannot describe a valid model, and its value."""
        if self.arch not in ARCHITECTURES:
            self._bad("arch", f"not supported; supported: {', '.join(ARCHITECTURES)}")
        for field, limit in LIMITS.items():
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < limit:
                self._bad(field, f"must be an integer in [1, {limit})")
        if self.num_heads % self.num_kv_heads:
            self._bad("num_heads", f"not divisible by num_kv_heads = {self.num_kv_heads}")
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            self._bad("rope_dim", f"must be even and <= head_dim = {self.head_dim}")
        self._check_rope()
        if not 0 < self.norm_eps < 1:
            self._bad("norm_eps", "must be in (0, 1)")
        if self.sliding_window is not None and not 0 < self.sliding_window < 1 << 30:
            self._bad("sliding_window", "must be None or a positive integer")

    def _check_rope(self) -> None:
        if self.rope_style not in ROPE_STYLES:
            self._bad("rope_style", f"not one of {', '.join(ROPE_STYLES)}")
        if not (math.isfinite(self.rope_base) and self.rope_base > 1):
            self._bad("rope_base", "must be finite and > 1")
        if self.rope_scaling_type not in ROPE_SCALING_TYPES:
            self._bad("rope_scaling_type", f"not supported; supported: {', '.join(ROPE_SCALING_TYPES)}")
        if not (math.isfinite(self.rope_scaling_factor) and self.rope_scaling_factor > 0):
            self._bad("rope_scaling_factor", "must be finite and > 0")
        if self.rope_scaling_type == "none" and self.rope_scaling_factor != 1.0:
            self._bad("rope_scaling_factor", "must be 1.0 when rope_scaling_type is 'none'")

    def _bad(self, field: str, why: str):
        raise ModelConfigError(f"{field} = {getattr(self, field)!r}: {why}")


class _Metadata:
    """Typed access to `{arch}.<key>`: ModelConfigError naming the key for a missing or mistyped value."""

    _REQUIRED = object()

    def __init__(self, metadata: dict[str, Any], arch: str):
        self.metadata, self.arch = metadata, arch

    def get(self, key: str, default: Any) -> Any:
        value = self.metadata.get(f"{self.arch}.{key}", default)
        if value is self._REQUIRED:
            raise ModelConfigError(f"metadata {self.arch}.{key} is missing")
        return value

    def int(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        if isinstance(value, list):  # per-layer values: fine when they are all the same
            if not value or len(set(value)) != 1:
                raise ModelConfigError(
                    f"metadata {self.arch}.{key} varies per layer ({value[:8]}...); unsupported"
                )
            value = value[0]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ModelConfigError(f"metadata {self.arch}.{key} must be an integer, got {value!r}")
        return value

    def float(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ModelConfigError(f"metadata {self.arch}.{key} must be a number, got {value!r}")
        return None if value is None else float(value)


def _head_dim(hidden: int, heads: int) -> int:
    if heads <= 0 or hidden % heads:
        raise ModelConfigError(
            f"embedding_length = {hidden} is not divisible by head_count = {heads} and there is no key_length"
        )
    return hidden // heads


def _rope_scaling(m: _Metadata) -> tuple[str, float]:
    """(type, factor) as llama.cpp reads them: the factor from rope.scaling.factor or the older
    rope.scale_linear (0 or absent: 1), no type means linear, type none never scales, and linear or yarn
    with a factor of 1 scale nothing, so they are "none" too."""
    factor = m.float("rope.scaling.factor", None) or m.float("rope.scale_linear", None) or 1.0
    kind = m.get("rope.scaling.type", "linear")
    if not isinstance(kind, str):
        raise ModelConfigError(f"metadata {m.arch}.rope.scaling.type must be a string, got {kind!r}")
    if kind == "none" or (kind in ("linear", "yarn") and factor == 1.0):
        return "none", 1.0
    return kind, factor


def _vocab_size(g: GGUFFile, m: _Metadata) -> int:
    """{arch}.vocab_size, else the number of tokens, else token_embd's rows (as llama.cpp does).

    The embedding and output rows may outnumber the tokens (vocabulary padding): ids in the gap have no
    token, so the API refuses them and the engine never samples them. Fewer rows than tokens is refused:
    the tokenizer could produce an id past the embedding matrix."""
    size = m.int("vocab_size", None)
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    if size is None and isinstance(tokens, list):
        size = len(tokens)
    if size is None and "token_embd.weight" in g.tensors:
        size = g.tensors["token_embd.weight"].shape[0]
    if size is None:
        raise ModelConfigError(
            f"no vocabulary size: no {m.arch}.vocab_size, tokenizer.ggml.tokens or token_embd"
        )
    if isinstance(tokens, list) and len(tokens) > size:
        raise ModelConfigError(
            f"tokenizer.ggml.tokens has {len(tokens)} tokens but {m.arch}.vocab_size is {size}: "
            f"ids from {size} on would have no embedding row"
        )
    return size


def expected_tensors(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model reads, name -> numpy-order shape (rows first)."""
    d, f = c.hidden_dim, c.ffn_dim
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    out = {"token_embd.weight": (c.vocab_size, d), "output_norm.weight": (d,)}
    if not c.tied_output:
        out["output.weight"] = (c.vocab_size, d)
    for i in range(c.num_layers):
        out |= {f"blk.{i}.{name}": shape for name, shape in _layer_tensors(c, d, f, q, kv).items()}
    return out


def _layer_tensors(c: ModelConfig, d: int, f: int, q: int, kv: int) -> dict[str, tuple[int, ...]]:
    out = {
        "attn_norm.weight": (d,),
        "attn_output.weight": (d, q),
        "ffn_norm.weight": (d,),
        "ffn_down.weight": (d, f),
    }
    if c.fused_qkv:
        out["attn_qkv.weight"] = (q + 2 * kv, d)
        out |= {"attn_qkv.bias": (q + 2 * kv,)} if c.qkv_bias else {}
    else:
        out |= {"attn_q.weight": (q, d), "attn_k.weight": (kv, d), "attn_v.weight": (kv, d)}
        out |= {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)} if c.qkv_bias else {}
    if c.fused_gate_up:
        out["ffn_up.weight"] = (2 * f, d)
    else:
        out |= {"ffn_gate.weight": (f, d), "ffn_up.weight": (f, d)}
    return out


def optional_tensors(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensors the model uses when present: Llama 3's per-dimension rope frequency factors."""
    return {"rope_freqs.weight": (c.rope_dim // 2,)}


# tensors whose presence means the model needs something the engine does not do: refuse, never ignore
UNSUPPORTED_TENSORS = {
    "rope_factors_long.weight": "LongRoPE scaling (Phi-3 128k)",
    "rope_factors_short.weight": "LongRoPE scaling (Phi-3 128k)",
}
_BLOCK = re.compile(r"blk\.(\d+)\.")


def check_tensors(g: GGUFFile, c: ModelConfig) -> None:
    """GGUFError naming the tensor that is missing, has the wrong shape, lies past the last block, or asks
    for an unsupported feature."""
    for name, feature in UNSUPPORTED_TENSORS.items():
        if name in g.tensors:
            raise ModelConfigError(f"tensor {name} asks for {feature}, which is not supported")
    for name, shape in expected_tensors(c).items():
        t = g.tensors.get(name)
        if t is None:
            raise GGUFError(f"tensor {name} is missing ({c.arch} with {c.num_layers} blocks needs it)")
        if t.shape != shape:
            raise GGUFError(f"tensor {name} has shape {t.shape}, expected {shape} from the metadata")
    for name, shape in optional_tensors(c).items():
        if name in g.tensors and g.tensors[name].shape != shape:
            raise GGUFError(
                f"tensor {name} has shape {g.tensors[name].shape}, expected {shape} from the metadata"
            )
    for name in g.tensors:
        block = _BLOCK.match(name)
        if block and int(block[1]) >= c.num_layers:
            raise GGUFError(f"tensor {name} lies past the last block: block_count is {c.num_layers}")


# ---- memory ----

ACTIVATION_BYTES = 4  # the NumPy and CUDA backends compute in float32
OVERHEAD_BASE = 128 << 20  # interpreter, NumPy, tokenizer tables, metadata
OVERHEAD_FRACTION = 0.05  # allocator slack on everything else


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes
    kv_cache: int
    kv_bytes_per_token: int
    activations: int
    overhead: int
    total: int


def estimate_memory(
    config: ModelConfig,
    *,
    weight_bytes: int,
    num_kv_tokens: int,
    max_batch_tokens: int,
    kv_dtype_bytes: int = 4,
    attention_scores: bool = True,
) -> MemoryEstimate:
    """Bytes the engine needs (all terms in bytes; T = max_batch_tokens, C = min(num_kv_tokens, context)):

    weights     = weight_bytes (as the backend stores them: float32 after NumPy dequantization)
    kv_per_tok  = 2 (K and V) * num_layers * num_kv_heads * head_dim * kv_dtype_bytes
    kv_cache    = kv_per_tok * num_kv_tokens
    activations = 4 * (T * (3 * hidden + (2 * heads + 2 * kv_heads) * head_dim + 5 * ffn)  one layer
                       + 2 * T * heads * C            attention scores and probabilities (when the
                                                      backend materialises them: numpy; not the
                                                      cpu kernels' online softmax)
                       + 2 * kv_heads * C * head_dim  one sequence's gathered K and V
                       + T * vocab)                   logits, when every row wants them
    overhead    = 128 MiB + 5% of (weights + kv_cache + activations)
    total       = weights + kv_cache + activations + overhead
    The per-token layer terms: residual, normed input and projection output (3 * hidden), q/k/v
    ((heads + 2 * kv_heads) * head_dim), attention output (heads * head_dim), gate/up (2 * ffn) and the
    SwiGLU temporaries (3 * ffn).
    """
    c = config
    if min(weight_bytes, num_kv_tokens, max_batch_tokens) < 0 or kv_dtype_bytes <= 0:
        sizes = (
            f"weight_bytes={weight_bytes}, num_kv_tokens={num_kv_tokens}, max_batch_tokens={max_batch_tokens}"
        )
        raise ValueError(
            f"estimate_memory: sizes must be >= 0 and kv_dtype_bytes > 0; got {sizes}, {kv_dtype_bytes=}"
        )
    kv_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * kv_dtype_bytes
    kv_cache = kv_per_token * num_kv_tokens
    t, ctx = max_batch_tokens, min(num_kv_tokens, c.context_length)
    per_token = 3 * c.hidden_dim + (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim + 5 * c.ffn_dim
    scores = 2 * t * c.num_heads * ctx if attention_scores else 0
    floats = t * per_token + scores + 2 * c.num_kv_heads * ctx * c.head_dim + t * c.vocab_size
    activations = ACTIVATION_BYTES * floats
    overhead = OVERHEAD_BASE + int(OVERHEAD_FRACTION * (weight_bytes + kv_cache + activations))
    total = weight_bytes + kv_cache + activations + overhead
    return MemoryEstimate(weight_bytes, kv_cache, kv_per_token, activations, overhead, total)
