"""Engine fixtures: the real SmolLM2-135M adapter, loaded once per session."""

import pytest

from inference.adapter import InferenceAdapter


@pytest.fixture(scope="session")
def smol(smollm2_path) -> InferenceAdapter:
    return InferenceAdapter.load(smollm2_path)
