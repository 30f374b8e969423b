"""Logging set up under a swapped stderr (typer's CliRunner, pytest's capture) keeps working once it is closed."""

import io
import logging
import sys

from promptserve.logs import setup_logging


def test_log_lines_follow_the_current_stderr_not_the_one_at_setup(monkeypatch, capsys):
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    setup_logging("info")
    logging.getLogger("promptserve.test").info("first")
    swapped.close()  # what CliRunner does when its invoke() returns
    monkeypatch.undo()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("promptserve.test").warning("second")
    assert "promptserve.test: second" in later.getvalue() and "Logging error" not in later.getvalue()
    logging.basicConfig(force=True)  # leave the root logger as other tests expect
