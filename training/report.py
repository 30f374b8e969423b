"""report.json and PNG plots beside every artifact: curves per stage, token importance per layer, the
hp-search grid and the seeds. `write_outputs` writes a run's files all or nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from promptserve.files import atomic_target, write_atomic


def write_report(report: dict, out_dir: Path, stem: str) -> list[Path]:
    """report.json (+ curves.png, importance.png, protocol.png when matplotlib is present). Returns paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.report.json"]
    write_atomic(paths[0], json.dumps(report, indent=1, sort_keys=True).encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:  # plots are a convenience (an extra); the JSON has every number
        logging.getLogger("promptserve.training").warning(
            "no PNG plots: matplotlib is not installed (pip install 'promptserve[plots]'); %s has every number",
            paths[0])
        return paths
    if report.get("history"):
        paths.append(plot_curves(report, out_dir / f"{stem}.curves.png"))
    if report.get("importance"):
        paths.append(plot_importance(report, out_dir / f"{stem}.importance.png"))
    if report.get("hp_search") or len((report.get("seeds") or {}).get("runs", [])) > 1:
        paths.append(plot_protocol(report, out_dir / f"{stem}.protocol.png"))
    return paths


def write_outputs(out: Path, artifact: bytes, report: dict) -> list[Path]:
    """The artifact, its report and plots, all or nothing: if anything fails or Ctrl-C arrives while
    writing, every file this call wrote is removed again, so a run never leaves a partial set behind."""
    out = Path(out)
    written: list[Path] = []
    try:
        write_atomic(out, artifact)
        written.append(out)
        written += write_report(report, out.parent, out.name.removesuffix(".safetensors"))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


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

    try:
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_protocol(report: dict, path: Path) -> Path:
    """Left: validation accuracy of each hp-search point. Right: test (and val) accuracy of each seed."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    hp = report.get("hp_search") or {}
    for wd in sorted({r["weight_decay"] for r in hp.get("grid", [])}):
        rows = [r for r in hp["grid"] if r["weight_decay"] == wd]
        ax1.plot([r["lr"] for r in rows], [r["val_acc"] for r in rows], marker="o", label=f"wd {wd:g}")
    if hp:
        ax1.set(xscale="log", xlabel="base lr", ylabel="val acc",
                title=f"hp search ({hp['epochs']} epochs; chosen lr {hp['chosen']['lr']:g} "
                      f"wd {hp['chosen']['weight_decay']:g})")
        ax1.legend(fontsize=8)
    runs = (report.get("seeds") or {}).get("runs", [])
    for key, marker in (("test_acc", "o"), ("val_acc", "x")):
        pts = [(r["seed"], r[key]) for r in runs if r.get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker, label=key)
    seeds = report.get("seeds") or {}
    if seeds.get("test_acc_mean") is not None:
        ax2.axhline(seeds["test_acc_mean"], color="k", linestyle="--",
                    label=f"test mean {seeds['test_acc_mean']:.3f} +- {seeds['test_acc_sd']:.3f}")
    ax2.set(xlabel="seed", ylabel="accuracy", title=f"seeds (saved: {seeds.get('saved_seed')})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path
