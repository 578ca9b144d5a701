"""Multi-label calibration: multilabel_calibration_metrics (all labels at once) against a per-label loop of
torchmetrics' binary_calibration_error (ECE only), and fit_label_temperatures (all labels at once) against a
per-label loop of fit_binary_temperature.

    python benchmarks/multilabel.py [--repeats 5 --threads 1 --device cpu|cuda] [--sizes 20000x20 5000x200]

Variants run in this process, taking turns (round-robin) after a warm-up; time = median of --repeats rounds
(wall clock, and CPU time of all threads: with --threads 1 the CPU time is the work, whatever the machine's load);
ratio = variant / the per-label loop it replaces. Logits are over-confident (targets drawn from σ(z / 2)).
"""

import argparse
import statistics

import torch

from common import add_device_and_threads, apply_threads, timed
from focal_calibration import fit_binary_temperature, fit_label_temperatures, multilabel_calibration_metrics


def main():
    parser = add_device_and_threads(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["20000x20", "5000x200"])
    args = parser.parse_args()
    apply_threads(args)
    from torchmetrics.functional.classification import binary_calibration_error

    for size in args.sizes:
        n, labels = (int(v) for v in size.split("x"))
        generator = torch.Generator().manual_seed(0)
        logits = (torch.randn(n, labels, generator=generator) * 3).to(args.device)
        targets = (torch.rand(n, labels, generator=generator).to(args.device) < torch.sigmoid(logits / 2)).long()
        probs_by_label = torch.sigmoid(logits).t().contiguous()
        targets_by_label = targets.t().contiguous()
        runs = {
            "metrics: torchmetrics ECE, loop over labels": lambda: [
                binary_calibration_error(probs_by_label[i], targets_by_label[i], n_bins=15) for i in range(labels)],
            "metrics: multilabel_calibration_metrics (all metrics)": lambda: multilabel_calibration_metrics(
                targets, logits=logits),
            "metrics: multilabel_calibration_metrics (ECE, MCE, NLL, Brier: adaptive off)": lambda:
                _streamed_without_adaece(targets, logits),
            "T grid: fit_binary_temperature, loop over labels": lambda: [
                fit_binary_temperature(logits[:, i], targets[:, i]) for i in range(labels)],
            "T grid: fit_label_temperatures": lambda: fit_label_temperatures(logits, targets),
        }
        for fn in runs.values():
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, args.device))
        medians = {name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
                   for name, values in times.items()}
        print(f"{n} samples x {labels} labels ({args.device}, threads {torch.get_num_threads()}): wall, CPU time")
        for name, (wall, cpu) in medians.items():
            base = medians["metrics: torchmetrics ECE, loop over labels"] if name.startswith("metrics") else \
                medians["T grid: fit_binary_temperature, loop over labels"]
            print(f"  {name:80s} {1000 * wall:9.1f} ms {wall / base[0]:5.2f}x   CPU {1000 * cpu:9.1f} ms "
                  f"{cpu / base[1]:5.2f}x")


def _streamed_without_adaece(targets, logits):
    from focal_calibration import MultilabelCalibrationAccumulator

    accumulator = MultilabelCalibrationAccumulator(15, adaptive=False)
    accumulator.update(targets, logits=logits)
    return accumulator.compute()


if __name__ == "__main__":
    main()
