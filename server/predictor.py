"""Where a classify request's images are answered: the seam between the HTTP routes and the engine.

The route (server/classify.py) checks the task, decodes the images, then asks a `Predictor`:

    await predictor.acquire(task)     # 404 for an unknown task, before any image is decoded
    results = await predictor.predict(task, pixels, top_k)
    predictor.release(task)

`LocalPredictor` (the default) answers in this process: the engine's resident set and the batcher.
server/ray_app.py plugs in a predictor that sends the decoded images to an engine replica chosen by
Ray Serve, so the routes, schemas and errors stay exactly those of the single-process server.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from server.batcher import Batcher, ItemResult
    from server.engine import Engine


class Predictor(Protocol):
    local: bool  # True: this process's engine answers (its residency and batches are the ones its pages show)
    async def acquire(self, task: str) -> None:
        """Raise the store's TaskNotFound for an unknown task; otherwise the task may be predicted."""

    def release(self, task: str) -> None:
        """The request that acquired `task` is done (answered or failed)."""

    async def predict(self, task: str, images: list[np.ndarray], top_k: int) -> list[ItemResult]:
        """One result per decoded image, in order. Raises batcher.QueueFull when there is no room."""


class LocalPredictor:
    """This process's engine and batcher: the task is loaded (cold load on first use) and kept resident
    while its request is in flight, and its images ride in the next mixed-task batch."""

    local = True

    def __init__(self, engine: Engine, batcher: Batcher):
        self.engine, self.batcher = engine, batcher

    async def acquire(self, task: str) -> None:
        await self.engine.acquire(task)

    def release(self, task: str) -> None:
        self.engine.release(task)

    async def predict(self, task: str, images: list[np.ndarray], top_k: int) -> list[ItemResult]:
        return list(await asyncio.gather(*self.batcher.submit(task, images, top_k)))
