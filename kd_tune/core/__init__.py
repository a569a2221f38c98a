"""What every part of kd-tune shares; it imports no other part.

- :mod:`~kd_tune.core.config`: :class:`RunConfig`, one frozen dataclass with every field a
  command-line flag, its presets and field checks (imports no torch);
- :mod:`~kd_tune.core.teacher_spec`: the grammar of a teacher spec (``ARCH``, ``ARCH@E``,
  ``A>B[loss]``, ``A+B``, ``NxA``) and its canonical spelling;
- :mod:`~kd_tune.core.identity`: every key (trial, setting, teacher node, data, cache) and the
  weights digest;
- :mod:`~kd_tune.core.registry`: the name registry behind models, data sets and losses;
- :mod:`~kd_tune.core.runtime`: device, CPU threads, seeds, RNG state and autocast;
- :mod:`~kd_tune.core.status`: :class:`TrialStatus`, decided once and read everywhere;
- :mod:`~kd_tune.core.hashing` and :mod:`~kd_tune.core.clock`: the one sha256 helper (text,
  bytes, files) and the one clock (UTC datetimes, ISO text, milliseconds);
- :mod:`~kd_tune.core.netcheck`: a quick TCP probe, so commands fail in seconds.

May import: nothing of kd-tune (the bottom layer). Import its modules directly:
this package imports none of them, so ``kd_tune.core.config`` stays free of torch.
"""
