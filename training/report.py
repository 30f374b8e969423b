"""report.json and PNG plots beside every artifact: curves per stage, token importance per layer."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """temp file + rename: an interrupted run never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_report(report: dict, out_dir: Path, stem: str) -> list[Path]:
    """report.json (+ curves.png, importance.png when matplotlib is present). Returns written paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.report.json"]
    write_atomic(paths[0], json.dumps(report, indent=1, sort_keys=True).encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:  # plots are a convenience; the JSON has every number
        return paths
    if report.get("history"):
        paths.append(plot_curves(report, out_dir / f"{stem}.curves.png"))
    if report.get("importance"):
        paths.append(plot_importance(report, out_dir / f"{stem}.importance.png"))
    return paths


def plot_curves(report: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    stages = list(dict.fromkeys(h["stage"] for h in report["history"]))
    for stage in stages:
        rows = [h for h in report["history"] if h["stage"] == stage]
        ax1.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], marker=".", label=stage)
        ax2.plot([r["epoch"] for r in rows], [r["train_acc"] for r in rows], marker=".", label=f"{stage} train")
    m = report["metrics"]
    for key, style in (("test_acc", "--"), ("val_acc", ":")):
        if m.get(key) is not None:
            ax2.axhline(m[key], linestyle=style, color="k", label=f"{key} {m[key]:.3f}")
    ax1.set(xlabel="epoch", ylabel="train loss", title=f"{report['method']}: loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ax1.legend()
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_importance(report: dict, path: Path) -> Path:
    """One panel per layer: each visual token's score; pruned tokens are red crosses."""
    import matplotlib.pyplot as plt

    token = report["importance"]["token"]
    kept = (report.get("pruning") or {}).get("kept", {})
    layers = sorted(token, key=int)
    fig, axes = plt.subplots(1, len(layers), figsize=(2.2 * len(layers), 2.8), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        scores = token[layer]
        keep = set(kept.get(layer, range(len(scores))))
        for j, s in enumerate(scores):
            ax.bar(j, s, color="tab:blue" if j in keep else "lightgray")
            if j not in keep:
                ax.plot(j, s, "rx")
        ax.set(title=f"layer {layer}", xlabel="token")
    axes[0][0].set_ylabel("importance S")
    fig.suptitle("visual prompt token importance (grey + red x: pruned)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
