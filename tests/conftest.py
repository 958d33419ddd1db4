"""Session fixtures: real GGUF models and llama.cpp's test material, fetched once and cached."""

from pathlib import Path

import pytest

from inference.gguf.registry import resolve_model
from tests.external import llama_cpp_models_dir


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return resolve_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def qwen05_path() -> Path:
    return resolve_model("qwen2.5-coder-0.5b", progress=False)


@pytest.fixture(scope="session")
def llama_cpp_models() -> Path:
    return llama_cpp_models_dir()
