"""A model ready to run: its GGUF file's config, tokenizer and chat template, and weights on a backend."""

import os
from dataclasses import dataclass
from pathlib import Path

from ..gguf.loader import GGUFFile, load_gguf
from ..gguf.model_config import ModelConfig
from ..gguf.registry import resolve_model
from ..text.chat_template import ChatTemplate
from ..text.tokenizer import Tokenizer
from .backends import BackendConfig, select_backend
from .backends.base import Backend
from .transformer import LlamaModel
from .weights import ModelWeights, load_weights


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    backend: Backend
    weights: ModelWeights
    model: LlamaModel

    @classmethod
    def load(cls, model: str | os.PathLike, backend: BackendConfig | str = "numpy") -> "LoadedModel":
        """A registry model name or a .gguf path, on the backend named (or configured) by `backend`."""
        backend = BackendConfig(name=backend) if isinstance(backend, str) else backend
        return cls.from_gguf(load_gguf(resolve_model(model)), select_backend(backend))

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, backend: Backend) -> "LoadedModel":
        config = ModelConfig.from_gguf(gguf)
        tokenizer = Tokenizer.from_metadata(gguf.metadata)
        template = ChatTemplate.from_metadata(
            gguf.metadata,
            bos_token=_text(tokenizer, tokenizer.bos_id),
            eos_token=_text(tokenizer, tokenizer.eos_id),
        )
        weights = load_weights(gguf, config, backend)
        return cls(
            Path(gguf.path),
            config,
            tokenizer,
            template,
            backend,
            weights,
            LlamaModel(config, weights, backend),
        )

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size


def _text(tokenizer: Tokenizer, token_id: int | None) -> str:
    return "" if token_id is None else tokenizer.decode([token_id])
