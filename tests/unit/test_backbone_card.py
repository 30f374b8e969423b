"""The distilled backbone's card: its tables are generated from the committed run (tools/backbone_card.py) and
must match it, so a number on the card can never drift from the log and files it came from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CARDS = sorted((REPO / "assets" / "backbones").glob("**/vit_tiny_p4_32_distill_mnv1*.md"))


@pytest.fixture(scope="module")
def backbone_card():
    sys.path.insert(0, str(REPO / "tools"))
    import backbone_card

    return backbone_card


@pytest.mark.parametrize("card", CARDS, ids=[c.stem for c in CARDS])
def test_card_tables_match_the_run(backbone_card, card):
    assert backbone_card.regenerated(card) == card.read_text(), \
        f"stale: python tools/backbone_card.py {card.relative_to(REPO)}"


def test_every_distilled_card_is_checked():
    assert CARDS, "no distilled backbone card found under assets/backbones"


def test_card_tables_show_every_stage_and_the_probes(backbone_card, tmp_path):

    run = tmp_path / "run"
    (run / "stage2").mkdir(parents=True)
    rows = ", ".join(f'{{"task": "{t}", "train": 10, "test": 10, "accuracy": {a}}}'
                     for t, a in zip(backbone_card.TASKS, (0.3, 0.4, 0.6, 0.7), strict=True))
    probe = f'{{"tasks": [{rows}], "mean": 0.5}}'
    (run / "distill.log").write_text(f'noise\n{{"epoch": 0, "probe": {probe}}}\n')
    (run / "stage2" / "distill.log").write_text(
        f'{{"epoch": 1, "test_acc": 0.75, "test_images": 2000, "distill_mse": 0.5, "probe": {probe}}}\n')
    (run / "probe-teacher.json").write_text(probe)
    (run / "probe-distilled.json").write_text(probe)
    what = backbone_card.CardRun(("distill.log", "stage2/distill.log"), ("demo-backbone", "distilled", "teacher"),
                                 "distilled")
    text = backbone_card.tables(what, run)
    assert "| 1.0 | 30.0 | 40.0 | 60.0 | 70.0 | **43.3** | - | - |" in text
    assert "| 2.1 | 30.0 | 40.0 | 60.0 | 70.0 | **43.3** | 75.00% (2,000) | 0.500 |" in text
    assert "| teacher: MobileNet V1" in text and "| **this backbone** (the file) |" in text
    assert "CIFAR-10-only" not in text  # only the probes there
    assert "runs started from this file" not in text
    branch = backbone_card.CardRun(("distill.log",), ("teacher",), "teacher",
                                   continued=(("1d8", "stage2/distill.log"),))
    text = backbone_card.tables(branch, run)  # a run from the file afterwards: its own label, said to be outside it
    assert "| 1d8.1 | 30.0 | 40.0 | 60.0 | 70.0 | **43.3** | 75.00% (2,000) | 0.500 |" in text
    assert "rows 1d8.* are runs started from this file afterwards, not in it" in text
    (run / "fit.jsonl").write_text(
        '{"checkpoint": "runs/distill/stage2/s.ckpt.pt", "images": 50, "train": {"r2": 0.4}, "test": {"r2": 0.35}}\n'
        '{"checkpoint": "/elsewhere/x.ckpt.pt", "images": 8, "train": {"r2": 0.3}, "test": {"r2": 0.3}}\n')
    fitted = backbone_card.CardRun(("distill.log", "stage2/distill.log"), ("teacher",), "teacher", fit="fit.jsonl")
    text = backbone_card.tables(fitted, run)  # each fit row named by its run's label; the file's stage said so
    assert "| 2 (this file) | 50 | 0.400 | 0.350 | +0.050 |" in text
    assert "/elsewhere/x.ckpt.pt" not in text  # a run outside this card's history: its own card shows it
    (run / "probe-demo-backbone.json").write_text(probe)
    whole = backbone_card.CardRun(("distill.log",), ("demo-backbone", "distilled"), "distilled",
                                  sign_whole_split=("old-sign", "new-sign"))
    assert "whole train split" not in backbone_card.tables(whole, run)  # its probes not run: no line
    for name, acc in (("old-sign", 0.69), ("new-sign", 0.9)):
        (run / f"probe-{name}.json").write_text(
            f'{{"tasks": [{{"task": "sign_digits", "train": 1462, "test": 600, "accuracy": {acc}}}]}}')
    text = backbone_card.tables(whole, run)  # sign_digits replaced, gtsrb and dtd10 kept: (30+40+69)/3 -> (30+40+90)/3
    assert "whole train split (1,462 images)" in text and "sign_digits 69.0 -> 90.0" in text
    assert "mean of 3 46.33 -> 53.33, **+7.00 points**; against the independent mean +6.80." in text
    card = f"intro\n{backbone_card.BEGIN}\nold\n{backbone_card.END}\nrest\n"
    assert backbone_card.render(card, "new") == f"intro\n{backbone_card.BEGIN}\nnew\n{backbone_card.END}\nrest\n"
