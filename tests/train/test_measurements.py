"""End-of-run measurements: each quantity against a direct computation on known logits and
features, ECE on hand-made cases, and the trainer's measurements of a real run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_tune.core.config import RunConfig
from kd_tune.teachers.training import train_teacher
from kd_tune.train.measurements import (
    PER_SAMPLE,
    SUMMARY,
    EndMeasurements,
    expected_calibration_error,
    measure,
    per_sample,
    summarize,
)
from kd_tune.train.trainer import load_data, measure_model, train

# Three samples, four classes. Sample 0 is right (label 2), sample 1 wrong (label 0,
# predicted 3), sample 2 right with a tie-free margin (label 1).
LOGITS = torch.tensor([[1.0, -2.0, 4.0, 0.5],
                       [0.0, 1.0, -1.0, 3.0],
                       [2.0, 2.5, -3.0, 1.0]])
LABELS = torch.tensor([2, 0, 1])
TEACHER = torch.tensor([[0.0, 0.0, 3.0, 1.0],
                        [2.0, 0.0, 0.0, 0.0],
                        [1.0, 3.0, 0.0, 0.0]])
FEATURES = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])


def test_each_quantity_matches_a_direct_computation():
    v = per_sample(LOGITS, LABELS, FEATURES, TEACHER)
    assert set(v) == {*PER_SAMPLE, "correct"}
    for i in range(3):
        z, t = LOGITS[i].tolist(), TEACHER[i].tolist()
        assert v["logit_distance"][i].item() == pytest.approx(math.sqrt(sum((a - b) ** 2 for a, b in zip(z, t))))
        assert v["logit_mean_gap"][i].item() == pytest.approx(sum(z) / 4 - sum(t) / 4)
        p = [math.exp(a) / sum(math.exp(b) for b in z) for a in z]
        assert v["entropy"][i].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-6)
    assert v["feature_norm"].tolist() == pytest.approx([5.0, 0.0, math.sqrt(2.0)])
    assert v["correct"].tolist() == [True, False, True]
    # Right: z_true minus the best other logit. Wrong: z_true minus the top logit.
    assert v["tld"].tolist() == pytest.approx([4.0 - 1.0, 0.0 - 3.0, 2.5 - 2.0])


def test_without_a_teacher_the_teacher_quantities_are_nan():
    v = per_sample(LOGITS, LABELS, FEATURES)
    assert torch.isnan(v["logit_distance"]).all() and torch.isnan(v["logit_mean_gap"]).all()
    assert torch.isfinite(v["entropy"]).all()


def test_entropy_of_a_saturated_softmax_is_zero_not_nan():
    v = per_sample(torch.tensor([[1000.0, 0.0, -1000.0]]), torch.tensor([0]), torch.ones(1, 2))
    assert v["entropy"].item() == pytest.approx(0.0, abs=1e-6)


def _logits_with_confidence(confidences: list[float], classes: int = 2) -> torch.Tensor:
    """Two-class logits whose softmax puts ``c`` on class 0 for each c."""
    return torch.tensor([[math.log(c / (1 - c)), 0.0] for c in confidences])[:, :classes]


def test_ece_on_a_hand_made_case():
    # Confidences 0.9, 0.9, 0.6, 0.6 (bins (12/15, 13/15]... and (8/15, 9/15]); predictions class 0.
    logits = _logits_with_confidence([0.9, 0.9, 0.6, 0.6])
    labels = torch.tensor([0, 1, 0, 0])
    # bin of 0.9: accuracy 1/2, confidence 0.9 -> |0.5 - 0.9| = 0.4, weight 2/4
    # bin of 0.6: accuracy 1, confidence 0.6 -> |1 - 0.6| = 0.4, weight 2/4
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4, abs=1e-6)
    # Perfectly calibrated within each bin: 0.75 confidence, 3 of 4 right.
    assert expected_calibration_error(_logits_with_confidence([0.75] * 4), torch.tensor([0, 0, 0, 1])) == \
        pytest.approx(0.0, abs=1e-6)


def test_ece_bins_are_closed_on_the_right():
    # 0.6 = 9/15 sits on a bin edge: it belongs to the bin (8/15, 9/15], with 0.58 (same bin),
    # not with 0.61 (next bin). Same-bin pooling gives |(1+0)/2 - 0.59|; separate bins would not.
    logits = _logits_with_confidence([0.6, 0.58, 0.61])
    labels = torch.tensor([0, 1, 0])
    together = abs(0.5 - (0.6 + 0.58) / 2) * 2 / 3 + abs(1 - 0.61) / 3
    assert expected_calibration_error(logits, labels) == pytest.approx(together, abs=1e-5)


def test_ece_matches_a_direct_loop_over_bins():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 10, generator=gen)
    labels = torch.randint(0, 10, (500,), generator=gen)
    probs = torch.softmax(logits, 1)
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            acc = (pred[inside] == labels[inside]).float().mean().item()
            total += inside.float().mean().item() * abs(acc - conf[inside].mean().item())
    assert expected_calibration_error(logits, labels) == pytest.approx(total, abs=1e-6)


def test_summary_means_and_medians_ignore_nan():
    values = {name: np.array([1.0, 2.0, 10.0], dtype=np.float32) for name in PER_SAMPLE}
    values["logit_distance"] = np.array([np.nan, 2.0, 4.0], dtype=np.float32)
    values["logit_mean_gap"] = np.full(3, np.nan, dtype=np.float32)
    summary = summarize(values, 0.25)
    assert list(summary) == list(SUMMARY)
    assert summary["ece"] == 0.25
    assert summary["feature_norm_mean"] == pytest.approx(13 / 3) and summary["feature_norm_median"] == 2.0
    assert summary["logit_distance_mean"] == 3.0 and summary["logit_distance_median"] == 3.0
    assert math.isnan(summary["logit_mean_gap_mean"])


def test_measure_keeps_features_and_selects_classes(tmp_path):
    m = measure(LOGITS, LABELS, FEATURES, TEACHER)
    assert m.values["tld"].dtype == np.float32 and m.values["correct"].dtype == bool
    assert m.summary["tld_median"] == pytest.approx(0.5)
    some = m.of_classes([1, 2])
    assert some.feature_index.tolist() == [0, 2] and some.features.tolist() == [[3.0, 4.0], [1.0, 1.0]]
    assert some.values is m.values  # per-sample values stay whole
    path = tmp_path / "m.npz"
    some.save(str(path))
    back = EndMeasurements.load(str(path))
    assert back.summary == some.summary and back.feature_index.tolist() == [0, 2]
    assert all(np.array_equal(back.values[k], some.values[k], equal_nan=True) for k in PER_SAMPLE)


CONFIG = RunConfig(teacher="cnn-8", student="cnn-4", epochs=2, teacher_epochs=2, loss="kl", tau=4.0, alpha=0.9)


@pytest.fixture(scope="module")
def trained():
    data = load_data(CONFIG)
    teacher = train_teacher(CONFIG, data=data)
    return data, teacher


def test_a_completed_run_is_measured_once_at_its_end(trained):
    data, teacher = trained
    ends = []
    result = train(CONFIG, data=data, teacher=teacher.model, on_epoch=ends.append)
    assert [e.measurements is None for e in ends] == [True, False]
    measured = result.measurements
    assert measured is ends[-1].measurements
    # The same numbers as a direct pass of the trained student and the teacher.
    device = torch.device("cpu")
    with torch.no_grad():
        x = data.normalize(data.test.images)
        logits, features = result.model(x, return_features=True)
        teacher_logits = teacher.model(x)
    direct = per_sample(logits, data.test.labels, features, teacher_logits)
    for name in PER_SAMPLE:
        assert measured.values[name] == pytest.approx(direct[name].numpy(), rel=1e-5, abs=1e-5)
    assert measured.summary["ece"] == pytest.approx(expected_calibration_error(logits, data.test.labels), abs=1e-6)
    assert measured.values["correct"].mean() == pytest.approx(result.final["test_acc"])
    assert measured.features.shape == (len(data.test), result.model.feature_dim)
    again = measure_model(result.model, data, teacher_logits, device=device)
    assert np.array_equal(again.values["tld"], measured.values["tld"])
    # A run resumed from its final state trains nothing and measures the same weights.
    resumed = train(CONFIG, data=data, teacher=teacher.model,
                    resume_state={**_final_state(CONFIG, data, teacher)})
    assert resumed.measurements is not None and len(resumed.history) == 2


def _final_state(config, data, teacher):
    states = []
    train(config, data=data, teacher=teacher.model, on_epoch=lambda end: states.append(end.state()))
    return states[-1]


def test_a_teacher_is_measured_on_its_own_outputs(trained):
    _, teacher = trained
    m = teacher.measurements
    assert m is not None and math.isnan(m.summary["logit_distance_mean"])
    assert m.summary["feature_norm_mean"] > 0 and 0 <= m.summary["ece"] <= 1


def test_a_diverged_run_is_not_measured(trained):
    data, teacher = trained
    result = train(CONFIG.replace(lr=1e30), data=data, teacher=teacher.model)
    assert result.status == "diverged" and result.measurements is None
