"""Ingest workers (`--ingest-workers N`): webcam WebRTC sessions answered in N child processes.

One event loop and one GIL carry every stream's packets (ICE, DTLS, SRTP, RTP, the jitter
buffer, the data channel) and the Python side of its analysis; past about 16 streams on 2 cores
they fall behind before the CPU is used up (docs/performance.md). With workers, the API process
keeps HTTP, cameras, their viewers and uploads, and forwards each webcam offer to the
least-loaded worker. A worker is `python -m stream_server.shell.workers`: a `Service` of its own
(bundle, sessions, engine, face stage) and the same `PeerSession` as one process, answering
with its own ICE candidates, so media and scores go between the browser and that worker
directly; the API process never sees a packet.

The API talks to a worker over the worker's stdin and stdout, one JSON object a line (the
worker's own stdout is pointed at its stderr, so nothing it prints can garble the protocol):

- the first line is the settings (base64 of a pickled `Settings`);
- requests `{"id", "op": "offer", "sdp"}` (answered with `sdp`, `type`, `stream`, or `error`
  with an HTTP `status`), `{"id", "op": "close", "stream"}`, `{"id", "op": "metrics"}`
  (answered with `text`: the worker's Prometheus exposition);
- events `{"event": "ready", "pid"}` once its model is warm and `{"event": "ended", "stream"}`
  when a session has closed there.

A worker exits when its stdin closes (the API stopped, or died). A worker that dies is started
again (after 1 s, doubling to 30 s while it keeps dying before it is ready); its sessions end,
and `GET /v1/sessions/{id}` answers them `ended` with the `error` message their data channel
could no longer carry, as on a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import pickle
import signal
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from aiortc import RTCSessionDescription

from stream_server.core.messages import StatusMessage
from stream_server.core.metrics import merge_exposition, monotonic_part
from stream_server.shell.service import Capacity, EndedSessions, Service
from stream_server.shell.settings import Settings
from stream_server.shell.webrtc import NoCandidate, OfferError

log = logging.getLogger(__name__)

# How a worker is started: `python -m` this module, or the module DEEPFAKE_WORKER_MODULE names
# (the capacity benchmark's `bench.serve`, which names the worker's threads for the OS).
WORKER_COMMAND = [
    sys.executable,
    "-m",
    os.environ.get("DEEPFAKE_WORKER_MODULE") or "stream_server.shell.workers",
]
READ_LIMIT = 16 * 1024 * 1024  # the longest protocol line (an SDP is at most 64 KiB)
START_SECONDS = 180.0  # the longest a worker may take to load and warm its model
CALL_SECONDS = 30.0  # the longest an offer waits for its worker's answer
BACKOFF_MAX = 30.0
ENDED_KEPT = 512  # ended sessions whose state /v1/sessions still answers


class WorkerGone(Exception):
    """The worker died (or was stopped) before it answered."""


class Worker:
    """The API's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.sessions: dict[str, WorkerSession] = {}
        self.reserved = 0  # offers forwarded and not answered yet
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.starts = 0
        self.ready_once = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        # the last exposition the running process answered (for `WorkerPool.metrics`; cleared
        # when the process exits)
        self.last_metrics: str | None = None

    @property
    def load(self) -> int:
        return len(self.sessions) + self.reserved

    def snapshot(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.proc.pid if self.proc is not None else None,
            "ready": self.ready,
            "streams": len(self.sessions),
            "restarts": max(0, self.starts - 1),
        }


class WorkerPool:
    """N worker processes, started with the API (`start`) and stopped with it (`stop`)."""

    def __init__(self, service: Service, count: int) -> None:
        self.service = service
        self.settings = replace(service.settings, ingest_workers=1)
        self.workers = [Worker(i) for i in range(count)]
        self.ended = EndedSessions(ENDED_KEPT)
        self.stopping = False
        self.starting = False
        self._start_failed: asyncio.Event | None = None
        self._ids = 0
        self._restarts: set[asyncio.Task[None]] = set()
        # counters and histograms of worker processes that have exited, as last scraped, so
        # the summed /metrics counters never go down when a worker is started again
        self.retired = ""

    def any_ready(self) -> bool:
        return any(w.ready for w in self.workers)

    def snapshot(self) -> list[dict[str, Any]]:
        return [w.snapshot() for w in self.workers]

    async def start(self) -> None:
        """Start every worker and wait until each has its model warm (RuntimeError, at once,
        when one exits before it is ready: a worker that cannot start is not retried here)."""
        self.starting = True
        failed = self._start_failed = asyncio.Event()
        for w in self.workers:
            await self._spawn(w)
        waits = [asyncio.ensure_future(w.ready_once.wait()) for w in self.workers]
        all_ready = asyncio.ensure_future(asyncio.wait(waits))
        failure = asyncio.ensure_future(failed.wait())
        await asyncio.wait(
            [all_ready, failure], timeout=START_SECONDS, return_when="FIRST_COMPLETED"
        )
        self.starting = False
        for fut in (*waits, all_ready, failure):
            fut.cancel()
        not_ready = [w.index for w in self.workers if not w.ready_once.is_set()]
        if not_ready:
            await self.stop()
            why = (
                "exited before it was ready"
                if failed.is_set()
                else (f"did not start within {START_SECONDS:g} s")
            )
            raise RuntimeError(
                f"ingest worker {not_ready[0]} {why} ({len(not_ready)} of {len(self.workers)} "
                "not ready; see the log lines above)"
            )
        log.info(
            "%d ingest workers ready (pids %s)",
            len(self.workers),
            ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None),
        )

    async def _spawn(self, w: Worker) -> None:
        w.starts += 1
        w.proc = await asyncio.create_subprocess_exec(
            *WORKER_COMMAND,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=READ_LIMIT,
        )
        assert w.proc.stdin is not None
        w.proc.stdin.write(base64.b64encode(pickle.dumps(self.settings)) + b"\n")
        await w.proc.stdin.drain()
        w.reader = asyncio.get_running_loop().create_task(
            self._read(w, w.proc), name=f"ingest-worker-{w.index}"
        )

    async def _read(self, w: Worker, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        started = time.monotonic()
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, OSError):  # a line over READ_LIMIT, or the pipe broke
                log.exception("ingest worker %d: unreadable output", w.index)
                proc.kill()
                break
            if not line:
                break
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                log.warning("ingest worker %d: not a protocol line: %.120r", w.index, line)
                continue
            event = msg.get("event")
            if event == "ready":
                w.ready = True
                w.ready_once.set()
            elif event == "ended":
                session = w.sessions.pop(str(msg.get("stream")), None)
                if session is not None:
                    session.ended(None)
            else:
                fut = w.pending.pop(msg.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        code = await proc.wait()
        self._lost(w, code, time.monotonic() - started)

    def _lost(self, w: Worker, code: int, lived: float) -> None:
        """`w`'s process has exited: fail what waited on it, end its sessions, start it again."""
        was_ready, w.ready = w.ready, False
        if w.last_metrics is not None:
            dead = monotonic_part(w.last_metrics)
            self.retired = merge_exposition([self.retired, dead]).decode("utf-8")
            w.last_metrics = None
        for fut in w.pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone(f"ingest worker {w.index} exited (code {code})"))
        w.pending.clear()
        sessions = list(w.sessions.values())
        w.sessions.clear()
        for session in sessions:
            session.ended(
                StatusMessage(
                    "error",
                    session.id,
                    f"the server's ingest worker {w.index} for this session stopped (exit code "
                    f"{code}): the session has ended; connect again",
                )
            )
        if self.stopping:
            return
        if self.starting and not w.ready_once.is_set():
            log.error("ingest worker %d exited with code %s before it was ready", w.index, code)
            if self._start_failed is not None:
                self._start_failed.set()
            return
        log.warning(
            "ingest worker %d (pid %s) exited with code %s: %d session(s) ended; starting it again",
            w.index,
            w.proc.pid if w.proc is not None else "?",
            code,
            len(sessions),
        )
        delay = 1.0 if was_ready or lived > BACKOFF_MAX else min(BACKOFF_MAX, 2.0**w.starts)
        task = asyncio.get_running_loop().create_task(self._restart(w, delay))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, w: Worker, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self.stopping:
            try:
                await self._spawn(w)
            except OSError:
                log.exception("ingest worker %d: could not be started", w.index)

    async def call(self, w: Worker, op: str, within: float = CALL_SECONDS, **args: Any) -> Any:
        """Send `op` to `w` and wait for its reply (WorkerGone when it dies first)."""
        proc = w.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise WorkerGone(f"ingest worker {w.index} is not running")
        self._ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        w.pending[self._ids] = fut
        try:
            proc.stdin.write(json.dumps({"id": self._ids, "op": op, **args}).encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, OSError) as exc:
            w.pending.pop(self._ids, None)
            raise WorkerGone(f"ingest worker {w.index} is not running") from exc
        return await asyncio.wait_for(fut, within)

    def pick(self) -> Worker:
        ready = [w for w in self.workers if w.ready]
        if not ready:
            raise Capacity("no ingest worker is ready (starting, or restarting after a crash)")
        return min(ready, key=lambda w: (w.load, w.index))

    def session_state(self, stream: str) -> dict[str, Any] | None:
        for w in self.workers:
            if stream in w.sessions:
                return {"stream": stream, "state": "live", "worker": w.index}
        return self.ended.state(stream)

    async def metrics(self) -> list[str]:
        """Every ready worker's Prometheus exposition, plus what exited workers had counted.
        Counters stay monotonic across a restart: an exited process's counters and histograms
        (as last scraped) are kept in the sum, and a worker that does not answer within 2 s is
        represented by its last answer's counters (its gauges are left out of that scrape)."""

        async def one(w: Worker) -> str | None:
            proc = w.proc
            try:
                r = await self.call(w, "metrics", within=2.0)
            except WorkerGone:
                return None
            except TimeoutError:
                return monotonic_part(w.last_metrics) if w.last_metrics else None
            text = str(r.get("text", ""))
            # not when the process exited while this answer waited to be read: `_lost` has
            # already kept its last counters, and a later exit would count them twice
            if text and proc is w.proc and proc is not None and proc.returncode is None:
                w.last_metrics = text
            return text or None

        texts = await asyncio.gather(*(one(w) for w in self.workers if w.ready))
        return [t for t in (*texts, self.retired) if t]

    async def stop(self) -> None:
        """Close every worker's stdin (it closes its sessions and exits); kill what is still
        running 10 s later."""
        self.stopping = True
        for task in list(self._restarts):
            task.cancel()
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                log.warning("ingest worker pid %d did not stop: killed", proc.pid)
                proc.kill()
                await proc.wait()
        for w in self.workers:
            if w.reader is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(w.reader, 2)


class WorkerSession:
    """The API's side of one webcam session in a worker: what `/offer` needs of a session (id,
    answer, close). Takes its slot of --max-streams when it is made (Capacity when there is
    none)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.service = pool.service
        self.service._check_room()
        self.worker = pool.pick()
        self.id = ""
        self.closed = False
        self._slot = f"offer-{uuid.uuid4().hex[:12]}"
        self.service.remote_streams[self._slot] = self
        self.worker.reserved += 1

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        w = self.worker
        try:
            r = await self.pool.call(w, "offer", sdp=offer.sdp)
        except (WorkerGone, TimeoutError) as exc:
            why = str(exc) or "timeout"
            raise Capacity(f"the ingest worker did not answer the offer: {why}") from exc
        finally:
            w.reserved -= 1
        if "error" in r:
            raise {400: OfferError, 500: NoCandidate}.get(r.get("status", 503), Capacity)(
                r["error"]
            )
        self.id = str(r["stream"])
        self.service.remote_streams.pop(self._slot, None)
        self._slot = self.id
        self.service.remote_streams[self.id] = self
        self.service.owners[self.id] = self  # closed at shutdown
        w.sessions[self.id] = self
        return RTCSessionDescription(sdp=r["sdp"], type=r["type"])

    def ended(self, message: StatusMessage | None) -> None:
        """The session has closed in its worker (`message`: why, when the worker died)."""
        self.closed = True
        self.service.remote_streams.pop(self._slot, None)
        if self.id:
            self.service.owners.pop(self.id, None)
            self.pool.ended.add(self.id, message)

    async def close(self) -> None:
        if self.closed:
            return
        if self.id and self.worker.sessions.pop(self.id, None) is not None:
            with contextlib.suppress(WorkerGone, TimeoutError):
                await self.pool.call(self.worker, "close", within=5.0, stream=self.id)
        self.ended(None)


# ---- the worker process ---------------------------------------------------------------------


class _Channel:
    """The worker's side of the protocol: JSON lines to the API on a file descriptor of its own."""

    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "wb", buffering=0)

    def send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\n"
        view = memoryview(data)
        while view:
            view = view[self.out.write(view) or 0 :]


async def _serve(settings: Settings, channel: _Channel) -> None:
    from stream_server.shell.webrtc import PeerSession, answer_here, configure_ice

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    configure_ice(settings)
    service = Service(settings)
    service.start()
    sessions: dict[str, PeerSession] = {}
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def follow(session: PeerSession) -> None:
        await session.ended.wait()
        sessions.pop(session.id, None)
        channel.send({"event": "ended", "stream": session.id})

    async def handle(msg: dict[str, Any]) -> None:
        rid, op = msg.get("id"), msg.get("op")
        if op == "offer":
            try:
                session = PeerSession(service, settings)
            except Capacity as exc:
                channel.send({"id": rid, "error": str(exc), "status": 503})
                return
            r = await answer_here(session, str(msg.get("sdp", "")))
            if "error" not in r:
                sessions[session.id] = session
                spawn(follow(session))
            channel.send({"id": rid, **r})
        elif op == "close":
            found = sessions.get(str(msg.get("stream")))
            if found is not None:
                await found.close()
            channel.send({"id": rid, "closed": found is not None})
        elif op == "metrics":
            channel.send({"id": rid, "text": service.metrics.render().decode("utf-8")})
        else:
            channel.send({"id": rid, "error": f"unknown op {op!r}", "status": 500})

    channel.send({"event": "ready", "pid": os.getpid()})
    try:
        while line := await reader.readline():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                log.warning("ingest worker: not a protocol line: %.120r", line)
                continue
            spawn(handle(msg))
    finally:
        await service.close()
        for task in list(tasks):
            task.cancel()


def main() -> int:
    """The worker process: settings on the first line of stdin, then requests (module doc)."""
    rpc = os.dup(1)
    os.dup2(2, 1)  # whatever the worker prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the API, which stops us
    first = _read_line(0)  # unbuffered: the rest of stdin is the event loop's
    if not first:
        return 0
    settings: Settings = pickle.loads(base64.b64decode(first))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s",
    )
    from stream_server.shell.server import apply_log_format, quiet_chatty_loggers

    apply_log_format(settings.log_format)
    quiet_chatty_loggers(settings.log_level)
    loop_factory = None
    if settings.event_loop == "uvloop" or (
        settings.event_loop == "auto" and importlib_has("uvloop")
    ):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(settings, _Channel(rpc)))
    return 0


def _read_line(fd: int) -> bytes:
    out = bytearray()
    while not out.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        out += byte
    return bytes(out)


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
