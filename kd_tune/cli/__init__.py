"""The commands, and the one place where a sweep and its analysis meet.

- :mod:`~kd_tune.cli.sweep`: the command line every ``sweeps/*.py`` shares
  (:class:`SweepSpec`, :func:`main`);
- :mod:`~kd_tune.cli.args`: one flag per :class:`~kd_tune.core.config.RunConfig` field;
- :mod:`~kd_tune.cli.run`: one run without Ray or MLflow (``python -m kd_tune.run``);
- :mod:`~kd_tune.cli.recover`: MLflow refilled, results rebuilt (``python -m kd_tune.recover``).

May import: every part of kd-tune, and :mod:`analysis`.
"""
