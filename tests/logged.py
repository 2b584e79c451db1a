"""The package's log messages during a block, as the command prints them (``warning: `` before warnings)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(f"warning: {message}" if record.levelno >= logging.WARNING else message)


@contextlib.contextmanager
def logged_messages() -> Iterator[list[str]]:
    """Collect every message (INFO and above) of the ``scalable_assoc`` loggers while the block runs."""
    messages: list[str] = []
    package = logging.getLogger("scalable_assoc")
    handler, level = _Collect(messages), package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
