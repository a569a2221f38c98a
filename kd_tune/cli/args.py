"""Command-line flags generated from :class:`RunConfig`, shared by every kd-tune command.

Each config field becomes ``--field-name``; only the flags a user gives override the
chosen preset, so ``--preset paper --epochs 10`` is the paper recipe with 10 epochs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from kd_tune.core.config import PRESETS, RunConfig, field_types, preset


def parse_tau(text: str) -> float:
    """A temperature from the command line: a number or ``inf``."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use e.g. 4, 0.5 or inf)") from None


def parse_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. ``100,150``; empty text gives ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def parse_optional_int(text: str) -> int | None:
    """An integer, or ``none`` for the default."""
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (or none)") from None


_PARSERS = {"tau": parse_tau, "milestones": parse_int_list}


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """Add ``--preset`` and one flag per :class:`RunConfig` field (except ``exclude``)."""
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu",
        help="starting point for every setting: cpu (MNIST-1D, minutes on a laptop), digits (scikit-learn's "
        "digits, the cpu preset before MNIST-1D) or paper "
        "(CIFAR-100, WRN-28-4 -> WRN-16-2, 200 epochs); flags below override it",
    )
    group = parser.add_argument_group("run settings (defaults shown are the cpu preset's)")
    types = field_types()
    for field in dataclasses.fields(RunConfig):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(PRESETS["cpu"], field.name)
        help_text = f"{field.metadata['help']} (cpu preset: {default})"
        kind, optional = types[field.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        parse = _PARSERS.get(field.name) or (parse_optional_int if (kind is int and optional) else kind)
        group.add_argument(flag, type=parse, default=argparse.SUPPRESS, metavar=field.name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config the parsed flags describe (the preset plus explicit flags); not yet validated."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if given.get("data_dir"):
        # Trials run in other working directories: every path is made absolute here.
        given["data_dir"] = os.path.abspath(os.path.expanduser(given["data_dir"]))
    return preset(args.preset, **given)
