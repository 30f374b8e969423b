"""The trainer's progress: the core's bars (promptserve.progress, drawn only on a terminal) and the run's time
estimate (StepClock)."""

from __future__ import annotations

import logging
import time

from promptserve.progress import bar, interactive

__all__ = ["EpochClock", "StepClock", "bar", "interactive"]

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging


class StepClock:
    """Counts the optimizer steps a whole run plans (every stage, grid point and seed) and logs how long the run
    will take: a first estimate after a few steps (from their speed alone, so it leaves out evaluation and the
    stages to come), then a revised one at 10%, 25% and 50% of the steps, from the wall time the run has taken
    so far (evaluation and every overhead included), each saying which it is. `clock`: for tests."""

    CHECKPOINTS = (0.10, 0.25, 0.50)

    def __init__(self, planned_steps: int, log=logger.info, measure_steps: int = 5, clock=time.perf_counter):
        self.planned, self.log, self.measure_steps, self.clock = planned_steps, log, measure_steps, clock
        self.done, self.t0, self.estimated = 0, None, False
        self.started = clock()  # the run's start: what the revised estimates divide
        self.checkpoints = [c for c in self.CHECKPOINTS if c * planned_steps >= 2 * measure_steps]

    def step(self) -> None:
        now = self.clock()
        if self.t0 is None:  # the first step pays one-off costs (allocations, thread pools): start after it
            self.t0 = now
            return
        self.done += 1
        if not self.estimated and self.done >= self.measure_steps:
            self.estimated = True
            per_step = (now - self.t0) / self.done
            self.log(f"[plan] time estimate: ~{_duration(per_step * self.planned)} for {self.planned:,} steps in all "
                     f"({per_step:.3f} s/step over the first {self.done} steps; evaluation not counted yet: revised "
                     f"at {', '.join(f'{c:.0%}' for c in self.checkpoints)} of the steps)")
        while self.checkpoints and self.done >= self.checkpoints[0] * self.planned:
            fraction = self.checkpoints.pop(0)
            elapsed = now - self.started
            left = elapsed / self.done * (self.planned - self.done)
            self.log(f"[plan] revised estimate at {fraction:.0%} of the steps: ~{_duration(left)} left, "
                     f"~{_duration(elapsed + left)} in all (from the {_duration(elapsed)} so far, evaluation included)")


class EpochClock:
    """The time left of a backbone run (pretrain, distill), logged after every epoch, since a log file shows no
    progress bar: the mean wall time of the epochs this process has run (evaluation and probes included) times
    the epochs left. `first_epoch`: where this process started (a resumed run counts its own epochs only)."""

    def __init__(self, first_epoch: int, epochs: int, log=logger.info, tag: str = "time", clock=time.perf_counter):
        self.first, self.epochs, self.log, self.tag, self.clock = first_epoch, epochs, log, tag, clock
        self.started = clock()

    def epoch_done(self, done: int) -> None:
        per_epoch = (self.clock() - self.started) / max(done - self.first, 1)
        left = (f"~{_duration(per_epoch * (self.epochs - done))} left" if done < self.epochs else "finished")
        self.log(f"[{self.tag}] epoch {done}/{self.epochs}: {_duration(per_epoch)} per epoch in this process "
                 f"(evaluation included), {left}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
