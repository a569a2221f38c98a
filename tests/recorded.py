"""Made-up results written through the project's own writers, shared by tests of several
parts: end measurements from known random numbers, and a finished search."""
from __future__ import annotations

import math

import numpy as np

from kd_tune.core.config import RunConfig
from kd_tune.core.identity import setting_key, trial_key
from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import plan_trial
from kd_tune.plan.search_space import SampledSpace, loguniform, uniform
from kd_tune.results.parquet_sink import ParquetSink
from kd_tune.results.search_record import SearchRecord, SearchTrial, Selected
from kd_tune.sweep.search import OBJECTIVE
from kd_tune.train.measurements import PER_SAMPLE, EndMeasurements, summarize

N_TEST, CLASSES = 60, 5
# The search of recorded_search (and of the search tests).
BASE = RunConfig(epochs=3, teacher="cnn-8", teacher_epochs=1)
SPACE = SampledSpace.of({"loss": ["kl"], "tau": loguniform(0.25, 64, points=[math.inf]), "alpha": uniform(0, 1)},
                        {"loss": ["mse"], "alpha": uniform(0, 1)})


def fake_measurements(seed: int, width: int, teacher: bool = False) -> EndMeasurements:
    rng = np.random.default_rng(seed)
    labels = np.arange(N_TEST) % CLASSES
    values = {name: rng.normal(size=N_TEST).astype(np.float32) for name in PER_SAMPLE}
    values["feature_norm"] = np.abs(values["feature_norm"]) + (5 if teacher else 1)
    if teacher:
        values["logit_distance"][:] = np.nan
        values["logit_mean_gap"][:] = np.nan
    values["correct"] = rng.random(N_TEST) > 0.3
    return EndMeasurements(labels=labels, values=values, feature_index=np.arange(N_TEST),
                           features=rng.normal(size=(N_TEST, width)).astype(np.float32),
                           summary=summarize(values, 0.05))


def _history(epochs: int, val: float, test: float) -> list[dict]:
    return [{"epoch": e, "train_loss": 0.5, "train_acc": 0.8, "val_acc": val * e / epochs, "test_acc": test,
             "test_logit_mse": 0.1, "test_agreement": 0.9, "lr": 0.02, "epoch_time_s": 0.1,
             "teacher_forward_samples": 0.0} for e in range(1, epochs + 1)]


def recorded_search(folder):
    """A finished search written through the Parquet sink: 5 drawn trials, one confirmed setting."""
    sink = ParquetSink(folder, sweep="s", teacher_acc=lambda key: 0.99)
    draws = [  # (config, status, epochs run, last val acc, test acc)
        (BASE.replace(loss="kl", tau=3.0, alpha=0.4), TrialStatus.COMPLETED, 3, 0.90, 0.80),
        (BASE.replace(loss="mse", tau=1.0, alpha=0.7), TrialStatus.STOPPED, 1, 0.60, 0.50),
        (BASE.replace(loss="kl", tau=math.inf, alpha=0.9), TrialStatus.COMPLETED, 3, 0.95, 0.70),
        (BASE.replace(loss="mse", tau=1.0, alpha=0.2), TrialStatus.DIVERGED, 2, math.nan, math.nan),
        (BASE.replace(loss="kl", tau=20.0, alpha=0.1), TrialStatus.COMPLETED, 3, 0.85, 0.90),
    ]
    confirm = [draws[2][0].replace(seed=s) for s in (1, 2)]
    for i, (config, status, epochs, val, test) in enumerate(draws + [(c, TrialStatus.COMPLETED, 3, 0.9 + c.seed / 100,
                                                                       0.75 + c.seed / 100) for c in confirm]):
        trial = plan_trial(config)
        for row in _history(epochs, val, test):
            sink.epoch_reported(trial, f"t{i}", row, TrialStatus.RUNNING)
        sink.trial_ended(trial, f"t{i}", status, None)
    keys = [trial_key(c) for c, *_ in draws]
    best = Selected(rank=1, setting=setting_key(draws[2][0]), label="kl tau=inf alpha=0.9", val_acc=0.95,
                    search_keys=(keys[2],), confirm_keys=tuple(trial_key(c) for c in confirm))
    record = SearchRecord("s", OBJECTIVE, SPACE, {"confirm_seeds": 2, "confirm_top": 1},
                          tuple(SearchTrial(n, k, setting_key(c)) for n, (k, (c, *_)) in enumerate(zip(keys, draws))),
                          (best,), pick=1)
    record.write(folder)
    return record, keys
