"""Search tau, alpha and the loss for one teacher/student pair: TPE with ASHA early stopping.

    python sweeps/tau_search.py                         # cpu preset (MNIST-1D), embedded Ray
    python sweeps/tau_search.py --num-samples 120 --search-space lr=choice:0.01,0.02,0.05
    python sweeps/tau_search.py --address auto --preset paper --val-size 5000 --data-dir /data

Space: loss kl or mse; for kl, tau log-uniform over [0.25, 64] or the inf limit; alpha
uniform over [0, 1] (kl and mse). An MSE trial draws no tau. Optuna's TPE (through Ray
Tune) draws --num-samples trials, maximising validation accuracy; ASHA stops the weak
ones early; the 3 best settings are then rerun at full epochs with 3 new seeds, and the
search table reports their test accuracy.

The logit-loss family runs when asked for (--losses), at tau 4 (the preset's) with alpha
uniform and each option at its published value until --search-space draws it:

    python sweeps/tau_search.py --losses kl,dkd --search-space dkd_beta=loguniform:1,16
    python sweeps/tau_search.py --losses kl,dist --search-space dist_beta=uniform:0.5,4
    python sweeps/tau_search.py --search-space standardize=choice:false,true   # kl and mse
"""
import math
import sys

from kd_tune.cli.sweep import SweepSpec, main
from kd_tune.plan.search_space import SampledSpace, loguniform, uniform

TAU_SEARCH = SampledSpace.of(
    {"loss": ["kl"], "tau": loguniform(0.25, 64.0, points=[math.inf]), "alpha": uniform(0.0, 1.0)},
    {"loss": ["mse"], "alpha": uniform(0.0, 1.0)},
    # tau is not drawn here: one field has one distribution, and kl's holds inf, which dkd
    # and dist do not define. Their blocks name the options --search-space may draw.
    {"loss": ["dkd"], "alpha": uniform(0.0, 1.0), "dkd_alpha": [1.0], "dkd_beta": [8.0], "dkd_warmup": [20]},
    {"loss": ["dist"], "alpha": uniform(0.0, 1.0), "dist_beta": [1.0], "dist_gamma": [1.0]},
)
SPEC = SweepSpec(
    name="tau_search",
    description=__doc__,
    space=(),
    search_space=TAU_SEARCH,
    search="optuna",
    num_samples=60,
    table="search",
    losses=("kl", "mse"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/tau_search.py"))
