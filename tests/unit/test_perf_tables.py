"""Figures in docs/performance.md that come from a benchmark's output file are that file's, byte for byte: the
block between the markers is regenerated here from runs/bench/ (`python tests/unit/test_perf_tables.py` writes
it; the test fails while the doc and the file disagree)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "performance.md"
BLOCKS = {"perf_analyzer table": REPO / "runs" / "bench" / "perf_analyzer.md"}


def rendered(doc: str) -> str:
    for name, source in BLOCKS.items():
        start, end = f"<!-- {name}: generated from {source.relative_to(REPO)} -->", f"<!-- end {name} -->"
        body = source.read_text().strip()
        block = f"{start}\n{body}\n{end}"
        doc = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m, block=block: block, doc, flags=re.S)
    return doc


def test_the_doc_shows_the_benchmark_files():
    doc = DOC.read_text()
    assert all(f"<!-- {name}:" in doc for name in BLOCKS)
    assert rendered(doc) == doc, "docs/performance.md differs from runs/bench/: python tests/unit/test_perf_tables.py"


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text()))
    sys.exit(0)
