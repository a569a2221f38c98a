"""kd-tune: knowledge-distillation sweeps comparing KL-divergence and MSE losses.

The library is layered; each subpackage owns one concern and imports only the ones
below it (``pyproject.toml``'s import-linter contract states it, CI enforces it):

    cli                        the commands; the one place a sweep meets ``analysis``
    sweep                      Ray: the driver, the searched sweep, the workers, the stages
    tracking                   MLflow, a view of the results
    results                    the Parquet record and its one writer's sinks
    teachers                   teachers trained once, stored, their logits cached
    train | plan               one training run (plain PyTorch) | configs planned into trials
    data | models              data sets with label noise | architectures
    storage                    local folders and object stores, locks, part tables
    core                       config, keys, registry, runtime, status

Data flow of a sweep: ``plan`` (configs -> trials with every key) -> ``sweep`` on the
driver (checks, teachers and caches as Ray tasks, ``tune.Tuner``) -> ``sweep.trainable`` in
the workers (``train``) -> the sinks on the driver: ``results`` (Parquet), ``tracking``
(MLflow) -> ``analysis`` (tables, figures). ``docs/architecture.md`` draws the whole picture.
"""

__version__ = "0.1.0"
