"""InferenceAdapter: one Llama-family model behind one interface (load, prefill, decode, generate).

It sits on top of the engine: `generate` runs a request through an Engine, `prefill`/`decode` run one
sequence at a time through the same transformer. The engine never imports this module.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .engine.engine import Engine, EngineConfig
from .engine.kv_cache import KVCache
from .events import TokenEvent
from .forward_config import AdapterForwardConfig
from .model.backends import BackendConfig
from .model.backends.base import AttentionSeq
from .model.loaded import LoadedModel
from .model.transformer import ForwardBatch

_SESSION_BLOCK = 16


class MemoryUsage(NamedTuple):
    weights: int  # bytes of the weights as the backend holds them
    kv_cache_per_token: int  # bytes of K and V for one token over all layers


class InferenceAdapter:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.path = loaded.path
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.chat_template = loaded.chat_template
        self.backend = loaded.backend
        self.weights = loaded.weights
        self.model = loaded.model
        self._session: tuple[KVCache, int] | None = None  # (cache, tokens in it) for prefill/decode

    @classmethod
    def load(cls, model: str | os.PathLike, *, backend: BackendConfig | str = "numpy") -> "InferenceAdapter":
        """Loads a registry model name or a .gguf path onto the named (or configured) backend."""
        return cls(LoadedModel.load(model, backend))

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def memory_usage(self) -> MemoryUsage:
        per_token = KVCache.bytes_per_token(self.config, self.backend.kv_bytes_per_element())
        return MemoryUsage(self.weights.nbytes, per_token)

    # -- one sequence at a time: the building blocks the engine batches ------------------------------

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Starts a fresh sequence with `ids`; returns the logits [V] after its last token."""
        if not ids:
            raise ValueError("prefill needs at least one token id")
        self._check_ids(ids)
        if self._session is None:
            blocks = -(-self.config.context_length // _SESSION_BLOCK)
            self._session = (KVCache(self.config, blocks, _SESSION_BLOCK, self.backend), 0)
        self._session = (self._session[0], 0)
        return self._run(ids)

    def decode(self, token_id: int) -> np.ndarray:
        """Appends one token to the sequence started by prefill(); returns the next logits [V]."""
        if self._session is None:
            raise RuntimeError("decode() before prefill()")
        self._check_ids([token_id])
        return self._run([token_id])

    def greedy(self, ids: list[int], n: int) -> list[int]:
        """n argmax tokens after `ids` (no stop tokens): the golden-test path. Padded output rows (ids
        without a token) are never taken, as in the engine."""
        out, logits = [], self.prefill(ids)
        for _ in range(n):
            out.append(int(np.argmax(logits[: self.tokenizer.vocab_size])))
            if len(out) < n:
                logits = self.decode(out[-1])
        return out

    def generate(self, cfg: AdapterForwardConfig) -> Iterator[TokenEvent]:
        """Runs one request to completion (sampling, stop conditions) and yields its events."""
        tokens = -(-(len(cfg.prompt_ids) + cfg.max_tokens) // _SESSION_BLOCK) * _SESSION_BLOCK * cfg.n
        engine = Engine(
            self.loaded, EngineConfig(max_num_seqs=max(cfg.n, 1), kv_cache_tokens=max(tokens, _SESSION_BLOCK))
        )
        engine.add_request(cfg)
        while engine.has_unfinished():
            yield from engine.step()

    def _run(self, ids: list[int]) -> np.ndarray:
        kv, start = self._session
        end = start + len(ids)
        if end > self.config.context_length:
            raise ValueError(
                f"sequence of {end} tokens exceeds the context length {self.config.context_length}"
            )
        pos = np.arange(start, end, dtype=np.int32)
        table = np.arange(-(-end // _SESSION_BLOCK), dtype=np.int32)
        batch = ForwardBatch(
            np.asarray(ids, np.int32),
            pos,
            pos.copy(),
            [AttentionSeq(0, len(ids), end, table)],
            np.asarray([len(ids) - 1]),
        )
        self._session = (kv, end)
        return self.model.forward(batch, kv)[0]

    def _check_ids(self, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
