"""Samples/features part files and the figures, on a results folder made with the real
writers (trial rows, epoch rows, part files) from known numbers; the figures' data are
checked against the Parquet."""
from __future__ import annotations

import logging
import math
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from recorded import CLASSES, N_TEST, fake_measurements

from analysis import build_tables, figures, load_trials
from analysis.__main__ import main
from analysis.figures import FIGURES, draw, write_figures
from analysis.results_io import load_epochs, load_features, load_samples
from kd_tune.core.config import RunConfig
from kd_tune.core.identity import teacher_key, trial_key
from kd_tune.plan.search_space import expand
from kd_tune.results.samples import FEATURES_DIR, SAMPLES_DIR, write_parts
from kd_tune.results.trial_tables import ResultsWriter, epoch_row, trial_row
from kd_tune.train.measurements import PER_SAMPLE

matplotlib.use("Agg")

WIDTH, TEACHER_WIDTH = 4, 6
SPACE = [{"loss": ["kl"], "tau": [1.0, 4.0, math.inf], "alpha": [0.5, 1.0]},
         {"loss": ["mse"], "alpha": [0.5, 1.0]}, {"loss": ["ce"]}]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A sweep folder: 2 seeds x (6 kl + 2 mse + 1 ce) trials of 3 epochs, one teacher."""
    folder = tmp_path_factory.mktemp("results") / "grid"
    base = RunConfig(epochs=3)
    configs = expand(base, SPACE, seeds=range(2))
    writer = ResultsWriter(folder)
    rng = np.random.default_rng(7)
    teacher = teacher_key(base)
    for i, config in enumerate(configs):
        key = trial_key(config)
        history = []
        for epoch in (1, 2, 3):
            row = epoch_row("grid", key, f"t{i}", {"epoch": epoch, "train_loss": 1 / epoch, "train_acc": 0.2 * epoch,
                                                   "val_acc": 0.2 * epoch + 0.1, "test_acc": float(rng.random()),
                                                   "epoch_time_s": 0.1})
            writer.add_epoch(row)
            history.append(row)
        measured = fake_measurements(i, WIDTH).of_classes([0, 1, 2])
        writer.finish_trial(trial_row(sweep="grid", trial_key=key, trial_id=f"t{i}", config=config,
                                      status="completed", history=history, teacher_key=teacher,
                                      teacher_test_acc=0.9, started_at=None, measured=measured.summary))
        write_parts(folder, "trial", key, measured)
    writer.flush()
    write_parts(folder, "teacher", teacher, fake_measurements(99, TEACHER_WIDTH, teacher=True).of_classes([0, 1, 2]))
    return folder


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def errorbar_line(ax, label: str):
    """The data line of the error-bar series called ``label``."""
    return next(c.lines[0] for c in ax.containers if c.get_label() == label)


# -- part files ----------------------------------------------------------------------------


def test_parts_are_one_file_per_trial_and_read_as_one_table(results):
    trials = load_trials(results)
    samples = load_samples(results)
    assert len(list((results / SAMPLES_DIR).glob("part-*.parquet"))) == len(trials) + 1
    assert len(samples) == (len(trials) + 1) * N_TEST
    assert samples.groupby(["role", "key", "index"]).size().max() == 1
    assert {str(samples[c].dtype) for c in PER_SAMPLE} == {"float32"}
    # The same table through pyarrow.dataset, as a reader of a large sweep would scan it.
    table = ds.dataset(results / SAMPLES_DIR, format="parquet").to_table(filter=ds.field("role") == "teacher")
    assert table.num_rows == N_TEST
    first = trials.iloc[0]
    rows = samples[samples["key"] == first["trial_key"]].sort_values("index")
    assert rows["index"].tolist() == list(range(N_TEST))
    assert float(np.nanmean(rows["tld"].to_numpy(np.float64))) == pytest.approx(first["tld_mean"], rel=1e-6)
    features = load_features(results)
    assert set(features["label"]) == {0, 1, 2}
    assert features.groupby("role")["features"].apply(lambda f: {len(v) for v in f}).to_dict() == \
        {"teacher": {TEACHER_WIDTH}, "trial": {WIDTH}}


def test_a_part_written_again_replaces_the_old_one(tmp_path):
    write_parts(tmp_path, "trial", "k", fake_measurements(1, WIDTH))
    write_parts(tmp_path, "trial", "k", fake_measurements(2, WIDTH).of_classes([0]))
    assert [p.name for p in (tmp_path / FEATURES_DIR).iterdir()] == ["part-trial-k.parquet"]
    frame = pd.read_parquet(tmp_path / FEATURES_DIR)
    assert set(frame["label"]) == {0} and len(pd.read_parquet(tmp_path / SAMPLES_DIR)) == N_TEST


# -- figures and their data ------------------------------------------------------------------


def test_heatmap_cells_are_the_tables_cells(results):
    fig = draw("heatmap", results)
    table = build_tables(load_trials(results), "tau_alpha", reference=False)[0]
    expected = set()
    for tau in ("1", "4", "inf"):
        for alpha in ("0.5", "1"):
            cell = table.stats(f"kl tau={tau}", f"alpha={alpha}")
            expected.add(f"{cell.mean:.2f} ± {cell.std:.2f}\n(n={cell.n})")
    assert set(texts(fig)) == expected


def test_tau_lines_are_the_mean_test_accuracy_per_alpha(results):
    trials = load_trials(results)
    ax = draw("tau", results).axes[0]
    kl = trials[(trials["loss"] == "kl") & (trials["alpha"] == 1.0)]
    means = 100 * kl.groupby("tau")["test_acc"].mean().sort_index()
    line = errorbar_line(ax, "KL, α=1")
    assert line.get_ydata().tolist() == pytest.approx(means.tolist())
    # tau = inf has its own place right of the largest finite tau, labelled ∞.
    assert line.get_xdata()[-1] > 4 and "∞" in [t.get_text() for t in ax.get_xticklabels()]
    mse = next(line for line in ax.get_lines() if line.get_label() == "MSE, α=1")
    assert mse.get_ydata()[0] == pytest.approx(100 * trials[(trials["loss"] == "mse") & (trials["alpha"] == 1.0)]
                                               ["test_acc"].mean())
    ce = next(line for line in ax.get_lines() if line.get_label() == "CE (no teacher)")
    assert ce.get_ydata()[0] == pytest.approx(100 * trials[trials["loss"] == "ce"]["test_acc"].mean())


def test_tau_has_a_panel_per_noise_setting(results, tmp_path):
    trials = load_trials(results)
    noisy = trials.assign(noise_type="symmetric", noise_rate=0.4, trial_key=trials["trial_key"] + "n")
    both = tmp_path / "both"
    both.mkdir()
    pd.concat([trials, noisy]).to_parquet(both / "trials.parquet")
    titles = [ax.get_title() for ax in draw("tau", both).axes if ax.get_visible()]
    assert titles == ["Test accuracy: clean", "Test accuracy: symmetric noise, rate 0.4"]


def test_logit_mean_gap_is_the_trial_mean_against_tau(results):
    trials = load_trials(results)
    ax = draw("logit_mean_gap", results).axes[0]
    kl = trials[(trials["loss"] == "kl") & (trials["alpha"] == 0.5)]
    line = errorbar_line(ax, "KL, α=0.5")
    assert line.get_ydata().tolist() == pytest.approx(kl.groupby("tau")["logit_mean_gap_mean"].mean().tolist())


def test_distributions_pool_the_samples_of_each_method(results):
    trials = load_trials(results)
    samples = load_samples(results)
    ax = draw("feature_norm", results).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["teacher", "CE", "KL τ=1", "KL τ=4", "KL τ=∞", "MSE"]
    medians = next(c for c in ax.collections if c.get_gid() == "medians")
    kl4 = trials[(trials["loss"] == "kl") & (trials["tau"] == 4.0) & (trials["alpha"] == 1.0)]["trial_key"]
    pooled = samples[samples["key"].isin(set(kl4))]["feature_norm"]
    segment = medians.get_segments()[3]
    assert segment[0][1] == pytest.approx(float(np.median(pooled)), rel=1e-6)
    assert [t.get_text() for t in draw("logit_distance", results).axes[0].get_xticklabels()][0] == "CE"


def test_features_project_the_teachers_and_the_students_classes(results):
    fig = draw("features", results)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "teacher"
    assert titles[1:] == [f"KL τ={t} (own PCA, width {WIDTH})" for t in ("1", "∞")] + [f"MSE (own PCA, width {WIDTH})"]
    teacher_points = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert teacher_points == sum(1 for i in range(N_TEST) if i % CLASSES < 3)


def test_curves_are_the_mean_over_seeds(results):
    trials = load_trials(results)
    epochs = load_epochs(results)
    fig = draw("curves", results)
    test_ax = fig.axes[1]
    ce = trials[trials["loss"] == "ce"]["trial_key"]
    mean = 100 * epochs[epochs["trial_key"].isin(set(ce))].groupby("epoch")["test_acc"].mean()
    line = next(line for line in test_ax.get_lines() if line.get_label() == "CE")
    assert line.get_ydata().tolist() == pytest.approx(mean.tolist())


def test_plot_command_writes_every_figure_as_png_and_pdf(results, tmp_path):
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, "-m", "analysis", str(results), "--plot", "all", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # the loss-family figure needs more than the paper's losses (tests/analysis/test_loss_tables.py)
    assert "logit_losses skipped" in proc.stderr + proc.stdout
    # and the data-size figure trials at two or more data fractions (tests/analysis/test_data_size_table.py)
    assert "data_size skipped" in proc.stderr + proc.stdout
    for name in (n for n in FIGURES if n not in ("logit_losses", "data_size")):
        for suffix in ("png", "pdf"):
            path = out / f"{name}.{suffix}"
            assert path.stat().st_size > 5000, path
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "heatmap.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_command_bad_input_exits_2(results, tmp_path, capsys):
    from analysis.__main__ import main

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return exc.value.code, capsys.readouterr().err

    # Once as a user runs it; the other cases in this process (each python -m costs seconds).
    no_out = subprocess.run([sys.executable, "-m", "analysis", str(results), "--plot", "heatmap"],
                            capture_output=True, text=True, timeout=300)
    assert no_out.returncode == 2 and "--plot needs --out DIR" in no_out.stderr
    code, err = run(str(results), "--plot", "pie", "--out", str(tmp_path / "x"))
    assert code == 2 and "invalid choice" in err
    ce_only = tmp_path / "ce"
    ce_only.mkdir()
    trials = load_trials(results)
    trials[trials["loss"] == "ce"].to_parquet(ce_only / "trials.parquet")
    code, err = run(str(ce_only), "--plot", "heatmap", "--out", str(tmp_path / "y"))
    assert code == 2 and "heatmap skipped" in err
    assert not (tmp_path / "y").exists()


def test_a_figure_skipped_or_failing_is_logged_and_the_command_line_shows_it(results, tmp_path, monkeypatch,
                                                                              caplog, capsys):
    def boom(trials):
        raise RuntimeError("boom")

    monkeypatch.setattr(figures, "heatmap_cells", boom)
    ce_only = tmp_path / "ce"
    ce_only.mkdir()
    trials = load_trials(results)
    trials[trials["loss"] == "ce"].to_parquet(ce_only / "trials.parquet")
    with caplog.at_level(logging.INFO, logger="analysis"):
        assert write_figures(ce_only, tmp_path / "a", ("tau",)) == []
        assert write_figures(results, tmp_path / "b", ("heatmap",)) == []
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("analysis.figures", logging.INFO,
         "tau skipped: test accuracy against tau needs KL trials at two or more taus"),
        ("analysis.figures", logging.WARNING, "heatmap failed: RuntimeError: boom")]

    with pytest.raises(SystemExit) as exit_:
        main([str(results), "--plot", "heatmap", "--out", str(tmp_path / "c")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "warning: heatmap failed: RuntimeError: boom"
    assert err[-1].endswith(f"error: no figure could be drawn from {results}: heatmap failed: RuntimeError: boom")
    assert not logging.getLogger("analysis").handlers  # the console is the command's, for its run only
