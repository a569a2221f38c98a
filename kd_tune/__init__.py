"""kd-tune: knowledge-distillation sweeps comparing KL-divergence and MSE losses.

Data flow of one run: ``config.RunConfig`` -> ``trainer.load_data`` (``data``) ->
``teacher.train_teacher`` or ``teacher.load_teacher`` -> ``trainer.train`` with a loss
from ``losses`` and models from ``models``. ``python -m kd_tune.run`` does it from the
command line.
"""

__version__ = "0.1.0"
