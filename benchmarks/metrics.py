"""calibration_metrics (every metric at once) vs a plain loop-per-bin reference and torchmetrics' ECE.

    python benchmarks/metrics.py [--rows 100000 --classes 100 --bins 15 --repeats 7 --device cpu|cuda]
                                 [--bootstrap-rows 10000 --bootstrap-classes 10 100 --resamples 1000 --loop-calls 50]

All variants run in this process on the same float32 logits, taking turns (round-robin) after two warm-up runs each;
time = median of --repeats rounds (wall clock, and CPU time of all threads), ratio = variant / calibration_metrics.
torch's thread count is left at its default.

On a machine shared with busy processes (load average above the thread count) OpenMP threads that spin while they
wait make every parallel op cost a scheduler tick, whatever its size, which penalises code with many ops; compare
with ``--threads 1`` or ``OMP_WAIT_POLICY=PASSIVE`` there, or run on an idle machine.

* calibration_metrics: n, accuracy, top-5, NLL, Brier, ECE, AdaECE, MCE, classwise ECE, S99, entropy.
* calibration_metrics, plain path: the same with the CPU fast path of metrics.sample_statistics switched off (the gain
  quoted in its docstring).
* loop reference: what per-bin Python loops cost: softmax, then ECE, AdaECE and classwise ECE with a boolean mask
  and .item() per bin (per class and bin for classwise ECE). Written here for the comparison only.
* torchmetrics: MulticlassCalibrationError(n_bins, norm="l1") (ECE only), update(logits) + compute(), default
  validate_args; the functional form (no validation) is listed too.
* bootstrap: bootstrap_ci with --resamples resamples (vectorised over resamples) vs calling calibration_metrics once
  per resample on the resampled rows; --loop-calls of those calls are timed and scaled to --resamples (ratio = loop /
  bootstrap_ci, best of 3 rounds each). --resamples 0 skips it.
"""

import argparse
import os
import statistics

import numpy as np
import torch

from common import add_device_and_threads, apply_threads, timed
from focal_calibration import constants, bootstrap_ci
from focal_calibration.calibration.metrics import calibration_metrics


def loop_reference(logits, labels, n_bins):
    """ECE + AdaECE + classwise ECE, one Python iteration and a few .item() per bin."""
    probs = torch.softmax(logits.float(), dim=-1)
    n, k = probs.shape
    confidence, prediction = probs.max(dim=-1)
    correct = (prediction == labels).float()
    edges = [i / n_bins for i in range(n_bins + 1)]

    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi) if lo > 0 else confidence <= hi
        count = in_bin.sum().item()
        if count:
            ece += abs(correct[in_bin].mean().item() - confidence[in_bin].mean().item()) * count / n

    order = confidence.argsort()
    sorted_conf, sorted_correct = confidence[order], correct[order]
    adaece = 0.0
    for b in range(n_bins):
        start, stop = b * n // n_bins, (b + 1) * n // n_bins
        if stop > start:
            adaece += abs(sorted_correct[start:stop].sum().item() - sorted_conf[start:stop].sum().item()) / n

    classwise = 0.0
    for c in range(k):
        p, is_c = probs[:, c], (labels == c).float()
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = (p > lo) & (p <= hi) if lo > 0 else p <= hi
            if in_bin.any().item():
                classwise += abs(is_c[in_bin].sum().item() - p[in_bin].sum().item()) / n
    return ece, adaece, classwise / k


def plain_path(labels, logits, n_bins):
    constants.METRICS_CPU_FAST_PATH = False
    try:
        return calibration_metrics(labels, logits=logits, n_bins=n_bins)
    finally:
        constants.METRICS_CPU_FAST_PATH = True


def torchmetrics_module(logits, labels, n_bins):
    from torchmetrics.classification import MulticlassCalibrationError

    metric = MulticlassCalibrationError(num_classes=logits.shape[1], n_bins=n_bins, norm="l1").to(logits.device)
    metric.update(logits, labels)
    return metric.compute()


def torchmetrics_functional(logits, labels, n_bins):
    from torchmetrics.functional.classification import multiclass_calibration_error

    return multiclass_calibration_error(logits, labels, logits.shape[1], n_bins, "l1", validate_args=False)


def interleaved_median_times(variants, repeats, device):
    """Median wall and CPU (all threads) seconds per variant. The variants take turns in every round, so a load
    change on a shared machine hits all of them alike; CPU time is the steadier number when the machine is busy."""
    for fn in variants.values():  # warm-up: allocator, thread pool, lazy imports
        fn()
        fn()
    runs = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(timed(fn, device))
    return {name: tuple(statistics.median(column) for column in zip(*seconds)) for name, seconds in runs.items()}


def bootstrap_rows(rows, classes, bins, resamples, loop_calls, device):
    """((wall, CPU) seconds of bootstrap_ci, (wall, CPU) of the per-resample calibration_metrics loop scaled to
    ``resamples``), each the best of 3."""
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(rows, classes, generator=generator) * 3).to(device)
    labels = torch.randint(0, classes, (rows,), generator=generator).to(device)
    indices = torch.from_numpy(np.random.default_rng(0).integers(0, rows, (loop_calls, rows))).to(device)

    def loop():
        for row in indices:
            calibration_metrics(labels[row], logits=logits[row], n_bins=bins)

    def vectorised():
        bootstrap_ci(labels, logits=logits, n_bins=bins, n_resamples=resamples)

    loop(), vectorised()  # warm-up
    scale = resamples / loop_calls
    best_loop = [min(column) * scale for column in zip(*(timed(loop, device) for _ in range(3)))]
    best_vectorised = [min(column) for column in zip(*(timed(vectorised, device) for _ in range(3)))]
    return best_vectorised, best_loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--bins", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bootstrap-rows", type=int, default=10_000)
    parser.add_argument("--bootstrap-classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (0: skip the bootstrap rows)")
    parser.add_argument("--loop-calls", type=int, default=50, help="calibration_metrics calls timed for the loop")
    add_device_and_threads(parser)
    args = parser.parse_args()
    apply_threads(args)

    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.rows, args.classes, generator=generator) * 3).to(args.device)
    labels = torch.randint(0, args.classes, (args.rows,), generator=generator).to(args.device)

    ours = calibration_metrics(labels, logits=logits, n_bins=args.bins)
    reference = loop_reference(logits, labels, args.bins)
    print(f"values: ECE {ours['ece']:.6f} (loop {reference[0]:.6f}), AdaECE {ours['adaece']:.6f} "
          f"(loop {reference[1]:.6f}), classwise ECE {ours['classwise_ece']:.6f} (loop {reference[2]:.6f}), "
          f"torchmetrics ECE {float(torchmetrics_module(logits, labels, args.bins)):.6f}")

    variants = {
        "calibration_metrics (all metrics)": lambda: calibration_metrics(labels, logits=logits, n_bins=args.bins),
        "calibration_metrics, plain path": lambda: plain_path(labels, logits, args.bins),
        "loop reference (ECE+AdaECE+classwise)": lambda: loop_reference(logits, labels, args.bins),
        "torchmetrics MulticlassCalibrationError": lambda: torchmetrics_module(logits, labels, args.bins),
        "torchmetrics functional, no validation": lambda: torchmetrics_functional(logits, labels, args.bins),
    }
    times = interleaved_median_times(variants, args.repeats, args.device)
    base_wall, base_cpu = times["calibration_metrics (all metrics)"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"\n{args.rows:,} x {args.classes} float32 logits, {args.bins} bins, {device}, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={policy}, load average {os.getloadavg()[0]:.1f} (above the thread count, other processes "
          f"share these cores)")
    print(f"{'variant':42s} {'wall ms':>9s} {'x ours':>7s} {'CPU ms':>9s} {'x ours':>7s}")
    for name, (wall, cpu) in times.items():
        print(f"{name:42s} {wall * 1e3:9.1f} {wall / base_wall:7.1f} {cpu * 1e3:9.1f} {cpu / base_cpu:7.1f}")
    print("\nREADME rows (variant | input | median wall time | ratio to calibration_metrics | CPU time | ratio):")
    for name, (wall, cpu) in times.items():
        print(f"| {name} | {args.rows:,} x {args.classes} | {wall * 1e3:.1f} ms | {wall / base_wall:.1f}x "
              f"| {cpu * 1e3:.1f} ms | {cpu / base_cpu:.1f}x |")

    if args.resamples:
        print(f"\nbootstrap, {args.resamples} resamples (README rows: input | bootstrap_ci wall / CPU | "
              f"calibration_metrics per resample ({args.loop_calls} timed, scaled) wall / CPU | ratio wall / CPU):")
        for classes in args.bootstrap_classes:
            (wall, cpu), (loop_wall, loop_cpu) = bootstrap_rows(args.bootstrap_rows, classes, args.bins,
                                                                args.resamples, args.loop_calls, args.device)
            print(f"| {args.bootstrap_rows:,} x {classes} | {wall:.2f} s / {cpu:.2f} s | {loop_wall:.1f} s / "
                  f"{loop_cpu:.1f} s | {loop_wall / wall:.1f}x / {loop_cpu / cpu:.1f}x |")

if __name__ == "__main__":
    main()
