"""The result figures quoted in the docs, made from a sweep's committed reports (the same ones summarize.py and
plots.py read), so that docs/results*.md and the README cannot drift from the runs.

    python -m training.experiments.results_doc            # rewrite the generated parts of DOCS
    python -m training.experiments.results_doc --check    # exit 1 if one differs (tests/unit/test_results_doc.py)

A generated part sits between `<!-- results: ROOT PART -->` and `<!-- end results: ROOT PART -->`, ROOT being a
sweep's directory (e.g. runs/vtab-distill) and PART one of MADE's keys: `tables` (summarize's tables), `means`
(each method's 4-task mean), `demo-tasks` (e2vpt per task: the demo tasks), `goals` (e2vpt against full and
linear, the figures issue 21 judges), `gains:OTHER_ROOT` (each method's mean against another sweep's).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from training.experiments.reports import load, scores
from training.experiments.summarize import tables
from training.experiments.sweep import METHODS, TASKS

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/results.md", "docs/results-cifar10-backbone.md")
REGION = re.compile(r"<!-- results: (?P<key>[^ ]+ [^ ]+) -->(?P<body>.*?)<!-- end results: (?P=key) -->", re.S)


def method_means(reports: dict) -> dict[str, float]:
    """{method: mean test accuracy (%) over the four tasks} of the methods run on all four."""
    s = scores(reports)
    return {m: 100 * sum(s[(t, m)].mean for t in TASKS) / len(TASKS)
            for m in METHODS if all((t, m) in s for t in TASKS)}


def means(reports: dict) -> str:
    ranked = sorted(method_means(reports).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{m} {v:.1f}" for m, v in ranked)


def demo_tasks(reports: dict) -> str:
    s = scores(reports)
    return ", ".join(f"{t} {s[(t, 'e2vpt')]}" for t in TASKS if (t, "e2vpt") in s)


def goals(reports: dict) -> str:
    s, mean = scores(reports), method_means(reports)
    behind = mean["full"] - mean["e2vpt"]

    def per_task(other: str) -> str:
        return ", ".join(f"{t} {100 * (s[(t, 'e2vpt')].mean - s[(t, other)].mean):+.1f}" for t in TASKS)

    return (f"e2vpt is {behind:.1f} points behind full fine-tuning on the 4-task mean ({mean['e2vpt']:.1f} against "
            f"{mean['full']:.1f}; per task {per_task('full')}); e2vpt - linear per task: {per_task('linear')}")


def gains(reports: dict, before: dict) -> str:
    """Each method's 4-task mean against another sweep's (the same protocol on another backbone)."""
    now, then = method_means(reports), method_means(before)
    return ", ".join(f"{m} {then[m]:.1f} -> {now[m]:.1f} ({now[m] - then[m]:+.1f})" for m in METHODS
                     if m in now and m in then)


MADE = {"tables": lambda reports: tables(reports, level="###"), "means": means, "demo-tasks": demo_tasks,
        "goals": goals}


def rendered(doc: str, repo: Path = REPO) -> str:
    """`doc` with every generated part made anew from the reports under repo/ROOT."""
    loaded: dict[str, dict] = {}

    def fill(m: re.Match) -> str:
        key, body = m.group("key"), m.group("body")
        root, part = key.split(" ")
        for r in (root, *part.split(":")[1:]):
            if r not in loaded:
                loaded[r] = load(repo / r)
        if part.startswith("gains:"):  # gains:OTHER_ROOT
            text = gains(loaded[root], loaded[part.split(":", 1)[1]])
        elif part in MADE:
            text = MADE[part](loaded[root])
        else:
            raise LookupError(f"unknown generated part '{part}' (known: {', '.join(MADE)}, gains:ROOT)")
        text = f"\n{text}\n" if body.startswith("\n") else text  # a block stays a block, a span inside a line a span
        return f"<!-- results: {key} -->{text}<!-- end results: {key} -->"

    return REGION.sub(fill, doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc differs")
    args = parser.parse_args(argv)
    stale = []
    for name in DOCS:
        doc = REPO / name
        now = doc.read_text()
        new = rendered(now)
        if new != now:
            stale.append(name)
            if not args.check:
                doc.write_text(new)
    print(("differ from the sweeps' reports: " if args.check else "rewrote: ") + (", ".join(stale) or "nothing"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
