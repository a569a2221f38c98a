"""What a trial sends the driver once, with its last report: its end measurements and more.

A completed trial's last ``tune.report`` carries, under :data:`END_KEY`, a
:class:`TrialEnd`: the end-of-run test measurements (per-sample values, the
penultimate features of the sweep's feature classes, the summary), the hash of the
training labels it trained on (for the MLflow data set) and, with ``--log-models``, its
final weights. The driver's Tune adapter takes the entry out of the result before Tune
stores it (Tune's experiment state and ``result.json`` stay small) and hands it to the
sinks, which write it; the trial writes nothing itself.

Its ``repr`` is one short line, not its arrays: Ray Tune's controller formats every result
it receives into debug messages (three f-strings, built whether or not debug logging is
on), and the full text of a trial's per-sample arrays (1,000 values each on MNIST-1D)
cost the driver about 0.5 CPU-s per trial, measured with cProfile on a 19-trial sweep.

Sizes per trial (float32): 5 x 4 bytes per test sample plus one bool, plus F x 4 bytes
per test sample of the feature classes, plus the weights when asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kd_tune.train.measurements import EndMeasurements

# The key of a Tune result that carries the trial's TrialEnd (its last report only).
END_KEY = "kd_end"


@dataclass(frozen=True, eq=False, repr=False)
class TrialEnd:
    """A trial's end: ``measurements`` (features of the feature classes only),
    ``noise_hash`` (:attr:`kd_tune.data.Dataset.noise_hash` of its training labels; None
    without noise) and ``weights`` (the student's weights file content in the
    :func:`kd_tune.teachers.training.save_teacher` format, its state dict as numpy arrays, or None)."""

    measurements: EndMeasurements
    noise_hash: str | None = None
    weights: dict[str, Any] | None = None

    def __repr__(self) -> str:
        m = self.measurements
        return (f"TrialEnd({len(m.labels)} test samples, {len(m.feature_index)} feature rows, "
                f"weights {'kept' if self.weights is not None else 'not kept'})")
