"""Making teachers once and keeping them for every sweep.

- :mod:`~kd_tune.teachers.training`: training any teacher node (CE, under-trained,
  sequential, an ensemble's mean logits), and the teacher file format;
- :mod:`~kd_tune.teachers.store`: the teacher store by key, every read checked against the
  recorded weights digest;
- :mod:`~kd_tune.teachers.logit_cache`: the teacher-logit cache (a teacher's logits on every
  training view, computed once per key), checked before use.

May import: :mod:`kd_tune.train`, :mod:`kd_tune.plan` and the layers below them.
"""
