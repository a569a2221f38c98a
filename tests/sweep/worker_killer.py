"""A Ray Tune callback for the fault tests, loaded by Tune from ``RAY_TUNE_CALLBACKS``
(``worker_killer.KillWorkerAtFirstEnd``, with this folder on ``PYTHONPATH``).

When the first trial of a sweep ends, it SIGKILLs that trial's worker process at once, in Tune's
own loop: Tune has not yet handed the now idle actor to the next trial, and sends it the
``reset`` of that trial before it learns that the worker is gone. So the kill lands, every time,
in the window a lost node or a killed process hits only by chance: a trial waiting for a
reused actor's reset. It acts once per ``KD_TEST_KILL_MARKER`` file (it writes the pid there),
so a driver that resumes the sweep is not hit again.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from ray import tune


class KillWorkerAtFirstEnd(tune.Callback):
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        marker = Path(os.environ["KD_TEST_KILL_MARKER"])
        pid = (trial.last_result or {}).get("pid")
        if pid is None or marker.exists():
            return
        marker.write_text(str(pid))
        os.kill(int(pid), signal.SIGKILL)
