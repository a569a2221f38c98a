"""`python -m kd_tune.run`: one distillation run from the command line."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from kd_tune.cli.run import main

# digits by name: the models below are digits-sized (cnn-W), not the cpu preset's 1-D ones.
FAST = ["--preset", "digits", "--epochs", "2", "--teacher-epochs", "2", "--teacher", "cnn-8", "--student", "cnn-4"]


def test_full_run_as_a_user_would(tmp_path):
    teacher = tmp_path / "teacher.pt"
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kd_tune.run", "--loss", "kl", "--tau", "inf", "--alpha", "0.9", *FAST,
         "--save-teacher", str(teacher), "--output-json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[teacher] epoch 2/2" in proc.stdout and "[student] epoch 2/2" in proc.stdout
    assert "status: completed" in proc.stdout and "test_acc=" in proc.stdout
    payload = json.loads(out.read_text())
    assert payload["config"]["tau"] == math.inf and len(payload["history"]) == 2
    assert teacher.is_file()

    # the saved teacher is reused: no teacher training the second time
    proc = subprocess.run(
        [sys.executable, "-m", "kd_tune.run", "--loss", "mse", "--alpha", "1", *FAST,
         "--teacher-checkpoint", str(teacher)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[teacher]" not in proc.stdout and "loaded from" in proc.stdout


def test_a_teacher_spec_trains_every_node_in_order(capsys):
    argv = ["--preset", "digits", "--epochs", "1", "--teacher-epochs", "2", "--student", "cnn-4", "--loss", "mse",
            "--alpha", "1"]
    assert main([*argv, "--teacher", "2xcnn-4@1>cnn-8[kl:3]"]) == 0
    out = capsys.readouterr().out
    stages = [line.split("] epoch")[0] + "]" for line in out.splitlines() if line.startswith("[")]
    assert stages == ["[teacher cnn-4@1]", "[teacher cnn-4@1]", "[teacher 2xcnn-4@1>cnn-8[kl:3]]",
                      "[teacher 2xcnn-4@1>cnn-8[kl:3]]", "[student]"]
    assert "[teacher cnn-4@1] epoch 1/1" in out  # stopped after epoch 1 of its 2
    assert out.index("teacher 2xcnn-4@1: test acc") < out.index("teacher 2xcnn-4@1>cnn-8[kl:3]: test acc")
    assert "status: completed" in out


@pytest.mark.parametrize(("argv", "words"), [
    (["--teacher", "2xcnn-4", "--save-teacher", "t.pt"], ["--save-teacher keeps one network", "is an ensemble"]),
    (["--teacher", "cnn-8>cnn-4", "--teacher-checkpoint", __file__], ["not the spec 'cnn-8>cnn-4'"]),
    (["--teacher", "cnn-8>"], ["teacher='cnn-8>'", "empty step"]),
])
def test_specs_that_cannot_be_used_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "digits", "--epochs", "1", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


def test_ce_baseline_trains_no_teacher(capsys):
    assert main(["--preset", "digits", "--loss", "ce", "--epochs", "1", "--student", "cnn-4"]) == 0
    out = capsys.readouterr().out
    assert "[teacher]" not in out and "status: completed" in out


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--loss", "--tau", "--alpha", "--teacher-checkpoint", "--noise-type", "--preset", "--data-dir"]:
        assert flag in text


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--loss", "hinge"], ["loss='hinge'", "ce, kl, mse"]),
        (["--tau", "0"], ["tau=0.0", "> 0"]),
        (["--tau", "warm"], ["'warm' is not a number"]),
        (["--alpha", "2"], ["alpha=2.0", "[0, 1]"]),
        (["--noise-type", "symmetric", "--noise-rate", "1"], ["noise_rate=1.0", "[0, 1)"]),
        (["--frobnicate"], ["unrecognized arguments"]),
        (["--dataset", "cifar10"], ["data_dir"]),
        (["--teacher-checkpoint", "/nonexistent/t.pt"], ["does not exist"]),
    ],
)
def test_bad_command_lines_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_missing_cifar_directory_exits_2_with_layout(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "digits", "--dataset", "cifar100", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "cifar-100-python" in err and "--download" in err


def test_cifar100_run_from_torchvision_files(tmp_path, capsys):
    # The paper preset on CIFAR-100 files in torchvision's format, shrunk to tiny models:
    # exercises the real loader, crop + flip augmentation and the step schedule.
    from cifar_files import write_cifar100

    write_cifar100(tmp_path, train_size=40, test_size=10)
    out = tmp_path / "run.json"
    code = main(["--preset", "paper", "--data-dir", str(tmp_path), "--teacher", "wrn-10-1",
                 "--student", "resnet-8", "--epochs", "2", "--milestones", "1", "--batch-size", "16",
                 "--loss", "kl", "--tau", "4", "--output-json", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["dataset"] == "cifar100" and payload["config"]["data_dir"] == str(tmp_path)
    assert [h["lr"] for h in payload["history"]] == [0.1, pytest.approx(0.01)]
    assert "[teacher] epoch 2/2" in capsys.readouterr().out
