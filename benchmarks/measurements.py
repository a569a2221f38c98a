"""What the end-of-run measurements cost per trial: seconds and bytes, on digits and CIFAR-100.

    python benchmarks/measurements.py

For each case it times, per trial: the measurements (kd_tune.train.measurements.measure on the
test set's logits, features and the teacher's logits; the features come from the last
epoch's own test pass, so no extra forward pass is counted), the payload a trial sends
the driver (pickled, as Ray sends it), and the driver writing the two part files
(kd_tune.results.samples.write_parts); and it reports the bytes of the payload and of the part
files. Digits uses a trained cnn-4 student and cnn-32 teacher of the cpu preset (360
test samples, 10 classes, features 16 wide); CIFAR-100 uses random numbers of its shapes
(10,000 test samples, 100 classes, WRN-16-2 features 128 wide; 3 feature classes = 300
samples), which compress like real float32 values do (barely). Median of 5 rounds.
"""
from __future__ import annotations

import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kd_tune.core.config import preset
from kd_tune.results.samples import FEATURES_DIR, SAMPLES_DIR, write_parts
from kd_tune.teachers.training import train_teacher
from kd_tune.train.measurements import measure
from kd_tune.train.trainer import load_data, predict_outputs, train


def _median_seconds(work, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def case(name: str, logits, labels, features, teacher, classes=(0, 1, 2)) -> dict[str, float]:
    measured = measure(logits, labels, features, teacher).of_classes(classes)
    payload = pickle.dumps(measured.to_dict(), protocol=5)
    with tempfile.TemporaryDirectory() as folder:
        write_seconds = _median_seconds(lambda: write_parts(folder, "trial", "k", measured))
        part_bytes = sum(p.stat().st_size for d in (SAMPLES_DIR, FEATURES_DIR) for p in (Path(folder) / d).iterdir())
    return {"case": name, "measure_s": _median_seconds(lambda: measure(logits, labels, features, teacher)),
            "payload_s": _median_seconds(lambda: pickle.loads(pickle.dumps(measured.to_dict(), protocol=5))),
            "write_s": write_seconds, "payload_bytes": len(payload), "part_bytes": part_bytes,
            "samples": len(labels), "feature_rows": len(measured.feature_index)}


def main() -> int:
    torch.set_num_threads(2)
    config = preset("digits", loss="kl", tau=4.0, alpha=0.9)  # digits by name: the rows say digits
    data = load_data(config)
    teacher = train_teacher(config, data=data).model
    student = train(config, data=data, teacher=teacher).model
    device = torch.device("cpu")
    logits, features = predict_outputs(student, data.test.images, data.normalize, device=device, features=True)
    t_logits, _ = predict_outputs(teacher, data.test.images, data.normalize, device=device)
    rows = [case("digits (cnn-32 -> cnn-4)", logits, data.test.labels, features, t_logits)]
    gen = torch.Generator().manual_seed(0)
    n, k, width = 10_000, 100, 128
    rows.append(case("CIFAR-100 shapes (WRN-16-2 features)", 3 * torch.randn(n, k, generator=gen),
                     torch.arange(n) % k, torch.rand(n, width, generator=gen), 3 * torch.randn(n, k, generator=gen)))
    print("| case | measure (s) | payload pickle round trip (s) | write parts (s) | payload | part files |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']}, {r['samples']} samples, {r['feature_rows']} feature rows | {r['measure_s']:.4f} | "
              f"{r['payload_s']:.4f} | {r['write_s']:.4f} | {r['payload_bytes'] / 1e3:.1f} kB | "
              f"{r['part_bytes'] / 1e3:.1f} kB |")
    total = {r["case"].split()[0]: r["measure_s"] + r["payload_s"] + r["write_s"] for r in rows}
    print(" ".join(f"{name.lower().replace('-', '')}_seconds_per_trial={s:.3f}" for name, s in total.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
