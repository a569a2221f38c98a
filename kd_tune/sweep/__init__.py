"""Running a sweep on Ray: the driver, the workers, and what joins them.

- :mod:`~kd_tune.sweep.options`: how and where a sweep runs (:class:`SweepOptions`);
- :mod:`~kd_tune.sweep.cluster`: joining Ray (embedded or a cluster), resource checks;
- :mod:`~kd_tune.sweep.runner`: the driver of a grid, from configs to results;
- :mod:`~kd_tune.sweep.search`: a searched sweep (Optuna TPE + ASHA) and its confirmation;
- :mod:`~kd_tune.sweep.teacher_stage`: teachers and teacher-logit caches made as Ray tasks;
- :mod:`~kd_tune.sweep.trainable`: the worker side (the Tune trainable and the stage tasks);
- :mod:`~kd_tune.sweep.tune_callback`: the Tune callback that feeds the sinks;
  :mod:`~kd_tune.sweep.console`: progress lines.

May import: :mod:`kd_tune.tracking` and every layer below it; never :mod:`analysis`
(the command line joins the two).
"""
