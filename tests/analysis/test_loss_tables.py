"""The logit_losses table and figure: the loss family side by side, published numbers beside,
and the paper's tables and figures keeping z-scored kl and mse apart from kl and mse."""
from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest

from analysis import build_tables, render
from analysis.figures import NoData, logit_losses, paper_trials
from analysis.loss_tables import family, method_label
from analysis.reference import published_value
from kd_tune.core.config import RunConfig
from kd_tune.core.identity import trial_key

matplotlib.use("Agg")

METHODS = [RunConfig(loss="ce", tau=1.0, alpha=0.0), RunConfig(loss="kl", tau=4.0), RunConfig(loss="kl", tau=2.0,
           standardize=True), RunConfig(loss="dkd"), RunConfig(loss="dkd", dkd_beta=6.0), RunConfig(loss="dist"),
           RunConfig(loss="mse", tau=1.0), RunConfig(loss="mse", tau=1.0, standardize=True)]


def frame(base: RunConfig = RunConfig(), seeds: int = 3, status: str = "completed") -> pd.DataFrame:
    """Trial rows as the trials table holds them: accuracy 0.90 + 0.01 * method index + 0.001 * seed,
    logit distance 2 + index, logit-mean gap index - 3."""
    rows = []
    for i, method in enumerate(METHODS):
        for seed in range(seeds):
            config = RunConfig.from_dict({**base.to_dict(), **method.table_values(), "seed": seed,
                                          **{k: v for k, v in base.to_dict().items()
                                             if k in ("dataset", "teacher", "student", "noise_type", "noise_rate",
                                                      "data_dir")}})
            rows.append({**config.table_values(), "trial_key": trial_key(config), "status": status,
                         "test_acc": 0.90 + 0.01 * i + 0.001 * seed, "val_acc": 0.9,
                         "logit_distance_mean": 2.0 + i, "logit_mean_gap_mean": i - 3.0,
                         "teacher_key": "t", "teacher_test_acc": 0.95})
    return pd.DataFrame(rows)


def test_each_method_is_a_row_with_its_accuracy_distance_and_gap():
    [table] = build_tables(frame(), "logit_losses")
    assert table.rows == ["ce", "kl tau=4 alpha=0.9", "kl+ls tau=2 alpha=0.9", "dkd tau=4 alpha=0.9",
                          "dkd tau=4 alpha=0.9 dkd_beta=6", "dist tau=4 alpha=0.9", "mse alpha=0.9",
                          "mse+std alpha=0.9"]
    assert table.columns == ["test acc", "logit distance", "logit-mean gap"]
    dkd = table.stats("dkd tau=4 alpha=0.9", "test acc")
    assert (dkd.mean, dkd.n) == (pytest.approx(93.1), 3) and dkd.std == pytest.approx(0.1)
    assert table.stats("kl+ls tau=2 alpha=0.9", "logit distance").mean == 4.0
    assert table.stats("mse+std alpha=0.9", "logit-mean gap").mean == 4.0
    assert table.reference == {}  # digits: no published numbers
    text = render([table], "md")
    assert "| kl+ls tau=2 alpha=0.9 | 92.10 ± 0.10 (3) | 4.00 ± 0.00 (3) | -1.00 ± 0.00 (3) |" in text
    assert "logit distance ||z_s - z_t||_2" in text


def test_published_numbers_sit_beside_a_run_of_their_pair_on_clean_labels_only():
    pair = RunConfig(dataset="cifar100", data_dir="/d", teacher="resnet-32x4", student="resnet-8x4")
    [table] = build_tables(frame(pair), "logit_losses")
    assert table.reference == {("kl tau=4 alpha=0.9", "test acc"): 73.33, ("kl+ls tau=2 alpha=0.9", "test acc"): 76.62,
                               ("dkd tau=4 alpha=0.9", "test acc"): 76.32,
                               ("dkd tau=4 alpha=0.9 dkd_beta=6", "test acc"): 76.32,
                               ("dist tau=4 alpha=0.9", "test acc"): 76.31}
    assert "[published: another paper's CIFAR-100 number" in render([table], "md")
    assert "[76.32]" in render([table], "md")
    [noisy] = build_tables(frame(pair.replace(noise_type="symmetric", noise_rate=0.4)), "logit_losses")
    assert noisy.reference == {}
    assert published_value("cifar100", "wrn-40-2", "wrn-16-2", "dkd") == (76.23, "zhao-cvpr2022-dkd-table1-beta6")
    assert published_value("cifar100", "wrn-40-2", "wrn-16-2", "kl") == (74.92, "zhao-cvpr2022-dkd-table1")


def test_the_paper_tables_keep_z_scored_kl_and_mse_and_the_new_losses_out():
    trials = frame()
    [loss] = build_tables(trials, "loss")
    assert loss.columns == ["ce", "kl tau=4 alpha=0.9", "mse alpha=0.9"]
    assert loss.stats("cnn-32 -> cnn-4", "kl tau=4 alpha=0.9").mean == pytest.approx(91.1)
    # results from before the standardize column: kl and mse as they were
    [old] = build_tables(trials[~trials["standardize"].eq(True)].drop(columns="standardize"), "loss")
    assert old.columns == loss.columns


def test_missing_columns_of_older_results_read_as_plain_losses():
    trials = frame()
    trials = trials[trials["loss"].isin(["ce", "kl", "mse"]) & ~trials["standardize"].eq(True)]
    old = trials.drop(columns=["standardize", "dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma",
                               "logit_distance_mean", "logit_mean_gap_mean"])
    [table] = build_tables(old, "logit_losses")
    assert table.rows == ["ce", "kl tau=4 alpha=0.9", "mse alpha=0.9"]
    assert table.stats("kl tau=4 alpha=0.9", "logit distance") is None


def test_family_and_labels():
    assert [family(loss, std) for loss, std in (("kl", True), ("kl", None), ("mse", True), ("mse", math.nan),
                                                  ("dkd", False))] == ["kl+ls", "kl", "mse+std", "mse", "dkd"]
    assert method_label({**RunConfig(loss="dkd", dkd_warmup=0).table_values()}) == "dkd tau=4 alpha=0.9 dkd_warmup=0"


def test_the_family_figure_shows_every_method_per_setting_and_the_paper_figures_only_theirs():
    trials = pd.concat([frame(), frame(RunConfig(noise_type="symmetric", noise_rate=0.4))], ignore_index=True)
    fig = logit_losses(trials)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 6  # 3 columns x 2 settings
    first = fig.axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == build_tables(trials, "logit_losses")[0].rows
    means = [container.lines[0].get_xdata()[0] for container in first.containers]
    assert means == pytest.approx([90.1 + i for i in range(8)])
    assert set(paper_trials(trials)["loss"]) == {"ce", "kl", "mse"} and not paper_trials(trials)["standardize"].any()
    with pytest.raises(NoData):
        logit_losses(paper_trials(trials))
