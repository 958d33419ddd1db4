"""Start-up as a first-time user meets it: the server listens while the model is fetched and loaded, and
says what it is doing; OpenAI fields that do not change generation are accepted, those we cannot honour
are refused as "not supported by this server"."""

import re
import time

import httpx
import pytest

from .conftest import API_KEY, MODEL, start_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_server_listens_and_reports_while_the_model_is_fetched_and_loaded(tmp_path):
    """A registry model with an empty cache: /health answers 503 at once, saying "fetching" (with bytes)
    and then "loading"; the API answers 503 with Retry-After; the log shows the byte progress."""
    srv = start_server("smollm2-135m", tmp_path, cache_dir=tmp_path / "cache", log_level="info")
    try:
        seen: dict[str, set[str]] = {}
        api_503 = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert srv.proc.poll() is None, srv.tail()
            try:
                r = httpx.get(f"{srv.url}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)  # the interpreter is still importing, before uvicorn binds
                continue
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            body = r.json()
            seen.setdefault(body["status"], set()).add(body["detail"])
            if body["status"] == "fetching" and api_503 is None:
                api_503 = httpx.get(f"{srv.url}/v1/models", headers=AUTH, timeout=5)
            time.sleep(0.05)
        else:
            pytest.fail(f"not ready in 600 s:\n{srv.tail()}")
        assert {"fetching", "loading"} <= set(seen), seen
        assert any(
            re.fullmatch(r"smollm2-135m: downloading \d+\.\d of 98\.4 MB \(\d+ %\)", d)
            for d in seen["fetching"]
        )
        assert any(d.startswith("smollm2-135m: verifying") for d in seen["fetching"]), seen
        assert api_503.status_code == 503 and api_503.headers["retry-after"] == "5"
        assert api_503.json()["error"]["code"] == "loading"
        assert "the model is not ready yet (fetching: smollm2-135m:" in api_503.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/health", timeout=5).json() == {"status": "ok"}
        log = srv.log.read_text()
        assert re.search(r"gguf_serve.registry: smollm2-135m: downloading \d+\.\d of 98\.4 MB", log), log
        assert (tmp_path / "cache" / "models" / "smollm2-135m.gguf").stat().st_size == 98_362_432
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.tail()


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    srv = start_server(bad, tmp_path)
    assert srv.proc.wait(120) == 1, srv.tail()
    assert "gguf-serve: error:" in srv.tail() and "GGUF" in srv.tail()


# -- OpenAI fields (the shared server) --------------------------------------------------------------

ACCEPTED = {
    "store": True,
    "metadata": {"team": "search", "ticket": "T-1"},
    "service_tier": "auto",
    "user": "user-1234",
    "prompt_cache_key": "session-42",
    "safety_identifier": "hashed-user",
    "parallel_tool_calls": False,
}


def _chat(http, **extra) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "temperature": 0,
        **extra,
    }
    return http.post("/v1/chat/completions", json=body)


def test_fields_that_do_not_change_generation_are_accepted_and_change_nothing(http):
    plain = _chat(http)
    assert plain.status_code == 200, plain.text
    for name, value in ACCEPTED.items():
        r = _chat(http, **{name: value})
        assert r.status_code == 200, f"{name}: {r.text}"
        assert r.json()["choices"] == plain.json()["choices"], name
    everything = _chat(http, **ACCEPTED)
    assert everything.status_code == 200 and everything.json()["choices"] == plain.json()["choices"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("reasoning_effort", "low"),
        ("web_search_options", {}),
        ("verbosity", "low"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("functions", [{"name": "f"}]),  # deprecated by OpenAI for `tools`
    ],
)
def test_fields_we_cannot_honour_are_not_supported_by_this_server(http, name, value):
    r = _chat(http, **{name: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert f"{name} is not supported by this server" in error["message"]
    assert "unrecognized" not in error["message"]
    assert (error["param"], error["code"]) == (name, "unsupported_parameter"), error


@pytest.mark.parametrize(
    ("name", "value", "param"),
    [
        ("metadata", {f"k{i}": "v" for i in range(17)}, "metadata"),  # OpenAI: at most 16 pairs
        ("metadata", {"k": "v" * 513}, "metadata[...]"),
        ("service_tier", "fastest", "service_tier"),
        ("store", "yes", "store"),
    ],
)
def test_accepted_fields_are_still_validated(http, name, value, param):
    r = _chat(http, **{name: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
