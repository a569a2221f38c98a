"""kd-tune: knowledge-distillation sweeps comparing KL-divergence and MSE losses.

Data flow of one run: ``config.RunConfig`` -> ``trainer.load_data`` (``data``) ->
``teacher.train_teacher`` or ``teacher.load_teacher`` -> ``trainer.train`` with a loss
from ``losses`` and models from ``models``. ``python -m kd_tune.run`` does it from the
command line.

Data flow of a sweep: ``search_space`` (blocks -> configs) -> ``sweep`` on the driver
(checks, ``cluster`` connection, teacher stage into ``teacher_store``, cache stage
into ``logit_cache`` (``teacher_logits`` once per teacher and view set), ``tune.Tuner``)
-> ``trainable`` in the workers -> ``recorder`` on the driver, the one writer of
``results`` (Parquet) and ``tracking`` (MLflow). ``sweeps/*.py`` run it through
``sweep_cli``; ``analysis`` turns the Parquet files into tables.
"""

__version__ = "0.1.0"
