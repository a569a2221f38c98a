"""The tau x alpha grid of Kim et al. (IJCAI 2021): KL at each temperature vs MSE vs CE.

    python sweeps/tau_grid.py                         # cpu preset (MNIST-1D), embedded Ray
    python sweeps/tau_grid.py --address auto --preset paper --data-dir /data --storage /shared/results

Default grid: kl with tau in {1, 3, 5, 20, inf} x alpha in {0.1, 0.5, 1.0}; mse with
alpha in {0.1, 0.5, 1.0}; the ce baseline; 3 seeds (57 trials, one teacher).
"""
import math
import sys

from kd_tune.cli.sweep import SweepSpec, main

ALPHAS = [0.1, 0.5, 1.0]
SPEC = SweepSpec(
    name="tau_grid",
    description=__doc__,
    space=[
        {"loss": ["kl"], "tau": [1.0, 3.0, 5.0, 20.0, math.inf], "alpha": ALPHAS},
        {"loss": ["mse"], "alpha": ALPHAS},
        {"loss": ["ce"]},
    ],
    seeds=3,
    table="tau_alpha",
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/tau_grid.py"))
