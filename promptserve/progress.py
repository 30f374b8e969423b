"""Progress bars that only draw on a terminal: the one bar of every long command (training, eval, probe,
distillation, `classify` of folders).

tqdm draws on stderr and redraws its line with carriage returns; where stderr is a log file (a CI job, a
`nohup` run, `2> log`) that would leave one giant line of bars, so there the bars are off and the commands' own
log lines are the progress. Logs go to stdout: `promptserve train ... > train.log` keeps the bars on the
terminal and the lines in the file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def interactive() -> bool:
    """True when stderr (where the bars draw) is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool = True,
        unit: str = "it") -> tqdm:
    return tqdm(iterable, desc=desc, total=total, disable=not (enabled and interactive()), leave=False,
                mininterval=1, dynamic_ncols=True, unit=unit)
