"""The worker process: owns the Engine. Loop: drain configs/aborts -> engine.step() -> publish events.

Messages cross both pipes as msgpack-encoded msgspec Structs (tagged unions), one message per
send_bytes. The API process starts run() in a `spawn` child (engine_client.py).
"""

import logging
import signal
import time
import traceback
from multiprocessing.connection import Connection

import msgspec

from ..errors import ContextLengthError, RequestError
from ..events import TokenEvent
from ..forward_config import AdapterForwardConfig
from ..model.backends import BackendConfig
from .config import EngineConfig  # a Struct the API process builds and sends as it is
from .stats import EngineStats  # engine.stats() crosses as it is (stats.py imports no engine code)

log = logging.getLogger("gguf_serve.worker")

HEARTBEAT_S = 1.0  # the loop sends a Heartbeat this often, idle or busy (engine_client checks it)


# -- API process -> worker -------------------------------------------------------------------------


class AddRequest(msgspec.Struct, tag="add"):
    config: AdapterForwardConfig


class AbortRequest(msgspec.Struct, tag="abort"):
    request_id: str


class StopWorker(msgspec.Struct, tag="stop"):
    pass


ToWorker = AddRequest | AbortRequest | StopWorker


# -- worker -> API process -------------------------------------------------------------------------


class WorkerReady(msgspec.Struct, tag="ready"):
    backend: str  # the backend actually used ("auto" resolved)
    load_seconds: float
    stats: EngineStats


class Rejection(msgspec.Struct):
    request_id: str
    message: str
    param: str | None
    code: str | None


class WorkerStep(msgspec.Struct, tag="step"):
    events: list[TokenEvent]
    stats: EngineStats
    queue_times: list[float]  # seconds from arrival to first schedule, for requests first scheduled now
    rejected: list[Rejection]


class WorkerFailed(msgspec.Struct, tag="failed"):
    message: str  # the worker exits after sending this


class Heartbeat(msgspec.Struct, tag="beat"):
    """The loop is alive; sent every HEARTBEAT_S whatever else is sent."""


FromWorker = WorkerReady | WorkerStep | WorkerFailed | Heartbeat


class Worker:
    """The loop around one Engine; blocking on the inbox only while the engine has nothing to do."""

    def __init__(self, engine, inbox: Connection, outbox: Connection):
        self.engine = engine
        self.inbox = inbox
        self.outbox = outbox
        self._decoder = msgspec.msgpack.Decoder(ToWorker)
        self._encoder = msgspec.msgpack.Encoder()
        self._arrived: dict[str, float] = {}  # request id -> arrival time, until first scheduled
        self._rejected: list[Rejection] = []
        self._stopping = False
        self._beat_at = 0.0  # monotonic time of the last Heartbeat

    def serve_forever(self) -> None:
        while not self._stopping:
            changed = self._drain(block=not self.engine.has_unfinished())
            if self._stopping:
                break
            started = time.monotonic()
            events = self.engine.step() if self.engine.has_unfinished() else []
            if events or changed or self._rejected:
                self._publish(events, started)
            self._beat()

    def _drain(self, block: bool) -> bool:
        """Handles every waiting message (waiting up to HEARTBEAT_S for one when `block`); True if any
        arrived."""
        got = False
        while self.inbox.poll(HEARTBEAT_S if block and not got else 0):
            self._handle(self._decoder.decode(self.inbox.recv_bytes()))
            got = True
            if self._stopping:
                break
        return got

    def _beat(self) -> None:
        """A Heartbeat when HEARTBEAT_S has passed since the last: a hung loop sends none."""
        now = time.monotonic()
        if now - self._beat_at >= HEARTBEAT_S:
            self.outbox.send_bytes(self._encoder.encode(Heartbeat()))
            self._beat_at = now

    def _handle(self, msg: ToWorker) -> None:
        if isinstance(msg, AddRequest):
            self._add(msg.config)
        elif isinstance(msg, AbortRequest):
            self._arrived.pop(msg.request_id, None)
            self.engine.abort(msg.request_id)
        else:
            self._stopping = True

    def _add(self, cfg: AdapterForwardConfig) -> None:
        try:
            self.engine.add_request(cfg)
        except RequestError as exc:
            code = exc.code or ("context_length_exceeded" if isinstance(exc, ContextLengthError) else None)
            self._rejected.append(Rejection(cfg.request_id, exc.message, exc.param, code))
            return
        self._arrived[cfg.request_id] = time.monotonic()

    def _publish(self, events: list[TokenEvent], step_started: float) -> None:
        for e in events:
            if e.finish_reason is not None:
                self._arrived.pop(e.request_id, None)
        msg = WorkerStep(events, self.engine.stats(), self._queue_times(step_started), self._rejected)
        self._rejected = []
        self.outbox.send_bytes(self._encoder.encode(msg))

    def _queue_times(self, step_started: float) -> list[float]:
        """Queue time of requests the scheduler admitted in this step (they now have running sequences)."""
        if not self._arrived:
            return []
        running = self.engine.running_request_ids()
        out = []
        for request_id in [r for r in self._arrived if r in running]:
            out.append(max(step_started - self._arrived.pop(request_id), 0.0))
        return out


def run(
    inbox: Connection,
    outbox: Connection,
    model_path: str,
    backend: BackendConfig,
    engine_config: EngineConfig,
    log_level: str = "info",
) -> None:
    """Process entry point: load the engine, report ready, serve until told to stop or the API goes away.
    The engine is imported here only, never by the API process (EngineConfig lives apart from it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the API process decides
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s [worker] %(message)s")
    encoder = msgspec.msgpack.Encoder()
    try:
        from .engine import Engine

        started = time.monotonic()
        engine = Engine.load(model_path, backend=backend, config=engine_config)
        used = engine.backend_name
        outbox.send_bytes(encoder.encode(WorkerReady(used, time.monotonic() - started, engine.stats())))
        log.info("engine ready (%s backend) in %.1f s", used, time.monotonic() - started)
        Worker(engine, inbox, outbox).serve_forever()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the API process went away: nothing left to serve
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit non-zero for the supervisor
        log.error("worker failed:\n%s", traceback.format_exc())
        try:
            outbox.send_bytes(encoder.encode(WorkerFailed(f"{type(exc).__name__}: {exc}")))
        except OSError:
            pass
        raise SystemExit(1) from None
