"""A sweep's record, written by one writer on the driver; MLflow and the tables are views of it.

- :mod:`~kd_tune.results.trial_tables`: the Parquet ``trials`` and ``epochs`` tables (schema,
  writer, readers);
- :mod:`~kd_tune.results.samples`: per-sample end measurements and features as part files;
- :mod:`~kd_tune.results.teacher_table`: ``teachers.parquet``, a row per teacher node;
- :mod:`~kd_tune.results.search_record`: ``search.json``, a search's draws and selection;
- :mod:`~kd_tune.results.trial_end`: what a completed trial sends the driver;
- :mod:`~kd_tune.results.sinks`: the sink interface (one output per sink), and the sinks of
  this layer: :mod:`~kd_tune.results.parquet_sink`, :mod:`~kd_tune.results.samples_sink`,
  :mod:`~kd_tune.results.teachers_sink`.

May import: :mod:`kd_tune.teachers` and the layers below it.
"""
