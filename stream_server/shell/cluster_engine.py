"""One encoder per node on a Ray cluster: crops from all the streams a node runs are encoded
together, as the one `InferenceEngine` batches every stream of a single process.

The API creates a `NodeEngine` actor on every node with `streams` slots (named
`deepfake-engine-<node id>`, pinned to its node, owned by the API so it ends with it). Camera
and webcam actors find their node's engine by name and use `NodeEngineClient` in place of their
own engine: their crops go to the node's engine, which encodes whatever is queued in one run
(after `--max-wait-ms`, 0 by default, as in one process), and the GRU head then runs in the
stream's own actor over its own windows (it is cheap: under 1 ms per window). A stream actor that finds no engine
on its node (a node that joined after the last check) uses its own, and says so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from stream_server.core.bundle import Bundle
from stream_server.core.engine import EngineBusy, EngineStopped, FaceJob, InferenceEngine
from stream_server.core.metrics import Metrics
from stream_server.core.runtime import Sessions
from stream_server.shell.cluster import nodes, ray_module
from stream_server.shell.settings import Settings

log = logging.getLogger(__name__)

ENGINE_PREFIX = "deepfake-engine-"
IN_FLIGHT = 4  # frames one stream may have at its node's engine at once (it awaits each)


def engine_name(node_id: str) -> str:
    return ENGINE_PREFIX + node_id


class NodeEngine:
    """The node's encoder (a Ray actor class): bundle and sessions loaded once, and a queue that
    every stream actor on the node feeds."""

    def __init__(self, settings: Settings) -> None:
        from stream_server.core.bundle import load_bundle
        from stream_server.core.runtime import open_sessions, warm_up

        self.node: str = ray_module().get_runtime_context().get_node_id()
        bundle = load_bundle(settings.bundle, precision=settings.precision)
        sessions = open_sessions(bundle, settings.providers, settings.threads)
        warm_up(bundle, sessions)
        self.engine = InferenceEngine(bundle, sessions, max_batch=settings.max_batch)
        self.max_wait = settings.max_wait_ms / 1000.0  # --max-wait-ms, as in one process
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-encoder")
        self.pending: list[tuple[np.ndarray, str, asyncio.Future[np.ndarray]]] = []
        self.busy = False
        self.calls = 0
        self.batches = 0
        self.crops = 0
        self.most_jobs = 0  # the most streams' frames encoded in one run
        self.callers: set[str] = set()

    async def encode(self, crops: np.ndarray, caller: str) -> np.ndarray:
        """Embeddings for one frame's crops, encoded with whatever else is queued."""
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.pending.append((crops, caller, fut))
        self.calls += 1
        self.callers.add(caller)
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                if self.max_wait > 0 and sum(len(c) for c, _, _ in self.pending) < (
                    self.engine.max_batch
                ):
                    await asyncio.sleep(self.max_wait)  # let a micro-batch fill
                batch: list[tuple[np.ndarray, str, asyncio.Future[np.ndarray]]] = []
                n = 0
                while self.pending and (
                    not batch or n + len(self.pending[0][0]) <= self.engine.max_batch
                ):
                    item = self.pending.pop(0)
                    batch.append(item)
                    n += len(item[0])
                crops = np.concatenate([b[0] for b in batch], axis=0)
                try:
                    emb = await loop.run_in_executor(self.pool, self.engine.encode, crops)
                except Exception as exc:  # told to every waiting stream, never made up
                    log.exception("node encoder failed on %d crops", n)
                    for _, _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                self.batches += 1
                self.crops += n
                self.most_jobs = max(self.most_jobs, len(batch))
                i = 0
                for c, _, f in batch:
                    if not f.done():
                        f.set_result(emb[i : i + len(c)])
                    i += len(c)
        finally:
            self.busy = False

    def info(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "calls": self.calls,
            "batches": self.batches,
            "crops": self.crops,
            "most_jobs_per_batch": self.most_jobs,
            "streams": len(self.callers),
        }


class NodeEngineClient(InferenceEngine):
    """A stream actor's engine: the crops go to the node's `NodeEngine`, the head runs here over
    this stream's windows."""

    def __init__(
        self, bundle: Bundle, sessions: Sessions, actor: Any, caller: str, metrics: Metrics
    ) -> None:
        super().__init__(bundle, sessions, metrics=metrics)
        self.actor = actor
        self.caller = caller
        self.in_flight = 0
        self.lock = threading.Lock()  # in_flight: submitted on the loop, done in Ray's thread
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self, timeout: float = 5.0) -> None:
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def submit(self, job: FaceJob) -> Future[np.ndarray]:
        if not self._running:
            raise EngineStopped("engine is not running")
        if len(job.crops) != len(job.windows) or len(job.crops) == 0:
            raise ValueError("a job needs one window per crop and at least one crop")
        with self.lock:
            if self.in_flight >= IN_FLIGHT:
                raise EngineBusy("the node's engine has this stream's earlier frames still")
            self.in_flight += 1
        t0 = time.perf_counter()
        ref = self.actor.encode.remote(job.crops, self.caller)

        def done(f: Future[np.ndarray]) -> None:
            with self.lock:
                self.in_flight -= 1
            try:
                job.future.set_result(self._head(job, f.result(), t0))
            except Exception as exc:
                job.future.set_exception(exc)

        ref.future().add_done_callback(done)
        return job.future

    def _head(self, job: FaceJob, emb: np.ndarray, t0: float) -> np.ndarray:
        for w, e in zip(job.windows, emb, strict=True):
            w.push(e)
        h = self.bundle.head
        seq = np.stack([w.buf for w in job.windows])
        mask = np.stack([w.mask() for w in job.windows])
        p = self.sessions.head.run([h.output_name], {h.embeddings_name: seq, h.mask_name: mask})[0]
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(job.crops))
            self.metrics.faces.inc(len(job.crops))
        return np.asarray(p, np.float32).reshape(-1)


def use_node_engine(service: Any, node: str) -> bool:
    """In a stream actor: swap the service's own engine for its node's (before it starts).
    False (and the service's own engine stays) when the node has none."""
    ray = ray_module()
    try:
        actor = ray.get_actor(engine_name(node))
    except ValueError:
        log.warning("node %s has no shared engine: this stream uses its own", node)
        return False
    caller = ray.get_runtime_context().get_actor_id() or "driver"
    service.engine = NodeEngineClient(
        service.bundle, service.sessions, actor, caller, service.metrics
    )
    # This stream never encodes itself: let its own encoder session go (its memory with it).
    service.sessions.encoder = None
    return True


# The engine actors this process created, by node (kept: Ray ends an actor once no handle to it
# is left). One Ray connection per process, so one table per process.
_engines: dict[str, Any] = {}


def ensure_engines(settings: Settings) -> None:
    """An engine on every live node with `streams` slots that has none yet (also nodes that
    joined since the last call); forgets the engines of nodes that are gone."""
    if not settings.ray_shared_engine:
        return
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    live = {n["node"]: n for n in nodes()}
    for gone in set(_engines) - set(live):
        del _engines[gone]
    for node, n in live.items():
        if n["streams"] <= 0 or node in _engines:
            continue
        _engines[node] = (
            ray.remote(NodeEngine)
            .options(
                name=engine_name(node),
                get_if_exists=True,
                num_cpus=0,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            )
            .remote(settings)
        )


def engine_info() -> list[dict[str, Any]]:
    """Each live node engine's counters (calls, batches, crops, most jobs per batch, streams)."""
    ray = ray_module()
    live = {n["node"] for n in nodes()}
    out = []
    for node, actor in list(_engines.items()):
        if node not in live:
            del _engines[node]
            continue
        try:
            out.append(ray.get(actor.info.remote(), timeout=10))
        except ray.exceptions.RayError:
            log.info("the engine on node %s does not answer", node)
    return out
