"""Hardening: the API key from a file, the example key refused, a warning for an open server, bounds on
stop strings and stop_token_ids, the docs behind the key unless public_docs, Retry-After while draining."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.settings import SettingsError, load_settings
from inference.limits import MAX_STOP_CHARS, MAX_STOP_TOKEN_IDS

from .conftest import API_KEY, MODEL, start_server

ROOT = Path(__file__).resolve().parents[2]


def example_key() -> str:
    lines = (ROOT / ".env.example").read_text().splitlines()
    (value,) = [line.split("=", 1)[1] for line in lines if line.startswith("GGUF_SERVE_API_KEY=")]
    return value


# -- the key: from a file, never the example ---------------------------------------------------------


def test_api_key_file_from_the_command_line_and_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-from-a-file\n")
    assert load_settings({"api_key_file": str(key_file)}, {}).api_key == "s3cr3t-from-a-file"
    assert load_settings({}, {"GGUF_SERVE_API_KEY_FILE": str(key_file)}).api_key == "s3cr3t-from-a-file"


@pytest.mark.parametrize(
    ("content", "also_key", "expected"),
    [
        (None, False, "api_key_file {file} from command line flag --api-key-file cannot be read"),
        ("  \n", False, "api_key_file {file} from command line flag --api-key-file is empty"),
        ("k", True, "set api_key (environment variable GGUF_SERVE_API_KEY) or api_key_file"),
    ],
)
def test_api_key_file_errors(tmp_path, content, also_key, expected):
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    env = {"GGUF_SERVE_API_KEY": "other"} if also_key else {}
    with pytest.raises(SettingsError) as info:
        load_settings({"api_key_file": str(key_file)}, env)
    assert expected.format(file=key_file) in str(info.value)


def test_the_example_key_is_refused_wherever_it_comes_from(tmp_path):
    key = example_key()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    for cli, env in (
        ({}, {"GGUF_SERVE_API_KEY": key}),
        ({"api_key": key}, {}),
        ({"api_key_file": str(key_file)}, {}),
    ):
        with pytest.raises(SettingsError, match="is the example value from .env.example; generate a key"):
            load_settings(cli, env)
    assert load_settings({"api_key": key + "-but-changed"}, {}).api_key == key + "-but-changed"


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.serve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("flags", "warned"),
    [
        (("--host", "0.0.0.0"), True),
        (("--host", "::"), True),
        (("--host", "my-host.example"), True),
        (("--host", "0.0.0.0", "--api-key", "k"), False),
        (("--host", "127.0.0.1"), False),
        (("--host", "::1"), False),
        (("--host", "localhost"), False),
    ],
)
def test_warns_when_listening_beyond_loopback_without_a_key(tmp_path, flags, warned):
    done = _serve(*flags, "--model", str(tmp_path / "missing.gguf"))  # stops right after the warning
    assert done.returncode == 1 and "model file not found" in done.stderr
    assert ("without an API key: anyone who can reach port 8000" in done.stderr) == warned, done.stderr


# -- bounds on stop conditions (the shared server) --------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
        ({"stop": ["ok", "x" * (MAX_STOP_CHARS + 1)]}, "stop[1]"),
        ({"stop_token_ids": list(range(MAX_STOP_TOKEN_IDS + 1))}, "stop_token_ids"),
    ],
)
@pytest.mark.parametrize("endpoint", ["completions", "chat/completions"])
def test_stop_conditions_are_bounded(http, endpoint, extra, param):
    body = {"model": MODEL, "max_tokens": 1, **extra}
    body |= (
        {"prompt": "Hi"} if endpoint == "completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    )
    r = http.post(f"/v1/{endpoint}", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert "length <=" in r.json()["error"]["message"]


def test_stop_conditions_at_the_bound_are_accepted(http):
    body = {
        "model": MODEL,
        "prompt": "Hi",
        "max_tokens": 1,
        "stop": ["x" * MAX_STOP_CHARS],
        "stop_token_ids": list(range(MAX_STOP_TOKEN_IDS)),
    }
    assert http.post("/v1/completions", json=body).status_code == 200


# -- the docs and the key -----------------------------------------------------------------------------

DOCS = ("/schema/openapi.json", "/schema", "/schema/swagger")


@pytest.mark.parametrize("path", DOCS)
def test_docs_need_the_key_when_one_is_set(server, path):
    r = httpx.get(f"{server.url}{path}", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def public(smollm2_path, tmp_path_factory):
    """A server with a key and public_docs = true; the drain test ends it (so it comes last)."""
    srv = start_server(
        smollm2_path,
        tmp_path_factory.mktemp("public"),
        public_docs="true",
        shutdown_grace_s=6,
        max_num_seqs=2,
    )
    srv.wait_health(200)
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", DOCS)
def test_public_docs_serve_the_docs_without_the_key(public, path):
    assert httpx.get(f"{public.url}{path}", timeout=30).status_code == 200
    assert httpx.get(f"{public.url}/v1/models", timeout=30).status_code == 401  # the API still needs it


def test_draining_503_says_when_to_retry(public):
    """SIGTERM closes the listening socket; a request already on a connection (here: its body still on
    the way) is answered 503 by the drain, with Retry-After so the client tries another replica."""
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", public.port), timeout=30) as conn:
        conn.sendall(head + body[:5])
        time.sleep(0.5)  # the server has the request line and headers
        public.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # draining now
        conn.sendall(body[5:])
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    status, *header_lines = reply.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status == "HTTP/1.1 503 Service Unavailable", reply
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "shutting_down"
    assert headers["retry-after"] == "5"
    assert public.proc.wait(20) == 0
