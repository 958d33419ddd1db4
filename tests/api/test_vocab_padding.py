"""A server on a model with vocabulary padding (273 tokens, 289 embedding and output rows): every id in
the gap is a 400 naming its parameter, and the worker keeps serving (it used to sample or bias such an id,
fail inside engine.step() and restart, again at every repeat of the request)."""

import httpx
import openai
import pytest

from tests.engine.test_vocab_padding import ROWS, TOKENS, write_padded_model

from .conftest import API_KEY, MODEL, start_server

PADDED = TOKENS + 7  # 280: an embedding row, no token
RANGE = f"outside the vocabulary [0, {TOKENS})"


@pytest.fixture(scope="module")
def padded_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("padded")
    srv = start_server(write_padded_model(directory / "padded.gguf"), directory, kv_cache_tokens=2048)
    srv.wait_health(200)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def padded_http(padded_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=padded_server.url, headers=headers, timeout=60) as c:
        yield c


COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

CASES = [  # (path, body, param, the id the message names)
    ("/v1/completions", COMPLETION | {"logit_bias": {str(PADDED): 100}}, "logit_bias", PADDED),
    ("/v1/completions", COMPLETION | {"logit_bias": {str(ROWS): 1}}, "logit_bias", ROWS),  # past the rows
    ("/v1/chat/completions", CHAT | {"logit_bias": {str(PADDED): 100}}, "logit_bias", PADDED),
    ("/v1/completions", COMPLETION | {"stop_token_ids": [PADDED]}, "stop_token_ids", PADDED),
    ("/v1/chat/completions", CHAT | {"stop_token_ids": [3, PADDED]}, "stop_token_ids", PADDED),
    ("/v1/completions", COMPLETION | {"prompt": [1, 2, PADDED]}, "prompt", PADDED),
    ("/v1/completions", COMPLETION | {"prompt": [[1, 2], [PADDED]]}, "prompt[1]", PADDED),
    ("/detokenize", {"model": MODEL, "tokens": [1, PADDED]}, "tokens", PADDED),
]


@pytest.mark.parametrize(
    ("path", "body", "param", "bad"), CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES]
)
def test_a_padded_id_is_a_400_naming_its_param(padded_http, path, body, param, bad):
    r = padded_http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert f"token id {bad} " in error["message"] and RANGE in error["message"], error["message"]


def test_the_openai_client_gets_bad_request_and_the_server_keeps_serving(padded_server, padded_http):
    client = openai.OpenAI(base_url=f"{padded_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    for _ in range(3):  # a repeated request must not take the worker down either
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, prompt="hi", max_tokens=4, logit_bias={str(PADDED): 100})
        assert info.value.body["param"] == "logit_bias"
    # padded logits dominate in this model: sampled tokens and logprob alternatives are still real tokens
    for seed in range(4):
        r = client.completions.create(
            model=MODEL, prompt="hi", max_tokens=16, temperature=1.0, seed=seed, logprobs=5,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert r.usage.completion_tokens == 16
    ids = padded_http.post("/tokenize", json={"model": MODEL, "prompt": r.choices[0].text}).json()["tokens"]
    assert max(ids, default=0) < TOKENS
    assert padded_server.health() == 200
    assert padded_server.metrics()["gguf_serve_worker_restarts_total"] == 0
