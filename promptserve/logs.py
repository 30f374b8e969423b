"""One log format for every process: the library's loggers (`promptserve.*`), uvicorn's and the access log.

Library code only calls `logging.getLogger(__name__)`; the command line (or an embedding application)
decides where lines go by calling `setup_logging` once.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
# uvicorn configures these itself unless it is given log_config=None; then they propagate to the root handler
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def setup_logging(level: str = "info") -> None:
    """Send every logger's records, uvicorn's included, to stderr in LOG_FORMAT at `level` (debug..error)."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
