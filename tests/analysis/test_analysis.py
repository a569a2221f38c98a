"""analysis: Parquet results -> the paper's tables (CSV/Markdown/LaTeX) and its CLI."""
from __future__ import annotations

import io
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import TABLES, build_tables, load_trials, render

REPO = Path(__file__).resolve().parents[2]

# the schema the sweep writer produces (one row per trial)
SCHEMA = pa.schema([
    ("sweep", pa.string()), ("trial_key", pa.string()), ("trial_id", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("diverged_epoch", pa.int64()),
    ("dataset", pa.string()), ("data_dir", pa.string()), ("download", pa.bool_()),
    ("val_size", pa.float64()), ("split_seed", pa.int64()), ("noise_type", pa.string()),
    ("noise_rate", pa.float64()), ("noise_seed", pa.int64()), ("teacher", pa.string()),
    ("student", pa.string()), ("loss", pa.string()), ("tau", pa.float64()),
    ("alpha", pa.float64()), ("clean_teacher", pa.bool_()), ("teacher_seed", pa.int64()),
    ("teacher_epochs", pa.int64()), ("seed", pa.int64()), ("epochs", pa.int64()),
    ("batch_size", pa.int64()), ("lr", pa.float64()), ("momentum", pa.float64()),
    ("nesterov", pa.bool_()), ("weight_decay", pa.float64()), ("schedule", pa.string()),
    ("milestones", pa.list_(pa.int64())), ("gamma", pa.float64()), ("device", pa.string()),
    ("amp", pa.bool_()), ("deterministic", pa.bool_()), ("teacher_key", pa.string()),
    ("teacher_test_acc", pa.float64()), ("epoch", pa.int64()), ("train_loss", pa.float64()),
    ("train_acc", pa.float64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
    ("test_logit_mse", pa.float64()), ("test_agreement", pa.float64()),
    ("best_val_acc", pa.float64()), ("best_val_epoch", pa.int64()),
    ("test_acc_at_best_val", pa.float64()), ("train_time_s", pa.float64()),
    ("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC")),
    ("mlflow_run_id", pa.string()),
])
_T0 = datetime(2025, 1, 1, tzinfo=UTC)


def trial(loss="kl", tau=4.0, alpha=0.9, seed=0, acc=0.5, status="completed", *, sweep="s1",
          dataset="digits", teacher="cnn-32", student="cnn-4", noise_type="none",
          noise_rate=0.0) -> dict:
    """One row of trials.parquet with every column of the schema."""
    ok = status == "completed"
    return {
        "sweep": sweep, "trial_key": "set by write_sweep",
        "trial_id": f"t{seed}", "status": status, "error": None if ok else "boom",
        "diverged_epoch": 3 if status == "diverged" else None, "dataset": dataset,
        "data_dir": None, "download": False, "val_size": 180.0, "split_seed": 0,
        "noise_type": noise_type, "noise_rate": noise_rate, "noise_seed": 0,
        "teacher": teacher, "student": student, "loss": loss, "tau": tau, "alpha": alpha,
        "clean_teacher": False, "teacher_seed": 0, "teacher_epochs": None, "seed": seed,
        "epochs": 20, "batch_size": 64, "lr": 0.02, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "schedule": "cosine", "milestones": [], "gamma": 0.1,
        "device": "cpu", "amp": True, "deterministic": True, "teacher_key": "abc",
        "teacher_test_acc": 0.97, "epoch": 20 if ok else 3, "train_loss": 0.1,
        "train_acc": 0.99, "val_acc": float("nan"), "test_acc": acc if ok else float("nan"),
        "test_logit_mse": 1.0, "test_agreement": 0.9, "best_val_acc": 0.9,
        "best_val_epoch": 19, "test_acc_at_best_val": acc, "train_time_s": 4.5,
        "started_at": _T0, "finished_at": _T0, "mlflow_run_id": None,
    }


def write_sweep(folder: Path, rows: list[dict]) -> Path:
    """A sweep folder holding ``rows`` as a ``trials.parquet`` of the older layout (read as
    it is), each row keyed by its setting like the sweep's trial keys."""
    folder.mkdir(parents=True, exist_ok=True)
    setting = ("dataset", "teacher", "student", "loss", "tau", "alpha", "seed", "noise_type", "noise_rate")
    rows = [dict(r, trial_key="-".join(str(r[c]) for c in setting)) for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / "trials.parquet")
    return folder


def grid_rows(rng: np.random.Generator, **setting) -> list[dict]:
    """kl at tau 1, 4, 20, inf (written out of order), mse, ce; alphas 0.5 and 1; 3 seeds."""
    rows = []
    for seed in range(3):
        for tau in (math.inf, 20.0, 1.0, 4.0):
            for alpha in (1.0, 0.5):
                rows.append(trial("kl", tau, alpha, seed, rng.uniform(0.8, 0.99), **setting))
        for alpha in (0.5, 1.0):
            rows.append(trial("mse", 4.0, alpha, seed, rng.uniform(0.8, 0.99), **setting))
        rows.append(trial("ce", 4.0, 0.0, seed, rng.uniform(0.8, 0.99), **setting))
    return rows


def expected(df: pd.DataFrame, **where) -> tuple[float, float, int]:
    """Mean, sample std and n of test accuracy in percent, computed directly with pandas."""
    sel = df[df["status"] == "completed"]
    for col, value in where.items():
        sel = sel[sel[col] == value]
    pct = sel["test_acc"] * 100
    return pct.mean(), pct.std(ddof=1), len(pct)


def assert_cell(table, row, column, want):
    st = table.stats(row, column)
    assert st is not None, (row, column)
    mean, std, n = want
    assert st.n == n
    assert st.mean == pytest.approx(mean, rel=1e-12)
    if n > 1:
        assert st.std == pytest.approx(std, rel=1e-12)
    else:
        assert math.isnan(st.std)


@pytest.fixture
def grid(tmp_path):
    rows = grid_rows(np.random.default_rng(0))
    rows += [trial("kl", 1.0, 0.5, 7, status="diverged"), trial("kl", 1.0, 0.5, 8, status="diverged"),
             trial("mse", 4.0, 1.0, 9, status="failed")]
    sweep = write_sweep(tmp_path / "sweep", rows)
    return sweep, load_trials(sweep)


def test_tau_alpha_cells_are_the_seed_statistics(grid):
    _, df = grid
    assert len(df) == 3 * 11 + 3  # non-completed trials stay in the frame
    [t] = build_tables(df, "tau_alpha", reference=False)
    assert t.name == "tau_alpha" and t.title == "digits cnn-32 -> cnn-4, noise none 0.0"
    assert t.setting == {"dataset": "digits", "teacher": "cnn-32", "student": "cnn-4",
                         "noise_type": "none", "noise_rate": 0.0}
    assert t.rows == ["kl tau=1", "kl tau=4", "kl tau=20", "kl tau=inf", "mse", "ce"]  # numeric, inf last
    assert t.columns == ["alpha=0.5", "alpha=1"]
    for tau, label in ((1.0, "1"), (4.0, "4"), (20.0, "20"), (math.inf, "inf")):
        for alpha, col in ((0.5, "alpha=0.5"), (1.0, "alpha=1")):
            assert_cell(t, f"kl tau={label}", col, expected(df, loss="kl", tau=tau, alpha=alpha))
    for alpha, col in ((0.5, "alpha=0.5"), (1.0, "alpha=1")):
        assert_cell(t, "mse", col, expected(df, loss="mse", alpha=alpha))
        # CE has no alpha (stored as 0.0): the same CE statistics in every alpha column
        assert_cell(t, "ce", col, expected(df, loss="ce"))
    assert t.excluded == {"diverged": 2, "failed": 1}
    assert t.reference == {}


def test_one_seed_has_nan_std_and_missing_cells_are_absent(tmp_path):
    df = load_trials(write_sweep(tmp_path / "s", [trial("kl", 2.0, 0.5, acc=0.25),
                                                  trial("mse", 2.0, 1.0, acc=0.75)]))
    [t] = build_tables(df, "tau_alpha")
    st = t.stats("kl tau=2", "alpha=0.5")
    assert (st.mean, st.n) == (25.0, 1) and math.isnan(st.std)  # sample std undefined for n == 1
    assert t.stats("kl tau=2", "alpha=1") is None and t.stats("mse", "alpha=0.5") is None
    assert t.rows == ["kl tau=2", "mse"]  # no ce row without ce trials


def test_two_settings_give_two_tables(tmp_path):
    rng = np.random.default_rng(1)
    rows = grid_rows(rng) + grid_rows(rng, noise_type="symmetric", noise_rate=0.2)
    df = load_trials(write_sweep(tmp_path / "s", rows))
    tables = build_tables(df, "tau_alpha")
    assert [t.setting["noise_type"] for t in tables] == ["none", "symmetric"]
    assert tables[1].title == "digits cnn-32 -> cnn-4, noise symmetric 0.2"
    noisy = df[df["noise_type"] == "symmetric"]
    assert_cell(tables[1], "kl tau=inf", "alpha=1", expected(noisy, loss="kl", tau=math.inf, alpha=1.0))


def test_loss_table(tmp_path):
    rng = np.random.default_rng(2)
    rows = grid_rows(rng) + grid_rows(rng, teacher="cnn-16", student="mlp-32")
    df = load_trials(write_sweep(tmp_path / "s", rows))
    [t] = build_tables(df, "loss")
    assert t.setting == {"dataset": "digits", "noise_type": "none", "noise_rate": 0.0}
    assert t.rows == ["cnn-16 -> mlp-32", "cnn-32 -> cnn-4"]
    assert t.columns == ["ce", "kl tau=1 alpha=0.5", "kl tau=1 alpha=1", "kl tau=4 alpha=0.5",
                         "kl tau=4 alpha=1", "kl tau=20 alpha=0.5", "kl tau=20 alpha=1",
                         "kl tau=inf alpha=0.5", "kl tau=inf alpha=1",
                         "mse alpha=0.5", "mse alpha=1"]
    pair = dict(teacher="cnn-16", student="mlp-32")
    assert_cell(t, "cnn-16 -> mlp-32", "ce", expected(df, loss="ce", **pair))
    assert_cell(t, "cnn-16 -> mlp-32", "kl tau=inf alpha=0.5",
                expected(df, loss="kl", tau=math.inf, alpha=0.5, **pair))
    assert_cell(t, "cnn-32 -> cnn-4", "mse alpha=1",
                expected(df, loss="mse", alpha=1.0, teacher="cnn-32", student="cnn-4"))


def test_noise_tables_share_the_clean_runs(tmp_path):
    rows = []
    for seed in range(2):
        for noise_type, rate in (("none", 0.0), ("symmetric", 0.2), ("symmetric", 0.4),
                                 ("asymmetric", 0.2)):
            for loss, tau, alpha in (("ce", 4.0, 0.0), ("kl", math.inf, 1.0), ("mse", 4.0, 1.0)):
                rows.append(trial(loss, tau, alpha, seed, 0.5 + 0.1 * seed + rate / 2 + len(loss) / 100,
                                  noise_type=noise_type, noise_rate=rate))
    rows.append(trial("ce", 4.0, 0.0, 5, status="failed", noise_type="none"))
    df = load_trials(write_sweep(tmp_path / "s", rows))
    tables = build_tables(df, "noise")
    assert [t.setting["noise_type"] for t in tables] == ["asymmetric", "symmetric"]  # no "none" table
    asym, sym = tables
    assert sym.rows == ["ce", "kl tau=inf alpha=1", "mse alpha=1"]
    assert sym.columns == ["rate=0", "rate=0.2", "rate=0.4"] and asym.columns == ["rate=0", "rate=0.2"]
    for t in tables:  # the clean baseline is the rate=0 column of both
        assert_cell(t, "ce", "rate=0", expected(df, loss="ce", noise_type="none"))
        assert t.excluded == {"failed": 1}
    assert_cell(sym, "kl tau=inf alpha=1", "rate=0.4",
                expected(df, loss="kl", noise_type="symmetric", noise_rate=0.4))
    assert_cell(asym, "mse alpha=1", "rate=0.2", expected(df, loss="mse", noise_type="asymmetric"))

    clean = load_trials(write_sweep(tmp_path / "clean", [r for r in rows if r["noise_type"] == "none"]))
    [only] = build_tables(clean, "noise")
    assert only.setting["noise_type"] == "none" and only.columns == ["rate=0"]


def test_csv_round_trip_is_lossless(grid, tmp_path):
    _, df = grid
    tables = build_tables(df, "tau_alpha", reference=False)
    text = render(tables, "csv")
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns[:6]) == ["dataset", "teacher", "student", "noise_type", "noise_rate", "row"]
    assert list(back.columns[6:]) == ["alpha=0.5 mean", "alpha=0.5 std", "alpha=0.5 n",
                                      "alpha=1 mean", "alpha=1 std", "alpha=1 n"]
    assert list(back["row"]) == ["kl tau=1", "kl tau=4", "kl tau=20", "kl tau=inf", "mse", "ce"]
    back = back.set_index("row")
    for row, where in (("kl tau=inf", dict(loss="kl", tau=math.inf)), ("mse", dict(loss="mse")),
                       ("ce", dict(loss="ce"))):
        for alpha, col in ((0.5, "alpha=0.5"), (1.0, "alpha=1")):
            sel = dict(where, alpha=alpha) if row != "ce" else where
            mean, std, n = expected(df, **sel)
            assert back.loc[row, f"{col} mean"] == pytest.approx(mean, rel=1e-13)  # not rounded
            assert back.loc[row, f"{col} std"] == pytest.approx(std, rel=1e-13)
            assert back.loc[row, f"{col} n"] == n
    # full precision: the text holds the exact float the table holds
    st = tables[0].stats("mse", "alpha=1")
    assert back.loc["mse", "alpha=1 mean"] == st.mean and repr(st.mean) in text


def tiny_tables(tmp_path, reference=True):
    rows = [trial("kl", math.inf, 1.0, 0, 0.9601), trial("kl", math.inf, 1.0, 1, 0.9685),
            trial("kl", 3.0, 1.0, 0, 0.5), trial("kl", 3.0, 1.0, 1, status="diverged"),
            trial("ce", 3.0, 0.0, 0, 0.8)]
    for r in rows:
        r.update(dataset="cifar100", teacher="wrn-28-4", student="wrn-16-2")
    return build_tables(load_trials(write_sweep(tmp_path / "tiny", rows)), "tau_alpha",
                        reference=reference)


def test_markdown_and_latex_of_a_tiny_table(tmp_path):
    tables = tiny_tables(tmp_path)
    assert render(tables, "md") == (
        "### tau_alpha: cifar100 wrn-28-4 -> wrn-16-2, noise none 0.0\n"
        "\n"
        "| method | alpha=1 |\n"
        "|:---|---:|\n"
        "| kl tau=3 | 50.00 (1) [74.24] |\n"
        "| kl tau=inf | 96.43 ± 0.59 (2) [75.51] |\n"
        "| ce | 80.00 (1) [72.56] |\n"
        "\n"
        "Test accuracy (%) at the last epoch: mean ± std (n seeds), completed trials; [published value]\n"
        "\n"
        "Teacher: wrn-28-4: test 97.00%\n"
        "\n"
        "excluded: 1 diverged\n")
    assert render(tables, "latex") == (
        "\\begin{table}[htbp]\n"
        "\\centering\n"
        "\\caption{tau\\_alpha: cifar100 wrn-28-4 $\\rightarrow$ wrn-16-2, noise none 0.0. "
        "Test accuracy (\\%) at the last epoch: mean $\\pm$ std (n seeds), completed trials; "
        "[published value]; Teacher: wrn-28-4: test 97.00\\%; excluded: 1 diverged.}\n"
        "\\begin{tabular}{lr}\n"
        "\\toprule\n"
        "method & alpha=1 \\\\\n"
        "\\midrule\n"
        "kl tau=3 & 50.00 (1) [74.24] \\\\\n"
        "kl tau=inf & 96.43 $\\pm$ 0.59 (2) [75.51] \\\\\n"
        "ce & 80.00 (1) [72.56] \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n")
    plain = render(tiny_tables(tmp_path, reference=False), "md")
    assert "| kl tau=inf | 96.43 ± 0.59 (2) |" in plain and "[" not in plain


def test_reference_values_attach_to_clean_cifar100_cells(tmp_path):
    rows = [trial("kl", 3.0, 1.0, s, 0.74) for s in range(2)]
    rows += [trial("kl", 3.0, 0.5, 0, 0.74), trial("mse", 3.0, 1.0, 0, 0.75), trial("ce", 3.0, 0.0, 0, 0.72)]
    rows += [dict(r, noise_type="symmetric", noise_rate=0.2) for r in rows]
    for r in rows:
        r.update(dataset="cifar100", teacher="wrn-28-4", student="wrn-16-2")
    df = load_trials(write_sweep(tmp_path / "c100", rows))
    clean, noisy = build_tables(df, "tau_alpha")
    assert clean.reference[("kl tau=3", "alpha=1")] == 74.24  # precursor table 12 = IJCAI paper
    assert clean.reference[("kl tau=3", "alpha=0.5")] == 74.18
    assert clean.reference[("ce", "alpha=1")] == clean.reference[("ce", "alpha=0.5")] == 72.56
    assert ("mse", "alpha=1") not in clean.reference
    assert noisy.reference == {}  # published numbers are for clean labels
    assert build_tables(df, "tau_alpha", reference=False)[0].reference == {}
    [loss_clean, _] = build_tables(df, "loss")
    assert loss_clean.reference[("wrn-28-4 -> wrn-16-2", "kl tau=3 alpha=1")] == 74.24
    assert loss_clean.reference[("wrn-28-4 -> wrn-16-2", "ce")] == 72.56
    [noise] = build_tables(df, "noise")
    assert noise.reference == {("kl tau=3 alpha=0.5", "rate=0"): 74.18,
                               ("kl tau=3 alpha=1", "rate=0"): 74.24, ("ce", "rate=0"): 72.56}
    back = pd.read_csv(io.StringIO(render([clean], "csv"))).set_index("row")
    assert back.loc["kl tau=3", "alpha=1 paper"] == 74.24
    assert back.loc["kl tau=3", "alpha=1 mean"] == pytest.approx(74.0, rel=1e-13)


def test_the_package_carries_its_reference_numbers():
    rows = analysis.load_reference()
    grid = [r for r in rows if r["table"] == "tau_alpha"]
    assert len(grid) == 50 and {r["tau"] for r in grid} == {"1", "3", "5", "20", "inf"}
    assert analysis.reference_value("cifar100", "wrn-28-4", "wrn-16-2", "kl", math.inf, 1.0) == 75.51
    assert analysis.reference_value("cifar100", "wrn-16-4", "wrn-16-2", "kl", 3.0, 1.0) == 74.84
    assert analysis.reference_value("cifar100", "anything", "wrn-40-2", "ce") == 75.80
    assert analysis.reference_value("digits", "wrn-28-4", "wrn-16-2", "kl", 3.0, 1.0) is None


def test_a_folder_of_sweeps_is_read_together(tmp_path):
    rng = np.random.default_rng(3)
    a = grid_rows(rng, sweep="a")
    b = [dict(r, sweep="b", seed=r["seed"] + 10) for r in grid_rows(rng, sweep="b")]
    write_sweep(tmp_path / "all" / "a", a)
    write_sweep(tmp_path / "all" / "b", b)
    df = load_trials(tmp_path / "all")
    assert len(df) == len(a) + len(b) and set(df["sweep"]) == {"a", "b"}
    [t] = build_tables(df, "tau_alpha")
    assert_cell(t, "kl tau=4", "alpha=0.5", expected(df, loss="kl", tau=4.0, alpha=0.5))
    assert t.stats("kl tau=4", "alpha=0.5").n == 6


def test_bad_inputs_raise(tmp_path, grid):
    _, df = grid
    with pytest.raises(ValueError, match="unknown table"):
        build_tables(df, "nope")
    with pytest.raises(ValueError, match="test_acc"):
        build_tables(df.drop(columns=["test_acc"]), "loss")
    (tmp_path / "empty" / "not_a_sweep").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no sweep results"):
        load_trials(tmp_path / "empty")
    with pytest.raises(ValueError, match="one table kind"):
        render(build_tables(df, "loss") + build_tables(df, "noise"), "csv")
    assert TABLES == ("tau_alpha", "loss", "noise", "search", "pairs", "sequential", "noisy_teacher", "logit_losses",
                      "data_size")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_the_table_file(grid, tmp_path):
    sweep, df = grid
    out = tmp_path / "out" / "tau_alpha.csv"
    proc = run_cli(sweep, "--format", "csv", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and out.read_text() == render(build_tables(df, "tau_alpha"), "csv")
    assert [p.name for p in out.parent.iterdir()] == ["tau_alpha.csv"]  # no temp file left


def test_cli_rejects_bad_input(tmp_path, capsys):
    from analysis.__main__ import main

    proc = run_cli(tmp_path / "missing")  # once as a user runs it; the other cases in this process
    assert proc.returncode == 2 and "missing: no such file or directory" in proc.stderr
    write_sweep(tmp_path / "s", [trial()])
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "s"), "--table", "bogus"])
    assert exc.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    damaged = tmp_path / "s" / "trials.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"{damaged} is damaged" in err and "python -m kd_tune.recover rebuild" in err


def test_cli_in_process(tmp_path, capsys):
    from analysis.__main__ import main

    write_sweep(tmp_path / "bad", [trial(status="failed"), trial(status="diverged")])
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "bad")])
    assert exc.value.code == 2
    assert "no completed trials fit the tau_alpha table" in capsys.readouterr().err
    write_sweep(tmp_path / "ok", [trial(), trial(seed=1, acc=0.7)])
    assert main([str(tmp_path / "ok"), "--table", "noise", "--format", "latex", "--no-reference"]) == 0
    assert "kl tau=4 alpha=0.9 & 60.00 $\\pm$ 14.14 (2) \\\\" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert all(f"{name}:" in help_text for name in TABLES) and "diverged/failed" in help_text
