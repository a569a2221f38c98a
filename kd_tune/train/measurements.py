"""End-of-run measurements on the test set: the paper's logit and representation analysis.

Plain PyTorch on a network's outputs; no model is run here. For test sample i with
label y, the network's raw logits z (K classes), the teacher's raw logits z_t and the
network's penultimate features r (the input of its last linear layer):

- ``logit_distance`` = ||z - z_t||_2 (NaN without a teacher);
- ``logit_mean_gap`` = mean_k z_k - mean_k z_t,k (NaN without a teacher); the drift of
  the logit mean that KL at large tau leaves free and MSE pins;
- ``feature_norm`` = ||r||_2;
- ``entropy`` = -sum_k p_k ln p_k of p = softmax(z), in nats;
- ``tld``, the top-logit difference as the paper's code defines it: z_y minus the largest
  other logit when the prediction is right (> 0), z_y minus the largest logit when it is
  wrong (<= 0);
- ``correct`` = (argmax_k z_k == y).

Per run: ``ece``, the expected calibration error over 15 equal-width confidence bins
(confidence = max_k p_k; bins (b/15, (b+1)/15], the first one closed at 0), a fraction
in [0, 1]; and ``<name>_mean`` and ``<name>_median`` of every per-sample quantity but
``correct`` (whose mean is the test accuracy). A teacher is measured the same way on its
own outputs, without a teacher of its own.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
import torch

from kd_tune.storage.atomic import atomic_write

PER_SAMPLE = ("logit_distance", "logit_mean_gap", "feature_norm", "entropy", "tld")
ECE_BINS = 15
SUMMARY = ("ece", *(f"{name}_{stat}" for name in PER_SAMPLE for stat in ("mean", "median")))


def per_sample(
    logits: torch.Tensor,
    labels: torch.Tensor,
    features: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The per-sample quantities of the module docstring, float32 ``(N,)`` each (``correct`` bool).

    ``logits`` and ``teacher_logits`` are ``(N, K)``, ``features`` ``(N, F)``, ``labels``
    ``(N,)`` int64; all on one device, computed in float32.
    """
    z = logits.float()
    labels = labels.to(z.device)
    rows = torch.arange(len(z), device=z.device)
    true = z[rows, labels]
    correct = z.argmax(1) == labels
    others = z.clone()
    others[rows, labels] = -math.inf
    # Right: margin over the best other class. Wrong: gap to the winning class (<= 0).
    tld = torch.where(correct, true - others.amax(1), true - z.amax(1))
    log_p = torch.log_softmax(z, dim=1)
    values = {
        "feature_norm": torch.linalg.vector_norm(features.float(), dim=1),
        # 0 * log 0 is 0: exp(log_p) underflows to exactly 0 where log_p is -inf-like.
        "entropy": -(log_p.exp() * log_p).nan_to_num(0.0).sum(1),
        "tld": tld,
        "correct": correct,
    }
    if teacher_logits is None:
        nan = torch.full((len(z),), math.nan, device=z.device)
        values.update(logit_distance=nan, logit_mean_gap=nan.clone())
    else:
        t = teacher_logits.float().to(z.device)
        values.update(logit_distance=torch.linalg.vector_norm(z - t, dim=1), logit_mean_gap=z.mean(1) - t.mean(1))
    return {name: values[name] for name in (*PER_SAMPLE, "correct")}


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in [0, 1]: sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|.

    Confidence is the largest softmax probability; bin b holds confidences in
    (b/bins, (b+1)/bins], the first bin also 0. NaN for an empty set.
    """
    if len(labels) == 0:
        return math.nan
    probs = torch.softmax(logits.float(), dim=1)
    confidence, predicted = probs.max(1)
    hits = (predicted == labels.to(predicted.device)).float()
    inner = torch.linspace(0.0, 1.0, bins + 1, device=confidence.device)[1:-1]
    # right=False: boundaries[b-1] < c <= boundaries[b], i.e. bins closed on the right.
    which = torch.bucketize(confidence, inner, right=False)
    count = torch.bincount(which, minlength=bins).float()
    gap = torch.bincount(which, weights=hits - confidence, minlength=bins).abs()
    # sum_b n_b/N * |acc_b - conf_b| = sum_b |sum_{i in b} (hit_i - conf_i)| / N
    return float(gap.sum() / count.sum())


def summarize(values: Mapping[str, Any], ece: float) -> dict[str, float]:
    """``ece`` and the mean and median (NaN-free samples; NaN when none) of each per-sample quantity."""
    out = {"ece": float(ece)}
    for name in PER_SAMPLE:
        v = np.asarray(values[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[f"{name}_mean"] = float(v.mean()) if len(v) else math.nan
        out[f"{name}_median"] = float(np.median(v)) if len(v) else math.nan
    return out


@dataclass(frozen=True, eq=False)
class EndMeasurements:
    """A network's end-of-run measurements on the test set (numpy, on the host).

    ``labels``: int64 ``(N,)`` test labels; ``values``: the per-sample quantities
    (float32 ``(N,)``, ``correct`` bool), row i = test index i; ``feature_index``: int64
    test indices whose penultimate features ``features`` (float32, one row each) are
    kept; ``summary``: the run's numbers (:data:`SUMMARY`).
    """

    labels: np.ndarray
    values: dict[str, np.ndarray]
    feature_index: np.ndarray
    features: np.ndarray
    summary: dict[str, float]

    def of_classes(self, classes: Iterable[int]) -> EndMeasurements:
        """The same measurements with the features of the test samples of ``classes`` only."""
        keep = np.isin(self.labels[self.feature_index], np.asarray(list(classes), dtype=np.int64))
        return replace(self, feature_index=self.feature_index[keep], features=self.features[keep])

    def save(self, path: str) -> None:
        """Write to ``path`` (an ``.npz`` file, written atomically; plain arrays, no pickle)."""
        with atomic_write(path) as handle:
            self.write(handle)

    def write(self, handle: BinaryIO) -> None:
        """Write as an ``.npz`` into the open binary file ``handle`` (plain arrays, no pickle)."""
        arrays = {"labels": self.labels, "feature_index": self.feature_index, "features": self.features,
                  "summary_names": np.asarray(list(self.summary), dtype=str),
                  "summary_values": np.asarray(list(self.summary.values()), dtype=np.float64),
                  **{f"value_{k}": v for k, v in self.values.items()}}
        np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | BinaryIO) -> EndMeasurements:
        """Read a file (a path, or an open binary file) written by :meth:`save` or :meth:`write`."""
        with np.load(path, allow_pickle=False) as f:
            values = {k.removeprefix("value_"): f[k] for k in f.files if k.startswith("value_")}
            summary = dict(zip(f["summary_names"].tolist(), f["summary_values"].tolist()))
            return cls(labels=f["labels"], values=values, feature_index=f["feature_index"],
                       features=f["features"], summary=summary)


def measure(
    logits: torch.Tensor,
    labels: torch.Tensor,
    features: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
) -> EndMeasurements:
    """Every measurement of the module docstring for one network's test outputs, moved to the host.

    Keeps the features of every test sample; :meth:`EndMeasurements.of_classes` selects.
    """
    values = per_sample(logits, labels, features, teacher_logits)
    host = {k: v.cpu().numpy().astype(bool if k == "correct" else np.float32) for k, v in values.items()}
    summary = summarize(host, expected_calibration_error(logits, labels))
    return EndMeasurements(labels=labels.cpu().numpy().astype(np.int64), values=host,
                            feature_index=np.arange(len(labels), dtype=np.int64),
                            features=features.float().cpu().numpy(), summary=summary)
