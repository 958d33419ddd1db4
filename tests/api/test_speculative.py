"""Speculative decoding through the real server and the openai client: SmolLM2 drafting for itself gives
the greedy text of plain decoding, /metrics counts the proposals, and a draft with another vocabulary
stops start-up with the difference."""

import subprocess
import sys

import pytest

from inference.adapter import InferenceAdapter
from tests.api.conftest import MODEL, ROOT, free_port, start_server
from tests.engine.synthetic import SPECS, write_model

PROMPT = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n"


@pytest.fixture(scope="module")
def spec_server(smollm2_path, tmp_path_factory):
    srv = start_server(
        smollm2_path, tmp_path_factory.mktemp("spec"), draft_model=smollm2_path, kv_cache_tokens=2048,
        max_num_seqs=4,
    )  # fmt: skip
    srv.wait_health(200)
    yield srv
    srv.stop()


def test_greedy_completion_is_plain_decodings_and_metrics_count_proposals(spec_server, smollm2_path):
    import openai

    from tests.api.conftest import API_KEY

    client = openai.OpenAI(base_url=f"{spec_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    got = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    smol = InferenceAdapter.load(smollm2_path)
    ids = smol.tokenizer.encode(PROMPT)
    want = smol.greedy(ids, 16)
    assert got.choices[0].text == smol.tokenizer.decode(want, at_start=False)
    m = spec_server.metrics()
    proposed = m["gguf_serve_spec_decode_draft_tokens_total"]
    assert proposed > 0 and m["gguf_serve_spec_decode_accepted_tokens_total"] == proposed  # itself: all
    assert m["gguf_serve_spec_decode_acceptance_ratio"] == 1.0


def test_a_draft_with_another_vocabulary_stops_start_up(smollm2_path, tmp_path):
    draft = write_model(SPECS["llama"], tmp_path)
    argv = [sys.executable, "-m", "app.serve", "--model", str(smollm2_path), "--draft-model", str(draft),
            "--backend", "numpy", "--port", str(free_port()), "--log-level", "warning"]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "the draft model llama.gguf cannot draft for" in done.stderr
    assert "the target has 49152 tokens, the draft 273" in done.stderr
