"""promptserve on Ray Serve: the same HTTP API, engine replicas routed by task.

    serve run server.ray_app:app                     # settings from PROMPTSERVE_* / PROMPTSERVE_RAY_* env
    serve deploy docs/ray-serve.yaml                 # the same, with autoscaling in a Serve config file
    promptserve serve --ray --replicas 2 --store redis://127.0.0.1:6379/0

Two deployments:

- `PromptServeIngress`: the single-process server's FastAPI app itself (`create_app`, through
  `@serve.ingress`), so routes, schemas, limits and errors are the same code. It decodes images and
  validates uploads; only the classify step is handed to the engine replicas (a `Predictor`,
  server/predictor.py). It holds the backbone for validation but no resident tasks.
- `PromptServeEngine`: N replicas, each one ServerState (backbone once, the project's engine and
  batcher, a bounded resident set). Requests carry the task as Ray Serve's multiplexed model id, so
  Ray routes a task to a replica that already holds it; inside the replica the batcher still mixes
  tasks in one forward. (`serve.batch` is not used: it splits batches by model id, which would undo
  exactly that.) Every replica subscribes to the registry's change events, so an upload, rollback or
  delete made through any ingress reaches every replica that holds the task.

Ray does placement, autoscaling and restarts; nothing here routes on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import time
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from pydantic import SecretStr
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from prompt_store import StoreUnavailable, TaskNotFound
from promptserve.fileformat import PromptSetError
from server.batcher import QueueFull
from server.errors import ApiError, translated
from server.ray_settings import RaySettings
from server.settings import ServerSettings
from server.state import ServerState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ray.serve.handle import DeploymentHandle

    from server.batcher import ItemResult

log = logging.getLogger("promptserve.server")
REPLICA_LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


# ---- engine replicas -------------------------------------------------------------------------------------
class _HeldTask:
    """What Ray's multiplexer caches for a task. When Ray's LRU unloads it, Ray awaits `model.__del__()`:
    the replica then drops the task from the bank before Ray registers the next one, so the tasks Ray routes
    here and the tasks the bank holds stay one set, within one budget. (An instance attribute, not a method:
    the garbage collector only ever calls a class's __del__.)"""

    def __init__(self, task: str, unload: Callable[[str], Awaitable[None]]):
        self.task = task

        async def release_task() -> None:
            await unload(task)

        self.__del__ = release_task


class EngineReplica:
    """One engine replica: the backbone, a bounded resident set, the mixed-task batcher, a registry watch."""

    async def __init__(self, settings: ServerSettings):
        context = serve.get_replica_context()
        self.name = f"{context.deployment}#{context.replica_id.unique_id}"
        self.actor_name = context.replica_id.to_full_id_str()
        # no preload: the tasks held here are the ones Ray routes here (a preloaded task Ray does not know of
        # would take a slot without attracting its requests); pinned tasks still load at start
        self.state = ServerState(settings.model_copy(update={"preload": False, "seed_demo": False,
                                                             "decode_threads": 1}))
        await self.state.start()
        self.engine = self.state.engine
        self._refused: dict[str, str] = {}  # task -> the registry version this backbone refused (not retried)

        async def hold(task: str) -> _HeldTask:  # a plain function: Ray keeps its cache on the function
            return _HeldTask(task, self._unloaded)

        # Ray's multiplexed "loader" only registers the task with Ray's routing: the engine loads it right after
        # (acquire, below), outside the lock Ray holds around its loaders, so cold loads of different tasks overlap
        self._hold = serve.multiplexed(max_num_models_per_replica=settings.resident_max_tasks)(hold)
        log.info("engine replica %s ready", self.name)

    async def _unloaded(self, task: str) -> None:
        if task not in self.engine.tasks.pinned:
            await self.engine.drop(task)  # a task with requests in flight goes once they are answered

    async def classify(self, task: str, images: list[np.ndarray], top_k: int,
                       version: str | None = None) -> list[ItemResult]:
        """Answer one request's decoded images; they ride in this replica's next mixed-task batch. `version`:
        what the ingress read in the registry for this request; holding another, the replica syncs first."""
        if serve.get_multiplexed_model_id():  # routed by task: Ray now knows this replica holds it
            await self._hold(task)
        predictor = self.state.predictor
        await predictor.acquire(task)
        try:
            # holding another version than the ingress read: the registry's current one first (that one or a
            # newer one); gone from the registry: 404. A version this backbone refuses (put into the registry
            # around the server) is not served: the resident one keeps answering, as in one process.
            stale = (version is not None and self.engine.tasks.version(task) != version
                     and self._refused.get(task) != version)
            if stale:
                try:
                    if await self.engine.sync(task) is None:
                        raise TaskNotFound(f"no task {task!r}")
                except PromptSetError as e:
                    self._refused[task] = version
                    log.warning("%s: version %s in the registry is refused here (%s); %s keeps serving", task,
                                version[:12], e, self.engine.tasks.version(task) or "nothing")
            results = await predictor.predict(task, images, top_k)
        finally:
            predictor.release(task)
        return [replace(r, replica=self.name) for r in results]

    async def status(self) -> dict:
        """What this replica holds and has done (tests, the benchmark, operators)."""
        registry = self.state.metrics.registry
        return {"replica": self.name, "actor_name": self.actor_name,
                "resident": {t: self.engine.tasks.version(t) for t in self.engine.tasks.tasks},
                "cold_loads": _metric_total(registry, "promptserve_cold_loads_total"),
                "batches": _metric_total(registry, "promptserve_batch_tasks_count"),
                "batch_tasks_sum": _metric_total(registry, "promptserve_batch_tasks_sum"),
                "images": _metric_total(registry, "promptserve_classify_images_total")}

    async def check_health(self) -> None:
        if self.state.error:  # Serve replaces a replica whose health check raises
            raise RuntimeError(self.state.error)

    async def __del__(self):  # Serve awaits it on graceful shutdown
        await self.state.stop()


def _metric_total(registry, sample_name: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples if s.name == sample_name)


# ---- ingress -----------------------------------------------------------------------------------------------
class RemotePredictor:
    """The ingress's Predictor: the task must exist (404 before any image is decoded, as in one process);
    the decoded images go to an engine replica, picked by Ray Serve by task when `affinity` is on.

    Read your writes: every request reads the task's current version from the registry (one small read) and
    hands it to the replica, which syncs from the registry before answering when it holds another version. So
    once an upload, rollback or delete has been answered, the next request through any ingress sees it, without
    waiting for the registry's change events (a directory registry's arrive after a file-system poll). While the
    registry is down, the version last read is passed on and the tasks the replicas hold keep answering."""

    local = False  # the engine replicas hold the tasks and run the batches, not this ingress

    def __init__(self, state: ServerState | None, engine: DeploymentHandle, affinity: bool):
        self.state, self.engine, self.affinity = state, engine, affinity
        self._versions: dict[str, str] = {}  # the version each task had at its last registry read

    async def acquire(self, task: str) -> None:
        try:
            record = await asyncio.to_thread(self.state.store.resolve, task)  # TaskNotFound -> 404 by the route
        except TaskNotFound:
            self._versions.pop(task, None)
            raise
        except StoreUnavailable:
            if task not in self._versions:
                raise
            return
        self._versions[task] = record.version

    def release(self, task: str) -> None:
        pass

    async def predict(self, task: str, images: list[np.ndarray], top_k: int) -> list[ItemResult]:
        handle = self.engine.options(multiplexed_model_id=task) if self.affinity else self.engine
        for attempt in (1, 2):  # classification is idempotent: a request whose replica died is sent once more
            try:
                return await handle.classify.remote(task, images, top_k, self._versions.get(task))
            except RayTaskError as e:  # the replica raised: hand the route the original error, not Ray's wrapper
                cause = e.cause if isinstance(e.cause, Exception) else e
                if isinstance(cause, TaskNotFound):
                    self._versions.pop(task, None)
                if isinstance(cause, QueueFull):
                    raise cause from None
                with translated(task):  # the store's and the validator's errors get their 4xx/503, as in one process
                    raise cause from None
            except BackPressureError as e:
                raise QueueFull(str(e)) from None
            except REPLICA_LOST as e:
                log.warning("engine replica lost while answering %s (attempt %d): %s", task, attempt, e)
        raise ApiError(503, "replica_unavailable", "the engine replica answering this task went away; Ray is "
                                                   "replacing it: retry shortly", headers={"Retry-After": "1"})


@serve.ingress()
class Ingress:
    """The single-process server's FastAPI app, with classify answered by the engine replicas."""

    def __init__(self, engine: DeploymentHandle, settings: ServerSettings, affinity: bool = True):
        self.engine, self.settings, self.affinity = engine, settings, affinity
        self.state: ServerState | None = None

    def __serve_build_asgi_app__(self):
        from server.app import create_app

        # the ingress validates uploads against the backbone but serves nothing itself: one bank row at most
        settings = self.settings.model_copy(update={"preload": False, "pinned_tasks": [], "resident_max_tasks": 1,
                                                    "device": "cpu"})
        app = create_app(settings, predictor_factory=lambda state: RemotePredictor(state, self.engine,
                                                                                   self.affinity))
        self.state = app.state.server
        return app

    async def check_health(self) -> None:
        if self.state is not None and self.state.error:
            raise RuntimeError(self.state.error)


# ---- the application ------------------------------------------------------------------------------------
def build_app(settings: ServerSettings | None = None, ray_settings: RaySettings | None = None):
    """The Serve application: `serve.run(build_app(...))`, or `app` below for `serve run`."""
    settings = shareable(settings or ServerSettings())
    rs = ray_settings or RaySettings()
    return serve.deployment(Ingress).options(**rs.ingress_options()).bind(engine_deployment(settings, rs), settings,
                                                                          rs.affinity)


def engine_deployment(settings: ServerSettings, rs: RaySettings):
    """The engine replicas alone (bound, not yet run): build_app's, or a benchmark's driven by handles."""
    return serve.deployment(EngineReplica).options(**rs.engine_options()).bind(shareable(settings))


def shareable(settings: ServerSettings) -> ServerSettings:
    """Settings every replica can use as they are: absolute paths (Ray workers do not share the driver's
    working directory) and one admin token for every ingress replica (made here and printed once if unset)."""
    update: dict = {}
    for field in ("backbone", "backbone_weights", "store", "demo_tasks_dir"):
        value = getattr(settings, field)
        if value and "://" not in value and Path(value).exists():
            update[field] = str(Path(value).resolve())
    if not str(settings.store).startswith(("redis://", "rediss://", "unix://")):
        update["store"] = str(Path(settings.store).resolve())  # a LocalStore directory (one machine only)
    if settings.admin_token is None:
        token = secrets.token_urlsafe(24)
        log.warning("no admin token configured (set PROMPTSERVE_ADMIN_TOKEN to choose it); generated one for this "
                    "deployment: %s", token)
        update["admin_token"] = SecretStr(token)
    return settings.model_copy(update=update) if update else settings


@cache
def _app_from_env():
    return build_app(ServerSettings(), RaySettings())


def __getattr__(name: str):
    # `serve run server.ray_app:app` imports this attribute: built on first use (not at import), from the env
    if name == "app":
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- `promptserve serve --ray` -----------------------------------------------------------------------------
def run(settings: ServerSettings, rs: RaySettings, ready_timeout_s: float = 600.0) -> None:
    """Start (or join) Ray, deploy the application, wait until it answers, serve until Ctrl-C or SIGTERM."""
    import ray

    if rs.address:
        ray.init(address=rs.address, log_to_driver=True)
    else:
        # a local instance gets the logical CPUs the replicas reserve even on a small machine (they then share
        # cores): better than replicas that stay pending forever
        cpus = max(os.cpu_count() or 1, math.ceil(rs.cpus_needed()))
        ray.init(num_cpus=cpus, include_dashboard=False)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the same way on SIGTERM (containers) as on Ctrl-C
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, rs), name=rs.app_name, route_prefix="/")
        url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"
        wait_ready(url, ready_timeout_s)
        scaling = (f"{rs.min_replicas or 1}-{rs.max_replicas} (autoscaling)" if rs.autoscaling else str(rs.replicas))
        log.info("promptserve on Ray Serve: %s (%s engine replicas, routed by %s)", url, scaling,
                 "task" if rs.affinity else "load only")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if rs.address:  # someone else's cluster: take only this application off it
            with contextlib.suppress(Exception):
                serve.delete(rs.app_name)
        else:  # the local instance goes away whole (no per-app teardown that could wait on a broken cluster)
            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()


def wait_ready(url: str, timeout_s: float) -> None:
    """Until the ingress says ready (it loads the backbone and opens the store after Serve starts it)."""
    deadline, last = time.monotonic() + timeout_s, "no answer yet"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5.0)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.25)
    raise TimeoutError(f"{url}/readyz not ready within {timeout_s:.0f} s: {last}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
