"""What no other test exercised: a server without an API key, a worker that dies before it is ready,
/tokenize's add_special_tokens, a non-streamed request whose client disconnects, and concurrent streams of
different prompts, each equal to its output alone."""

import asyncio
import json
import os
import signal
import time

import httpx
import pytest

from .conftest import API_KEY, MODEL, start_server
from .test_load import client_for

# -- a server without an API key, whose first worker is killed while it loads -------------------------


@pytest.fixture(scope="module")
def keyless(smollm2_path, tmp_path_factory):
    srv = start_server(smollm2_path, tmp_path_factory.mktemp("keyless"), api_key="", max_num_seqs=2)
    yield srv
    srv.stop()


def test_a_worker_that_dies_before_it_is_ready_is_replaced(keyless):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until the worker process exists and is loading the model
        try:
            body = httpx.get(f"{keyless.url}/health", timeout=5).json()
        except httpx.TransportError:
            body = {}
        if body.get("detail") == "the worker process is loading the model":
            break
        assert body.get("status") != "ok", "the worker became ready before the test could kill it"
        time.sleep(0.05)
    os.kill(keyless.worker_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (r := httpx.get(f"{keyless.url}/health", timeout=5)).json()["status"] != "worker_down":
        assert time.monotonic() < deadline, r.text
        time.sleep(0.02)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    keyless.wait_health(200)
    assert keyless.metrics()["gguf_serve_worker_restarts_total"] == 1
    assert keyless.proc.poll() is None


def test_without_a_key_every_route_is_open(keyless):
    keyless.wait_health(200)
    assert httpx.get(f"{keyless.url}/v1/models", timeout=30).json()["data"][0]["id"] == MODEL
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    r = httpx.post(f"{keyless.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert httpx.get(f"{keyless.url}/schema/openapi.json", timeout=30).status_code == 200
    # a key sent anyway is ignored, not refused
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert (
        httpx.post(f"{keyless.url}/v1/completions", json=body, headers=headers, timeout=60).status_code == 200
    )


# -- the shared server ------------------------------------------------------------------------------


def test_tokenize_add_special_tokens(http):
    """vLLM's meaning: for a prompt, True (the default) adds what the model adds (SmolLM2: no BOS);
    for messages, False (the default) leaves BOS to the template, True prepends it."""
    prompt = [
        http.post("/tokenize", json={"prompt": "Hello world", **extra}).json()["tokens"]
        for extra in ({}, {"add_special_tokens": True}, {"add_special_tokens": False})
    ]
    assert prompt == [[19556, 905]] * 3
    messages = [{"role": "user", "content": "Hi"}]
    plain = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
    with_bos = http.post("/tokenize", json={"messages": messages, "add_special_tokens": True}).json()[
        "tokens"
    ]
    assert with_bos == [1, *plain]  # 1: SmolLM2's BOS, <|im_start|> (its template starts with it too)


def test_a_disconnected_non_streamed_request_is_aborted(server, http):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True}
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=body, timeout=1.5)  # gives up and closes the connection
    names = ("requests_running", "requests_in_flight", "kv_cache_blocks_used")
    deadline = time.monotonic() + 5
    while any(server.metrics()[f"gguf_serve_{n}"] for n in names):
        assert time.monotonic() < deadline, {n: server.metrics()[f"gguf_serve_{n}"] for n in names}
        time.sleep(0.05)
    assert time.monotonic() - started < 60  # long before 2000 tokens could have been generated


def solo_text(client, body: dict) -> str:
    extra = {k: body[k] for k in ("ignore_eos",)}
    rest = {k: v for k, v in body.items() if k not in extra}
    return client.completions.create(**rest, extra_body=extra).choices[0].text


PROMPTS = ["The capital of France is", "Water boils at", "My favourite colour is", "def fibonacci(n):"]


async def test_concurrent_streams_of_different_prompts_each_equal_their_solo_output(server, client):
    def body(prompt: str) -> dict:
        return {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}

    solo = [solo_text(client, body(p)) for p in PROMPTS]
    assert len(set(solo)) == len(PROMPTS)

    async def stream(c: httpx.AsyncClient, prompt: str) -> str:
        text = ""
        async with c.stream("POST", "/v1/completions", json={**body(prompt), "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    async with client_for(server) as c:
        together = await asyncio.gather(*[stream(c, p) for p in PROMPTS])
    assert together == solo
