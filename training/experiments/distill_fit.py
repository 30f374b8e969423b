"""How well a distilled student matches its teacher on images it trained on and on images it never saw.

    python -m training.experiments.distill_fit --checkpoint runs/distill/stage3/vit_tiny_p4_32_distill_mnv1_s3.ckpt.pt

Reads a `promptserve distill` checkpoint (the student and its projection), embeds N plain (unaugmented) images of
the train split and N of the test split with the teacher, and prints for each the distillation MSE against the
teacher's embedding, standardised as in training (per dimension, over view set 0 of the run's cache), and the
share of the teacher's variance the student explains (R^2: plain images spread wider than the mixed training
views, so their MSE does not compare with the training log's). A test R^2 far below the train R^2 says the student
memorised its images (more images would help); two close figures say it fits unseen images as well as seen ones,
so its capacity or its schedule is the limit, not the image count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptserve.backbone import Backbone
from promptserve.preprocess import normalise
from training.backbone_training import vit_and_data
from training.distill import DistillConfig, Student, standardisation, view_cache
from training.teacher import Teacher, load_views


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a distill run's <out>.ckpt.pt")
    p.add_argument("--images", type=int, default=10000, help="images of each split (seeded sample)")
    p.add_argument("--backbone", type=Path, default=None,
                   help="a backbone file of the run's architecture (default: the run's --out beside the checkpoint; "
                        "only its architecture is read, the weights come from the checkpoint)")
    args = p.parse_args(argv)
    saved = torch.load(args.checkpoint, weights_only=False)
    cfg = DistillConfig(**{**saved["config"], "resume": True})
    student_state = saved["student"]
    architecture = args.backbone or args.checkpoint.with_suffix("").with_suffix(".safetensors")  # the run's --out
    if not architecture.is_file():
        p.error(f"{architecture} does not exist: pass --backbone with a backbone file of the run's architecture "
                "(its --init, grown to its --depth, or its --out)")
    exported = Backbone.from_file(architecture)
    name, kwargs = exported.name, {k: v for k, v in exported.timm_kwargs.items() if k != "num_classes"}
    vit, data_cfg, train, test = vit_and_data(cfg, name, kwargs)
    vit.reset_classifier(len(train.classes))
    teacher = Teacher(cfg.teacher, threads=torch.get_num_threads())
    student = Student(vit, teacher.dim, cfg.projector)
    student.load_state_dict(student_state)
    student.eval()
    cache = view_cache(cfg, teacher)
    if not (cache / "view-0.npz").exists():  # the standardisation of the targets comes from the run's views
        p.error(f"{cache} has no view-0.npz: the run's view cache is gone; rerun its distill command for 1 epoch "
                "with --cache there, or pass the checkpoint of a run whose cache is on this machine")
    mean, std = standardisation(load_views(cache, 0)["embeddings"][:len(train)])  # as the run's training did

    report = {"checkpoint": str(args.checkpoint), "images": args.images}
    for split, images in (("train", train.images), ("test", test.images)):
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:args.images].numpy()
        chosen = images[np.sort(pick)]  # (n, S, S, 3) uint8
        target = (torch.from_numpy(teacher.embed(chosen)) - mean) / std  # (n, D_t)
        with torch.no_grad():
            proj = torch.cat([student(normalise(chosen[i:i + 256], data_cfg))[1] for i in range(0, len(chosen), 256)])
        mse = F.mse_loss(proj.float(), target).item()
        r2 = 1 - mse / (target - target.mean(0)).pow(2).mean().item()
        report[split] = {"mse": round(mse, 4), "r2": round(r2, 4)}
        print(f"{split}: {len(chosen):,} plain images, distillation MSE {mse:.4f}, R^2 {r2:.4f}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
