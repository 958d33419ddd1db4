"""Oracle: transformers + torch running the same GGUF file, the independent reference for the NumPy engine.

transformers reads the GGUF with its own loader (gguf-py dequantization to fp32, its own tensor-name map,
the reverse Q/K permutation for llama) and runs its own Llama / Qwen2 modelling code, so the only code
shared with gguf-serve is gguf-py's dequantizer. Everything runs offline on the CPU in float32.
"""

import os
import time
from pathlib import Path

import numpy as np

# Never touch a hub: the GGUF on disk is the whole model (config, weights and tokenizer).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402


class Oracle:
    """A GGUF model as transformers loads and runs it: fp32 logits, plain argmax decoding, its tokenizer."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 1):
        path = Path(path)
        if path.suffix != ".gguf" or not path.is_file():
            raise ValueError(f"oracle needs a .gguf file, got {str(path)!r}")
        # One thread by default: on a 2-core machine shared with other processes, torch's OpenMP team waits
        # on a descheduled thread (measured: SmolLM2 16 greedy tokens 0.85 s with 1 thread, 27-30 s with 2),
        # and its idle workers spin against the engine's OpenBLAS threads in the same pytest process.
        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()
        start = time.perf_counter()
        # eager attention: plain matmul + softmax, the most literal reference
        self.model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.load_seconds = time.perf_counter() - start
        self.path = path
        self.vocab_size = int(self.model.config.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS (both test models have add_bos false); ChatML markers parsed."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @torch.inference_mode()
    def last_logits(self, ids: list[int]) -> np.ndarray:
        """Logits [vocab] float32 after the last of `ids`, for a fresh sequence."""
        logits, _ = self._forward(ids, None)
        return logits

    @torch.inference_mode()
    def greedy(self, ids: list[int], n: int) -> list[int]:
        """Exactly n argmax tokens after `ids`, one at a time with the KV cache; no stop tokens."""
        logits, past = self._forward(ids, None)
        out: list[int] = []
        while len(out) < n:
            out.append(int(np.argmax(logits)))  # first index on ties, as the engine's np.argmax
            if len(out) < n:
                logits, past = self._forward([out[-1]], past)
        return out

    def _forward(self, ids: list[int], past):
        if not ids:
            raise ValueError("oracle forward needs at least one token id")
        x = torch.tensor([ids], dtype=torch.long)  # [1, T]
        out = self.model(input_ids=x, past_key_values=past, use_cache=True, logits_to_keep=1)
        logits = out.logits[0, -1].to(torch.float32).numpy().copy()  # [vocab]
        assert logits.shape == (self.vocab_size,), logits.shape
        return logits, out.past_key_values
