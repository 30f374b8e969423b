"""Reading what the benchmarks and the results sweep wrote, for tools/perf_summary.py: a benchmark's record
(runs/bench/<name>.md, benchmarks/common.py: recorded) as its facts and markdown tables, the mean test accuracies
of the demo backbone's sweep (<sweep.DEFAULT_OUT>/tables.md) and the backbone it trained on, and the text of
their cells.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from training.experiments.sweep import DEFAULT_OUT

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "runs" / "bench"
# the results sweep whose mean test accuracies the README's alternatives table quotes (docs/results.md)
RESULTS = REPO / DEFAULT_OUT
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


# ---- reading a record -------------------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]

    def cell(self, column: str, where: dict[str, str] | None = None) -> str:
        """The cell in the column whose header starts with `column`, of the one row that has the given value
        under each named column (`value*`: a cell starting with value); no `where`: the table's one row."""
        col = next(i for i, h in enumerate(self.headers) if h.startswith(column))
        keys = {self.headers.index(k): v for k, v in (where or {}).items()}
        rows = [r for r in self.rows if all(r[i].startswith(v[:-1]) if v.endswith("*") else r[i] == v
                                            for i, v in keys.items())]
        if len(rows) != 1:
            raise LookupError(f"{len(rows)} rows of '{self.title}' match {where}")
        return rows[0][col]


@dataclass
class Record:
    name: str
    text: str
    tables: list[Table] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    stale: str = ""  # why it was not regenerated

    def table(self, title: str = "") -> Table:
        found = [t for t in self.tables if title in t.title or title == t.headers[0]]  # a title, or a first header
        if not found:
            raise LookupError(f"runs/bench/{self.name}.md has no table titled '{title}'")
        return found[0]

    @property
    def source(self) -> str:
        link = f"[{self.name}](../runs/bench/{self.name}.md)"
        if self.stale:
            return f"{link}, **not regenerated**: {self.stale.split(' (')[0]}"
        load = self.facts["load average (1, 5, 15 min)"].split()
        return f"{link}, {self.facts['date'].split(' UTC')[0]}, load {load[0]} -> {load[4]}"


def read(name: str, bench: Path = BENCH) -> Record:
    path = bench / f"{name}.md"
    if not path.is_file():
        raise LookupError(f"{path.relative_to(bench.parents[1])} is missing: run the benchmark (its command is in "
                          "docs/performance.md) or mark it 'Not regenerated: why'")
    text = path.read_text().strip()
    record = Record(name, text)
    if text.startswith("Not regenerated:"):
        record.stale = text.splitlines()[0].removeprefix("Not regenerated:").strip().rstrip(".")
    lines = text.splitlines()
    for line in lines:
        if line.startswith("- ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            record.facts.setdefault(key, value)
    record.tables = tables_in(lines)
    return record


def tables_in(lines: list[str]) -> list[Table]:
    """The markdown tables of a text, each titled by the non-empty line above it."""
    tables, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        above = next((s for s in reversed(lines[:i]) if s.strip()), "")
        end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[i:end]]
        tables.append(Table("" if above.startswith("|") else above, cells[0], cells[2:]))
        i = end
    return tables


def shown(path: Path) -> Path:
    """A path as the docs name it: relative to the repository when inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def mean_accuracy(methods: list[str], results: Path = RESULTS) -> dict[str, str]:
    """method -> its mean test accuracy over the sweep's tasks ('Test accuracy' table of its tables.md, 'mean')."""
    found = [t for t in tables_in((results / "tables.md").read_text().splitlines()) if "Test accuracy" in t.title]
    if not found:
        raise LookupError(f"{shown(results)}/tables.md has no 'Test accuracy' table")
    return {method: found[0].cell("mean", {"method": method}) for method in methods}


def results_backbone(results: Path = RESULTS) -> Path:
    """The backbone file the sweep trained on, from its runs' reports (one backbone for the whole sweep)."""
    paths = {json.loads(json.loads(p.read_text())["backbone"])["path"] for p in results.glob("*/*.report.json")}
    if len(paths) != 1:
        raise LookupError(f"{shown(results)}: the runs name {len(paths)} backbones ({sorted(paths)})")
    return Path(paths.pop())


def number(cell: str) -> float:
    """The figure of a cell: '0.979 (0.91-1.05)', 'mixed 8: 0.977 (...)', '1.27x', '11,553*', '<= 5'."""
    found = NUMBER.search(cell.rsplit(": ", 1)[-1])
    if found is None:
        raise ValueError(f"no number in '{cell}'")
    return float(found.group().replace(",", ""))


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def kib_text(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB" if kib >= 1024 else f"{kib:,.0f} KiB" if kib >= 10 else f"{kib:.1f} KiB"


def mib_text(cell: str) -> str:
    """An RSS cell in MiB, '11,382*' when extrapolated, as GiB."""
    return f"{number(cell) / 1024:.1f} GiB" + (" (extrapolated)" if cell.endswith("*") else "")
