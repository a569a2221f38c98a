"""The statistical rule by which the benchmarks judge a claim: one place, shared by
``benchmarks/paper_claims.py`` and ``benchmarks/loss_claims.py``.

A claim compares two sets of per-seed values (test accuracy in points, or test logit MSE):
d is the difference of their means with the standard error se = sqrt(s_a^2/n_a + s_b^2/n_b)
(sample variances, ddof 1), or a least-squares slope with its standard error; z = d / se.

- "A beats B" (``beats``): holds if z > 2; does not hold if z < -2; else not distinguishable.
- "A is at least as good as B" (``at_least``): holds if the lower end of the interval is
  above a margin, d - 2 se > -0.5 points (A is at most half a point worse, at about 2 se);
  does not hold if z < -2; else not distinguishable. (d >= 0 alone held on any noise.)
- "A and B agree" (``agree``): holds if |d| + 2 se <= 1 point; does not hold if |z| > 2;
  else not distinguishable.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "not distinguishable at this n"
NOT_JUDGED = "not judged (no results)"
Z = 2.0  # standard errors
MARGIN = 1.0  # points: "agree" means equal within this
AT_LEAST_MARGIN = 0.5  # points: "at least as good" allows A this much below B at d - 2 se

RULE = (f"d: difference of means over seeds (points, or a slope), se: its standard error, z = d / se. "
        f"'A beats B' holds if z > {Z:g}, fails if z < -{Z:g}; 'A is at least as good as B' holds if "
        f"d - {Z:g} se > -{AT_LEAST_MARGIN:g} point, fails if z < -{Z:g}; 'A and B agree' holds if "
        f"|d| + {Z:g} se <= {MARGIN:g} point, fails if |z| > {Z:g}; otherwise: not distinguishable at this n.")


def difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Difference of means a - b and its standard error (sample variances; NaN with fewer than 2 values)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        return float(a.mean() - b.mean()) if a.size and b.size else math.nan, math.nan
    return float(a.mean() - b.mean()), float(math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error (NaN with fewer than 3 points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0:
        return math.nan, math.nan
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    residual = y - y.mean() - b * xc
    return b, float(math.sqrt((residual ** 2).sum() / (x.size - 2) / (xc ** 2).sum()))


def z_score(d: float, se: float) -> float:
    """d / se (+-inf for a nonzero d with se 0, 0 for d = 0; NaN when either is NaN)."""
    if math.isnan(d) or math.isnan(se):
        return math.nan
    return d / se if se > 0 else math.copysign(math.inf, d) if d else 0.0


def verdict(kind: str, d: float, se: float) -> str:
    """The verdict of a claim of ``kind`` ``beats``, ``at_least`` or ``agree`` (module docstring)."""
    z = z_score(d, se)
    if math.isnan(z):
        return UNCLEAR
    if kind == "beats":
        return HOLDS if z > Z else FAILS if z < -Z else UNCLEAR
    if kind == "at_least":
        return HOLDS if d - Z * se > -AT_LEAST_MARGIN else FAILS if z < -Z else UNCLEAR
    if kind == "agree":
        return HOLDS if abs(d) + Z * se <= MARGIN else FAILS if abs(z) > Z else UNCLEAR
    raise ValueError(f"unknown claim kind {kind!r}")


def numbers(d: float, se: float) -> str:
    """``d = +x.xxx, se = x.xxx, z = +x.xx``: how every claim prints its statistics."""
    return f"d = {d:+.3f}, se = {se:.3f}, z = {z_score(d, se):+.2f}"


@dataclass(frozen=True)
class Claim:
    """One claim's number (``"1"``, ``"7a"``), statement, the numbers it rests on and its verdict."""

    number: str
    statement: str
    numbers: str
    verdict: str


def report(claims: Sequence[Claim], rule: str = RULE) -> str:
    """The rule (``rule``: this module's, or a benchmark's with its own additions), one paragraph
    per claim, then ``claims_held=K/N``."""
    lines = [textwrap.fill(rule, width=100), ""]
    lines += [f"[{c.number}] {c.statement}: {c.verdict}\n     {c.numbers}" for c in claims]
    held = sum(c.verdict == HOLDS for c in claims)
    return "\n".join(lines) + f"\n\nclaims_held={held}/{len(claims)}"
