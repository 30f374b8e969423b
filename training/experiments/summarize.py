"""Markdown tables for docs/results.md from the report.json files a `vtab.py` sweep wrote.

    python -m training.experiments.summarize runs/vtab
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ["gtsrb", "dtd10", "sign-digits", "fashion-mnist"]
METHODS = ["linear", "vpt-deep", "e2vpt", "full", "full-4ep"]  # rows without reports are skipped


def load(root: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(root.glob("*/*.report.json")):
        out[(path.parent.name, path.name.removesuffix(".report.json"))] = json.loads(path.read_text())
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main_table(reports: dict) -> str:
    head = "| method | " + " | ".join(TASKS) + " | mean | tuned params (% of backbone) | train time (s, 4 tasks) |"
    lines = [head, "|" + "---|" * (len(TASKS) + 4)]
    for m in METHODS:
        if not any((t, m) in reports for t in TASKS):
            continue
        accs = [reports.get((t, m), {}).get("metrics", {}).get("test_acc") for t in TASKS]
        done = [a for a in accs if a is not None]
        mean = _pct(sum(done) / len(done)) + ("" if len(done) == len(TASKS) else f" ({len(done)} tasks)") \
            if done else "-"
        pcts = [reports[(t, m)]["metrics"]["tuned_percent"] for t in TASKS if (t, m) in reports]
        secs = sum(reports[(t, m)]["metrics"]["total_seconds"] for t in TASKS if (t, m) in reports)
        tuned = f"{min(pcts):.2f}-{max(pcts):.2f}" if pcts else "-"
        lines.append(f"| {m} | " + " | ".join(_pct(a) for a in accs) + f" | {mean} | {tuned} | {secs:.0f} |")
    return "\n".join(lines)


def e2vpt_table(reports: dict) -> str:
    lines = ["| task | test acc | val acc (search) | token / segment prune chosen | visual tokens kept | "
             "visual prompts pruned (%) | tuned params | prompt-set file (bytes) | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in TASKS:
        r = reports.get((t, "e2vpt"))
        if r is None:
            continue
        m, c = r["metrics"], r["config"]
        lines.append(f"| {t} | {_pct(m.get('test_acc'))} | {_pct(m.get('search_val_acc', m.get('val_acc')))} | "
                     f"{c['token_prune']} / "
                     f"{c['segment_prune']} | {m.get('visual_tokens_kept')} / {m.get('visual_tokens')} | "
                     f"{100 * m.get('visual_pruned_fraction', 0):.1f} | {m['tuned_params']:,} | "
                     f"{m.get('artifact_bytes', m.get('prompt_set_bytes'))} | {m['total_seconds']:.0f} |")
    return "\n".join(lines)


def ablation_table(reports: dict, task: str = "gtsrb") -> str:
    rows = [("visual prompts only (vpt-deep)", "vpt-deep"), ("key-value prompts only", "abl-kv-only"),
            ("visual + key-value, no pruning", "abl-visual-kv"),
            ("visual + pruning (no key-value)", "abl-visual-prune"),
            ("visual + key-value + pruning (e2vpt)", "e2vpt")]
    lines = [f"| {task}: variant | test acc | visual prompts pruned (%) | tuned params |", "|---|---|---|---|"]
    for label, name in rows:
        r = reports.get((task, name))
        if r is None:
            lines.append(f"| {label} | (not run) | | |")
            continue
        m = r["metrics"]
        lines.append(f"| {label} | {_pct(m.get('test_acc'))} | {100 * m.get('visual_pruned_fraction', 0):.1f} | "
                     f"{m['tuned_params']:,} |")
    return "\n".join(lines)


def runs_table(reports: dict) -> str:
    """Every run found, one row each (for side sweeps such as a longer schedule)."""
    lines = ["| task | run | epochs | test acc | val acc | visual prompts pruned (%) | tuned params | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for (task, run), r in sorted(reports.items()):
        m = r["metrics"]
        lines.append(f"| {task} | {run} | {r['config']['epochs']} | {_pct(m.get('test_acc'))} | "
                     f"{_pct(m.get('val_acc'))} | {100 * m.get('visual_pruned_fraction', 0):.1f} | "
                     f"{m['tuned_params']:,} | {m['total_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = argv or sys.argv[1:] or ["runs/vtab"]
    root = Path(args[0])
    reports = load(root)
    if "--runs" in args:
        print(runs_table(reports))
        return
    print("## Test accuracy (%)\n\n" + main_table(reports) + "\n\n## E2VPT details\n\n" + e2vpt_table(reports)
          + "\n\n## Ablation\n\n" + ablation_table(reports))


if __name__ == "__main__":
    main()
