"""Progress bars that only draw on a terminal.

tqdm redraws its line with carriage returns; in a log file (stdout or stderr redirected, a CI job, a
`nohup` run) that leaves one giant line of bars. There the trainer's own per-epoch / per-stage log lines
are the periodic progress, so the bars are simply off.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

from tqdm import tqdm

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging


def interactive() -> bool:
    """True when both stdout and stderr are terminals (tqdm draws on stderr, logs go to stdout)."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, enabled: bool = True) -> tqdm:
    return tqdm(iterable, desc=desc, total=total, disable=not (enabled and interactive()), leave=False,
                mininterval=1, dynamic_ncols=True)


class StepClock:
    """Counts the optimizer steps a whole run plans (every stage, grid point and seed) and, after the first
    few real steps, logs a time estimate for all of them: measured, not guessed from a table."""

    def __init__(self, planned_steps: int, log=logger.info, measure_steps: int = 5):
        self.planned, self.log, self.measure_steps = planned_steps, log, measure_steps
        self.done, self.t0, self.estimated = 0, None, False

    def step(self) -> None:
        now = time.perf_counter()
        if self.t0 is None:  # the first step pays one-off costs (allocations, thread pools): start after it
            self.t0 = now
            return
        self.done += 1
        if not self.estimated and self.done >= self.measure_steps:
            self.estimated = True
            per_step = (now - self.t0) / self.done
            total = per_step * self.planned
            self.log(f"[plan] time estimate: ~{_duration(total)} for {self.planned:,} steps in all "
                     f"({per_step:.3f} s/step over the first {self.done} steps, plus evaluation)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
