"""What the teacher-logit cache saves, measured side by side in one run.

    python benchmarks/teacher_cache.py [--steps 6] [--rounds 2] [--trials 12] [--device auto]

(a), (b) Student steps, WRN-28-4 -> WRN-16-2 on CIFAR-shaped random images (3x32x32,
    100 classes, batch 128, ``steps * 128`` training samples, augmentation on): one epoch
    of :func:`kd_tune.train.trainer.train` each way (CE only; KL-4 with the cached logits; KL-4
    with the teacher online), interleaved, after a warm-up round; per mode the fastest
    of ``--rounds`` rounds, as ms per step (the epoch time over its steps; it includes
    the student's evaluation on 8 test images, the same in every mode).
(c) A digits sweep (cpu preset: cnn-32 -> cnn-4, at ``DIGITS_RECIPE``: lr 0.02, 20 epochs,
    the preset's recipe when the README's table was measured) of ``--trials`` KL/MSE
    trials through :func:`kd_tune.sweep.runner.run_sweep` on an embedded Ray, once with
    ``teacher_cache="off"`` and once with the cache (the teacher is trained before
    both). Teacher forward passes are counted as samples: the trainer's
    ``teacher_forward_samples`` per epoch, plus the cache's own build. Wall time is the
    whole ``run_sweep`` call, the cache stage included.
(d) The sweep machinery's fixed cost per trial, as in ``benchmarks/sweep_overhead.py``.
(e) Memory per trial with the cache: ``K`` processes at once (1, 2 and 4) each
    memory-map one CIFAR-shaped cache (8 views x 10,000 samples x 100 classes, 32 MB),
    train one epoch from it and read every view. Per process: peak RSS, private memory
    (USS) and the cache's proportional share (PSS of the mapped files). The cache
    should be resident once, whatever ``K``: its PSS sums to one copy and private
    memory does not grow by a copy per trial.

(f) float16 logits: digits runs (KL tau=4 and MSE, alpha 1, 20 epochs) from float32 and
    from float16 cached logits of the same teacher. The rounding alone: the loss of the
    float32-trained student over the training set against either logits. And after
    training: the largest relative difference of a per-epoch training loss (the two
    trajectories drift apart) and the difference of the final test accuracy.

Prints a table, then as its last line exactly
``cached_vs_ce=A online_vs_cached=B sweep_nocache_vs_cache=C``:
A = (a) cached step / CE step, B = (b) online step / cached step,
C = (c) sweep wall time without the cache / with it.
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from analysis.results_io import load_epochs, load_trials
from kd_tune import models
from kd_tune.core.config import RunConfig, preset
from kd_tune.core.identity import teacher_key
from kd_tune.data import SourceData, Split, register_dataset
from kd_tune.plan.search_space import expand
from kd_tune.plan.teacher_dag import teacher_dag
from kd_tune.sweep.runner import SweepOptions, run_sweep
from kd_tune.teachers.logit_cache import LogitCache
from kd_tune.teachers.store import TeacherStore
from kd_tune.train.losses import make_loss
from kd_tune.train.teacher_logits import compute_teacher_logits
from kd_tune.train.trainer import load_data, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_overhead import bare_tune, kd_sweep  # noqa: E402  (importable only after the sys.path line)

BATCH = 128
MEM_SAMPLES, MEM_VIEWS, MEM_CLASSES = 10_000, 8, 100
# The digits runs' recipe ((c), (f)) when the README's table was measured; what they measure
# (cache against online teacher, float16 against float32) does not depend on it.
DIGITS_RECIPE = {"lr": 0.02, "epochs": 20}


def _cifar_shaped(num_train: int, num_test: int, _data_dir: str | None, _download: bool) -> SourceData:
    """Random CIFAR-100-shaped images: the benchmark measures speed and memory, not accuracy."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
        return Split(images, torch.randint(0, 100, (n,), generator=generator))

    return SourceData(train=split(num_train), test=split(num_test), num_classes=100, max_value=255.0,
                      mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276),
                      class_names=tuple(f"c{i}" for i in range(100)))


register_dataset("bench-memory", functools.partial(_cifar_shaped, MEM_SAMPLES, 8), augment=True)


def step_times(steps: int, rounds: int, device: str) -> dict[str, float]:
    """Seconds per student step for ce / cached / online, plus the cache build per sample."""
    register_dataset(f"bench-steps-{steps}", functools.partial(_cifar_shaped, steps * BATCH, 8), augment=True)
    config = RunConfig(dataset=f"bench-steps-{steps}", teacher="wrn-28-4", student="wrn-16-2", epochs=1,
                       batch_size=BATCH, val_size=0, lr=0.1, loss="kl", tau=4.0, alpha=0.9, device=device)
    data = load_data(config)
    torch.manual_seed(0)
    teacher = models.build("wrn-28-4", data.num_classes, data.in_channels)
    started = time.perf_counter()
    logits = compute_teacher_logits(teacher, data, config, device=device)
    build = (time.perf_counter() - started) / (len(data.train) + len(data.test))
    runs = {
        "ce": lambda: train(config.replace(loss="ce"), data=data),
        "cached": lambda: train(config, data=data, teacher_logits=logits),
        "online": lambda: train(config, data=data, teacher=teacher),
    }
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    for round_ in range(rounds + 1):  # round 0 warms up kernels and allocator
        for mode, run in runs.items():
            seconds = run().history[0]["epoch_time_s"] / steps
            if round_:
                times[mode].append(seconds)
        print(f"  steps: round {round_}/{rounds} done", file=sys.stderr)
    return {**{mode: min(v) for mode, v in times.items()}, "build_per_sample": build}


def digits_sweeps(trials: int, storage: Path) -> dict[str, dict[str, float]]:
    """The same digits sweep without and with the cache: wall seconds, teacher forward samples, results."""
    base = preset("digits", **DIGITS_RECIPE)
    space = [{"loss": ["kl"], "tau": [1.0, 3.0, 5.0, 20.0, math.inf], "alpha": [0.5, 1.0]},
             {"loss": ["mse"], "alpha": [0.5, 1.0]}]
    configs = expand(base, space, seeds=range(math.ceil(trials / 12)))[:trials]
    TeacherStore(storage / "teachers").train(teacher_dag(configs[0])[-1])  # both sweeps find it stored
    from mlflow import MlflowClient

    from kd_tune.sweep.cluster import connect
    from kd_tune.tracking.tracker import resolve_tracking_uri

    # One-time costs outside both timings: the embedded Ray's start, the MLflow store's tables.
    connect(None)
    MlflowClient(resolve_tracking_uri(None, storage)).search_experiments()
    out = {}
    for mode in ("off", "float32"):
        options = SweepOptions(name=f"cache_{mode}", storage=storage, teacher_cache=mode)
        outcome = run_sweep(configs, options)
        epochs = load_epochs(outcome.sweep_dir)
        built = sum(json.loads(Path(p).read_text())["teacher_forward_samples"]
                    for p in glob.glob(str(storage / "teacher_logits" / "*" / "meta.json")))
        out[mode] = {
            "seconds": outcome.seconds,
            "fit_seconds": outcome.fit_seconds,
            "forward": float(epochs["teacher_forward_samples"].sum()) + (built if mode != "off" else 0),
            "results": load_trials(outcome.sweep_dir).set_index("trial_key"),
            "completed": outcome.counts["completed"],
        }
        print(f"  digits sweep with teacher cache {mode}: {outcome.seconds:.1f}s", file=sys.stderr)
    return out


def float16_effect(storage: Path) -> dict[str, tuple[float, float, float]]:
    """Per loss, relative loss difference from rounding alone, after training, and test-acc difference."""
    base = preset("digits", alpha=1.0, **DIGITS_RECIPE)
    data = load_data(base)
    teacher, _ = TeacherStore(storage / "teachers").load(teacher_key(base), data)
    out = {}
    for name, config in (("kl tau=4", base.replace(loss="kl", tau=4.0)), ("mse", base.replace(loss="mse"))):
        logits = {d: compute_teacher_logits(teacher, data, config, dtype=d) for d in (torch.float32, torch.float16)}
        full, half = (train(config, data=data, teacher_logits=logits[d]) for d in (torch.float32, torch.float16))
        loss_fn = make_loss(config.loss, tau=config.tau, alpha=config.alpha)
        with torch.no_grad():
            student = full.model(data.normalize(data.train.images))
            exact, rounded = (loss_fn(student, logits[d].epoch_view(0).float(), data.train.labels).item()
                              for d in (torch.float32, torch.float16))
        drift = max(abs(h["train_loss"] - f["train_loss"]) / abs(f["train_loss"])
                    for f, h in zip(full.history, half.history))
        out[name] = (abs(rounded - exact) / abs(exact), drift, abs(half.final["test_acc"] - full.final["test_acc"]))
    return out


def _memory_worker(cache_root: str, key: str, config: dict, queue, barrier) -> None:
    torch.set_num_threads(1)
    run = RunConfig.from_dict(config)
    data = load_data(run)
    logits = LogitCache(cache_root).load(key)
    train(run, data=data, teacher_logits=logits)
    float(logits.train.sum())  # a full run reads every epoch's view
    barrier.wait()  # every trial holds the cache mapped while each measures
    queue.put(_memory_of_this_process(cache_root))
    barrier.wait()


def _memory_of_this_process(cache_root: str) -> dict[str, float]:
    """MB: peak RSS, private (USS), and Rss/Pss of mappings of files under ``cache_root``."""
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    private = cache_rss = cache_pss = 0
    in_cache = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
            in_cache = len(fields) >= 6 and fields[5].startswith(cache_root)
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
            private += int(fields[1])
        elif in_cache and fields[0] == "Rss:":
            cache_rss += int(fields[1])
        elif in_cache and fields[0] == "Pss:":
            cache_pss += int(fields[1])
    return {"peak_rss": peak / 1024, "private": private / 1024, "cache_rss": cache_rss / 1024,
            "cache_pss": cache_pss / 1024}


def memory_per_trial(storage: Path, counts: tuple[int, ...]) -> tuple[float, dict[int, list[dict[str, float]]]]:
    """(cache MB, per K: one memory record per concurrent trial process)."""
    config = RunConfig(dataset="bench-memory", teacher="cnn-4", student="cnn-4", epochs=1, batch_size=BATCH,
                       val_size=0, loss="kl", tau=4.0, alpha=0.9, device="cpu")
    data = load_data(config)
    cache = LogitCache(storage / "teacher_logits")
    # Eight views, as an 8-epoch run would use; the trial trains one epoch and reads them all.
    meta = cache.build("memory", models.build("cnn-4", 100, 3), data, config.replace(epochs=MEM_VIEWS))
    context = multiprocessing.get_context("spawn")
    results = {}
    for k in counts:
        queue, barrier = context.Queue(), context.Barrier(k)
        workers = [context.Process(target=_memory_worker,
                                   args=(str(cache.root), "memory", config.to_dict(), queue, barrier))
                   for _ in range(k)]
        for w in workers:
            w.start()
        results[k] = [queue.get(timeout=600) for _ in workers]
        for w in workers:
            w.join()
        print(f"  memory: {k} concurrent trial(s) done", file=sys.stderr)
    return meta["bytes"] / 2**20, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="student steps per epoch in (a)/(b) (default: 6)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds in (a)/(b), after a warm-up (default: 2)")
    parser.add_argument("--trials", type=int, default=12, help="KD trials in the digits sweeps of (c) (default: 12)")
    parser.add_argument("--overhead-trials", type=int, default=24, help="trials in (d) (default: 24)")
    parser.add_argument("--device", default="auto", help="device for (a)/(b): auto, cpu or cuda (default: auto)")
    args = parser.parse_args()
    for name in ("steps", "rounds", "trials", "overhead_trials"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    threads = torch.get_num_threads()
    slots = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("(a)/(b) student steps ...", file=sys.stderr)
        steps = step_times(args.steps, args.rounds, args.device)
        print("(c) digits sweeps ...", file=sys.stderr)
        sweeps = digits_sweeps(args.trials, root / "digits")
        half = float16_effect(root / "digits")
        print("(d) fixed cost per trial ...", file=sys.stderr)
        fixed, _, _ = kd_sweep(args.overhead_trials, slots, root / "overhead")
        bare = bare_tune(args.overhead_trials, slots, root / "bare")
        import ray

        ray.shutdown()
        print("(e) memory ...", file=sys.stderr)
        cache_mb, memory = memory_per_trial(root / "memory", (1, 2, 4))

    cached_vs_ce = steps["cached"] / steps["ce"]
    online_vs_cached = steps["online"] / steps["cached"]
    off, on = sweeps["off"], sweeps["float32"]
    sweep_ratio = off["seconds"] / on["seconds"]
    same = off["results"].index.intersection(on["results"].index)
    acc_diff = (off["results"].loc[same, "test_acc"] - on["results"].loc[same, "test_acc"]).abs().max()
    loss_diff = ((off["results"].loc[same, "train_loss"] - on["results"].loc[same, "train_loss"]).abs()
                 / off["results"].loc[same, "train_loss"].abs()).max()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"\nteacher_cache benchmark: {slots} CPUs, torch {torch.__version__}, {threads} threads; (a)/(b) on {device}")
    print("| measurement | value |\n|---|---|")
    print(f"| (a) WRN-16-2 step, CE only | {1000 * steps['ce']:.0f} ms |")
    print(f"| (a) WRN-16-2 step, KL with cached WRN-28-4 logits | {1000 * steps['cached']:.0f} ms |")
    print(f"| (b) WRN-16-2 step, KL with WRN-28-4 online | {1000 * steps['online']:.0f} ms |")
    print(f"| cache build, WRN-28-4 forward per sample | {1000 * steps['build_per_sample']:.2f} ms |")
    for title, run in ((f"(c) digits sweep, {len(same)} KD trials, teacher online", off),
                       ("(c) same sweep, teacher-logit cache", on)):
        print(f"| {title} | {run['seconds']:.1f} s wall ({run['fit_seconds']:.1f} s Tune phase), "
              f"{run['forward']:,.0f} teacher forward samples |")
    print(f"| (c) cached vs online results, largest difference | test acc {100 * acc_diff:.2f} points, "
          f"train loss {loss_diff:.1e} relative |")
    print(f"| (d) sweep machinery, fixed cost per trial | {fixed:.2f} CPU-s (bare Ray Tune trial: {bare:.2f}) |")
    print(f"| (e) cache size (8 views x 10,000 x 100, float32) | {cache_mb:.1f} MB |")
    for k, records in memory.items():
        peak = max(r["peak_rss"] for r in records)
        private = max(r["private"] for r in records)
        pss = sum(r["cache_pss"] for r in records)
        rss = max(r["cache_rss"] for r in records)
        print(f"| (e) {k} concurrent trial(s): per trial peak RSS / private | {peak:.0f} / {private:.0f} MB; "
              f"cache mapped {rss:.1f} MB per trial, cache PSS summed over trials {pss:.1f} MB |")
    for name, (rounding, drift, acc_diff16) in half.items():
        print(f"| (f) float16 vs float32 logits, digits {name} | same student: loss {rounding:.1e} relative; "
              f"after training: train loss up to {drift:.1e} relative, final test acc {100 * acc_diff16:.2f} points |")
    print(f"cached_vs_ce={cached_vs_ce:.3f} online_vs_cached={online_vs_cached:.3f} "
          f"sweep_nocache_vs_cache={sweep_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
