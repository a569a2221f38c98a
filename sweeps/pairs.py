"""KL vs MSE across teacher/student pairs: the paper's "WRN-28-4 teaches various students".

    python sweeps/pairs.py                            # cpu preset: MNIST-1D analogues, embedded Ray
    python sweeps/pairs.py --preset paper --data-dir /data --address auto --storage /shared/results
    python sweeps/pairs.py --pairs cnn-32:cnn-4,cnn-8:cnn-32 --epochs 5

Per pair: KL at tau in {3, 20, inf} with alpha 1, and MSE with alpha 1; per student: the
CE baseline, once (a student trained alone has no teacher; the pairs table shows it in
every row of that student). 3 seeds.

cpu preset (MNIST-1D): cnn1d-25 teaches cnn1d-6, cnn1d-12, mlp1d-100 and gru-6; cnn1d-12 and
gru-6 teach cnn1d-6; cnn1d-6 teaches cnn1d-25 (a student larger than its teacher); the
ensemble cnn1d-25+cnn1d-12+gru-6 teaches cnn1d-6.

digits preset: cnn-32 teaches students of several sizes and kinds (cnn-4, cnn-8,
cnn-16, mlp-32); cnn-8 and cnn-16 teach cnn-4 (several teachers, one student); cnn-8
teaches cnn-32 (a student larger than its teacher); the ensemble cnn-32+cnn-8+cnn-16
(mean of its members' logits) teaches cnn-4.

paper preset (CIFAR-100): WRN-28-4 teaches WRN-16-2, WRN-16-4, WRN-28-2, WRN-40-2; the
precursor's pairs WRN-16-4, WRN-16-6, WRN-28-2, WRN-40-2 -> WRN-16-2; and the ensemble of
those five teachers teaches WRN-16-2 (its members are the sweep's own teachers, so it
trains nothing more).
"""
import argparse
import math
import sys
from collections.abc import Sequence

from kd_tune.cli.sweep import SpaceFlag, SweepSpec, main

TAUS = [3.0, 20.0, math.inf]
# cpu preset (MNIST-1D): the preset's teacher cnn1d-25 teaches students of several sizes
# and kinds; smaller teachers teach cnn1d-6; cnn1d-6 teaches cnn1d-25; an ensemble teaches.
CPU_PAIRS = (
    ("cnn1d-25", "cnn1d-6"), ("cnn1d-25", "cnn1d-12"), ("cnn1d-25", "mlp1d-100"), ("cnn1d-25", "gru-6"),
    ("cnn1d-12", "cnn1d-6"), ("gru-6", "cnn1d-6"),
    ("cnn1d-6", "cnn1d-25"),
    ("cnn1d-25+cnn1d-12+gru-6", "cnn1d-6"),
)
DIGITS_PAIRS = (
    ("cnn-32", "cnn-4"), ("cnn-32", "cnn-8"), ("cnn-32", "cnn-16"), ("cnn-32", "mlp-32"),
    ("cnn-8", "cnn-4"), ("cnn-16", "cnn-4"),
    ("cnn-8", "cnn-32"),
    ("cnn-32+cnn-8+cnn-16", "cnn-4"),
)
PAPER_PAIRS = (
    ("wrn-28-4", "wrn-16-2"), ("wrn-28-4", "wrn-16-4"), ("wrn-28-4", "wrn-28-2"), ("wrn-28-4", "wrn-40-2"),
    ("wrn-16-4", "wrn-16-2"), ("wrn-16-6", "wrn-16-2"), ("wrn-28-2", "wrn-16-2"), ("wrn-40-2", "wrn-16-2"),
    ("wrn-28-4+wrn-16-4+wrn-16-6+wrn-28-2+wrn-40-2", "wrn-16-2"),
)


def pair_space(pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """KL at each of TAUS and MSE, alpha 1, per (teacher spec, student) pair; CE once per student.

    A CE trial names the student's first teacher, so that its agreement with a teacher of
    this sweep is measured; CE does not use it.
    """
    blocks: list[dict] = []
    for teacher, student in pairs:
        blocks.append({"teacher": [teacher], "student": [student], "loss": ["kl"], "tau": TAUS, "alpha": [1.0]})
        blocks.append({"teacher": [teacher], "student": [student], "loss": ["mse"], "alpha": [1.0]})
    first: dict[str, str] = {}
    for teacher, student in pairs:
        first.setdefault(student, teacher)
    blocks += [{"teacher": [teacher], "student": [student], "loss": ["ce"]} for student, teacher in first.items()]
    return blocks


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``TEACHER:STUDENT,...``; a teacher is any teacher spec (``cnn-8>cnn-4[kl:3]:mlp-16``)."""
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        teacher, sep, student = part.rpartition(":")
        if not part or not sep or not teacher.strip() or not student.strip():
            raise argparse.ArgumentTypeError(f"{part!r} is not TEACHER:STUDENT (e.g. cnn-32:cnn-4)")
        pairs.append((teacher.strip(), student.strip()))
    return tuple(pairs)


SPEC = SweepSpec(
    name="pairs",
    description=__doc__,
    space=pair_space(CPU_PAIRS),
    preset_spaces={"digits": pair_space(DIGITS_PAIRS), "paper": pair_space(PAPER_PAIRS)},
    space_flag=SpaceFlag(
        "--pairs", parse_pairs, pair_space, ("teacher", "student"),
        "teacher/student pairs TEACHER:STUDENT,... (a teacher is any teacher spec: cnn-32, cnn-32@3, "
        "cnn-32>cnn-8, cnn-8+cnn-16, 3xcnn-8); default: the preset's pairs (see above)"),
    seeds=3,
    table="pairs",
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/pairs.py"))
