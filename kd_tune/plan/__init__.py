"""What a sweep will run, decided once before anything runs.

- :mod:`~kd_tune.plan.search_space`: blocks of axes expanded to canonical, unique run
  configs; sampled spaces (distributions per field) for a search;
- :mod:`~kd_tune.plan.teacher_dag`: a teacher spec resolved to its DAG of keyed teacher
  nodes (CE, under-trained, sequential, ensemble), sources first;
- :mod:`~kd_tune.plan.planner`: configs planned into :class:`Trial` records carrying every
  key a later stage reads (trial, teacher, cache, data), and the :class:`Plan` of a sweep.

May import: :mod:`kd_tune.data` (whether a data set is augmented is part of a cache key)
and :mod:`kd_tune.core`. Independent of :mod:`kd_tune.train`: planning trains nothing.
"""
from kd_tune.plan.planner import Plan, Trial, label, plan_trial, plan_trials

__all__ = ["Plan", "Trial", "label", "plan_trial", "plan_trials"]
