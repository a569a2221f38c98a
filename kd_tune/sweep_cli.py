"""The sweep command line's former place, kept so that sweep scripts written against it run:
import :class:`SweepSpec` and :func:`main` from :mod:`kd_tune.cli` instead."""
from kd_tune.cli.sweep import SweepSpec, main

__all__ = ["SweepSpec", "main"]
