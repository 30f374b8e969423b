"""What one server process holds, how it starts and stops, and the dependencies routes use to reach it.

Start-up runs in the background of the lifespan, so /healthz answers at once and /readyz says 503 until
the backbone, the store and the preloaded tasks are in place (the way an orchestrator expects).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from fastapi import Request

from server.errors import ApiError, file_names_only
from server.metrics import Metrics
from server.settings import ServerSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from promptserve.backbone import Backbone
    from server.batcher import Batcher
    from server.engine import Engine
    from server.images import FairDecoder
    from server.limits import Limits
    from server.predictor import Predictor

log = logging.getLogger("promptserve.server")


class ServerState:
    def __init__(self, settings: ServerSettings, backbone: Backbone | None = None, store=None,
                 predictor_factory: Callable[[ServerState], Predictor] | None = None):
        """`predictor_factory`: who answers classify requests (default: this process's engine and batcher;
        server/ray_app.py passes one that sends them to Ray Serve engine replicas)."""
        self.settings = settings
        self.metrics = Metrics()
        self.backbone: Backbone | None = backbone
        self.store = store
        self._owns_store = store is None
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.predictor: Predictor | None = None
        self._predictor_factory = predictor_factory
        self.ready = False
        self.error: str | None = None
        self.limits: Limits | None = None  # resolved once the backbone is known
        self.precision = None  # dtype/backend auto's choice (server/precision.py), None when both were set
        self.decoder: FairDecoder | None = None
        self._unsubscribe = None
        if settings.admin_token is not None:
            self.admin_token = settings.admin_token.get_secret_value()
        else:
            # uploads are never open by default: without a configured token, make one and say it once
            self.admin_token = secrets.token_urlsafe(24)
            log.warning("no admin token configured (set PROMPTSERVE_ADMIN_TOKEN to choose it; replicas must share "
                        "one); generated one for this process: %s", self.admin_token)
        self.api_token = settings.api_token.get_secret_value() if settings.api_token else None

    # ---- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._start()
        except Exception as e:
            # the message can name files and the store's address: it goes to the log, /readyz says less
            log.error("promptserve failed to start: %s: %s", type(e).__name__, e)
            self.error = _public_reason(e)
            raise

    async def _start(self) -> None:
        from promptserve.backbone import build_backbone
        from server.backbone_setup import backbone_labels, backbone_spec
        from server.batcher import Batcher
        from server.engine import Engine

        s = self.settings
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        if self.backbone is None:
            self.backbone = await asyncio.to_thread(build_backbone, backbone_spec(s))
        log.info("backbone %s (fingerprint %s)", self.backbone.display_name, self.backbone.fingerprint[:12])
        from server.images import FairDecoder
        from server.limits import resolve_limits

        self.limits = resolve_limits(s, self.backbone)
        self.decoder = FairDecoder(s.decode_threads, self.limits.max_pixels_in_flight)
        if self.store is None:
            from prompt_store import REDIS_SCHEMES, open_store

            options: dict = {"max_bytes": s.max_upload_bytes}
            if s.store.startswith(REDIS_SCHEMES):  # a hung Redis must give 503 in seconds, not hang requests
                options.update(socket_timeout_s=s.redis_timeout_s, connect_timeout_s=s.redis_timeout_s,
                               retry_s=s.redis_retry_s)
            self.store = await asyncio.to_thread(open_store, s.store, **options)
        removed = await asyncio.to_thread(self.store.collect_garbage)  # a writer killed mid-upload left these
        if removed:
            log.info("removed %d unreferenced prompt-set blob(s) from the registry: %s", len(removed),
                     ", ".join(v[:12] for v in removed))
        if s.seed_demo:
            from server.demo import seed_registry

            labels = backbone_labels(self.backbone)
            await asyncio.to_thread(seed_registry, self.store, self.backbone, s.demo_tasks_dir, labels)
        dtype, backend = s.dtype, s.backend
        if "auto" in (dtype, backend):
            self.precision = await asyncio.to_thread(self._choose_dtype)
            dtype, backend = self.precision.dtype, self.precision.backend
        self.engine = engine = Engine(self.backbone, self.store, s, self.metrics, self.limits, dtype=dtype,
                                      backend=backend)
        self.batcher = Batcher(engine, self.metrics, s.max_batch, s.max_wait_ms, s.queue_limit)
        if self._predictor_factory is not None:
            self.predictor = self._predictor_factory(self)
        else:
            from server.predictor import LocalPredictor

            self.predictor = LocalPredictor(engine, self.batcher)
        self.metrics.watch(lambda: self.batcher.depth, lambda: len(engine.tasks),
                           lambda: engine.tasks.nbytes, lambda: engine.model.bank.nbytes())
        loop = asyncio.get_running_loop()
        # subscribe before preloading: a change landing during the preload is not missed
        self._unsubscribe = self.store.subscribe(lambda event: engine.on_store_change(loop, event))
        if s.preload:
            await engine.preload(list(s.pinned_tasks))
        else:
            for task in s.pinned_tasks:
                await engine.sync(task)
        await engine.warm(s.max_batch)
        self.batcher.start()
        self.ready = True
        log.info("ready: %d tasks resident on %s (%s, %s)", len(engine.tasks), engine.device,
                 str(engine.dtype).removeprefix("torch."), engine.backend.name)

    def _choose_dtype(self):
        """dtype/backend auto on up to 8 of the registry's tasks for this backbone (the backbone's own head when it
        has none) and the probe images (server/precision.py)."""
        from promptserve.promptset import PromptSet, PromptSetError
        from server.backbone_setup import backbone_labels, resolve_device
        from server.precision import decide_dtype, probe_images
        from server.web.examples import examples_dir

        backbone, s = self.backbone, self.settings
        backbone.fingerprint  # noqa: B018 (cached): hashed from the weights as trained, before any cast
        tasks = {}
        for record in self.store.list():
            if len(tasks) == 8:
                break
            if record.backbone_fingerprint == backbone.fingerprint:
                try:
                    ps = PromptSet.load(self.store.get(record.task))
                    ps.validate(backbone)
                except PromptSetError:
                    continue
                tasks[record.task] = ps
        if not tasks:
            from server.demo import demo_prompt_set

            tasks["backbone-head"] = demo_prompt_set(backbone, backbone_labels(backbone), 0, 0)
        folder = s.probe_dir or examples_dir(s.demo_tasks_dir)
        dc = backbone.data_config
        images = probe_images(folder, dc.input_size, dc.interpolation)
        return decide_dtype(backbone, resolve_device(s.device), tasks, images, dtype=s.dtype, backend=s.backend)

    async def stop(self) -> None:
        self.ready = False
        if self.backbone is None:
            # stopped while the backbone still loads (Ctrl-C, a port in use): the load runs on in its thread until
            # the process exits, and timm's "Loading ..." lines after the shutdown read like a server still starting
            logging.getLogger("timm").setLevel(logging.WARNING)
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except Exception as e:
                log.warning("unsubscribing from the store failed: %s", e)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        if self.decoder is not None:
            self.decoder.shutdown()
        if self._owns_store and self.store is not None:
            try:
                self.store.close()
            except Exception as e:
                log.warning("closing the store failed: %s", e)


def _public_reason(error: Exception) -> str:
    """What /readyz may say about a failed start: a backbone setting's advice with its paths cut to file
    names; nothing of other errors (store addresses, registry paths), whose details are in the log."""
    from promptserve.backbone import BackboneError

    if isinstance(error, BackboneError):
        return file_names_only(str(error))
    return "start-up failed; the server log says why"


# ---- dependencies ---------------------------------------------------------------------------------------
# async although they never wait: FastAPI runs a plain-def dependency in its worker threads, a thread hop (and GIL
# hand-offs) on every request for an attribute read
async def get_state(request: Request) -> ServerState:
    return request.app.state.server


async def ready_state(request: Request) -> ServerState:
    """The state, or 503 while the server is still loading (or failed to)."""
    state: ServerState = request.app.state.server
    if not state.ready:
        detail = f"failed to start: {state.error}" if state.error else "still loading the backbone and tasks"
        raise ApiError(503, "not_ready", detail, headers={"Retry-After": "1"})
    return state
