"""The paper's figures from a sweep's Parquet results (matplotlib; PNG and PDF).

Every figure reads the Parquet files through :mod:`analysis.results_io` and never loads
a model. Only completed trials enter. Figures (see :data:`FIGURES`):

- ``heatmap``: mean last-epoch test accuracy (%) of KL over the tau x alpha grid, each
  cell annotated with mean, std and n over seeds (one panel per setting);
- ``tau``: test accuracy (%) against tau (log axis, inf at the right as its own tick),
  one line per alpha (mean, error bar = std over seeds), MSE (dashed, per alpha) and CE
  (dotted) as horizontal references; one panel per setting (e.g. per noise rate);
- ``logit_distance``: distributions over the test samples of ||z_s - z_t||_2 per method
  (loss and tau; at the largest alpha of the sweep), all seeds pooled;
- ``feature_norm``: distributions of ||r_s||_2 per method, the teacher's beside;
- ``logit_mean_gap``: the mean over test samples of mean_k z_s - mean_k z_t against tau
  (per trial, then mean and std over seeds);
- ``features``: the penultimate features of the feature classes' test samples projected
  on the first two principal axes of the teacher's features (PCA fitted on the teacher),
  for the teacher, KL at the smallest and at the largest tau, and MSE (first seed). A
  student whose feature width differs from the teacher's (the presets' pairs) cannot be
  projected on the teacher's axes: it gets its own PCA, and its panel title says so;
- ``curves``: train and test accuracy (%) per epoch, mean and band (min-max over seeds)
  per method;
- ``logit_losses``: the loss family side by side (drawn when the results hold more than
  the paper's losses: dkd, dist, or kl/mse on z-scored logits): test accuracy, logit
  distance and logit-mean gap per method, mean and std over seeds, a row per setting (the
  cells of :mod:`analysis.loss_tables`).

The paper's figures (``heatmap``, ``tau``, ``logit_mean_gap``, ``features``) show its
losses, ce, kl and mse on raw logits; the others show every method, kl and mse on
z-scored logits as methods of their own (``KL+LS``, ``MSE (z-scored)``).

A "setting" is what the tables group by besides the method: data set, teacher, student,
noise type and rate. Colours follow the Okabe-Ito palette (safe for colour-blind readers).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.data_size_table import FRACTION, data_size_tables
from analysis.loss_tables import COLUMNS, logit_loss_tables
from analysis.results_io import load_epochs, load_features, load_samples, load_trials
from kd_tune.storage import Storage, located, open_storage

FIGURES = ("heatmap", "tau", "logit_distance", "feature_norm", "logit_mean_gap", "features", "curves", "logit_losses",
           "data_size")
FIGURE_HELP = {
    "heatmap": "KL test accuracy over the tau x alpha grid, cells 'mean ± std (n)'",
    "tau": "test accuracy against tau, a line per alpha, MSE and CE as references; a panel per noise setting",
    "logit_distance": "distributions of ||z_s - z_t||_2 on the test set per loss/tau",
    "feature_norm": "distributions of the penultimate feature norm ||r_s||_2 per loss/tau, teacher beside",
    "logit_mean_gap": "mean_k z_s - mean_k z_t (test mean) against tau",
    "features": "2-D PCA (fitted on the teacher) of three classes' penultimate features: teacher, KL at small "
                "and large tau, MSE",
    "curves": "train and test accuracy per epoch, mean and min-max band over seeds",
    "logit_losses": "test accuracy, logit distance and logit-mean gap per method of the loss family (dkd, dist, "
                    "kl+ls, mse on z-scores), a row per setting",
    "data_size": "test accuracy against the student's fraction of the training data, a line per loss (mean ± std "
                 "over seeds); a panel per setting",
}
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SETTING = ("dataset", "teacher", "student", "noise_type", "noise_rate")
_INF_LABEL = "∞"

log = logging.getLogger(__name__)


class NoData(ValueError):
    """The results hold nothing this figure can show (e.g. no KL trial for ``tau``)."""


# ---------------------------------------------------------------- data helpers


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "completed"]


def settings(trials: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, trials) per setting, titles naming only what varies (empty title if nothing)."""
    varying = [c for c in SETTING if trials[c].nunique(dropna=False) > 1]
    if not varying:
        return [("", trials)]
    out = []
    # Clean labels first (noise type "none" sorts after the noise types by name).
    trials = trials.assign(_noisy=trials["noise_type"] != "none").sort_values(["_noisy", *varying], kind="stable")
    for values, group in trials.groupby(varying, sort=False, dropna=False):
        group = group.drop(columns="_noisy")
        values = values if isinstance(values, tuple) else (values,)
        parts = []
        clean = dict(zip(varying, values)).get("noise_type") == "none"
        for column, value in zip(varying, values):
            if column == "noise_rate":
                if not clean:
                    parts.append(f"rate {value:g}")
            elif column == "noise_type":
                parts.append("clean" if value == "none" else f"{value} noise")
            else:
                parts.append(str(value))
        out.append((", ".join(parts), group))
    return out


def method_label(loss: str, tau: float, standardize: bool = False) -> str:
    """``KL τ=4``, ``KL+LS τ=2`` (kl on z-scored logits), ``DKD τ=4``, ``MSE``, ``MSE (z-scored)``, ``CE``."""
    tau_text = f"τ={_INF_LABEL if math.isinf(tau) else f'{tau:g}'}"
    if loss == "kl":
        return f"KL{'+LS' if standardize else ''} {tau_text}"
    if loss == "mse":
        return "MSE (z-scored)" if standardize else "MSE"
    if loss in ("dkd", "dist"):
        return f"{loss.upper()} {tau_text}"
    return loss.upper()


def standardized(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial's logits were z-scored (``standardize``; False in results from before the column)."""
    if "standardize" not in trials:
        return pd.Series(False, index=trials.index)
    return trials["standardize"].eq(True)


def paper_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The paper's methods only: ce, and kl and mse on raw logits."""
    return trials[trials["loss"].isin(["ce", "kl", "mse"]) & ~standardized(trials)]


def _methods(trials: pd.DataFrame) -> pd.DataFrame:
    """One alpha per method (the largest of the sweep for each KD loss, z-scored or not; CE
    has none), with a ``method`` label column, ordered CE, KL by tau, KL+LS, DKD, DIST, MSE."""
    trials = trials.assign(_std=standardized(trials))
    kd = trials[trials["loss"] != "ce"]
    chosen = [trials[trials["loss"] == "ce"]]
    for _, group in kd.groupby(["loss", "_std"]):
        chosen.append(group[group["alpha"] == group["alpha"].max()])
    frame = pd.concat(chosen).copy()
    frame["method"] = [method_label(loss, tau, std) for loss, tau, std in
                       zip(frame["loss"], frame["tau"], frame["_std"])]
    order = {"ce": 0, "kl": 1, "dkd": 3, "dist": 4, "mse": 5}
    frame["_order"] = [(order.get(loss, 6) + (1 if std and loss == "kl" else 0.5 if std else 0),
                        tau if loss not in ("ce", "mse") else 0.0)
                       for loss, tau, std in zip(frame["loss"], frame["tau"], frame["_std"])]
    return frame.sort_values("_order", kind="stable").drop(columns=["_order", "_std"])


def heatmap_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """KL cells of one setting: tau, alpha, mean, std (ddof=1), n of 100 * test_acc."""
    kl = trials[trials["loss"] == "kl"]
    grouped = kl.groupby(["tau", "alpha"])["test_acc"]
    cells = pd.DataFrame({"mean": 100 * grouped.mean(), "std": 100 * grouped.std(ddof=1), "n": grouped.size()})
    return cells.reset_index()


def _tau_positions(taus: list[float]) -> tuple[dict[float, float], list[float], list[str]]:
    """x positions on a log axis for taus, inf one step beyond the largest finite tau."""
    finite = sorted(t for t in taus if not math.isinf(t))
    positions = {t: t for t in finite}
    if any(math.isinf(t) for t in taus):
        top = finite[-1] if finite else 1.0
        low = finite[0] if finite else 1.0
        # About a third of the finite span further right (at least a factor 3): its own tick.
        positions[math.inf] = top * max(3.0, (top / low) ** 0.35)
    ticks = [positions[t] for t in sorted(positions)]
    labels = [_INF_LABEL if math.isinf(t) else f"{t:g}" for t in sorted(positions)]
    return positions, ticks, labels


# ---------------------------------------------------------------- figures


def pyplot(backend: str | None = None) -> Any:
    """``matplotlib.pyplot``, with ``backend`` (e.g. ``Agg``) selected first when given.

    Imported here, on first use, and not at the top: importing matplotlib and pyplot costs
    about 0.28 s of CPU (measured: median of 5 timed imports after ``import analysis.__main__``,
    on 2 shared cores; 0.35-0.6 s wall under their load), which ``python -m analysis`` building
    a table would pay for nothing: it imports this module for the figures' names and help.
    """
    import matplotlib

    if backend is not None:
        matplotlib.use(backend)
    import matplotlib.pyplot

    return matplotlib.pyplot


def _subplots(n: int, width: float = 5.0, height: float = 3.8, cols: int = 3) -> tuple[Any, list[Any]]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                                  layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def heatmap(trials: pd.DataFrame, **_: Any) -> Any:
    """The tau x alpha grid of KL test accuracy, one panel per setting."""
    panels = [(t, heatmap_cells(g)) for t, g in settings(paper_trials(completed(trials)))]
    panels = [(t, c) for t, c in panels if c["tau"].nunique() > 1 and c["alpha"].nunique() > 1]
    if not panels:
        raise NoData("heatmap needs KL trials at two or more taus and two or more alphas")
    fig, axes = _subplots(len(panels), width=5.6, height=4.6, cols=2)
    for ax, (title, cells) in zip(axes, panels):
        taus = sorted(cells["tau"].unique())
        alphas = sorted(cells["alpha"].unique())
        grid = np.full((len(taus), len(alphas)), np.nan)
        for row in cells.itertuples():
            grid[taus.index(row.tau), alphas.index(row.alpha)] = row.mean
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="upper")
        for row in cells.itertuples():
            i, j = taus.index(row.tau), alphas.index(row.alpha)
            std = "" if math.isnan(row.std) else f" ± {row.std:.2f}"
            shade = image.norm(row.mean)
            ax.text(j, i, f"{row.mean:.2f}{std}\n(n={row.n})", ha="center", va="center", fontsize=8,
                    color="black" if shade > 0.55 else "white")
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(taus)), [_INF_LABEL if math.isinf(t) else f"{t:g}" for t in taus])
        ax.set_xlabel("α (weight of the distillation term)")
        ax.set_ylabel("τ (temperature)")
        ax.set_title(f"KL test accuracy (%){': ' + title if title else ''}")
        fig.colorbar(image, ax=ax, label="test accuracy (%)")
    return fig


def tau(trials: pd.DataFrame, **_: Any) -> Any:
    """Test accuracy against tau, a line per alpha; MSE and CE references; a panel per setting."""
    return _against_tau(trials, "test_acc", 100.0, "test accuracy (%)", "Test accuracy")


def logit_mean_gap(trials: pd.DataFrame, **_: Any) -> Any:
    """The test mean of mean_k z_s - mean_k z_t against tau (a line per alpha, MSE dashed)."""
    if "logit_mean_gap_mean" not in trials or trials["logit_mean_gap_mean"].isna().all():
        raise NoData("logit_mean_gap needs trials measured at their end (a distilling sweep of this version)")
    return _against_tau(trials, "logit_mean_gap_mean", 1.0, "mean_k z_s − mean_k z_t (logit units)",
                        "Logit-mean gap to the teacher", ce=False, zero_line=True)


def _against_tau(trials: pd.DataFrame, column: str, scale: float, ylabel: str, title: str, *, ce: bool = True,
                 zero_line: bool = False) -> Any:
    panels = [(t, g) for t, g in settings(paper_trials(completed(trials))) if (g["loss"] == "kl").any()
              and g.loc[g["loss"] == "kl", "tau"].nunique() > 1]
    if not panels:
        raise NoData(f"{title.lower()} against tau needs KL trials at two or more taus")
    fig, axes = _subplots(len(panels), width=5.2, height=3.9, cols=min(4, len(panels)))
    for ax, (panel, group) in zip(axes, panels):
        kl = group[group["loss"] == "kl"]
        positions, ticks, labels = _tau_positions(sorted(kl["tau"].unique()))
        alphas = sorted(group.loc[group["loss"] != "ce", "alpha"].unique())
        for k, alpha in enumerate(alphas):
            colour = PALETTE[k % len(PALETTE)]
            stats = kl[kl["alpha"] == alpha].groupby("tau")[column].agg(["mean", "std"]).sort_index()
            if len(stats):
                ax.errorbar([positions[t] for t in stats.index], scale * stats["mean"],
                            yerr=scale * stats["std"].fillna(0.0), color=colour, marker="o", capsize=3,
                            label=f"KL, α={alpha:g}")
            mse = group[(group["loss"] == "mse") & (group["alpha"] == alpha)][column]
            if len(mse):
                ax.axhline(scale * mse.mean(), color=colour, linestyle="--", linewidth=1.2,
                           label=f"MSE, α={alpha:g}")
        ce_values = group[group["loss"] == "ce"][column]
        if ce and len(ce_values):
            ax.axhline(scale * ce_values.mean(), color="black", linestyle=":", linewidth=1.5, label="CE (no teacher)")
        if zero_line:
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
        ax.set_xlabel("τ (log scale; ∞ = logit matching)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}{': ' + panel if panel else ''}", fontsize=10)
        ax.grid(alpha=0.3)
    # Outside the panels (the figure grows for it): a legend inside would cover lines.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.set_figwidth(fig.get_figwidth() + 1.9)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig


def _distributions(trials: pd.DataFrame, samples: pd.DataFrame, quantity: str, ylabel: str, title: str, *,
                   teacher: bool) -> Any:
    if samples.empty or quantity not in samples:
        raise NoData(f"{quantity} needs samples.parquet (trials measured at their end)")
    done = completed(trials)
    panels = []
    for panel, group in settings(done):
        methods = _methods(group)
        trial_samples = samples[samples["role"] == "trial"]
        series: list[tuple[str, np.ndarray]] = []
        if teacher:
            keys = set(group["teacher_key"].dropna())
            values = samples[(samples["role"] == "teacher") & samples["key"].isin(keys)][quantity].to_numpy()
            if len(values):
                series.append(("teacher", values))
        for label, members in methods.groupby("method", sort=False):
            values = trial_samples[trial_samples["key"].isin(set(members["trial_key"]))][quantity].to_numpy()
            values = values[np.isfinite(values)]
            if len(values):
                series.append((label, values))
        if series:
            panels.append((panel, series))
    if not panels:
        raise NoData(f"no measured trial has {quantity}")
    fig, axes = _subplots(len(panels), width=max(5.0, 0.85 * max(len(s) for _, s in panels) + 1.5), height=4.0,
                          cols=2)
    for ax, (panel, series) in zip(axes, panels):
        parts = ax.violinplot([v for _, v in series], showmedians=True, widths=0.8)
        for k, body in enumerate(parts["bodies"]):
            body.set_facecolor(PALETTE[k % len(PALETTE)] if series[k][0] != "teacher" else "#999999")
            body.set_edgecolor("black")
            body.set_alpha(0.75)
        for line in ("cmedians", "cmins", "cmaxes", "cbars"):
            parts[line].set_color("black")
            parts[line].set_linewidth(1.0)
        parts["cmedians"].set_gid("medians")
        ax.set_xticks(range(1, len(series) + 1), [name for name, _ in series], rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}{': ' + panel if panel else ''}\n(each KD method at its largest α, seeds pooled)",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return fig


def logit_distance(trials: pd.DataFrame, samples: pd.DataFrame | None = None, **_: Any) -> Any:
    """Distributions of ||z_s - z_t||_2 over the test samples, per method."""
    return _distributions(trials, samples if samples is not None else pd.DataFrame(), "logit_distance",
                          "||z_s − z_t||₂ (logit units)", "Student-teacher logit distance (test set)", teacher=False)


def feature_norm(trials: pd.DataFrame, samples: pd.DataFrame | None = None, **_: Any) -> Any:
    """Distributions of the penultimate feature norm per method, the teacher's beside."""
    return _distributions(trials, samples if samples is not None else pd.DataFrame(), "feature_norm",
                          "||r||₂ (penultimate features)", "Penultimate feature norm (test set)", teacher=True)


def features(trials: pd.DataFrame, feats: pd.DataFrame | None = None, **_: Any) -> Any:
    """PCA (fitted on the teacher's features) of three classes' features: teacher, KL small/large tau, MSE."""
    if feats is None or feats.empty:
        raise NoData("features needs features.parquet (trials measured at their end)")
    done = paper_trials(completed(trials))
    rows = []
    for panel, group in settings(done):
        methods = _methods(group)
        teacher = feats[(feats["role"] == "teacher") & feats["key"].isin(set(group["teacher_key"].dropna()))]
        if teacher.empty:
            continue
        teacher = teacher[teacher["key"] == teacher["key"].iloc[0]]
        kl = methods[methods["loss"] == "kl"]
        picks = [("teacher", teacher)]
        for choice in ([kl["tau"].min(), kl["tau"].max()] if len(kl) else []):
            picks.append((method_label("kl", choice), _first_seed(feats, kl[kl["tau"] == choice])))
        mse = methods[methods["loss"] == "mse"]
        if len(mse):
            picks.append(("MSE", _first_seed(feats, mse)))
        picks = [(name, frame) for name, frame in picks if not frame.empty]
        if len(picks) > 1:
            rows.append((panel, picks))
    if not rows:
        raise NoData("features needs the teacher's and some trials' features")
    cols = max(len(p) for _, p in rows)
    fig, axes = pyplot().subplots(len(rows), cols, figsize=(3.6 * cols, 3.5 * len(rows)), squeeze=False,
                                  layout="constrained")
    for r, (panel, picks) in enumerate(rows):
        teacher_x = np.stack(picks[0][1]["features"].to_numpy())
        mean, basis = _pca(teacher_x)
        classes = sorted(pd.unique(picks[0][1]["label"]))
        for c, (name, frame) in enumerate(picks):
            ax = axes[r][c]
            x = np.stack(frame["features"].to_numpy())
            title = name
            if x.shape[1] == teacher_x.shape[1]:
                points = (x - mean) @ basis.T
            else:
                # Another width than the teacher's: its own axes (the shape of the clusters still compares).
                own_mean, own_basis = _pca(x)
                points = (x - own_mean) @ own_basis.T
                title += f" (own PCA, width {x.shape[1]})"
            for k, label in enumerate(classes):
                mask = frame["label"].to_numpy() == label
                ax.scatter(points[mask, 0], points[mask, 1], s=9, alpha=0.75, color=PALETTE[k % len(PALETTE)],
                           label=f"class {label}")
            ax.set_title(f"{title}{chr(10) + panel if panel else ''}", fontsize=9)
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
            ax.grid(alpha=0.3)
        for c in range(len(picks), cols):
            axes[r][c].set_visible(False)
    axes[0][0].legend(fontsize=8, markerscale=1.5)
    fig.suptitle("Penultimate features of three classes (PCA axes fitted on the teacher)", fontsize=11)
    return fig


def _first_seed(feats: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    members = members.sort_values("seed")
    for key in members["trial_key"]:
        frame = feats[(feats["role"] == "trial") & (feats["key"] == key)]
        if not frame.empty:
            return frame
    return feats.iloc[0:0]


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first two principal axes (2, F) of rows ``x``."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2]


def curves(trials: pd.DataFrame, epochs: pd.DataFrame | None = None, **_: Any) -> Any:
    """Train and test accuracy per epoch: mean and min-max band over seeds, per method."""
    if epochs is None or epochs.empty:
        raise NoData("curves needs epochs.parquet")
    panels = settings(completed(trials))
    fig, axes = _subplots(2 * len(panels), width=5.0, height=3.8, cols=2)
    for p, (panel, group) in enumerate(panels):
        methods = _methods(group)
        for which, ax in (("train_acc", axes[2 * p]), ("test_acc", axes[2 * p + 1])):
            for k, (label, members) in enumerate(methods.groupby("method", sort=False)):
                rows = epochs[epochs["trial_key"].isin(set(members["trial_key"]))]
                stats = rows.groupby("epoch")[which].agg(["mean", "min", "max"]).sort_index()
                colour = PALETTE[k % len(PALETTE)]
                ax.plot(stats.index, 100 * stats["mean"], color=colour, label=label)
                ax.fill_between(stats.index, 100 * stats["min"], 100 * stats["max"], color=colour, alpha=0.18,
                                linewidth=0)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(pyplot().MaxNLocator(integer=True))
            ax.set_ylabel(f"{'train' if which == 'train_acc' else 'test'} accuracy (%)")
            ax.set_title(f"{'Train' if which == 'train_acc' else 'Test'} accuracy{': ' + panel if panel else ''}",
                         fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.set_figwidth(fig.get_figwidth() + 1.5)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8,
               title="each KD method\nat its largest α", title_fontsize=8)
    return fig


def logit_losses(trials: pd.DataFrame, **_: Any) -> Any:
    """Test accuracy, logit distance and logit-mean gap per method of the loss family: the
    cells of the ``logit_losses`` table, mean and std over seeds; a row of panels per setting."""
    done = completed(trials)
    if done.empty or (len(paper_trials(done)) == len(done)):
        raise NoData("logit_losses needs trials beyond the paper's losses (dkd, dist, kl or mse with standardize)")
    tables = [t for t in logit_loss_tables(done, reference=False) if t.cells]
    units = {"test acc": "test accuracy (%)", "logit distance": "||z_s − z_t||₂ (logit units)",
             "logit-mean gap": "mean_k z_s − mean_k z_t (logit units)"}
    fig, axes = _subplots(len(COLUMNS) * len(tables), width=4.6, height=3.6 + 0.12 * max(len(t.rows) for t in tables),
                          cols=len(COLUMNS))
    for r, table in enumerate(tables):
        for c, column in enumerate(COLUMNS):
            ax = axes[r * len(COLUMNS) + c]
            rows = [row for row in table.rows if table.stats(row, column) is not None]
            for k, row in enumerate(rows):
                cell = table.stats(row, column)
                ax.errorbar([cell.mean], [k], xerr=[0.0 if math.isnan(cell.std) else cell.std], marker="o",
                            color=PALETTE[k % len(PALETTE)], capsize=3)
            ax.set_yticks(range(len(rows)), rows if c == 0 else [""] * len(rows), fontsize=8)
            ax.invert_yaxis()
            if column == "logit-mean gap":
                ax.axvline(0.0, color="grey", linewidth=0.8)
            ax.set_xlabel(units[column])
            noise = f"noise {table.setting['noise_type']} {table.setting['noise_rate']:g}"
            ax.set_title(f"{column}: {noise}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle("The logit-loss family (mean ± std over seeds)", fontsize=11)
    return fig


def data_size(trials: pd.DataFrame, **_: Any) -> Any:
    """Test accuracy (%) against the fraction of the training split the student saw: the cells of
    the ``data_size`` table, a line per method with its std over seeds; x on a log scale."""
    done = completed(trials)
    if FRACTION not in done.columns or done[FRACTION].dropna().nunique() < 2:
        raise NoData("data_size needs trials at two or more data fractions (sweeps/data_size.py)")
    tables = [t for t in data_size_tables(done, known={}) if len(t.columns) > 1]
    fig, axes = _subplots(len(tables), width=5.2, height=4.0)
    for ax, table in zip(axes, tables):
        xs = [float(c.split("=", 1)[1]) for c in table.columns]
        for k, row in enumerate(table.rows):
            cells = [(x, table.stats(row, c)) for x, c in zip(xs, table.columns) if table.stats(row, c) is not None]
            ax.errorbar([x for x, _ in cells], [c.mean for _, c in cells],
                        yerr=[0.0 if math.isnan(c.std) else c.std for _, c in cells], marker="o", capsize=3,
                        color=PALETTE[k % len(PALETTE)], label=row, linestyle="--" if row == "ce" else "-")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("fraction of the training split (student)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{table.setting['teacher']} -> {table.setting['student']}, noise "
                     f"{table.setting['noise_type']} {table.setting['noise_rate']:g}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy against training data (teacher on all of it)", fontsize=11)
    return fig


_DRAW: dict[str, Callable[..., Any]] = {
    "heatmap": heatmap, "tau": tau, "logit_distance": logit_distance, "feature_norm": feature_norm,
    "logit_mean_gap": logit_mean_gap, "features": features, "curves": curves, "logit_losses": logit_losses,
    "data_size": data_size,
}
_NEEDS = {"logit_distance": "samples", "feature_norm": "samples", "features": "feats", "curves": "epochs"}


def draw(name: str, results: str | os.PathLike | Storage) -> Any:
    """Figure ``name`` of the results in ``results`` (a sweep folder or a folder of them).

    Raises :class:`NoData` when the results hold nothing the figure shows.
    """
    if name not in _DRAW:
        raise ValueError(f"unknown figure {name!r}; figures: {', '.join(FIGURES)}")
    return _draw(name, _Inputs(results))


class _Inputs:
    """The Parquet inputs of the figures, each read once and only when a figure needs it."""

    def __init__(self, results: str | os.PathLike | Storage):
        self.results = open_storage(results)
        self.trials = load_trials(results)
        self._cache: dict[str, pd.DataFrame] = {}

    def get(self, what: str) -> pd.DataFrame:
        if what not in self._cache:
            loader = {"samples": lambda: load_samples(self.results, ["role", "key", "logit_distance", "feature_norm"]),
                      "feats": lambda: load_features(self.results), "epochs": lambda: load_epochs(self.results)}
            self._cache[what] = loader[what]()
        return self._cache[what]


def _draw(name: str, inputs: _Inputs) -> Any:
    extra = {_NEEDS[name]: inputs.get(_NEEDS[name])} if name in _NEEDS else {}
    return _DRAW[name](inputs.trials, **extra)


def write_figures(results: str | os.PathLike | Storage, out: str | os.PathLike | Storage,
                  names: tuple[str, ...] = FIGURES) -> list[Path | str]:
    """Draw ``names`` from ``results`` into ``out`` as ``NAME.png`` (150 dpi) and ``NAME.pdf``;
    return the files written. A figure the results cannot fill is skipped with an INFO line
    (``NAME skipped: why``) to this module's logger; one that fails to draw is left out with
    a WARNING (``NAME failed: ...``), and the others are still written.

    ``results`` and ``out`` are local folders, URIs (``s3://...``) or
    :class:`~kd_tune.storage.Storage`; each file is written whole (locally beside its place,
    for an object store to a local temporary file, then uploaded). The files returned are
    local Paths, or URIs (str) on an object store."""
    plt = pyplot("Agg")
    inputs = _Inputs(results)
    target = open_storage(out)
    written: list[Path | str] = []
    for name in names:
        try:
            fig = _draw(name, inputs)
        except NoData as why:
            log.info("%s skipped: %s", name, why)
            continue
        except Exception as err:  # a figure is a view; one failing must not lose the others
            log.warning("%s failed: %s: %s", name, type(err).__name__, err)
            continue
        try:
            for suffix in ("png", "pdf"):
                with target.writer(f"{name}.{suffix}") as handle:
                    fig.savefig(handle, format=suffix, dpi=150)
                written.append(located(target, f"{name}.{suffix}"))
        finally:
            plt.close(fig)
    return written
