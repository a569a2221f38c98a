"""The driver's result sinks: one per output, each owning its client.

- :class:`~kd_tune.sinks.parquet_sink.ParquetSink`: the epochs and trials tables
  (:mod:`kd_tune.results`);
- :class:`~kd_tune.sinks.samples_sink.SamplesSink`: ``samples.parquet/`` and
  ``features.parquet/`` part files (:mod:`kd_tune.samples`);
- :class:`~kd_tune.sinks.teachers_sink.TeachersSink`: ``teachers.parquet``, one row per
  teacher node (:mod:`kd_tune.teacher_table`);
- :class:`~kd_tune.sinks.mlflow_sink.MlflowSink`: the trials' and teachers' MLflow runs
  and the parent run's summary (:mod:`kd_tune.tracking`);
- :class:`~kd_tune.sinks.console.ConsoleProgress`: progress lines;
- :class:`~kd_tune.sinks.tune_callback.TuneSinks`: the Ray Tune callback that feeds
  them.

Trials only report; these sinks, in the driver, write. Workers therefore need no access
to the tracking store, and no two processes write one file.
"""
from kd_tune.sinks.base import EndedTrial, TeacherRecord, TrialSink
from kd_tune.sinks.console import ConsoleProgress
from kd_tune.sinks.mlflow_sink import MlflowSink
from kd_tune.sinks.parquet_sink import ParquetSink
from kd_tune.sinks.samples_sink import SamplesSink
from kd_tune.sinks.teachers_sink import TeachersSink
from kd_tune.sinks.tune_callback import TuneSinks

__all__ = ["ConsoleProgress", "EndedTrial", "MlflowSink", "ParquetSink", "SamplesSink", "TeacherRecord", "TeachersSink",
           "TrialSink", "TuneSinks"]
