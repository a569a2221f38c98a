"""RunConfig: validation reports every problem, dict round trips, presets, teacher config."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from kd_tune.core.config import PRESETS, ConfigError, RunConfig, field_types, preset


def test_digits_preset_is_valid_and_the_default():
    assert RunConfig() == PRESETS["digits"]
    RunConfig().validate()
    # The recipe chosen by convergence (benchmarks/convergence.py); no thread count: the runner's.
    cfg = PRESETS["digits"]
    assert (cfg.lr, cfg.epochs, cfg.schedule, cfg.teacher_epochs, cfg.threads) == (0.05, 60, "cosine", None, None)


def test_cpu_preset_is_mnist1d_with_the_pair_and_recipe_of_docs_cpu_preset():
    cfg = preset("cpu").validate()
    assert (cfg.dataset, cfg.teacher, cfg.student, cfg.val_size) == ("mnist1d", "cnn1d-25", "cnn1d-6", 500)
    assert (cfg.lr, cfg.epochs, cfg.schedule, cfg.data_samples, cfg.data_fraction) == (0.05, 80, "cosine", None, 1.0)


def test_data_samples_and_data_fraction_are_checked_and_the_teacher_trains_on_all_data():
    problems = RunConfig(data_samples=5, data_fraction=0.0).problems()
    assert any("data_samples=5" in p for p in problems) and any("data_fraction=0.0" in p for p in problems)
    assert RunConfig(data_fraction=1.5).problems() and not RunConfig(data_fraction=0.25).problems()
    student = preset("cpu", data_fraction=0.25, data_samples=20000)
    assert student.teacher_config().data_fraction == 1.0 and student.teacher_config().data_samples == 20000


def test_paper_preset_is_the_reference_recipe():
    cfg = preset("paper", data_dir="/data")
    cfg.validate()
    assert (cfg.dataset, cfg.teacher, cfg.student) == ("cifar100", "wrn-28-4", "wrn-16-2")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.nesterov) == (200, 128, 0.1, 0.9, True)
    assert (cfg.weight_decay, cfg.schedule, cfg.milestones, cfg.gamma) == (5e-4, "step", (100, 150), 0.1)


def test_validate_checks_fields_alone_and_reports_all_problems_at_once():
    cfg = RunConfig(tau=0.0, alpha=1.5, noise_rate=1.0, epochs=0, schedule="step", device="tpu", seed=-1,
                    noise_seed=-2, lr=-1.0, momentum=1.0, threads=0)
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    text = str(err.value)
    for word in ["tau=0.0", "alpha=1.5", "noise_rate=1.0", "epochs=0", "milestones", "device='tpu'", "seed=-1",
                 "noise_seed=-2", "lr=-1.0", "momentum=1.0", "threads=0"]:
        assert word in text, word
    # Names are the registries' business (kd_tune.train.validation): a field check knows none.
    assert RunConfig(loss="hinge", teacher="wrn-15-2", dataset="mnist").problems() == []


def test_the_config_module_is_a_leaf_without_torch():
    code = ("import sys, kd_tune.core.config; "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'kd_tune'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kd_tune', 'kd_tune.core', 'kd_tune.core.config']"


def test_field_types_read_optional_and_tuple_fields():
    types = field_types()
    assert types["teacher_epochs"] == (int, True) and types["data_dir"] == (str, True)
    assert types["threads"] == (int, True)
    assert types["tau"] == (float, False) and types["milestones"] == (tuple[int, ...], False)
    assert set(types) == set(RunConfig().to_dict())


def test_noise_rate_needs_a_noise_type():
    assert any("noise_type" in p for p in RunConfig(noise_rate=0.2).problems())
    assert RunConfig(noise_type="symmetric", noise_rate=0.2).problems() == []


def test_infinite_tau_is_valid_and_round_trips():
    cfg = RunConfig(tau=math.inf, milestones=(3, 5), schedule="step")
    cfg.validate()
    d = cfg.to_dict()
    assert d["tau"] == math.inf and d["milestones"] == [3, 5]
    assert RunConfig.from_dict(d) == cfg
    assert RunConfig.from_dict({**d, "tau": "inf"}) == cfg


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="temperature"):
        RunConfig.from_dict({"temperature": 4})


def test_teacher_config_is_a_ce_run_of_the_teacher():
    cfg = RunConfig(teacher="cnn-32", student="cnn-4", loss="kl", seed=5, teacher_seed=2, epochs=10,
                    teacher_epochs=30, noise_type="symmetric", noise_rate=0.4)
    t = cfg.teacher_config()
    assert (t.student, t.loss, t.seed, t.epochs, t.noise_rate) == ("cnn-32", "ce", 2, 30, 0.4)
    clean = cfg.replace(clean_teacher=True).teacher_config()
    assert (clean.noise_type, clean.noise_rate) == ("none", 0.0)
    assert cfg.replace(teacher_epochs=None).teacher_config().epochs == 10


def test_data_settings_follow_the_teachers_labels():
    noisy = RunConfig(noise_type="symmetric", noise_rate=0.4, loss="mse", seed=3)
    assert noisy.teacher_config().data_settings() == noisy.data_settings()
    clean = noisy.replace(clean_teacher=True).teacher_config().data_settings()
    assert clean == {**noisy.data_settings(), "noise_type": "none", "noise_rate": 0.0}


def test_loss_options_take_their_published_values_in_a_run_of_their_loss():
    dkd = RunConfig(loss="dkd")
    assert (dkd.dkd_alpha, dkd.dkd_beta, dkd.dkd_warmup, dkd.dist_beta, dkd.standardize) == (1.0, 8.0, 20, None, False)
    assert RunConfig(loss="dkd", dkd_beta=6) == RunConfig(loss="dkd", dkd_beta=6.0)
    dist = RunConfig(loss="dist")
    assert (dist.dist_beta, dist.dist_gamma, dist.dkd_beta) == (1.0, 1.0, None)
    assert RunConfig().loss_options() == {"standardize": False, "dkd_alpha": None, "dkd_beta": None,
                                          "dkd_warmup": None, "dist_beta": None, "dist_gamma": None}
    assert field_types()["dkd_warmup"] == (int, True) and field_types()["standardize"] == (bool, False)


def test_an_option_of_another_loss_and_bad_values_are_problems():
    problems = " ".join(RunConfig(loss="kl", dkd_beta=4.0, dist_gamma=1.0).problems())
    assert "dkd_beta=4.0 applies to loss dkd only" in problems and "dist_gamma=1.0 applies to loss dist" in problems
    assert "standardize=True applies to loss kl or mse only" in " ".join(RunConfig(loss="dkd",
                                                                                   standardize=True).problems())
    bad = " ".join(RunConfig(loss="dkd", dkd_alpha=-1.0, dkd_warmup=-2, tau=math.inf).problems())
    for word in ("dkd_alpha=-1.0", "dkd_warmup=-2", "tau=inf is the limit of kl only"):
        assert word in bad, word
    assert RunConfig(loss="kl", tau=math.inf, standardize=True).problems() == []
    assert RunConfig(loss="dist", dist_beta=0.0, dist_gamma=2.5).problems() == []


def test_a_teacher_run_unsets_the_students_loss_options():
    t = RunConfig(loss="dkd", dkd_beta=6.0).teacher_config()
    assert t.loss == "ce" and t.loss_options() == RunConfig(loss="ce").loss_options() and t.problems() == []
    assert RunConfig(loss="kl", standardize=True).teacher_config().standardize is False


def test_a_table_row_holds_null_where_the_loss_does_not_read_an_option_and_reads_back():
    for config in (RunConfig(), RunConfig(loss="dkd", dkd_beta=2.0), RunConfig(loss="dist"),
                   RunConfig(loss="mse", standardize=True), RunConfig(loss="ce")):
        row = config.table_values()
        for name in ("standardize", "dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma"):
            reads = {"standardize": ("kl", "mse")}.get(name, (name.split("_")[0],))
            assert (row[name] is None) == (config.loss not in reads), (config.loss, name)
        assert RunConfig.from_dict(row) == config
