"""MNIST-1D's published baselines, trained by kd-tune: ours beside the published accuracy.

    python benchmarks/mnist1d_baselines.py                  # every model, 1 seed, the cpu preset's recipe
    python benchmarks/mnist1d_baselines.py --models cnn1d-25,gru-6 --seeds 3 --epochs 40

Greydanus and Kobak (ICML 2024), canonical MNIST-1D (4000 train / 1000 test): logistic
regression 32%, MLP 68%, GRU 91%, CNN 94% test accuracy. Each model here is trained with CE
by the cpu preset's recipe (SGD, lr 0.05, Nesterov momentum 0.9, weight decay 5e-4, cosine,
batch 64, 80 epochs), on all 4000 training signals as published (no validation split), and
its last-epoch test accuracy (1000 signals, 0.1 points each) is printed as mean +- std over
seeds with the wall seconds per run (``--threads`` CPU threads, 1 by default as a sweep
trial). The published models were trained with Adam; our recipe is kd-tune's, so "within a
few points" is the check, not equality.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from kd_tune.core.config import preset
from kd_tune.train.trainer import load_data, train

# Our model name -> (the published model, its published test accuracy in %).
PUBLISHED = {
    "logreg": ("logistic regression", 32.0),
    "mlp1d-100": ("MLP", 68.0),
    "gru-6": ("GRU", 91.0),
    "cnn1d-25": ("CNN", 94.0),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(PUBLISHED),
                        help=f"comma-separated model names (default: {','.join(PUBLISHED)})")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per model (default 1)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the cpu preset's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    args = parser.parse_args(argv)
    base = preset("cpu", val_size=0, loss="ce", threads=args.threads, device="cpu")
    if args.epochs:
        base = base.replace(epochs=args.epochs)
    data = load_data(base)
    print(f"MNIST-1D: {len(data.train)} train / {len(data.test)} test signals; CE, lr {base.lr:g}, "
          f"{base.epochs} epochs, {base.schedule}, batch {base.batch_size}, {args.seeds} seed(s), "
          f"{args.threads} thread(s)")
    print(f"{'model':<12}{'published':>22}{'ours % (mean +- std)':>24}{'s/run':>8}")
    for name in (m.strip() for m in args.models.split(",")):
        accs, seconds = [], []
        for seed in range(args.seeds):
            started = time.perf_counter()
            result = train(base.replace(student=name, seed=seed), data=data)
            seconds.append(time.perf_counter() - started)
            accs.append(100 * result.final["test_acc"])
        what, acc = PUBLISHED.get(name, ("-", float("nan")))
        std = f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        print(f"{name:<12}{f'{what} {acc:g}':>22}{f'{statistics.mean(accs):.2f}{std}':>24}"
              f"{statistics.mean(seconds):>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
