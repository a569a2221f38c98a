"""SweepOptions: every problem with how and where a sweep runs, found before anything starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from kd_tune.sweep.options import CACHE_MODES, SweepOptions


def test_defaults_are_valid_and_storage_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = SweepOptions(name="s", storage=Path("results"))
    assert options.problems() == []
    assert options.storage == tmp_path / "results"
    assert options.sweep_dir.local_path == tmp_path / "results" / "s"
    assert options.noise_dir.local_path == tmp_path / "results" / "s" / "noise"
    assert options.driver_dir == tmp_path / "results" / "s"  # the driver's files are in the sweep folder


def test_an_object_store_keeps_its_uri_and_the_driver_a_folder_of_its_own(tmp_path):
    options = SweepOptions(name="s", storage="s3://bucket/prefix/", storage_endpoint="http://127.0.0.1:9",
                           local_cache=str(tmp_path))
    assert options.storage == "s3://bucket/prefix" and options.on_object_store
    assert options.sweep_dir.uri == "s3://bucket/prefix/s" and options.sweep_dir.endpoint == "http://127.0.0.1:9"
    assert options.teachers_dir.uri == "s3://bucket/prefix/teachers"
    assert options.driver_dir.parent == tmp_path / "sweeps"
    other = SweepOptions(name="s", storage="s3://bucket/other", local_cache=str(tmp_path))
    assert other.driver_dir != options.driver_dir  # one folder per sweep URI


@pytest.mark.parametrize("cpus", [0, -1, -0.5])
def test_cpus_per_trial_must_be_positive(cpus):
    assert SweepOptions(name="s", storage=Path("r"), cpus_per_trial=cpus).problems() == [
        f"--cpus-per-trial must be > 0, got {cpus:g}"]


@pytest.mark.parametrize("changes, text", [
    ({"gpus_per_trial": -1}, "--gpus-per-trial must be >= 0, got -1"),
    ({"max_concurrent": 0}, "--max-concurrent must be >= 1"),
    ({"checkpoint_every": 0}, "--checkpoint-every must be >= 1 epoch"),
    ({"checkpoint_every_s": -1.0}, "--checkpoint-every-s must be >= 0 seconds"),
    ({"report_every_s": -0.5}, "--report-every-s must be >= 0 seconds"),
    ({"max_failures": -1}, "--max-failures must be >= 0"),
    ({"teacher_cache": "bfloat16"}, "--teacher-cache 'bfloat16' must be one of float32, float16, off"),
    ({"name": "teachers"}, "--name 'teachers' must be a plain folder name"),
    ({"name": "a/b"}, "--name 'a/b' must be a plain folder name"),
    ({"storage": "s3://bucket/x", "storage_endpoint": "http://127.0.0.1:9"}, "no credentials found"),
    ({"storage": "s3://key:secret@bucket/x"}, "put no credentials in the URI"),
    ({"storage": "gs://bucket/x"}, "sweeps can write to local folders and S3"),
])
def test_each_problem_is_named(changes, text):
    problems = SweepOptions(**{"name": "s", "storage": Path("r"), **changes}).problems()
    assert len(problems) == 1 and text in problems[0], problems


def test_cache_dtype_follows_the_cache_mode():
    assert CACHE_MODES == ("float32", "float16", "off")
    assert [SweepOptions(name="s", storage=Path("r"), teacher_cache=m).cache_dtype for m in CACHE_MODES] == [
        "float32", "float16", None]
