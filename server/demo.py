"""Seed the registry for `make serve` and `serve --demo`: the trainer's demo tasks from the demo tasks folder
(assets/tasks/*.safetensors, shipped in the wheel as server/demo_assets/tasks: server.settings.DEMO_TASKS_DIR) when
they exist (task name = file stem), otherwise small prompt sets generated here for the configured backbone
by promptserve.testing's prompt-set factory, and the log says which.

Generated sets: `demo-linear` is the backbone's own classifier as a prompt set with no prompts (so it
answers exactly what the backbone answers, e.g. CIFAR-10 classes for the demo backbone); `demo-e2vpt`
adds untrained E2VPT prompts (4 visual + 4 key/value tokens per layer) to that head: it exercises the
prompted, mixed-task path, and its predictions drift from demo-linear's because its prompts are random.
"""

from __future__ import annotations

import logging
from pathlib import Path

from promptserve.backbone import Backbone
from promptserve.promptset import PromptSet, PromptSetError
from promptserve.testing import random_prompt_set
from server.settings import DEMO_TASKS_DIR

log = logging.getLogger("promptserve.server")


def demo_prompt_set(backbone: Backbone, labels: list[str] | None = None, visual_tokens: int = 4,
                    kv_tokens: int = 4, seed: int = 0, metrics: dict | None = None) -> PromptSet:
    """An untrained prompt set for `backbone` (promptserve.testing's, the paper's inits) whose head is the
    backbone's own classifier when `labels` fit it (none given: the backbone's classes), so that a set with
    no prompts answers exactly what the backbone answers; other labels get a fresh random head (default
    10 classes). visual_tokens = kv_tokens = 0 gives a `linear` set (head only)."""
    own_classes = backbone.model.num_classes
    fits_own_head = own_classes > 0 and (labels is None or len(labels) == own_classes)
    labels = list(labels) if labels else [f"class_{i}" for i in range(own_classes if fits_own_head else 10)]
    return random_prompt_set(backbone, visual_tokens, kv_tokens, classes=labels, seed=seed,
                             head=backbone.own_head() if fits_own_head else None, metrics=metrics)


def seed_registry(store, backbone: Backbone, tasks_dir: str | Path = DEMO_TASKS_DIR,
                  labels: list[str] | None = None) -> list[str]:
    """Fill a store that has no task for this backbone (one that has any is left alone); returns the task
    names it added. "For this backbone" rather than "empty": a registry seeded for another backbone
    (say random-tiny, where the demo backbone file is missing) gets this backbone's demo tasks as new versions,
    and the other backbone's versions stay in each task's history."""
    if any(r.backbone_fingerprint == backbone.fingerprint for r in store.list()):
        return []
    files = sorted(Path(tasks_dir).glob("*.safetensors")) if Path(tasks_dir).is_dir() else []
    added = []
    for path in files:
        data = path.read_bytes()
        try:
            PromptSet.load(data).validate(backbone)
        except PromptSetError as e:
            log.warning("not seeding %s: %s", path, e)
            continue
        try:
            store.put(path.stem, data)
        except Exception as e:  # e.g. a file stem that is not a valid task name
            log.warning("not seeding %s: %s", path, e)
            continue
        added.append(path.stem)
    if added:
        log.info("seeded the registry with %d demo tasks from %s: %s", len(added), tasks_dir, ", ".join(added))
        return added
    generated = {
        "demo-linear": demo_prompt_set(backbone, labels, visual_tokens=0, kv_tokens=0,
                                       metrics={"note": "the backbone's own head; no prompts"}),
        "demo-e2vpt": demo_prompt_set(backbone, labels, visual_tokens=4, kv_tokens=4, seed=0,
                                      metrics={"note": "untrained prompts, generated for the demo"}),
    }
    for name, ps in generated.items():
        store.put(name, ps.to_bytes())
    log.warning("%s has no prompt sets yet: seeded the registry with GENERATED demo tasks %s (demo-linear is "
                "the backbone's own classifier; demo-e2vpt has untrained prompts). Replace them with trained "
                "sets via `promptserve push FILE --task NAME`.", tasks_dir, ", ".join(generated))
    return list(generated)
