"""Distillation under label noise: noise type x rate x (ce; kl at tau 0.5, 1, 4, 20; mse).

    python sweeps/label_noise.py                      # cpu preset (MNIST-1D), embedded Ray
    python sweeps/label_noise.py --clean-teacher      # teachers trained on clean labels

Noise (symmetric, asymmetric) at rates {0, 0.2, 0.4, 0.6} on the training labels only;
by default each teacher is trained on the same noisy labels as its students. Rate 0 is
the clean run, shared by both noise types. KD runs use alpha 1 (pure distillation);
change it with --alphas.
"""
import sys

from kd_tune.cli.sweep import Axis, SweepSpec, main, parse_float_list, parse_name_list

NOISE = {"noise_type": ["symmetric", "asymmetric"], "noise_rate": [0.0, 0.2, 0.4, 0.6]}
SPEC = SweepSpec(
    name="label_noise",
    description=__doc__,
    space=[
        {"loss": ["ce"], **NOISE},
        {"loss": ["kl"], "tau": [0.5, 1.0, 4.0, 20.0], "alpha": [1.0], **NOISE},
        {"loss": ["mse"], "alpha": [1.0], **NOISE},
    ],
    seeds=3,
    table="noise",
    axes=(
        Axis("--noise-types", "noise_type", parse_name_list, "label noise types: symmetric, asymmetric"),
        Axis("--noise-rates", "noise_rate", parse_float_list, "label noise rates in [0, 1)"),
    ),
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/label_noise.py"))
