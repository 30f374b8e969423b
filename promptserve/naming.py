"""The one task-name rule (docs/design.md, What flows), used by the registry, the server, the trainer and the CLI.

A task name becomes a file name and a Redis key, so this check is also the path-traversal guard.
"""

from __future__ import annotations

import re

TASK_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"  # anchored by fullmatch: `$` alone would allow "x\n"
TASK_NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
_TASK_NAME = re.compile(TASK_NAME_PATTERN)


class InvalidTaskName(ValueError):
    """A task name outside the rule; the message says what a name may be."""


def is_task_name(name: object) -> bool:
    return isinstance(name, str) and _TASK_NAME.fullmatch(name) is not None


def check_task_name(name: object, error: type[Exception] = InvalidTaskName) -> str:
    """Return `name` when it follows the rule, else raise `error` (a subclass the caller maps, e.g. to a 422)."""
    if not is_task_name(name):
        shown = name[:80] if isinstance(name, str) else name
        raise error(f"invalid task name {shown!r}: use {TASK_NAME_RULE}")
    return name  # type: ignore[return-value]
