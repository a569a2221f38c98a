"""Stored state is checked before a sweep uses it, end to end against a real `ray start` cluster.

A truncated teacher, a cache whose rows were reordered, random payload behind a valid
header, a truncated and a replaced cache file: the next sweep names each, makes it
again and publishes the very results an undamaged store gives; a CE sweep does not fail
on a damaged teacher it does not need; a teacher at chance accuracy is said under the
table.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from cifar_files import write_cifar10
from sweep_runs import run_sweep, sweep_cmd

from analysis import load_epochs, load_trials


def closing_summary(stdout: str) -> str:
    """What the command prints after the trials: the table, warnings and where results are."""
    return stdout[stdout.index("\nsweep finished"):]


@pytest.mark.slow
def test_a_damaged_teacher_and_caches_are_made_again_with_the_same_results(ray_cluster, tmp_path):
    write_cifar10(tmp_path / "data", per_batch=40, test_size=40)
    # Augmented data: one cache per seed, four caches to damage four ways.
    flags = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--val-size", "20", "--epochs", "1",
             "--teacher-epochs", "1", "--seeds", "4", "--losses", "mse", "--alphas", "1"]
    first = run_sweep(sweep_cmd(tmp_path, "first", *flags))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "teacher logits (float32): 4 view set(s) needed, 0 cached, 4 to compute" in first.stdout

    (teacher_dir,) = (tmp_path / "teachers").iterdir()
    teacher = teacher_dir / "teacher.pt"
    teacher.write_bytes(teacher.read_bytes()[:1000])
    caches = sorted((tmp_path / "teacher_logits").iterdir())
    assert len(caches) == 4
    rows = np.load(caches[0] / "train.npy", mmap_mode="r+")
    rows[:, [0, 1]] = rows[:, [1, 0]]
    rows.flush()
    del rows
    noise = np.random.default_rng(0).standard_normal((1, 180, 10), dtype=np.float32)
    np.save(caches[1] / "train.npy", noise)
    (caches[2] / "test.npy").write_bytes((caches[2] / "test.npy").read_bytes()[:200])
    np.save(caches[3] / "val.npy", np.zeros((3, 10), dtype=np.float32))
    damaged = [caches[0] / "train.npy", caches[1] / "train.npy", caches[2] / "test.npy", caches[3] / "val.npy"]

    second = run_sweep(sweep_cmd(tmp_path, "second", *flags))
    out = second.stdout
    assert second.returncode == 0, out[-3000:] + second.stderr[-3000:]
    assert f"warning: teacher file {teacher} cannot be read" in out and "; training it again" in out
    assert "teachers: 1 needed, 0 in the store, 1 to train" in out
    for path in damaged:
        assert f"warning: teacher-logit cache file {path} " in out
    assert out.count("; computing it again") == 4 * 2  # said in the stage, and again under the table
    assert "teacher logits (float32): 4 view set(s) needed, 0 cached, 4 to compute" in out
    assert f"warning: teacher file {teacher} cannot be read" in closing_summary(out)

    # The results are those of the undamaged store, to the last bit; nothing "diverged".
    before = load_trials(tmp_path / "first").set_index("trial_key").sort_index()
    after = load_trials(tmp_path / "second").set_index("trial_key").sort_index()
    assert list(after.index) == list(before.index) and set(after["status"]) == {"completed"}
    for column in ("train_loss", "test_acc", "test_logit_mse", "test_agreement"):
        assert after[column].tolist() == before[column].tolist(), column
    assert (load_epochs(tmp_path / "second")["teacher_forward_samples"] == 0).all()

    # A CE sweep does not need the teacher: a damaged one does not fail its trials.
    teacher.write_bytes(teacher.read_bytes()[:1000])
    ce = run_sweep(sweep_cmd(tmp_path, "ce", *flags[:-4], "--losses", "ce", "--seeds", "1"))
    assert ce.returncode == 0, ce.stdout[-3000:] + ce.stderr[-3000:]
    assert f"warning: teacher file {teacher} cannot be read" in ce.stdout
    assert "removed from the store (this sweep does not need it)" in ce.stdout
    assert "1 completed" in ce.stdout and not teacher.exists()


@pytest.mark.slow
def test_a_teacher_at_chance_is_said_under_the_table(ray_cluster, tmp_path):
    proc = run_sweep(sweep_cmd(tmp_path, "chance", "--lr", "1000", "--epochs", "1", "--seeds", "1",
                               "--losses", "mse", "--alphas", "1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warning = "warning: teacher cnn-8 ("
    assert warning in proc.stdout.split("\nsweep finished")[0]  # when the teacher stage ends
    summary = closing_summary(proc.stdout)
    assert "1 diverged" in summary
    # A teacher blown up by lr 1000 predicts one class (36 or 37 of the 360 test images,
    # as its float rounding falls): the line names chance, not a particular class.
    assert re.search(r"warning: teacher cnn-8 \(\w+\) is at chance: test acc 10\.(00|28)% on 360 images of 10 "
                     r"classes", summary), summary
