"""MLflow, as a view of the results that can always be refilled from them.

- :mod:`~kd_tune.tracking.tracker`: the tracking store, the sweep's experiment and its
  parent, trial and teacher runs;
- :mod:`~kd_tune.tracking.writes`: one dataclass per kind of MLflow write, one handler each;
- :mod:`~kd_tune.tracking.queue`: the durable outbox of MLflow writes and the one thread
  that sends them;
- :mod:`~kd_tune.tracking.mlflow_sink`: the sink that turns trial events into MLflow writes.

May import: :mod:`kd_tune.results` and the layers below it. Runs on the driver only:
workers never need the tracking store.
"""
