"""Figures in docs/performance.md and the README that come from a benchmark are its record's, byte for byte: the
generated parts are made from runs/bench/ by tools/perf_summary.py (`python tools/perf_summary.py` rewrites them);
the test fails while a doc and the records disagree, and every benchmark script writes such a record."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from tools import perf_summary

REPO = Path(__file__).resolve().parents[2]
GPU_ONLY_SCRIPTS = {"gpu_serving_check.py"}  # its record is written on a CUDA machine only (no GPU here so far)


@pytest.mark.parametrize("doc", perf_summary.DOCS, ids=lambda p: p.name)
def test_the_docs_show_the_benchmark_records(doc):
    text = doc.read_text()
    assert "<!-- generated: " in text, f"{doc.name} lost its generated parts"
    assert perf_summary.rendered(text) == text, (
        f"{doc.relative_to(REPO)} differs from runs/bench/: python tools/perf_summary.py")


def test_every_record_is_shown_and_says_where_it_ran():
    shown = perf_summary.DOCS[0].read_text()
    for path in sorted(perf_summary.BENCH.glob("*.md")):
        record = perf_summary.read(path.stem)
        assert f"<!-- generated: runs/bench/{path.name} -->" in shown, f"docs/performance.md does not show {path.name}"
        if not record.stale:
            for fact in ("date", "CPU", "load average (1, 5, 15 min)",
                         "beside it (other processes, share of one core over the run)"):
                assert fact in record.facts, f"{path.name} lacks its '{fact}' fact"
            assert record.text.startswith("Command: `"), f"{path.name} does not start with its command"


def test_every_benchmark_script_writes_a_record():
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                 for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call)}
        if script.name != "common.py":
            assert "recorded" in calls, f"benchmarks/{script.name} prints figures no record keeps (common.recorded)"
    assert set(GPU_ONLY_SCRIPTS) <= {p.name for p in (REPO / "benchmarks").glob("*.py")}


def test_a_changed_record_changes_the_docs(tmp_path):
    """The check can fail: one figure edited in a copy of the records shows in the summary and the README."""
    bench = tmp_path / "bench"
    shutil.copytree(perf_summary.BENCH, bench)
    record = bench / "task_scaling.md"
    text = record.read_text()
    row = next(line for line in text.splitlines() if line.startswith("|") and "1,000" in line and "uniform" in line)
    cells = row.split("|")
    cells[6] = cells[6].replace(cells[6].strip(), "0.500 (0.40-0.60)")
    record.write_text(text.replace(row, "|".join(cells)))
    for doc in perf_summary.DOCS:
        assert perf_summary.rendered(doc.read_text(), bench) != doc.read_text(), doc.name
    assert "0.50x (uniform)" in perf_summary.summary(bench)
    assert "| 1,000 resident tasks vs 1 task | >= 0.9x | 0.50x (uniform)" in perf_summary.summary(bench)
    assert "**no**" in perf_summary.summary(bench).split("1,000 resident tasks vs 1 task")[1].splitlines()[0]


def test_gpu_only_and_stale_records_are_labelled():
    text = perf_summary.summary()
    assert perf_summary.GPU_ONLY in text
    stale = [p.stem for p in sorted(perf_summary.BENCH.glob("*.md")) if perf_summary.read(p.stem).stale]
    for row in text.splitlines():
        for name in stale:
            if f"[{name}](" in row:
                assert "**not regenerated**" in row, f"a summary row quotes {name} as if it were measured anew"


def test_a_missing_record_is_named():
    with pytest.raises(LookupError, match="runs/bench/nothing.md is missing"):
        perf_summary.read("nothing")


def test_the_alternatives_accuracy_is_the_sweeps(tmp_path):
    """The README's accuracy column is the results sweep's 'Test accuracy' means, full fine-tuning's for both kinds of
    model per task, with the backbone's card named; a sweep without that table is refused."""
    results = tmp_path / "results"
    shutil.copytree(perf_summary.RESULTS, results, ignore=shutil.ignore_patterns("*.safetensors", "*.log"))
    tables = results / "tables.md"
    text = tables.read_text()
    full = next(line for line in text.splitlines() if line.startswith("| full |"))
    cells = full.split("|")
    cells[6] = " 12.3 "  # the mean column
    tables.write_text(text.replace(full, "|".join(cells)))
    readme = perf_summary.readme_alternatives(results=results)
    model_rows = [line for line in readme.splitlines() if line.startswith("| a fine-tuned model per task")]
    assert model_rows and all(line.endswith("| 12.3% (full) |") for line in model_rows)
    card = perf_summary.results_backbone(results).with_suffix(".md")
    assert f"]({card})" in readme and (REPO / card).is_file()
    tables.write_text(text.replace("## Test accuracy", "## Something else"))
    with pytest.raises(LookupError, match="no 'Test accuracy' table"):
        perf_summary.readme_alternatives(results=results)


def test_the_issue_22_goals_are_read_from_their_records(tmp_path):
    """The HTTP precision row and the OpenVINO-per-task goal follow their records, and say 'no' when missed."""
    bench = tmp_path / "bench"
    shutil.copytree(perf_summary.BENCH, bench)
    edits = {"http_precision": ("1", 10, "1.500 (1.40-1.60)"),  # 1 image per request: default / float32
             "vs_alternatives": ("1,000", 8, "0.800 (0.70-0.90)")}  # the goal table: speed ratio
    for name, (first, width, value) in edits.items():
        record = bench / f"{name}.md"
        text = record.read_text()
        row = next(line for line in text.splitlines() if line.startswith("|") and len(line.split("|")) == width + 2
                   and first in (line.split("|")[1].strip(), line.split("|")[2].strip()))
        cells = row.split("|")
        cells[5] = cells[5].replace(cells[5].strip(), value)
        record.write_text(text.replace(row, "|".join(cells)))
    text = perf_summary.summary(bench)
    http = next(line for line in text.splitlines() if line.startswith("| HTTP images/s, the default path"))
    assert "/ 1.50x" in http and "| **no** |" in http
    goal = next(line for line in text.splitlines() if "vs a compiled OpenVINO model per task" in line)
    assert "0.80x (0.70-0.90)" in goal and "| **no** |" in goal
