"""Clients that stop reading cannot pin memory (issue 13 item 4): a stream whose client has not read for
stream_idle_timeout_s is aborted in the engine (its KV blocks freed) and counted in /metrics; admission
counts a request until its last byte is written; each request buffers a bounded number of events."""

import json
import socket
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from app.engine_client import EngineClient, GenerationFailed, WorkerState
from app.metrics import Metrics
from inference.engine import worker as worker_mod
from inference.engine.config import EngineConfig
from inference.events import TokenEvent
from inference.forward_config import AdapterForwardConfig
from inference.model.backends import BackendConfig

from .conftest import API_KEY, MODEL, start_server

IDLE_S = 2.0
IDLE = 'gguf_serve_requests_aborted_total{reason="client_idle"}'
DASHES = "-" * 40_000  # ~640 tokens, echoed as 40 KB: a few choices of it fill the socket at once


@pytest.fixture(scope="module")
def slow(smollm2_path, tmp_path_factory):
    """Four sequences admitted at once, none waiting: a request with n = 4 fills the server."""
    srv = start_server(
        smollm2_path,
        tmp_path_factory.mktemp("slow"),
        max_num_seqs=4,
        max_waiting=0,
        kv_cache_tokens=8192,
        stream_idle_timeout_s=IDLE_S,
    )
    srv.wait_health(200)
    yield srv
    srv.stop()


def unread_stream(srv, body: dict) -> socket.socket:
    """Sends a streamed completion on a socket that never reads. A 1 KB receive buffer and 536-byte
    segments keep the kernel from absorbing megabytes: the server's writes block after ~100 KB."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", srv.port))
    payload = json.dumps({"model": MODEL, "stream": True, **body}).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def wait_metric(srv, name: str, value: float, timeout: float) -> float:
    """Seconds until /metrics shows `name` == value; fails with the metrics and the log otherwise."""
    start = time.monotonic()
    while (m := srv.metrics()).get(name, 0.0) != value:
        if time.monotonic() - start > timeout:
            gauges = ("gguf_serve_requests", "gguf_serve_kv_cache_blocks")
            shown = {k: v for k, v in m.items() if k.startswith(gauges)}
            pytest.fail(f"{name} is not {value} after {timeout} s: {shown}\n{srv.tail(20)}")
        time.sleep(0.1)
    return time.monotonic() - start


def complete(srv, n: int) -> httpx.Response:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "n": n, "temperature": 0}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.post(f"{srv.url}/v1/completions", json=body, headers=headers, timeout=60)


def test_a_stream_whose_client_stops_reading_is_aborted_and_its_slot_freed(slow):
    before = slow.metrics()
    body = {"prompt": DASHES, "echo": True, "max_tokens": 2000, "n": 4, "ignore_eos": True}
    sent = time.monotonic()
    sock = unread_stream(slow, body)
    try:
        wait_metric(slow, "gguf_serve_requests_running", 4, timeout=60)
        wait_metric(slow, IDLE, before.get(IDLE, 0.0) + 1, timeout=90)
        seconds = time.monotonic() - sent
        assert slow.metrics()["gguf_serve_requests_in_flight"] == 0
        for name in ("requests_running", "requests_waiting", "kv_cache_blocks_used"):  # the worker's report
            wait_metric(slow, f"gguf_serve_{name}", 0, timeout=10)
        after = slow.metrics()
        generated = after["gguf_serve_generation_tokens_total"] - before["gguf_serve_generation_tokens_total"]
        assert generated < 4 * 2000, f"aborted only after the whole generation ({generated} tokens)"
        assert seconds >= IDLE_S  # not before the client could have been idle for the timeout
        r = complete(slow, n=4)  # the four sequences it held are free
        assert r.status_code == 200, r.text
        assert slow.health() == 200
    finally:
        sock.close()


def test_admission_counts_a_request_until_its_last_byte_is_written(slow):
    """The engine finishes at once (max_tokens 1), but the echoed prompts (4 x 40 KB) stay unwritten:
    the request keeps its four sequences until it is aborted as idle."""
    before = slow.metrics()
    finished = 'gguf_serve_request_finished_total{finish_reason="length"}'
    body = {"prompt": DASHES, "max_tokens": 1, "n": 4, "echo": True}
    sock = unread_stream(slow, body)
    try:
        wait_metric(slow, finished, before.get(finished, 0.0) + 4, timeout=60)
        r = complete(slow, n=1)
        assert r.status_code == 429, f"admitted while 4 sequences' output was unwritten: {r.status_code}"
        assert slow.metrics()["gguf_serve_requests_in_flight"] == 1
        wait_metric(slow, IDLE, before.get(IDLE, 0.0) + 1, timeout=30)
        assert complete(slow, n=1).status_code == 200
    finally:
        sock.close()


# -- the bound on one request's buffered events (no worker: a stand-in handle records what is sent) ------


class _Recorder:
    def __init__(self):
        self.sent: list = []
        self.ready = True

    def send(self, data: bytes) -> None:
        self.sent.append(msgspec.msgpack.decode(data, type=worker_mod.ToWorker))


async def test_a_request_buffers_at_most_stream_buffer_events_per_choice():
    metrics = Metrics(MODEL)
    client = EngineClient(
        Path("unused.gguf"),
        backend=BackendConfig(name="numpy"),
        engine_config=EngineConfig(max_num_seqs=4),
        max_waiting=0,
        request_timeout_s=60,
        metrics=metrics,
        stream_buffer_events=3,
    )
    client._worker, client.state = _Recorder(), WorkerState.READY
    gen = client.submit((AdapterForwardConfig(request_id="r", prompt_ids=(1, 2), max_tokens=100, n=2),))
    now = time.monotonic()
    for i in range(6):  # 3 per choice: the bound, still buffered
        gen._deliver(TokenEvent(request_id="r", index=i % 2, token_ids=[i], text="x"), now)
    assert [type(m) for m in client._worker.sent] == [worker_mod.AddRequest]
    gen._deliver(TokenEvent(request_id="r", index=0, token_ids=[6], text="x"), now)  # one beyond it
    assert client._worker.sent[1:] == [worker_mod.AbortRequest("r")]
    assert metrics.aborted == {"buffer_full": 1}
    received = []
    with pytest.raises(GenerationFailed) as info:
        async for event in gen.events():
            received.append(event.token_ids[0])
    assert received == [0, 1, 2, 3, 4, 5]  # what was buffered, then the error
    assert (info.value.status, info.value.code) == (408, "client_not_reading")
    assert info.value.message == (
        "the client did not read the stream: 6 events (3 per choice) were waiting; the request was aborted"
    )
    assert client._admitted == 2  # held until the response is over
    gen.release()
    assert (client._admitted, metrics.in_flight) == (0, 0)
