"""Identities: trial, teacher, data and cache keys, and the weights digest."""
from __future__ import annotations

import hashlib
import json
import math

import pytest

from kd_tune.core.config import LOSS_OPTIONS, PAPER_PRESET, RunConfig, preset
from kd_tune.core.identity import (
    _ADDED_FIELDS,
    TEACHER_KEY_FORMAT,
    cache_key,
    config_hash,
    data_key,
    identity_values,
    setting_key,
    teacher_key,
    trial_key,
)
from kd_tune.plan.search_space import expand
from kd_tune.plan.teacher_dag import teacher_dag

BASE = RunConfig()
STUDENT = RunConfig(teacher="cnn-8", student="cnn-4", loss="kl", tau=4.0, alpha=0.9, epochs=1, device="cpu")
NOISY = dict(noise_type="symmetric", noise_rate=0.4)

# trial_key(RunConfig()) computed once (sha256 of the sorted, compact JSON of every field
# but device and threads, first 16 hex digits). A change of the hashing or of the config's
# fields changes every stored key (Parquet rows, MLflow runs, resumes): it must be deliberate.
# (Changed deliberately with the cpu preset's recipe, lr 0.05 and 60 epochs.)
DEFAULT_TRIAL_KEY = "73c8890bcf7da59c"
# The key of the recipe before (lr 0.02, 20 epochs), from before the threads field: a
# config without a thread count keeps its key, so results of other presets keep theirs.
OLD_RECIPE_TRIAL_KEY = "ade55a634845a424"


# -- trial keys --------------------------------------------------------------------------


def test_trial_key_of_the_default_config_is_pinned():
    assert trial_key(RunConfig()) == DEFAULT_TRIAL_KEY


def test_trial_key_is_the_sha256_of_the_sorted_json_without_device_and_threads():
    values = RunConfig().to_dict()
    del values["device"], values["threads"]
    for name, left_out in _ADDED_FIELDS.items():  # fields added later, at their old value
        assert values.pop(name) == left_out
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    assert trial_key(RunConfig()) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_trial_key_is_stable_for_equal_configs_and_differs_otherwise():
    a = RunConfig(tau=3.0, alpha=0.5, seed=2)
    b = RunConfig.from_dict(a.to_dict())
    assert a is not b and trial_key(a) == trial_key(b)
    assert len(trial_key(a)) == 16 and int(trial_key(a), 16) >= 0
    others = [a.replace(seed=3), a.replace(tau=4.0), a.replace(alpha=0.6), a.replace(student="cnn-8"),
              a.replace(noise_type="symmetric", noise_rate=0.2), a.replace(milestones=(5,))]
    keys = {trial_key(o) for o in others} | {trial_key(a)}
    assert len(keys) == len(others) + 1


def test_device_is_not_part_of_the_trial_key():
    keys = {trial_key(RunConfig(device=d)) for d in ("auto", "cpu", "cuda", "cuda:1")}
    assert keys == {DEFAULT_TRIAL_KEY}


def test_the_thread_count_is_not_part_of_the_trial_or_setting_key():
    assert {trial_key(RunConfig(threads=t)) for t in (None, 1, 2, 16)} == {DEFAULT_TRIAL_KEY}
    assert trial_key(RunConfig(lr=0.02, epochs=20, threads=1)) == OLD_RECIPE_TRIAL_KEY
    assert setting_key(RunConfig(threads=1)) == setting_key(RunConfig(threads=4)) == setting_key(RunConfig())


def test_infinite_tau_has_a_key_of_its_own():
    inf_key = trial_key(RunConfig(tau=math.inf))
    assert inf_key == trial_key(RunConfig(tau=float("inf")))
    assert inf_key != trial_key(RunConfig(tau=1e308))
    assert inf_key != DEFAULT_TRIAL_KEY
    # inf is spelled out, so the hashed text is valid JSON
    assert config_hash({"tau": math.inf}) == hashlib.sha256(b'{"tau":"inf"}').hexdigest()[:16]
    assert config_hash({"tau": -math.inf}) == hashlib.sha256(b'{"tau":"-inf"}').hexdigest()[:16]


def test_config_hash_ignores_key_order_and_sees_nested_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1, "b": [1, 2]}) != config_hash({"a": 1, "b": [2, 1]})
    assert config_hash({"a": 1}, length=8) == config_hash({"a": 1})[:8]
    assert config_hash({"m": (1, 2)}) == config_hash({"m": [1, 2]})


def test_equal_configs_with_int_and_float_values_share_a_trial_key():
    assert RunConfig(alpha=1) == RunConfig(alpha=1.0)
    assert trial_key(RunConfig(alpha=1)) == trial_key(RunConfig(alpha=1.0))
    clean = expand(BASE, [{"noise_type": ["symmetric"], "noise_rate": [0]}])[0]
    assert clean == BASE
    assert trial_key(clean) == trial_key(BASE)


# -- teacher_key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"loss": "mse"}, {"loss": "ce"}, {"tau": math.inf}, {"alpha": 0.1}, {"seed": 7}, {"student": "mlp-32"},
        {"device": "cuda:1"}, {"device": "auto"}, {"download": True}, {"threads": 1}, {"threads": 2},
        {"loss": "mse", "tau": 1.0, "alpha": 1.0, "seed": 3, "student": "cnn-16", "device": "cuda"},
    ],
)
def test_students_that_differ_only_in_student_settings_share_the_teacher(change):
    assert teacher_key(STUDENT.replace(**change)) == teacher_key(STUDENT)


@pytest.mark.parametrize(
    "change",
    [
        {"teacher": "cnn-16"}, {"teacher_seed": 1}, {"teacher_epochs": 2}, {"epochs": 2}, NOISY,
        {**NOISY, "noise_rate": 0.2}, {**NOISY, "noise_type": "asymmetric"}, {"split_seed": 1}, {"val_size": 0},
        {"lr": 0.1}, {"batch_size": 32}, {"dataset": "cifar10", "data_dir": "/data"},
    ],
)
def test_what_changes_the_teacher_changes_the_key(change):
    assert teacher_key(STUDENT.replace(**change)) != teacher_key(STUDENT)


def test_teacher_epochs_decide_over_the_students_epochs():
    fixed = STUDENT.replace(teacher_epochs=5)
    assert teacher_key(fixed.replace(epochs=1)) == teacher_key(fixed.replace(epochs=9))
    # teacher_epochs=None means "same as epochs": equal to naming that number
    assert teacher_key(STUDENT.replace(epochs=5)) == teacher_key(fixed)
    assert teacher_key(STUDENT.replace(epochs=5)) != teacher_key(STUDENT.replace(epochs=6))


def test_a_clean_teacher_is_shared_by_clean_and_noisy_students():
    clean = STUDENT
    noisy = STUDENT.replace(**NOISY)
    assert teacher_key(noisy) != teacher_key(clean)  # by default the teacher sees the noisy labels
    assert teacher_key(noisy.replace(clean_teacher=True)) == teacher_key(clean)
    assert teacher_key(clean.replace(clean_teacher=True)) == teacher_key(clean)
    asym = STUDENT.replace(noise_type="asymmetric", noise_rate=0.2, clean_teacher=True)
    assert teacher_key(asym) == teacher_key(clean)


def test_the_noise_seed_does_not_matter_to_a_clean_teacher():
    noisy = STUDENT.replace(**NOISY, noise_seed=1, clean_teacher=True)
    assert noisy.teacher_config().noise_type == "none"
    assert teacher_key(noisy) == teacher_key(STUDENT)


def test_teacher_key_is_the_hash_of_the_teacher_run():
    values = STUDENT.teacher_config().to_dict()
    for name in ("teacher", "clean_teacher", "teacher_seed", "teacher_epochs", "device", "threads", "download",
                 *_ADDED_FIELDS):
        del values[name]
    assert values["student"] == "cnn-8" and values["loss"] == "ce" and values["seed"] == STUDENT.teacher_seed
    assert teacher_key(STUDENT) == config_hash({**values, "store_format": TEACHER_KEY_FORMAT})
    assert len(teacher_key(STUDENT)) == 16


# -- data and cache keys -----------------------------------------------------------------


def test_data_key_follows_the_data_settings_alone():
    assert data_key(STUDENT) == data_key(STUDENT.replace(loss="mse", seed=4, student="mlp-8", download=True))
    for change in ({"val_size": 10}, {"split_seed": 1}, NOISY, {"dataset": "cifar10", "data_dir": "/d"}):
        assert data_key(STUDENT.replace(**change)) != data_key(STUDENT), change


def test_cache_key_changes_with_what_the_logits_depend_on():
    config = RunConfig(dataset="cifar10", data_dir="/d", epochs=3, batch_size=32, seed=0)
    teacher = teacher_key(config)
    base = cache_key(config, teacher, augment=True)
    variants = {
        "teacher": cache_key(config, teacher_key(config.replace(teacher_seed=1)), augment=True),
        "label noise": cache_key(config.replace(**NOISY), teacher, augment=True),
        "split": cache_key(config.replace(val_size=10), teacher, augment=True),
        "augmentation seed": cache_key(config.replace(seed=1), teacher, augment=True),
        "epochs": cache_key(config.replace(epochs=4), teacher, augment=True),
        "batch size": cache_key(config.replace(batch_size=64), teacher, augment=True),
        "augmentation": cache_key(config, teacher, augment=False),
        "amp": cache_key(config.replace(amp=not config.amp), teacher, augment=True),
        "dtype": cache_key(config, teacher, augment=True, dtype="float16"),
    }
    assert len({base, *variants.values()}) == len(variants) + 1
    # what only the student does leaves the views alone
    assert cache_key(config.replace(loss="mse", tau=2.0, alpha=0.3, lr=0.5, student="cnn-8"), teacher,
                     augment=True) == base
    with pytest.raises(ValueError, match="bfloat16"):
        cache_key(config, teacher, augment=True, dtype="bfloat16")


def test_without_augmentation_every_seed_and_length_shares_one_cache():
    teacher = teacher_key(STUDENT)
    key = cache_key(STUDENT, teacher, augment=False)
    assert cache_key(STUDENT.replace(seed=5, epochs=9, batch_size=16), teacher, augment=False) == key


def test_weights_digest_follows_the_weights():
    import torch

    from kd_tune.core.identity import weights_digest
    from kd_tune.models import build

    torch.manual_seed(0)
    model = build("cnn-4", num_classes=10, in_channels=1)
    copy = build("cnn-4", num_classes=10, in_channels=1)
    copy.load_state_dict(model.state_dict())
    assert weights_digest(copy) == weights_digest(model) == weights_digest(model.state_dict())
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1e-7
    assert weights_digest(copy) != weights_digest(model)
    assert len(weights_digest(model)) == 64


# -- fields added after keys were first stored ------------------------------------------------

# Keys computed with the code from before the loss options (standardize, dkd_*, dist_*)
# existed: every kl, mse and ce config keeps its trial, setting, teacher and cache keys, and
# a chain's step keeps its key. (trial, setting, teacher, cache with augmentation, last node.)
PINNED_BEFORE_LOSS_OPTIONS = {
    "mse_noisy": (RunConfig(loss="mse", tau=1.0, alpha=0.5, noise_type="symmetric", noise_rate=0.4, seed=2),
                  ("335adfc97d3269b6", "da895e1da14951a2", "36f8eb8bfffb0529", "bed01a2758bc4ec9",
                   "36f8eb8bfffb0529")),
    "ce": (RunConfig(loss="ce", tau=1.0, alpha=0.0, seed=1),
           ("cbac54caba515731", "ca14fe9adef07b89", "4a938d7c7eea86d3", "605f160dc725022b", "4a938d7c7eea86d3")),
    "kl_inf": (RunConfig(loss="kl", tau=math.inf, alpha=1.0, student="cnn-8"),
               ("97c4620886da5f0c", "c7443da36627a128", "4a938d7c7eea86d3", "6369b2c48ef4ddb4",
                "4a938d7c7eea86d3")),
    "paper": (PAPER_PRESET.replace(data_dir="/data", tau=3.0, alpha=1.0),
              ("8618d8abe95a9fb6", "4eb94a80f156a406", "05d377d4496ac1a9", "f65e319dbeb29b44", "05d377d4496ac1a9")),
    "chain": (RunConfig(teacher="cnn-32>cnn-8", loss="kl", tau=3.0, alpha=0.9, epochs=5),
              ("1fbf034b0271acad", "591011f7e81bd0aa", "192d1995115a7904", "67b186e8fd42560b",
               "4a00ec44c4782e8a")),
}


@pytest.mark.parametrize("name", sorted(PINNED_BEFORE_LOSS_OPTIONS))
def test_configs_from_before_the_loss_options_keep_every_key(name):
    config, keys = PINNED_BEFORE_LOSS_OPTIONS[name]
    teacher = teacher_key(config)
    got = (trial_key(config), setting_key(config), teacher, cache_key(config, teacher, augment=True),
           teacher_dag(config)[-1].key)
    assert got == keys


def test_added_fields_are_the_loss_options_at_their_unset_values_and_the_data_size_fields():
    assert _ADDED_FIELDS == {**{name: option.unset for name, option in LOSS_OPTIONS.items()},
                             "data_samples": None, "data_fraction": 1.0}
    assert set(identity_values(RunConfig())) == set(RunConfig().to_dict()) - set(_ADDED_FIELDS)
    dkd = identity_values(RunConfig(loss="dkd"))
    assert (dkd["dkd_alpha"], dkd["dkd_beta"], dkd["dkd_warmup"]) == (1.0, 8.0, 20) and "standardize" not in dkd
    assert identity_values(RunConfig(standardize=True))["standardize"] is True


def test_the_new_losses_have_keys_of_their_own_and_share_the_teacher():
    kl = STUDENT
    variants = [kl.replace(standardize=True), kl.replace(loss="dkd"), kl.replace(loss="dkd", dkd_beta=6.0),
                kl.replace(loss="dkd", dkd_warmup=0), kl.replace(loss="dist"), kl.replace(loss="dist", dist_beta=2.0),
                kl.replace(loss="mse", tau=1.0), kl.replace(loss="mse", tau=1.0, standardize=True)]
    assert len({trial_key(c) for c in [kl, *variants]}) == len(variants) + 1
    assert {teacher_key(c) for c in variants} == {teacher_key(kl)}
    assert {cache_key(c, teacher_key(c), augment=True) for c in variants} == {cache_key(kl, teacher_key(kl),
                                                                                        augment=True)}
    # a dkd run given its published values is the dkd run: one config, one key
    published = kl.replace(loss="dkd", dkd_alpha=1, dkd_beta=8, dkd_warmup=20)
    assert trial_key(published) == trial_key(kl.replace(loss="dkd"))


# A digits config's keys as main gave them before data_samples and data_fraction existed (computed
# on main with the same config): trial, data, teacher and cache keys are unchanged.
MAIN_DIGITS = RunConfig(noise_type="symmetric", noise_rate=0.4, loss="mse", alpha=1.0, seed=2)


def test_keys_from_before_the_data_size_fields_are_unchanged():
    teacher = teacher_key(MAIN_DIGITS)
    assert (trial_key(MAIN_DIGITS), data_key(MAIN_DIGITS), teacher, cache_key(MAIN_DIGITS, teacher, augment=False)) \
        == ("d1aaa43c999cac55", "d437b824498d1a47", "36f8eb8bfffb0529", "8b948c0cfb6a26ca")


def test_data_size_fields_enter_the_keys_only_away_from_their_defaults():
    cpu = preset("cpu")
    bigger, fewer = cpu.replace(data_samples=20000), cpu.replace(data_fraction=0.25)
    assert len({trial_key(c) for c in (cpu, bigger, fewer)}) == 3
    assert len({data_key(c) for c in (cpu, bigger, fewer)}) == 3
    # the teacher trains on all the data: a fraction keeps the teacher, a larger set does not
    assert teacher_key(fewer) == teacher_key(cpu) != teacher_key(bigger)


def test_a_result_row_from_before_the_data_size_fields_keeps_its_key():
    row = {**MAIN_DIGITS.to_dict(), "data_samples": None, "data_fraction": None}  # nulls of an old Parquet part
    assert trial_key(RunConfig.from_dict(row)) == "d1aaa43c999cac55"
