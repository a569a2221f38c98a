"""One training run in plain PyTorch: no Ray, no MLflow.

- :mod:`~kd_tune.train.trainer`: the loop (:func:`train`), for teachers and students alike,
  resumable bitwise from its state;
- :mod:`~kd_tune.train.losses`: the distillation losses and their registry (the loss math
  is in their docstrings); :mod:`~kd_tune.train.closed_form`: the logit-loss family's terms
  with their gradients written out;
- :mod:`~kd_tune.train.optim`: optimiser and learning-rate schedule;
- :mod:`~kd_tune.train.evaluation` and :mod:`~kd_tune.train.measurements`: the per-epoch
  metrics and the end-of-run test measurements;
- :mod:`~kd_tune.train.teacher_signal`: the teacher's side of a run (online, cached or
  none) behind one interface; :mod:`~kd_tune.train.teacher_logits`: a teacher's logits on
  every training view, computed ahead;
- :mod:`~kd_tune.train.checkpoint`: state files; :mod:`~kd_tune.train.validation`: whole-run
  checks against the registries.

May import: :mod:`kd_tune.data`, :mod:`kd_tune.models`, :mod:`kd_tune.storage`,
:mod:`kd_tune.core`. Independent of :mod:`kd_tune.plan`.
"""
from kd_tune.train.trainer import EpochEnd, TrainResult, load_data, train

__all__ = ["EpochEnd", "TrainResult", "load_data", "train"]
