"""The training-time estimate (issue 24 item 7: "~112 s" for a run of 359 s): the first guess counts only the
steps' speed; the revised ones divide the wall time so far, evaluation included, and land near the real total."""

from __future__ import annotations

import re

from training.progress import EpochClock, StepClock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_revised_estimates_include_what_the_first_one_cannot_see():
    clock, lines = FakeClock(), []
    steps = StepClock(1000, lines.append, measure_steps=5, clock=clock)
    for i in range(1000):
        clock.now += 0.1  # the optimizer step
        if i % 100 == 99:
            clock.now += 5.0  # an evaluation after every 100 steps: 50 s the step speed does not show
        steps.step()
    actual = clock.now
    first, *revised = lines
    assert "~100 s" in first and "evaluation not counted yet" in first
    assert [r.split(" of the steps")[0] for r in revised] == ["[plan] revised estimate at 10%",
                                                              "[plan] revised estimate at 25%",
                                                              "[plan] revised estimate at 50%"]
    for line in revised:
        value, unit = re.search(r"~([\d.]+) (s|min) in all", line).groups()
        total = float(value) * (60 if unit == "min" else 1)
        assert abs(total - actual) / actual < 0.3, (line, actual)


def test_a_short_run_gets_no_revisions_it_could_not_measure():
    clock, lines = FakeClock(), []
    steps = StepClock(12, lines.append, measure_steps=5, clock=clock)
    for _ in range(12):
        clock.now += 1
        steps.step()
    assert len(lines) == 1


def test_backbone_runs_log_the_time_left_after_every_epoch_from_this_process_epochs_only():
    """pretrain / distill in a log file (no bar): a resumed run at epoch 5 of 8 counts its own epochs."""
    clock, lines = FakeClock(), []
    epochs = EpochClock(5, 8, lines.append, "distill", clock=clock)
    for done in (6, 7, 8):
        clock.now += 300.0
        epochs.epoch_done(done)
    assert lines == ["[distill] epoch 6/8: 5.0 min per epoch in this process (evaluation included), ~10.0 min left",
                     "[distill] epoch 7/8: 5.0 min per epoch in this process (evaluation included), ~5.0 min left",
                     "[distill] epoch 8/8: 5.0 min per epoch in this process (evaluation included), finished"]
