"""The request path's cuts (issue 22 item 3): small images share a decode job, and a backend that compiles a variant
per batch shape has the server's shapes compiled before it says ready."""

from __future__ import annotations

import asyncio

import pytest
import torch

from promptserve.backbone import random_tiny_backbone
from server.demo import demo_prompt_set
from server.images import ImageProbe
from server.inference import DECODE_JOB_PIXELS, decode_jobs
from server.settings import ServerSettings


def probe(name: str, pixels: int) -> ImageProbe:
    return ImageProbe(name, b"", 1, 1, pixels)


def test_small_images_share_a_decode_job_in_order_and_a_large_one_goes_alone():
    small = DECODE_JOB_PIXELS // 4
    probes = [probe(f"s{i}", small) for i in range(6)] + [probe("big", 3 * DECODE_JOB_PIXELS), probe("s6", small)]
    jobs = decode_jobs(probes)
    assert [[p.name for p in job] for job in jobs] == [["s0", "s1", "s2", "s3"], ["s4", "s5"], ["big"], ["s6"]]
    assert all(sum(p.decode_pixels for p in job) <= DECODE_JOB_PIXELS or len(job) == 1 for job in jobs)
    assert decode_jobs([]) == []


class CompilingBackend:
    """Stands in for the openvino backend: records the batches it ran."""

    name = "openvino"

    def __init__(self, max_variants: int, fails_at: int = 0):
        self.max_variants, self.fails_at, self.batches = max_variants, fails_at, []

    def classify(self, images: torch.Tensor, batch) -> torch.Tensor:
        self.batches.append((images.shape[0], sorted(set(batch.task_index.tolist())), len(batch.head_weight)))
        if images.shape[0] == self.fails_at:
            raise RuntimeError("this shape does not compile")
        return torch.zeros(images.shape[0], 2)


@pytest.fixture
def engine():
    from server.engine import Engine
    from server.metrics import Metrics

    backbone = random_tiny_backbone()
    engine = Engine(backbone, None, ServerSettings(device="cpu", dtype="float32", backend="torch"), Metrics())
    for i, name in enumerate(("a", "b", "c")):
        engine.model.add_task(name, demo_prompt_set(backbone, seed=i))
    yield engine
    engine.close()


def test_warm_runs_each_batch_bucket_mixed_the_largest_first(engine):
    engine.backend = fake = CompilingBackend(max_variants=8)
    assert asyncio.run(engine.warm(max_batch=24)) == 6
    sizes_and_tasks = [(size, tasks) for size, _, tasks in fake.batches]
    # 24 first, every task in it (the backend widens its graph to all of them), then the buckets below 24
    assert sizes_and_tasks == [(24, 3), (1, 1), (2, 2), (4, 3), (8, 3), (16, 3)]
    engine.backend = fake = CompilingBackend(max_variants=3)
    assert asyncio.run(engine.warm(max_batch=24)) == 3  # never more shapes than the backend keeps
    assert [size for size, _, _ in fake.batches] == [24, 1, 2]


def test_warm_is_bounded_in_time_and_skips_backends_that_do_not_compile(engine):
    assert asyncio.run(engine.warm(max_batch=32)) == 0  # torch runs any shape as it comes
    engine.backend = fake = CompilingBackend(max_variants=8)
    assert asyncio.run(engine.warm(max_batch=32, budget_s=0.0)) == 0
    assert fake.batches == []


def test_a_shape_that_fails_to_warm_does_not_stop_the_others(engine):
    engine.backend = fake = CompilingBackend(max_variants=8, fails_at=4)
    assert asyncio.run(engine.warm(max_batch=24)) == 5  # the start-up goes on; that batch's forward will say why
    assert len(fake.batches) == 6
