"""Distillation with less data: the student on a fraction of the training split, the teacher on all of it.

    python sweeps/data_size.py                        # cpu preset (MNIST-1D), embedded Ray
    python sweeps/data_size.py --fractions 0.05,0.2,1 --seeds 5
    python sweeps/data_size.py --dry-run              # list the trials; run nothing

The precursor study's data-size experiment: the student trains on the fractions {0.1, 0.25,
0.5, 1.0} of the training split (stratified, drawn with the split seed: ``data_fraction``),
with CE (no teacher), KL at tau 1, 4 and inf, and MSE, alpha 1 (pure distillation; change
it with --alphas); the teacher is the preset's, trained once on the whole training split,
and its logits on the student's share are cached per fraction. 3 seeds (60 trials). The
table ``data_size`` and the figure ``data_size`` show test accuracy against the fraction,
one line per loss.
"""
import math
import sys

from kd_tune.cli.sweep import Axis, SweepSpec, main, parse_float_list

FRACTIONS = {"data_fraction": [0.1, 0.25, 0.5, 1.0]}
SPEC = SweepSpec(
    name="data_size",
    description=__doc__,
    space=[
        {"loss": ["ce"], **FRACTIONS},
        {"loss": ["kl"], "tau": [1.0, 4.0, math.inf], "alpha": [1.0], **FRACTIONS},
        {"loss": ["mse"], "alpha": [1.0], **FRACTIONS},
    ],
    seeds=3,
    table="data_size",
    axes=(Axis("--fractions", "data_fraction", parse_float_list,
               "fractions of the training split the student trains on, each in (0, 1]"),),
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/data_size.py"))
