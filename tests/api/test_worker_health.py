"""A hung worker is detected (issue 13 item 5) and a crashing one restarts with backoff (item 2): the
worker beats while idle and busy; with no beat for worker_stall_timeout_s /health is 503, in-flight requests
get a 503 or an SSE error frame, the supervisor kills the worker (SIGKILL) and starts another."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.engine_client import RESTART_BACKOFF_S, STABLE_S, RestartPolicy

from .conftest import API_KEY, MODEL, start_server

STALL_S = 3.0
MARGIN_S = 2.0  # the supervisor checks 4 times per timeout; the rest is a loaded machine's slack
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}


@pytest.fixture(scope="module")
def hung(smollm2_path, tmp_path_factory):
    srv = start_server(
        smollm2_path,
        tmp_path_factory.mktemp("hung"),
        max_num_seqs=4,
        kv_cache_tokens=8192,
        worker_stall_timeout_s=STALL_S,
    )
    srv.wait_health(200)
    yield srv
    srv.stop()


def _non_streamed(srv, out: dict) -> None:
    r = httpx.post(f"{srv.url}/v1/completions", json=LONG, headers=HEADERS, timeout=120)
    out["status"], out["body"] = r.status_code, r.json()


def _streamed(srv, out: dict) -> None:
    out["data"] = []
    body = {**LONG, "stream": True}
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, headers=HEADERS, timeout=120) as r:
        out["status"] = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: "):
                out["data"].append(line[6:])


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)  # a test that failed leaves no stopped process behind
    except ProcessLookupError:
        pass


def test_a_stopped_worker_is_detected_killed_and_replaced(hung):
    pid = hung.worker_pid()
    plain, stream = {}, {}
    jobs = ((_non_streamed, plain), (_streamed, stream))
    threads = [threading.Thread(target=f, args=(hung, out)) for f, out in jobs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while hung.metrics()["gguf_serve_requests_running"] < 2 or not stream.get("data"):
        assert time.monotonic() < deadline, hung.tail()
        time.sleep(0.05)
    os.kill(pid, signal.SIGSTOP)
    try:
        detected = hung.wait_health(503, timeout=STALL_S + MARGIN_S)
        health = httpx.get(f"{hung.url}/health", timeout=5).json()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "an in-flight request hung on the stopped worker"
    finally:
        _resume(pid)
    print(f"stall detected {detected:.2f} s after SIGSTOP (timeout {STALL_S} s)")
    assert health["status"] == "worker_down"
    assert health["detail"].startswith(f"the worker process sent no heartbeat for {STALL_S} s; killed it")
    message = f"the engine worker stopped responding (no heartbeat for {STALL_S} s); the request was aborted"
    assert plain["status"] == 503
    assert plain["body"]["error"] == {
        "message": message,
        "type": "server_error",
        "param": None,
        "code": "worker_stalled",
    }
    assert stream["status"] == 200 and stream["data"][-1] == "[DONE]"
    assert json.loads(stream["data"][-2])["error"]["code"] == "worker_stalled"
    hung.wait_health(200, timeout=120)
    assert hung.worker_pid() != pid and not Path(f"/proc/{pid}").exists()  # killed and reaped
    m = hung.metrics()
    assert (m["gguf_serve_worker_stalls_total"], m["gguf_serve_worker_restarts_total"]) == (1, 1)
    r = httpx.post(f"{hung.url}/v1/completions", json={**LONG, "max_tokens": 2}, headers=HEADERS, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_an_idle_worker_keeps_beating(hung):
    hung.wait_health(200, timeout=120)
    time.sleep(STALL_S * 2)  # nothing to do: a worker blocked on its inbox still beats
    assert hung.health() == 200
    assert hung.metrics()["gguf_serve_worker_stalls_total"] == 1  # the stall of the test above only


# -- repeated crashes -------------------------------------------------------------------------------


def test_restart_policy_backs_off_on_repeated_crashes_and_resets_after_a_stable_run():
    policy = RestartPolicy()
    assert policy.delay(ran_for=STABLE_S + 1) == 0.0  # one crash after a stable run: replaced at once
    delays = [policy.delay(ran_for=5.0) for _ in range(3)] + [policy.delay(ran_for=None) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0]
    assert list(RESTART_BACKOFF_S) == [0.5, 1.0, 2.0, 5.0, 10.0, 30.0]
    assert policy.delay(ran_for=STABLE_S) == 0.0  # a stable run resets the count
    assert policy.delay(ran_for=0.0) == 0.5


def test_a_worker_that_crashes_repeatedly_restarts_with_backoff(smollm2_path, tmp_path):
    srv = start_server(smollm2_path, tmp_path, max_num_seqs=2, kv_cache_tokens=2048)
    try:
        srv.wait_health(200)
        waited = []
        for _ in range(3):  # each worker killed as soon as it is ready: well within STABLE_S
            pid = srv.worker_pid()
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            srv.wait_health(503, timeout=10)
            detail = httpx.get(f"{srv.url}/health", timeout=5).json()["detail"]
            while not _new_worker(srv, pid):
                assert time.monotonic() - killed < 60, srv.tail()
                time.sleep(0.02)
            waited.append((time.monotonic() - killed, detail))
            srv.wait_health(200)
        print("restarts:", waited)
        expected = RESTART_BACKOFF_S[:3]
        for crash, ((seconds, detail), delay) in enumerate(zip(waited, expected, strict=True), 1):
            assert detail == f"the worker process died; restarting in {delay} s (crash {crash} in a row)"
            assert seconds >= delay, waited
        assert srv.metrics()["gguf_serve_worker_restarts_total"] == 3
    finally:
        srv.stop()


def _new_worker(srv, old_pid: int) -> bool:
    try:
        return srv.worker_pid() != old_pid
    except AssertionError:  # between the two workers
        return False
