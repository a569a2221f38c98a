"""Sequential distillation: T -> S directly, T -> M -> S, M -> S, and S alone, for KL (tau 3) and MSE.

    python sweeps/sequential.py                       # cpu preset: cnn1d-25 -> cnn1d-12 -> cnn1d-6, embedded Ray
    python sweeps/sequential.py --preset paper --data-dir /data --address auto --storage /shared/results
    python sweeps/sequential.py --chain cnn-32,cnn-16 --student mlp-16

The student S is the preset's (or --student). Teachers: T, the chain T>M (M distilled
from T with the trial's own loss, KL at tau 3 or MSE, alpha 1, then M teaches S with the
same loss) and M alone (trained with CE); the no-distillation baseline is S trained with
CE. 3 seeds. cpu preset: T = cnn1d-25, M = cnn1d-12, S = cnn1d-6. digits preset: T = cnn-32,
M = cnn-8, S = cnn-4. paper preset: WRN-28-4 ->
WRN-16-4 -> WRN-16-2, published (KL, tau 3): 74.24 direct, 74.52 via WRN-16-4, 74.84
from WRN-16-4 alone.
"""
import argparse
import sys
from collections.abc import Sequence

from kd_tune.cli.sweep import SpaceFlag, SweepSpec, main


def chain_space(chain: Sequence[str]) -> list[dict]:
    """For ``chain`` = (T, M): teachers T, T>M and M, each with KL (tau 3, alpha 1) and MSE
    (alpha 1); CE (S alone) names T, whose agreement with it is measured."""
    big, middle = chain
    teachers = [big, f"{big}>{middle}", middle]
    return [
        {"teacher": teachers, "loss": ["kl"], "tau": [3.0], "alpha": [1.0]},
        {"teacher": teachers, "loss": ["mse"], "alpha": [1.0]},
        {"teacher": [big], "loss": ["ce"]},
    ]


def parse_chain(text: str) -> tuple[str, str]:
    """``T,M``: two architectures (or any teacher spec for T)."""
    parts = tuple(p.strip() for p in text.split(","))
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not T,M: the big teacher and the middle one (e.g. cnn-32,cnn-8)")
    return parts


SPEC = SweepSpec(
    name="sequential",
    description=__doc__,
    space=chain_space(("cnn1d-25", "cnn1d-12")),
    preset_spaces={"digits": chain_space(("cnn-32", "cnn-8")), "paper": chain_space(("wrn-28-4", "wrn-16-4"))},
    space_flag=SpaceFlag(
        "--chain", parse_chain, chain_space, ("teacher",),
        "the big teacher T and the middle network M, T,M: teachers T, T>M and M (default: cnn1d-25,cnn1d-12; "
        "digits preset: cnn-32,cnn-8; paper preset: wrn-28-4,wrn-16-4)"),
    seeds=3,
    table="sequential",
)

if __name__ == "__main__":
    sys.exit(main(SPEC, prog="python sweeps/sequential.py"))
