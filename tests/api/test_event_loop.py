"""The event loop never does heavy work: while a multi-megabyte body is decoded, checked, rendered and
tokenized, /health still answers within 100 ms (probed every 5 ms, from another thread)."""

import json
import threading
import time

import httpx
import pytest

from .conftest import API_KEY, MODEL

HEALTH_LIMIT_S = 0.100
ONE_CHAR_PROMPTS = 700_000  # 2.8 MB: '"a",' each
WORDS = "the quick brown fox jumps over the lazy dog " * 64_000  # 2.8 MB of text, ~640k tokens


def _body(**fields) -> bytes:
    return json.dumps({"model": MODEL, **fields}, separators=(",", ":")).encode()


# name: (path, body, status, times sent back to back while /health is probed)
BODIES = {
    # the case: every prompt was tokenized before the prompts x n check (2.1 s on the loop);
    # now refused from a count of the raw bytes in ~0.1 s, so five of them
    "700k prompts": ("/v1/completions", _body(prompt=["a"] * ONE_CHAR_PROMPTS, max_tokens=1), 400, 5),
    "2.8 MB prompt": (
        "/v1/completions",
        _body(prompt=WORDS, max_tokens=1),
        400,
        1,
    ),  # too long, once tokenized
    "2.8 MB tokenize": ("/tokenize", _body(prompt=WORDS), 200, 1),
    "20k messages": (  # rendered off the loop; decoding them on it costs ~1 us per JSON object (~25 ms)
        "/v1/chat/completions",
        _body(
            messages=[{"role": "user", "content": f"{i}: {WORDS[:120]}"} for i in range(20_000)], max_tokens=1
        ),
        400,  # the rendered prompt exceeds the context
        1,
    ),
    "2.8 MB chat tokenize": ("/tokenize", _body(messages=[{"role": "user", "content": WORDS}]), 200, 1),
}


class Prober(threading.Thread):
    """GET /health every 5 ms until stopped; keeps (start, seconds) of each probe."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopped, self.probes = url, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopped.is_set():
                start = time.monotonic()
                assert client.get("/health").status_code == 200
                self.probes.append((start, time.monotonic() - start))
                time.sleep(0.005)


def measure(url: str, path: str, body: bytes, status: int, times: int) -> tuple[list[float], float]:
    """(seconds of each /health probe that overlapped the requests, the requests' seconds)."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    prober = Prober(url)
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        prober.start()
        time.sleep(0.1)  # a few probes before: the connection is open and warm
        start = time.monotonic()
        responses = [client.post(path, content=body) for _ in range(times)]
        end = time.monotonic()
    time.sleep(0.05)
    prober.stopped.set()
    prober.join()
    assert [r.status_code for r in responses] == [status] * times, responses[0].text[:300]
    return [seconds for at, seconds in prober.probes if at <= end and at + seconds >= start], end - start


@pytest.mark.parametrize("name", list(BODIES))
def test_health_answers_within_100_ms_while_a_huge_body_is_handled(server, name: str):
    path, body, status, times = BODIES[name]
    assert len(body) >= 2_000_000
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        # once before, so that one-time costs (imports, type compilation) are not what is measured
        assert c.post(path, content=body, headers={"Content-Type": "application/json"}).status_code == status
    # A blocked loop delays a probe by the whole request (0.5-4.8 s before the fix); a second measurement
    # only forgives a scheduler hiccup of a loaded machine, never a blocked loop.
    for _ in range(2):
        during, seconds = measure(server.url, path, body, status, times)
        slowest = max(during)
        print(f"{name}: {times} x in {seconds:.3f} s, {len(during)} probes, slowest {slowest * 1e3:.0f} ms")
        if slowest <= HEALTH_LIMIT_S:
            break
    assert slowest <= HEALTH_LIMIT_S, f"/health took {slowest * 1000:.0f} ms ({name}, twice)"
    assert len(during) >= 5, f"only {len(during)} probes during {seconds:.3f} s of requests"
