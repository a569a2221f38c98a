"""What a command shows a person: the console handler's lines, and the warnings a sweep repeats."""
from __future__ import annotations

import io
import logging
import subprocess
import sys

from kd_tune.core.logs import ConsoleFormatter, KeptWarnings


def record(level: int, message: str, name: str = "kd_tune.sweep.runner") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_info_prints_bare_and_warnings_say_their_level():
    formatter = ConsoleFormatter()
    assert formatter.format(record(logging.INFO, "teachers: 1 needed")) == "teachers: 1 needed"
    assert formatter.format(record(logging.WARNING, "teacher at chance")) == "warning: teacher at chance"
    assert formatter.format(record(logging.ERROR, "gone")) == "error: gone"


def test_a_command_shows_info_lines_on_stdout_once_installed():
    code = ("import logging; from kd_tune.core.logs import console; "
            "logging.getLogger('kd_tune.x').info('hidden'); console(); console(); "
            "logging.getLogger('kd_tune.x').info('shown'); logging.getLogger('analysis.y').warning('careful'); "
            "logging.getLogger('other').warning('not ours')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "shown\nwarning: careful\n"  # installed once: no line twice
    assert out.stderr == "not ours\n"  # another library's warning: Python's last-resort handler


def test_kept_warnings_hold_the_warnings_said_while_installed():
    logger = logging.getLogger("kd_tune.teachers.store")
    logger.warning("before")
    with KeptWarnings() as kept:
        logger.info("progress")
        logger.warning("teacher %s at chance", "cnn-4")
        logging.getLogger("analysis.figures").warning("a figure left out")
        logging.getLogger("elsewhere").warning("not kd-tune's")
    logger.warning("after")
    assert kept.messages == ["teacher cnn-4 at chance", "a figure left out"]


def test_the_console_writes_to_the_stream_it_was_given():
    from kd_tune.core.logs import _Console

    stream = io.StringIO()
    handler = _Console(stream)
    handler.setFormatter(ConsoleFormatter())
    handler.emit(record(logging.WARNING, "x"))
    assert stream.getvalue() == "warning: x\n"
