"""kd-tune: knowledge-distillation sweeps comparing KL-divergence and MSE losses.

Data flow of one run: ``config.RunConfig`` (checked by ``validation``) ->
``trainer.load_data`` (``data``) -> the teacher: every node of its spec
(``teacher_dag``) made by ``teacher.train_node``, or ``teacher.load_teacher`` ->
``trainer.train`` with a loss from ``losses``, models from
``models`` and the teacher's logits through ``teacher_signal``. ``python -m kd_tune.run``
does it from the command line.

Data flow of a sweep: ``search_space`` (blocks -> configs) -> ``plan`` (configs ->
planned trials with their teacher DAGs, every key from ``identity`` computed once) ->
``sweep`` on the driver (checks, ``cluster`` connection, ``teacher_stage``: teacher
nodes into ``teacher_store`` in dependency order,
logits into ``logit_cache``; ``tune.Tuner``) -> ``trainable`` in the workers ->
``sinks`` on the driver, the one writer of ``results`` (Parquet) and ``tracking``
(MLflow). ``sweeps/*.py`` run it through ``sweep_cli``; ``analysis`` turns the Parquet
files into tables. ``docs/architecture.md`` draws the whole picture.
"""

__version__ = "0.1.0"
