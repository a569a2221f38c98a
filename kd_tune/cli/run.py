"""One distillation run from the command line, without Ray or MLflow.

    python -m kd_tune.run --loss kl --tau 4 --alpha 0.9
    python -m kd_tune.run --preset paper --data-dir /data --teacher-checkpoint wrn28.pt

The teacher is loaded from ``--teacher-checkpoint`` or trained first: ``--teacher`` is
a teacher spec (``cnn-32``, ``cnn-32@5``, ``cnn-32>cnn-8[kl:3]``, ``3xcnn-32``; see
:mod:`kd_tune.core.teacher_spec`), and every node of it is trained here in turn, in one
process (``--save-teacher PATH`` keeps the last one, one network, for later runs).
Progress is printed per epoch, then the final metrics; ``--output-json`` also writes
them to a file. ``--threads N`` runs at N CPU threads, the teacher included; a sweep
trial runs at its CPU share (its ``threads`` column), so the same config and
``--threads`` reproduce it bitwise on the same machine (the default, torch's, uses all
cores).
Exit codes: 0 done, 1 the run diverged, 2 bad command line or input data.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_tune.cli.args import add_config_arguments, config_from_args
from kd_tune.core import teacher_spec
from kd_tune.core.config import ConfigError
from kd_tune.core.runtime import use_threads
from kd_tune.core.status import TrialStatus
from kd_tune.data import DataError
from kd_tune.plan.teacher_dag import teacher_dag
from kd_tune.storage.atomic import write_text
from kd_tune.teachers.training import load_teacher, save_teacher, train_node
from kd_tune.train.trainer import EpochEnd, EpochHook, load_data, train
from kd_tune.train.validation import validate_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kd_tune.run",
        description="Train (or load) a teacher, then distil one student and print its metrics. "
        "Losses: ce = cross-entropy only; kl = (1-alpha)*CE + alpha*tau^2*KL(teacher_tau || student_tau) "
        "(tau=inf is the logit-matching limit); mse = (1-alpha)*CE + alpha*MSE(student logits, teacher logits); "
        "dkd, dist, and kl or mse with --standardize: the logit-loss family (docs/losses.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Reproducing a sweep trial: give its config (its row of the trials table or its MLflow params) as "
        "flags with --threads equal to its threads column; the run, teacher included, is then bitwise the "
        "trial on the same machine. Without --threads a run uses torch's default (all cores), which gives "
        "other, equally valid, numbers than a sweep trial (1 thread per CPU of its share).",
    )
    parser.add_argument("--teacher-checkpoint", type=Path, metavar="PATH",
                        help="load the teacher from this file (written by --save-teacher) instead of training it")
    parser.add_argument("--save-teacher", type=Path, metavar="PATH",
                        help="after training the teacher, save it here for later runs")
    parser.add_argument("--output-json", type=Path, metavar="PATH",
                        help="also write the config, final metrics and per-epoch history as JSON")
    add_config_arguments(parser)
    return parser


def _progress(stage: str, epochs: int) -> EpochHook:
    def show(end: EpochEnd) -> None:
        metrics = end.metrics
        print(
            f"[{stage}] epoch {int(metrics['epoch'])}/{epochs}  loss {metrics['train_loss']:.4f}  "
            f"train {metrics['train_acc']:.4f}  val {metrics['val_acc']:.4f}  test {metrics['test_acc']:.4f}  "
            f"agree {metrics['test_agreement']:.4f}  lr {metrics['lr']:.4g}  {metrics['epoch_time_s']:.2f}s",
            flush=True,
        )
    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = validate_run(config_from_args(args))
    except ConfigError as err:
        parser.error(str(err))
    # Recorded as run: the count decides the floats (see --threads).
    config = config.replace(threads=use_threads(config.threads))
    if args.teacher_checkpoint is not None and not args.teacher_checkpoint.is_file():
        parser.error(f"--teacher-checkpoint {str(args.teacher_checkpoint)!r} does not exist")
    one_network = teacher_spec.parse(config.teacher) == teacher_spec.Single(config.teacher)
    if args.teacher_checkpoint is not None and not one_network:
        parser.error(f"--teacher-checkpoint holds one trained network: give --teacher as its architecture, "
                     f"not the spec {config.teacher!r}")
    if args.teacher_checkpoint is not None and args.save_teacher is not None:
        parser.error("--save-teacher needs a trained teacher; it cannot be combined with --teacher-checkpoint")
    try:
        data = load_data(config)
    except (DataError, ValueError) as err:
        parser.error(str(err))

    teacher = None
    if args.teacher_checkpoint is not None:
        try:
            teacher, meta = load_teacher(args.teacher_checkpoint, config, data)
        except ValueError as err:
            parser.error(str(err))
        print(f"teacher {config.teacher} loaded from {args.teacher_checkpoint} "
              f"(test acc {meta['metrics'].get('test_acc', math.nan):.4f})")
    elif config.loss != "ce" or args.save_teacher is not None:
        nodes = teacher_dag(config)
        if args.save_teacher is not None and not nodes[-1].trains:
            parser.error(f"--save-teacher keeps one network; teacher {config.teacher!r} is an ensemble")
        # Every node trains on the teacher's data (the clean labels with --clean-teacher).
        teacher_data = data if nodes[-1].run.data_settings() == config.data_settings() else load_data(nodes[-1].run)
        made: dict[str, Any] = {}
        for node in nodes:
            started = time.perf_counter()
            stage = "teacher" if len(nodes) == 1 else f"teacher {node.spec}"
            result = train_node(node, teacher_data, [made[k] for k in node.sources],
                                on_epoch=_progress(stage, node.stop_epoch or node.run.epochs))
            if result.status != TrialStatus.COMPLETED:
                print(f"error: teacher {node.spec} diverged at epoch {result.diverged_epoch}", file=sys.stderr)
                return 1
            made[node.key] = result.model
            print(f"teacher {node.spec}: test acc {result.final['test_acc']:.4f} "
                  f"({time.perf_counter() - started:.1f}s)")
        teacher = made[nodes[-1].key]
        if args.save_teacher is not None:
            print(f"teacher saved to {save_teacher(args.save_teacher, nodes[-1].run, result, teacher_data)}")

    started = time.perf_counter()
    print(f"student {config.student}, {config.loss}, {config.threads} CPU thread(s)")
    result = train(config, data=data, teacher=teacher, on_epoch=_progress("student", config.epochs))
    seconds = time.perf_counter() - started
    print(f"status: {result.status}" + (f" at epoch {result.diverged_epoch}" if result.diverged_epoch else ""))
    print("final: " + "  ".join(f"{k}={v:.4f}" for k, v in result.final.items() if k != "epoch"))
    print(f"student time: {seconds:.1f}s")
    if args.output_json is not None:
        _write_json(args.output_json, {
            "config": config.to_dict(), "status": result.status, "diverged_epoch": result.diverged_epoch,
            "final": result.final, "history": list(result.history), "seconds": seconds,
        })
    return 0 if result.status == TrialStatus.COMPLETED else 1


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    # JSON has no infinity; Python's json writes Infinity/NaN, which json.load reads back.
    write_text(path, json.dumps(payload, indent=2))


if __name__ == "__main__":
    sys.exit(main())
