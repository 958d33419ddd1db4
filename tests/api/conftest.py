"""Real servers for the API tests: `python -m app.serve` under uvicorn on 127.0.0.1 with the real worker
and SmolLM2-135M; the official openai client and httpx talk to them."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from app.metrics import parse

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
MODEL = "smollm2-135m"
LOAD_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """One `gguf-serve serve` process; `log` is its combined stdout/stderr."""

    proc: subprocess.Popen
    port: int
    log: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> int:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code
        except httpx.TransportError:
            return 0  # not listening (yet, or any more)

    def metrics(self) -> dict[str, float]:
        return parse(httpx.get(f"{self.url}/metrics", timeout=5).text)

    def wait_health(self, status: int, timeout: float = LOAD_TIMEOUT_S) -> float:
        """Seconds until /health answers `status`; fails with the server's log when it does not."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            if self.health() == status:
                return time.monotonic() - start
            time.sleep(0.1)
        pytest.fail(f"/health did not become {status} within {timeout} s:\n{self.tail()}")

    def worker_pid(self) -> int:
        """The engine worker: the spawn child that is not multiprocessing's resource tracker."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                return int(pid)
        raise AssertionError(f"no worker among children {children}")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(model_path: Path, log_dir: Path, **settings) -> Server:
    """Starts a server (returns at once; the model loads while /health is 503)."""
    port = free_port()
    flags = {
        "model": str(model_path),
        "served_model_name": MODEL,
        "port": str(port),
        "backend": "numpy",
        "api_key": API_KEY,
        "log_level": "warning",
        **{k: str(v) for k, v in settings.items()},
    }
    argv = [sys.executable, "-m", "app.serve"]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", value]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGUF_SERVE_")}
    log = log_dir / f"server-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return Server(proc, port, log, flags)


@pytest.fixture(scope="session")
def server(smollm2_path, tmp_path_factory):
    """The main server: max_num_seqs 8 + max_waiting 4 = 12 sequences admitted; beyond them, 429."""
    srv = start_server(
        smollm2_path,
        tmp_path_factory.mktemp("server"),
        max_num_seqs=8,
        max_waiting=4,
        kv_cache_tokens=8192,
        request_timeout_s=120,
        shutdown_grace_s=5,
    )
    srv.wait_health(200)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def sse_data(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent-event stream, in order (including "[DONE]")."""
    out, lines = [], []
    for line in response.iter_lines():
        if line:
            lines.append(line)
            continue
        out += [entry[len("data: ") :] for entry in lines if entry.startswith("data: ")]
        lines = []
    out += [entry[len("data: ") :] for entry in lines if entry.startswith("data: ")]
    return out
