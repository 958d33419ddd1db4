"""A second server: 503 while loading, a killed worker (error, 503, restart), SIGTERM drain, exit 0."""

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from .conftest import API_KEY, MODEL, start_server

GRACE_S = 8.0
TIMEOUT_S = 15.0  # above the SIGTERM test's first chunk + drain, so the drain ends its stream


@pytest.fixture(scope="module")
def life(smollm2_path, tmp_path_factory):
    srv = start_server(
        smollm2_path,
        tmp_path_factory.mktemp("life"),
        max_num_seqs=4,
        max_waiting=4,
        kv_cache_tokens=4096,
        shutdown_grace_s=GRACE_S,
        request_timeout_s=TIMEOUT_S,
    )
    yield srv
    srv.stop()


def openai_client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_health_is_503_until_the_model_is_loaded(life):
    seen = set()
    while (status := life.health()) != 200:
        seen.add(status)
        if status == 503:
            r = httpx.post(
                f"{life.url}/v1/completions",
                json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=120,  # it may arrive just as the model is ready
            )
            assert r.status_code in (503, 200)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "loading" and "retry-after" in r.headers
                seen.add("request-503")
        assert life.proc.poll() is None, life.tail()
        time.sleep(0.05)
    assert 503 in seen and "request-503" in seen, seen
    assert httpx.get(f"{life.url}/health").json() == {"status": "ok"}


def test_killed_worker_fails_streams_then_restarts(life):
    life.wait_health(200)
    client = openai_client(life)
    outcome = {}

    def non_streamed():
        try:
            client.completions.create(
                model=MODEL, prompt="A long tale", max_tokens=400, extra_body={"ignore_eos": True}
            )
            outcome["non_stream"] = "completed"
        except openai.APIStatusError as exc:
            outcome["non_stream"] = exc.status_code

    background = threading.Thread(target=non_streamed)
    background.start()
    stream = client.completions.create(
        model=MODEL, prompt="Once", max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    received = 0
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            received += 1
            if received == 2:
                os.kill(life.worker_pid(), signal.SIGKILL)
    assert "worker process died" in str(info.value.message)
    background.join(60)
    assert outcome["non_stream"] == 503
    assert life.health() == 503
    assert life.metrics()["gguf_serve_worker_up"] == 0
    life.wait_health(200)
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
    assert r.usage.completion_tokens == 2
    assert life.metrics()["gguf_serve_worker_restarts_total"] == 1


def test_request_past_the_timeout_is_aborted_with_504(life):
    life.wait_health(200)
    client = openai_client(life)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(
            model=MODEL, prompt="Go on", max_tokens=4000, extra_body={"ignore_eos": True}
        )
    assert info.value.status_code == 504 and info.value.body["code"] == "timeout"
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 5
    deadline = time.monotonic() + 2
    while life.metrics()["gguf_serve_kv_cache_blocks_used"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert life.metrics()["gguf_serve_kv_cache_blocks_used"] == 0


def test_sigterm_drains_and_exits_0_within_the_grace(life):
    life.wait_health(200)
    client = openai_client(life)
    short = client.completions.create(
        model=MODEL,
        prompt="Hi",
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    endless = client.completions.create(
        model=MODEL, prompt="Go", max_tokens=3000, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(short))
    next(iter(endless))
    started = time.monotonic()
    life.proc.send_signal(signal.SIGTERM)
    rest = list(short)  # in flight at SIGTERM: it finishes within the grace
    assert first.choices[0].text and rest[-1].usage.completion_tokens == 4
    assert life.proc.poll() is None
    with pytest.raises(openai.APIError) as info:  # cut at the deadline with an error event
        for _ in endless:
            pass
    assert "shutting down" in str(info.value.message)
    assert life.proc.wait(GRACE_S + 5) == 0
    assert time.monotonic() - started < GRACE_S + 1.5
    assert life.health() == 0  # no longer listening
