"""What kd-tune's commands show a person, through the standard ``logging`` module.

Library code reports through module loggers (``logging.getLogger(__name__)``, all under
``kd_tune`` or ``analysis``): progress lines at INFO, problems a user should know of at
WARNING. Nothing is shown until a command installs the console handler
(:func:`console`): an INFO record prints as its bare message, a WARNING or worse with its
level in front (``warning: the teacher ... is at chance``), on standard output. A program
that uses kd-tune as a library configures logging as it likes instead.
"""
from __future__ import annotations

import logging
import sys
from typing import TextIO

ROOTS = ("kd_tune", "analysis")


class ConsoleFormatter(logging.Formatter):
    """The bare message for INFO and below; ``<level>: <message>`` from WARNING up."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return message


class _Console(logging.StreamHandler):
    """A stream handler that writes to the process's standard output as it is at each record
    (a command run inside a test writes to the captured stream)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return self._fixed if self._fixed is not None else sys.stdout

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        self._fixed = value


_installed: _Console | None = None


def console(stream: TextIO | None = None) -> logging.Handler:
    """Show kd-tune's INFO and WARNING records on ``stream`` (default: standard output, looked
    up at each record); installed once per process, later calls return the same handler."""
    global _installed
    if _installed is None:
        _installed = _Console(stream)
        _installed.setFormatter(ConsoleFormatter())
        for name in ROOTS:
            logger = logging.getLogger(name)
            logger.addHandler(_installed)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
    return _installed


class KeptWarnings(logging.Handler):
    """Every WARNING record of kd-tune's loggers while installed (a context manager), kept as
    its message: a sweep says its warnings again under its closing table."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> KeptWarnings:
        for name in ROOTS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in ROOTS:
            logging.getLogger(name).removeHandler(self)
