"""EngineClient: bounded admission, the worker process and its supervisor (heartbeat, restart backoff),
per-request event buffers."""

import asyncio
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import AsyncIterator
from enum import Enum
from pathlib import Path

import msgspec

from inference.engine import worker as worker_mod
from inference.engine.config import EngineConfig
from inference.events import TokenEvent
from inference.forward_config import AdapterForwardConfig
from inference.model.backends import BackendConfig

from .errors import APIError
from .metrics import Metrics

log = logging.getLogger("gguf_serve.engine_client")

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # before replacing the 1st, 2nd, ... crash in a row
STABLE_S = 60.0  # a worker that was ready this long ran stably: the count of crashes in a row restarts


class WorkerState(Enum):
    LOADING = "loading"
    READY = "ready"
    DOWN = "worker_down"
    STOPPED = "shutting_down"


class GenerationFailed(Exception):
    """The request cannot complete (worker died, shutdown, timeout, a choice that ended with an error);
    `status` for a non-streamed reply."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


class _Failure:
    def __init__(self, error: GenerationFailed | APIError):
        self.error = error


class RestartPolicy:
    """How long to wait before replacing a dead worker: not at all after a stable run, then
    RESTART_BACKOFF_S for each further worker that died before becoming ready or within STABLE_S of it."""

    def __init__(self) -> None:
        self.crashes = 0  # workers in a row that died without a stable run

    def delay(self, ran_for: float | None) -> float:
        """Seconds to wait; `ran_for`: how long the dead worker had been ready (None: it never was)."""
        if ran_for is not None and ran_for >= STABLE_S:
            self.crashes = 0
            return 0.0
        self.crashes += 1
        return RESTART_BACKOFF_S[min(self.crashes, len(RESTART_BACKOFF_S)) - 1]


class Generation:
    """One admitted HTTP request: its engine requests (one per prompt) and the events coming back.

    It holds its admission slot until release(): once its response is over, not when the engine is done."""

    def __init__(
        self,
        client: "EngineClient",
        configs: tuple[AdapterForwardConfig, ...],
        timeout_s: float,
        buffer_events: int,
    ):
        self.client = client
        self.configs = configs
        self.num_seqs = sum(c.n for c in configs)
        self.admitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self._deadline = self.admitted_at + timeout_s
        self._buffer_events = buffer_events  # per choice; beyond: the client is not reading
        self._queue: asyncio.Queue[TokenEvent | _Failure] = asyncio.Queue()  # bounded in _deliver
        self._open = {(c.request_id, i) for c in configs for i in range(c.n)}  # choices not finished
        self._last_token_at: dict[tuple[str, int], float] = {}
        self.finished = False  # nothing left for the engine: every choice finished, or failed, or aborted
        self.released = False  # its admission slot is free again

    async def events(self) -> AsyncIterator[TokenEvent]:
        """Token events until every choice has finished; GenerationFailed/APIError when it cannot."""
        while True:
            if not self._open and self._queue.empty():
                return
            remaining = self._deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=max(remaining, 0.0))
            except TimeoutError:
                self.close()
                raise GenerationFailed(
                    504, "the request ran past request_timeout_s and was aborted", "timeout"
                ) from None
            if isinstance(item, _Failure):
                raise item.error
            if item.finish_reason == "error":
                self.close()
                raise self._choice_failed(item)
            yield item

    def _choice_failed(self, event: TokenEvent) -> GenerationFailed:
        """A choice the engine ended with an error (its grammar's parser failed mid-output): the request
        fails as a whole, as a 400 naming the grammar's field (the grammar is what the parser gave up on)."""
        (config,) = [c for c in self.configs if c.request_id == event.request_id]
        assert config.grammar is not None, f"{event.request_id}: an error finish without a grammar"
        return GenerationFailed(
            400, event.error or "generation failed", "grammar_error", config.grammar.param
        )

    def close(self) -> None:
        """Aborts whatever has not finished (client gone, timeout, error); idempotent."""
        if not self.finished:
            self.client._abort(self)

    def release(self) -> None:
        """The response is over (its last byte written, or it failed): aborts what has not finished and
        frees the admission slot; idempotent."""
        self.close()
        self.client._release(self)

    # -- called by the client on the event loop ------------------------------------------------------

    def _deliver(self, event: TokenEvent, now: float) -> None:
        if self._queue.qsize() >= self._buffer_events * self.num_seqs:
            self._overflow()
            return
        key = (event.request_id, event.index)
        metrics = self.client.metrics
        if event.token_ids:
            if self.first_token_at is None:
                self.first_token_at = now
                metrics.ttft.observe(now - self.admitted_at)
            elif key in self._last_token_at:
                gap = (now - self._last_token_at[key]) / len(event.token_ids)
                for _ in event.token_ids:
                    metrics.itl.observe(gap)
            self._last_token_at[key] = now
            metrics.generation_tokens += len(event.token_ids)
        self._queue.put_nowait(event)
        if event.finish_reason is not None:
            metrics.finished[event.finish_reason] += 1
            self._open.discard(key)
            if not self._open:
                metrics.e2e.observe(now - self.admitted_at)
                self.client._finished(self)

    def _overflow(self) -> None:
        """The client reads more slowly than the engine produces: abort rather than buffer without end."""
        waiting = self._queue.qsize()
        log.warning("%s: %d events unread by its client; aborted", self.configs[0].request_id, waiting)
        self.client.metrics.aborted["buffer_full"] += 1
        self.close()
        message = (
            f"the client did not read the stream: {waiting} events ({self._buffer_events} per choice) "
            "were waiting; the request was aborted"
        )
        self._fail(GenerationFailed(408, message, "client_not_reading"))

    def _fail(self, error: GenerationFailed | APIError) -> None:
        self._queue.put_nowait(_Failure(error))


class _WorkerHandle:
    """One worker process and the two threads that move bytes over its pipes."""

    def __init__(self, process, inbox, outbox):
        self.process = process
        self.inbox = inbox  # we send on it
        self.outbox = outbox  # we receive on it
        self.outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.ready = False
        self.ready_at: float | None = None  # monotonic time of WorkerReady
        self.last_beat = time.monotonic()  # of its latest message (every message counts as a heartbeat)
        self.stalled = False  # no heartbeat for the stall timeout: killed

    def send(self, data: bytes) -> None:
        self.outgoing.put(data)

    def writer(self) -> None:
        while (data := self.outgoing.get()) is not None:
            try:
                self.inbox.send_bytes(data)
            except OSError:
                return  # the worker is gone; the reader reports it

    def reader(self, on_message, on_exit) -> None:
        decoder = msgspec.msgpack.Decoder(worker_mod.FromWorker)
        try:
            while True:
                on_message(self, decoder.decode(self.outbox.recv_bytes()))
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a corrupt message: treat like a dead worker
            log.exception("cannot decode a message from the worker")
        on_exit(self)


class EngineClient:
    """Admission (max_num_seqs + max_waiting sequences; beyond: 429), the worker, its supervisor."""

    def __init__(
        self,
        model_path: Path,
        *,
        backend: BackendConfig,
        engine_config: EngineConfig,
        max_waiting: int,
        request_timeout_s: float,
        metrics: Metrics,
        log_level: str = "info",
        stream_buffer_events: int = 256,
        stall_timeout_s: float = 30.0,
    ):
        self.model_path = model_path
        self.backend = backend
        self.engine_config = engine_config
        self.capacity = engine_config.max_num_seqs + max_waiting  # sequences admitted at once
        self.request_timeout_s = request_timeout_s
        self.stream_buffer_events = stream_buffer_events
        self.stall_timeout_s = stall_timeout_s
        self.metrics = metrics
        self.log_level = log_level
        self.state = WorkerState.STOPPED
        self.backend_used = ""  # reported by the worker once loaded
        self.stats: worker_mod.EngineStats | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: _WorkerHandle | None = None
        self._by_request: dict[str, Generation] = {}  # engine request id -> its generation
        self._admitted = 0  # sequences of admitted generations not yet released
        self._restarts = RestartPolicy()
        self._down_detail = ""  # why the worker is down, for /health
        self._draining = False
        self._stopping = False
        self._ready_event = asyncio.Event()
        self._encoder = msgspec.msgpack.Encoder()
        self._restart_task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready_event = asyncio.Event()
        self._spawn()
        self._watchdog = asyncio.ensure_future(self._watch())

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def begin_drain(self, grace_s: float) -> None:
        """SIGTERM: admit nothing more; at the deadline fail whatever still runs.

        Called from a signal handler: the deadline is scheduled through the thread-safe path, which
        also wakes the event loop."""
        if self._draining or self._loop is None:
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._schedule_deadline, max(grace_s, 0.0))

    def _schedule_deadline(self, grace_s: float) -> None:
        log.info("draining: %d request(s) in flight, %.1f s grace", len(self._generations()), grace_s)
        error = GenerationFailed(503, "the server is shutting down", "shutting_down")
        asyncio.get_running_loop().call_later(grace_s, self._fail_all, error)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stops the worker (politely, then by force); fails what is left."""
        self._stopping = True
        self._draining = True
        for task in (self._restart_task, self._watchdog):
            if task is not None:
                task.cancel()
        self._fail_all(GenerationFailed(503, "the server is shutting down", "shutting_down"))
        handle, self._worker = self._worker, None
        self.state = WorkerState.STOPPED
        self.metrics.worker_up = 0
        if handle is None:
            return
        handle.send(self._encoder.encode(worker_mod.StopWorker()))
        handle.send(None)
        await asyncio.to_thread(_join_or_kill, handle.process, timeout_s)

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY and not self._draining

    @property
    def health(self) -> str:
        return WorkerState.STOPPED.value if self._draining else self.state.value

    @property
    def health_detail(self) -> str:
        """Why the worker is down (a crash, a stall, the restart delay); "" in every other state."""
        return self._down_detail if self.health == WorkerState.DOWN.value else ""

    @property
    def worker_pid(self) -> int | None:
        return self._worker.process.pid if self._worker else None

    # -- requests --------------------------------------------------------------------------------------

    def submit(self, configs: tuple[AdapterForwardConfig, ...]) -> Generation:
        """Admits a request (429 when full, 503 when not serving) and sends it to the worker."""
        if self._draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if self.state is not WorkerState.READY or self._worker is None:
            message = (
                "the model is still loading"
                if self.state is WorkerState.LOADING
                else "the engine worker is down and restarting"
            )
            raise APIError(503, message, code=self.state.value, headers={"Retry-After": "5"})
        gen = Generation(self, configs, self.request_timeout_s, self.stream_buffer_events)
        if self._admitted + gen.num_seqs > self.capacity:
            self.metrics.rejected["queue_full"] += 1
            raise APIError(
                429,
                f"the server is at capacity ({self.capacity} sequences running or queued); retry later",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self._admitted += gen.num_seqs
        self.metrics.in_flight += 1
        for cfg in configs:
            self._by_request[cfg.request_id] = gen
            self.metrics.prompt_tokens += len(cfg.prompt_ids)
            self._worker.send(self._encoder.encode(worker_mod.AddRequest(cfg)))
        return gen

    def _finished(self, gen: Generation) -> None:
        """The engine has nothing more to do for `gen` (its admission slot is held until _release)."""
        gen.finished = True
        for cfg in gen.configs:
            self._by_request.pop(cfg.request_id, None)

    def _release(self, gen: Generation) -> None:
        assert gen.finished, "released before the engine finished or aborted it"
        if gen.released:
            return
        gen.released = True
        self._admitted -= gen.num_seqs
        self.metrics.in_flight -= 1

    def _abort(self, gen: Generation) -> None:
        unfinished = {request_id for request_id, _ in gen._open}
        self._finished(gen)
        if self._worker is not None:
            for request_id in unfinished:
                self._worker.send(self._encoder.encode(worker_mod.AbortRequest(request_id)))

    def _generations(self) -> list[Generation]:
        return list({id(g): g for g in self._by_request.values()}.values())

    def _fail_all(self, error: GenerationFailed) -> None:
        for gen in self._generations():
            self._abort(gen)
            gen._fail(error)

    # -- the worker ------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        inbox_r, inbox_w = self._ctx.Pipe(duplex=False)
        outbox_r, outbox_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_mod.run,
            name="gguf-serve-worker",
            daemon=True,
            args=(inbox_r, outbox_w, str(self.model_path), self.backend, self.engine_config, self.log_level),
        )
        process.start()
        inbox_r.close()  # the child's ends: closed here so the reader sees EOF when the child dies
        outbox_w.close()
        handle = _WorkerHandle(process, inbox_w, outbox_r)
        self._worker = handle
        self.state = WorkerState.LOADING
        self._down_detail = ""
        threading.Thread(target=handle.writer, name="worker-writer", daemon=True).start()
        threading.Thread(
            target=handle.reader,
            args=(self._from_thread(self._on_message), self._from_thread(self._on_exit)),
            name="worker-reader",
            daemon=True,
        ).start()
        log.info("worker process %d started: loading %s", process.pid, self.model_path)

    def _from_thread(self, fn):
        loop = self._loop
        assert loop is not None

        def call(*args) -> None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass  # the loop is closed: shutting down

        return call

    def _on_message(self, handle: _WorkerHandle, msg) -> None:
        if handle is not self._worker or handle.stalled:
            return
        now = time.monotonic()
        handle.last_beat = now
        if isinstance(msg, worker_mod.WorkerStep):
            self.stats = msg.stats
            self.metrics.set_engine_stats(msg.stats)
            for seconds in msg.queue_times:
                self.metrics.queue.observe(seconds)
            for rej in msg.rejected:
                gen = self._by_request.get(rej.request_id)
                if gen is not None:
                    self._abort(gen)
                    gen._fail(APIError(400, rej.message, param=rej.param, code=rej.code))
            for event in msg.events:
                gen = self._by_request.get(event.request_id)
                if gen is not None:
                    gen._deliver(event, now)
        elif isinstance(msg, worker_mod.WorkerReady):
            handle.ready, handle.ready_at = True, now
            self.backend_used = msg.backend
            self.stats = msg.stats
            self.metrics.set_engine_stats(msg.stats)
            self.metrics.worker_up = 1
            self.state = WorkerState.READY
            self._ready_event.set()
            log.info("worker ready: %s backend, loaded in %.1f s", msg.backend, msg.load_seconds)
        elif isinstance(msg, worker_mod.WorkerFailed):
            log.error("worker reported a failure: %s", msg.message)

    def _on_exit(self, handle: _WorkerHandle) -> None:
        if handle is not self._worker or self._stopping:
            return
        self._worker = None
        handle.send(None)
        self.state = WorkerState.DOWN
        self.metrics.worker_up = 0
        self.metrics.reset_engine_stats()  # a new worker starts its counters from 0
        self._fail_all(
            GenerationFailed(503, "the engine worker process died; the request was aborted", "worker_died")
        )
        ran_for = None if handle.ready_at is None else time.monotonic() - handle.ready_at
        delay = self._restarts.delay(ran_for)
        cause = (
            f"the worker process sent no heartbeat for {self.stall_timeout_s} s; killed it"
            if handle.stalled
            else "the worker process died"
        )
        self._down_detail = (
            f"{cause}; restarting in {delay} s (crash {self._restarts.crashes} in a row)"
            if delay
            else f"{cause}; a new one is starting"
        )
        self._restart_task = asyncio.ensure_future(self._restart(handle, delay))

    async def _restart(self, dead: _WorkerHandle, delay: float) -> None:
        await asyncio.to_thread(_join_or_kill, dead.process, 2.0)
        log.error(
            "worker process %s exited (code %s); restarting in %.1f s",
            dead.process.pid,
            dead.process.exitcode,
            delay,
        )
        await asyncio.sleep(delay)
        if not self._stopping:
            self.metrics.worker_restarts += 1
            self._spawn()

    # -- the heartbeat ---------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Checks the worker's heartbeat four times per stall timeout."""
        while not self._stopping:
            await asyncio.sleep(self.stall_timeout_s / 4)
            self._check_heartbeat(time.monotonic())

    def _check_heartbeat(self, now: float) -> None:
        """A ready worker silent for the stall timeout is hung (or stopped): fail its requests, kill it;
        its reader then sees EOF and _on_exit replaces it."""
        handle = self._worker
        if handle is None or not handle.ready or handle.stalled:
            return
        silent = now - handle.last_beat
        if silent < self.stall_timeout_s:
            return
        log.error(
            "worker process %d sent nothing for %.1f s (worker_stall_timeout_s %.1f): killing it",
            handle.process.pid,
            silent,
            self.stall_timeout_s,
        )
        handle.stalled = True
        self.state = WorkerState.DOWN
        self._down_detail = f"the worker process sent no heartbeat for {self.stall_timeout_s} s; killed it"
        self.metrics.worker_up = 0
        self.metrics.worker_stalls += 1
        message = (
            f"the engine worker stopped responding (no heartbeat for {self.stall_timeout_s} s); "
            "the request was aborted"
        )
        self._fail_all(GenerationFailed(503, message, "worker_stalled"))
        handle.process.kill()  # SIGKILL: a stopped (SIGSTOP) process dies too


def _join_or_kill(process, timeout_s: float) -> None:
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(2.0)
