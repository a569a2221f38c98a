"""A fully trained and an under-trained teacher x (CE; KL at tau 0.5, 1, 3, 5, 20, inf; MSE).

    python sweeps/noisy_teacher.py                    # cpu preset, embedded Ray
    python sweeps/noisy_teacher.py --preset paper --data-dir /data --address auto --storage /shared/results
    python sweeps/noisy_teacher.py --teachers cnn1d-25,cnn1d-25@2,cnn1d-12

The under-trained ("noisy") teacher ARCH@E is the teacher's full recipe, its learning-rate
schedule included, stopped after epoch E (the paper's WRN-28-4 stood at 53.77% train
accuracy). KD runs use alpha 1; CE (the student alone) is run once. 3 seeds. The
noisy_teacher table shows each teacher's train and test accuracy under it.

cpu preset: cnn1d-25 and cnn1d-25@1 (one epoch of 80; its train accuracy is under the table).
digits preset: cnn-32 and cnn-32@1 (measured: one epoch of the cpu recipe leaves cnn-32
at about half its train accuracy and a third of its test accuracy). paper preset:
wrn-28-4 and wrn-28-4@10 (the paper does not give the epoch; check the teacher's train
accuracy under the table against its 53.77% and change it with --teachers).
"""
import argparse
import math
import sys
from collections.abc import Sequence

from kd_tune.cli.sweep import SpaceFlag, SweepSpec, main, parse_name_list

TAUS = [0.5, 1.0, 3.0, 5.0, 20.0, math.inf]


def teachers_space(teachers: Sequence[str]) -> list[dict]:
    """KL at each of TAUS and MSE, alpha 1, for each teacher spec; CE once, naming the first teacher."""
    return [
        {"teacher": list(teachers), "loss": ["kl"], "tau": TAUS, "alpha": [1.0]},
        {"teacher": list(teachers), "loss": ["mse"], "alpha": [1.0]},
        {"teacher": [teachers[0]], "loss": ["ce"]},
    ]


def parse_teachers(text: str) -> tuple[str, ...]:
    """Comma-separated teacher specs."""
    try:
        return parse_name_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("--teachers needs at least one teacher spec, e.g. cnn-32,cnn-32@1") from None


SPEC = SweepSpec(
    name="noisy_teacher",
    description=__doc__,
    space=teachers_space(("cnn1d-25", "cnn1d-25@1")),
    preset_spaces={"digits": teachers_space(("cnn-32", "cnn-32@1")),
                   "paper": teachers_space(("wrn-28-4", "wrn-28-4@10"))},
    space_flag=SpaceFlag(
        "--teachers", parse_teachers, teachers_space, ("teacher",),
        "teacher specs to compare, e.g. cnn-32,cnn-32@1 (ARCH@E: stopped after epoch E of the full recipe; "
        "default: cnn1d-25,cnn1d-25@1; digits preset: cnn-32,cnn-32@1; paper preset: wrn-28-4,wrn-28-4@10)"),
    seeds=3,
    table="noisy_teacher",
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/noisy_teacher.py"))
