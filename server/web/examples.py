"""Example images for the Try page: `<demo tasks dir>/examples/<task>/<label>__<n>.<ext>`.

The project keeps no dataset images in git, so the folder is filled on the machine that serves the demo:

    python -m server.web.examples           # a few test images per demo task from ../shared/datasets
                                            # (and Fashion-MNIST from Debian's dataset-fashion-mnist)

A task without a folder simply shows no examples.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import re
import tarfile
from pathlib import Path

from promptserve.logs import setup_logging
from server.settings import DEMO_TASKS_DIR

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# demo task -> the ImageFolder tarball its test images come from
DATASET_TARS = {"gtsrb": "gtsrb.tar", "dtd10": "dtd10.tar", "sign-digits": "sign_digits.tar"}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def examples_dir(demo_tasks_dir: str | Path) -> Path:
    return Path(demo_tasks_dir) / "examples"


def list_examples(demo_tasks_dir: str | Path, task: str) -> list[dict]:
    """[{name, label}] of the task's example files; `label` is the true class named in the file name."""
    folder = examples_dir(demo_tasks_dir) / task
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and SAFE_FILE_NAME.match(p.name))
    return [{"name": p.name, "label": p.stem.split("__")[0]} for p in files]


def example_path(demo_tasks_dir: str | Path, task: str, name: str) -> Path | None:
    """The file, only when it is one `list_examples` offers (no path ever built from raw input)."""
    if any(entry["name"] == name for entry in list_examples(demo_tasks_dir, task)):
        return examples_dir(demo_tasks_dir) / task / name
    return None


def _from_tar(tar_path: Path, out: Path, per_task: int) -> int:
    """The first test image of `per_task` different classes, spread over the class list."""
    with tarfile.open(tar_path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/test/" in m.name
                          and Path(m.name).suffix.lower() in IMAGE_SUFFIXES), key=lambda m: m.name)
        by_class: dict[str, tarfile.TarInfo] = {}
        for m in members:
            by_class.setdefault(Path(m.name).parent.name, m)
        classes = sorted(by_class)
        chosen = [classes[i * len(classes) // per_task] for i in range(min(per_task, len(classes)))]
        for label in chosen:
            m = by_class[label]
            (out / f"{label}__0{Path(m.name).suffix.lower()}").write_bytes(tar.extractfile(m).read())
    return len(chosen)


def _task_labels(task_file: Path) -> list[str]:
    """The labels the task itself answers with (its file's metadata), so example names match answers."""
    from safetensors import safe_open

    with safe_open(task_file, "np") as f:
        return json.loads(f.metadata()["labels"])


def _from_fashion_mnist(out: Path, per_task: int, task_file: Path) -> int:
    import numpy as np
    from PIL import Image

    names = _task_labels(task_file)
    def read_idx(name: str, offset: int) -> np.ndarray:
        with gzip.open(FASHION_MNIST / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    images = read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx("t10k-labels-idx1-ubyte.gz", 8)
    written = 0
    for cls in range(0, 10, max(1, 10 // per_task))[:per_task]:
        index = int(np.flatnonzero(labels == cls)[0])
        buf = io.BytesIO()
        Image.fromarray(images[index]).save(buf, "PNG")
        (out / f"{names[cls]}__0.png").write_bytes(buf.getvalue())
        written += 1
    return written


def extract(datasets: Path, tasks_dir: Path, per_task: int) -> None:
    out = examples_dir(tasks_dir)
    for task, tar_name in DATASET_TARS.items():
        target = out / task
        if not (datasets / tar_name).exists():
            log.warning("%s: %s not found, skipped", task, datasets / tar_name)
            continue
        target.mkdir(parents=True, exist_ok=True)
        log.info("%s: %d images -> %s", task, _from_tar(datasets / tar_name, target, per_task), target)
    if FASHION_MNIST.is_dir() and (tasks_dir / "fashion-mnist.safetensors").exists():
        target = out / "fashion-mnist"
        target.mkdir(parents=True, exist_ok=True)
        written = _from_fashion_mnist(target, per_task, tasks_dir / "fashion-mnist.safetensors")
        log.info("fashion-mnist: %d images -> %s", written, target)
    else:
        log.warning("fashion-mnist: %s not found (apt-get install dataset-fashion-mnist), skipped", FASHION_MNIST)


def main() -> None:
    parser = argparse.ArgumentParser(description="Put a few test images per demo task where the Try page finds them.")
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--tasks-dir", type=Path, default=Path(DEMO_TASKS_DIR), help="the server's demo tasks dir")
    parser.add_argument("--per-task", type=int, default=4)
    args = parser.parse_args()
    setup_logging("info")
    if args.per_task < 1:
        parser.error("--per-task must be at least 1")
    extract(args.datasets, args.tasks_dir, args.per_task)


if __name__ == "__main__":
    main()
