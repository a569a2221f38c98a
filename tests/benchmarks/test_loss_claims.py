"""benchmarks/loss_claims.py judges with paper_claims' rule; benchmarks/loss_cost.py prints its ratios."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import claims as RULES
from kd_tune.cli.sweep import build_parser, expand_args, load_spec
from kd_tune.core.identity import trial_key
from kd_tune.results.trial_tables import ResultsWriter, trial_row

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


CLAIMS = load(ROOT / "benchmarks" / "loss_claims.py", "loss_claims")
COST = load(ROOT / "benchmarks" / "loss_cost.py", "loss_cost")
SPEC = load_spec(ROOT / "sweeps" / "logit_losses.py")


def configs():
    return expand_args(SPEC, build_parser(SPEC).parse_args(["--seeds", "4"]))


def accuracy(config, world: dict) -> float:
    """Test accuracy (points) of a config in ``world`` (family -> mean), spread 0.2 points per seed."""
    return world[CLAIMS.family(config.loss, config.standardize)] + 0.2 * (config.seed - 1.5)


def trials(world: dict) -> pd.DataFrame:
    return pd.DataFrame([{**c.table_values(), "status": "completed", "test_acc": accuracy(c, world) / 100,
                          "val_acc": 0.9} for c in configs()])


HOLDING = {"ce": 90.0, "kl": 92.0, "kl+ls": 94.0, "dkd": 95.0, "dist": 93.0, "mse": 91.0, "mse+std": 93.1}
FAILING = {"ce": 90.0, "kl": 95.0, "kl+ls": 92.0, "dkd": 91.0, "dist": 90.0, "mse": 91.0, "mse+std": 95.0}


def test_every_claim_holds_in_a_world_where_it_is_true():
    judged = CLAIMS.judge(trials(HOLDING))
    assert [(c.number, c.verdict) for c in judged] == [(n, CLAIMS.HOLDS) for n in ("1a", "1b", "2a", "2b", "3a", "3b")]
    assert "z = " in judged[0].numbers and "dkd tau=4 alpha=0.9" in judged[0].numbers


def test_no_claim_holds_in_a_world_where_each_is_false():
    assert {c.verdict for c in CLAIMS.judge(trials(FAILING))} == {"does not hold"}


def test_the_rule_is_paper_claims_and_too_few_seeds_are_not_distinguishable():
    assert RULES.verdict("beats", 1.0, 0.4) == "holds" and RULES.verdict("beats", 1.0, 0.6) == \
        RULES.UNCLEAR
    one_seed = trials(HOLDING)
    one_seed = one_seed[one_seed["seed"] == 0]
    assert {c.verdict for c in CLAIMS.judge(one_seed)} == {RULES.UNCLEAR}
    missing = trials(HOLDING)
    assert CLAIMS.judge(missing[missing["loss"] != "dkd"])[0].verdict == CLAIMS.NOT_JUDGED


def test_from_reads_a_sweep_folder(tmp_path, capsys):
    writer = ResultsWriter(tmp_path / "logit_losses")
    for c in configs():
        history = [{"epoch": 1, "test_acc": accuracy(c, HOLDING) / 100, "val_acc": 0.9}]
        writer.finish_trial(trial_row(sweep="logit_losses", trial_key=trial_key(c), trial_id="t", config=c,
                                      status="completed", history=history, teacher_key="t", teacher_test_acc=0.95,
                                      started_at=None))
    writer.flush()
    assert CLAIMS.main(["--from", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("claims_held=6/6")
    with pytest.raises(SystemExit):
        CLAIMS.main(["--from", str(tmp_path), "--epochs", "3"])


def test_loss_cost_prints_a_ratio_per_loss(capsys):
    assert COST.main(["--rounds", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("ce", "kl tau=4", "kl+ls tau=2", "dkd tau=4", "dist tau=4", "mse", "mse+std"):
        assert f"\n{name} " in out
    assert out.strip().splitlines()[-1].startswith("max_ratio=")
