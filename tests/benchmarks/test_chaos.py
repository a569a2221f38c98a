"""benchmarks/chaos.py: its fault schedule and its checks, on made-up results (the soak itself is
not part of the test suite)."""
from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from chaos import (  # noqa: E402
    QUICK,
    check_sweep,
    failed_on_the_way,
    fault_schedule,
    result_line,
    search_problems,
    teacher_trainings,
)
from recorded import recorded_search  # noqa: E402

from analysis.results_io import load_trials  # noqa: E402


def _trials(rows):
    return pd.DataFrame(rows, columns=["trial_key", "status", "epoch"])


def _epochs(pairs):
    return pd.DataFrame(pairs, columns=["trial_key", "epoch"])


def test_a_whole_sweep_counts_nothing_lost_or_duplicated():
    trials = _trials([("a", "completed", 2), ("b", "completed", 2), ("c", "stopped", 1)])
    epochs = _epochs([("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1)])
    children = [("a", "FINISHED"), ("b", "FINISHED"), ("c", "FINISHED")]
    check = check_sweep("s", ["a", "b", "c"], trials, epochs, children, parents=1, epochs_wanted=2)
    assert (check.planned, check.rows, check.lost, check.duplicated, check.bad_epochs, check.mlflow_missing) == \
        (3, 3, 0, 0, 0, 0)
    assert result_line(5, [check, check]) == "chaos: faults=5 trials=6 rows=6 lost=0 duplicated=0 mlflow_missing=0"


def test_each_kind_of_damage_is_counted():
    trials = _trials([
        ("a", "completed", 2),   # epoch 2 twice
        ("b", "completed", 1),   # completed one epoch short
        ("b", "completed", 2),   # a second final row
        ("c", "failed", 1),      # failed: lost
        ("x", "completed", 2),   # never planned
        ("e", "completed", 3),   # epoch 2 missing
    ])
    epochs = _epochs([("a", 1), ("a", 2), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("x", 1), ("x", 2),
                      ("e", 1), ("e", 3)])
    # d has no row; c's run FAILED, b has two runs, e none
    children = [("a", "FINISHED"), ("b", "FINISHED"), ("b", "FINISHED"), ("c", "FAILED"), ("d", "RUNNING")]
    check = check_sweep("s", ["a", "b", "c", "d", "e"], trials, epochs, children, parents=2, epochs_wanted=2)
    assert (check.missing, check.failed, check.lost) == (1, 1, 2)
    assert (check.duplicate_rows, check.duplicate_epochs, check.unplanned, check.duplicated) == (1, 1, 1, 3)
    # a (2 twice), b (its 1-epoch row and its row-per-key twice), e (1, 3): and the unplanned x is fine
    assert check.bad_epochs == 3
    # b (two runs), c (FAILED), d (RUNNING), e (none), and a second parent
    assert check.mlflow_missing == 5
    assert check_sweep("s", ["a"], trials.iloc[:1], epochs.iloc[:2], [("a", "FINISHED")], parents=0,
                       epochs_wanted=2).mlflow_missing == 1  # no parent run at all


def test_teacher_trainings_count_trained_teachers_only():
    logs = ["teachers: 1 needed, 0 in the store, 1 to train\nteacher cnn-8 (k1) trained: test acc 90.00% in 2.0s\n",
            "teacher cnn-8 (k1) trained by another sweep meanwhile: test acc 90.00% in 2.0s\n",
            "teacher cnn-8 (k2) trained: test acc 80.00% in 1.0s\nteacher cnn-8 (k2) trained: test acc 80.00% in 1s\n"]
    assert teacher_trainings(logs) == Counter({"k1": 1, "k2": 2})


def test_search_problems_on_a_recorded_search(tmp_path):
    record, keys = recorded_search(tmp_path)
    trials = load_trials(tmp_path)
    assert search_problems(record, trials, samples=5, top=1) == []
    assert search_problems(record, trials, samples=6, top=1)[0].startswith("draws numbered")
    # the results say the best completed setting is another one than the record selected
    better = trials.assign(val_acc=trials["val_acc"].where(trials["trial_key"] != keys[0], 0.99))
    assert search_problems(record, better, samples=5, top=1)[0].startswith("selected ")


def test_the_schedule_is_the_seed_s_and_keeps_each_kind_s_period():
    one, two = (fault_schedule(random.Random(3), QUICK, 600) for _ in range(2))
    assert one == two != fault_schedule(random.Random(4), QUICK, 600)
    assert [f.at_s for f in one] == sorted(f.at_s for f in one) and one[-1].at_s < 600
    for kind, every in (("worker", QUICK.worker_every_s), ("node", QUICK.node_every_s),
                        ("mlflow", QUICK.mlflow_every_s)):
        times = [f.at_s for f in one if f.kind == kind]
        gaps = [b - a for a, b in zip([0.0, *times], times)]
        assert all(0.5 * every <= g <= 1.5 * every for g in gaps), kind
    assert all(3 <= f.down_s <= 15 for f in one if f.kind == "mlflow")


def test_failed_on_the_way_counts_failed_trials_of_every_invocation_but_the_last():
    logs = ["...\nsweep finished in 214s: 64 completed, 1 failed\n",
            "\nsweep stopped after 9s: 3 completed, 62 missing;",
            "\nsweep finished in 73s: 63 completed, 2 failed\n"]
    assert failed_on_the_way(logs) == 1
    assert failed_on_the_way(logs[:2] + ["\nsweep finished in 5s: 65 completed\n"]) == 1


def test_settings_tied_on_their_mean_may_be_selected_either_way(tmp_path):
    record, keys = recorded_search(tmp_path)
    trials = load_trials(tmp_path)
    # draw 4 ties the selected draw 2 (0.95): selecting draw 2 stays right
    best = trials.loc[trials["trial_key"] == keys[2], "val_acc"].iloc[0]
    tied = trials.assign(val_acc=trials["val_acc"].where(trials["trial_key"] != keys[4], best))
    assert search_problems(record, tied, samples=5, top=1) == []
