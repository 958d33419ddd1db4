"""EngineConfig crosses from the API process to the worker as the Struct itself (issue 13 item 11): built
once from the settings, never as a dict of field names mirrored by hand."""

import subprocess
import sys

import pytest

from app.engine_client import EngineClient
from app.metrics import Metrics
from app.serve import engine_config
from app.settings import Settings
from inference.engine.config import EngineConfig
from inference.engine.engine import EngineConfig as EngineConfigFromEngine
from inference.model.backends import BackendConfig


def test_settings_become_one_engine_config():
    settings = Settings(
        model="m.gguf", max_num_seqs=3, max_num_batched_tokens=96, block_size=32, kv_cache_tokens=2048,
        prefix_caching=False,
    )  # fmt: skip
    assert engine_config(settings) == EngineConfig(
        max_num_seqs=3, max_num_batched_tokens=96, block_size=32, kv_cache_tokens=2048, prefix_caching=False
    )
    assert EngineConfigFromEngine is EngineConfig  # one definition


def test_engine_client_takes_the_struct_not_a_dict(tmp_path):
    client = EngineClient(
        tmp_path / "m.gguf", backend=BackendConfig(name="numpy"), engine_config=EngineConfig(max_num_seqs=5),
        max_waiting=2, request_timeout_s=1.0, metrics=Metrics("m"),
    )  # fmt: skip
    assert client.capacity == 7
    with pytest.raises(AttributeError):
        EngineClient(
            tmp_path / "m.gguf", backend=BackendConfig(name="numpy"), engine_config={"max_num_seqs": 5},
            max_waiting=2, request_timeout_s=1.0, metrics=Metrics("m"),
        )  # fmt: skip


def test_api_process_does_not_import_the_engine():
    code = "import sys, app.serve; print('inference.engine.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_speculative_settings_reach_the_engine_config():
    settings = Settings(model="m.gguf", ngram_draft=True, num_draft_tokens=6, draft_token_budget=12)
    got = engine_config(settings)
    assert (got.ngram_draft, got.num_draft_tokens, got.draft_token_budget, got.draft_model) == (
        True,
        6,
        12,
        "",
    )
    assert (
        engine_config(Settings(draft_model="d"), "/m/d.gguf").draft_model == "/m/d.gguf"
    )  # the fetched file
