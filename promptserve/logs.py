"""One log format for every process: the library's loggers (`promptserve.*`), uvicorn's and the access log.

Library code only calls `logging.getLogger(__name__)`; the command line (or an embedding application)
decides where lines go by calling `setup_logging` once.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
# uvicorn configures these itself unless it is given log_config=None; then they propagate to the root handler
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not when logging was set up: test runners
    and typer's CliRunner swap stderr for a buffer and close it afterwards, and a handler holding that closed
    buffer turns every later line into a 'Logging error' traceback."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


def setup_logging(level: str = "info") -> None:
    """Send every logger's records, uvicorn's included, to stderr in LOG_FORMAT at `level` (debug..error)."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=[StderrHandler()], force=True)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
