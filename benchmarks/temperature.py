"""fit_temperature: the paper's grid search (100 temperatures, ECE objective) and the L-BFGS NLL fit, vs a per-T loop;
and the post-hoc maps beside it (vector / matrix scaling, Dirichlet calibration), timed against the same grid fit.

    python benchmarks/temperature.py [--repeats 3 --device cpu|cuda] [--sizes 5000x100 100000x1000]

The logits are z * 2.5 for logits z of a perfectly calibrated model (labels drawn from softmax(z)), so the fits
should find T close to 2.5. All variants run in this process, taking turns (round-robin) after a warm-up; time =
median of --repeats rounds (wall clock, and CPU time of all threads), ratio = variant / fit_temperature(grid).
torch's thread count is left at its default (on a busy shared machine see the note in benchmarks/metrics.py).

* per-T loop: the paper's style, for each T softmax(z / T) and an ECE with a Python loop and .item() per bin. Written
  here for the comparison only. On inputs above 10^7 scores it runs on the first 5 temperatures, scaled by 20, and
  every variant is timed over at most 2 rounds.
* post-hoc maps (focal_calibration.calibration.scaling): vector scaling (2K parameters), and, while rows * K^2 <=
2^30, matrix
  scaling and Dirichlet calibration with ODIR λ = μ = 1 (K^2 + K parameters: more than 5,000 rows for K = 100, so
  unregularised matrix scaling is refused there) and matrix scaling with λ = μ chosen by 3-fold cross-validation
  over 7 values (evaluate_calibration's choice for such K). All are L-BFGS fits of the NLL from the identity map.
* peak memory (CPU): the process's resident high-water mark during the variant's first (warm-up) run minus what was
  resident before (Linux /proc, reset per variant); on CUDA the peak of allocated memory above the inputs.
"""

import argparse
import os
import statistics

import torch

from common import add_device_and_threads, apply_threads, timed
from focal_calibration.calibration.scaling import fit_dirichlet, fit_matrix_scaling, fit_vector_scaling
from focal_calibration.calibration.temperature import DEFAULT_TEMPERATURES, fit_temperature

MATRIX_MAPS_MAX_COST = 2 ** 30  # rows * K^2 above which the K x K maps are not timed (minutes per fit on a CPU)


def per_temperature_loop(logits, labels, temperatures, n_bins=15):
    """ECE of softmax(logits / T) for each T with a plain loop over bins; returns the T of the smallest ECE."""
    best_t, best_ece = None, float("inf")
    edges = [i / n_bins for i in range(n_bins + 1)]
    for t in temperatures:
        confidence, prediction = torch.softmax(logits / float(t), dim=-1).max(dim=-1)
        correct = (prediction == labels).float()
        ece = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = (confidence > lo) & (confidence <= hi)
            count = in_bin.sum().item()
            if count:
                ece += abs(correct[in_bin].mean().item() - confidence[in_bin].mean().item()) * count / len(labels)
        if ece < best_ece:
            best_t, best_ece = float(t), ece
    return best_t


def make_problem(rows, classes, device, true_temperature=2.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator).mul_(2)
    labels = torch.empty(rows, dtype=torch.long)
    for start in range(0, rows, 10_000):  # sample labels from softmax(z) in slices (bounded memory)
        probs = torch.softmax(logits[start:start + 10_000], dim=-1)
        labels[start:start + 10_000] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits.mul_(true_temperature).to(device), labels.to(device)


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def measure(variants, repeats, device):
    """Median (wall, CPU) seconds over round-robin rounds and extra peak memory in MiB of each variant."""
    results = {name: [] for name in variants}
    peaks = {}
    for name, fn in variants.items():  # warm-up run, also measuring the peak
        if device == "cpu" and _reset_peak_rss():
            before = _rss_kib("VmRSS")
            fn()
            peaks[name] = max(0, _rss_kib("VmHWM") - before) / 1024
        elif device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            peaks[name] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
        else:
            fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            results[name].append(timed(fn, device))
    return {name: tuple(statistics.median(c) for c in zip(*runs)) for name, runs in results.items()}, peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["5000x100", "100000x1000"])
    parser.add_argument("--repeats", type=int, default=3)
    add_device_and_threads(parser)
    args = parser.parse_args()
    apply_threads(args)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{device_name}, torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    readme = []
    small_logits, small_labels = make_problem(1000, 10, args.device)  # first calls: lazy imports, thread pool
    fit_temperature(small_logits, small_labels)
    fit_temperature(small_logits, small_labels, "nll", method="lbfgs")
    per_temperature_loop(small_logits, small_labels, DEFAULT_TEMPERATURES[:2])
    for size in args.sizes:
        rows, classes = map(int, size.split("x"))
        logits, labels = make_problem(rows, classes, args.device)
        large = rows * classes > 10 ** 7
        loop_grid = DEFAULT_TEMPERATURES[:5] if large else DEFAULT_TEMPERATURES
        repeats = min(args.repeats, 2) if large else args.repeats  # keeps the script within ~2 minutes
        loop_scale = len(DEFAULT_TEMPERATURES) / len(loop_grid)
        fits = {}

        def grid_fit():
            fits["grid"] = fit_temperature(logits, labels, "ece").temperature

        def lbfgs_fit():
            fits["lbfgs"] = fit_temperature(logits, labels, "nll", method="lbfgs").temperature

        def timed_map(name, fit_map, **kwargs):
            def run():
                fits[name] = fit_map(logits, labels, **kwargs)
            return run

        loop_name = "per-T loop, ECE" + (f" ({len(loop_grid)} T, x{loop_scale:g})" if large else "")
        variants = {
            "fit_temperature grid ECE (100 T)": grid_fit,
            "fit_temperature lbfgs NLL": lbfgs_fit,
            loop_name: lambda: per_temperature_loop(logits, labels, loop_grid),
            "fit_vector_scaling": timed_map("fit_vector_scaling", fit_vector_scaling),
        }
        if rows * classes ** 2 <= MATRIX_MAPS_MAX_COST:
            variants.update({
                "fit_matrix_scaling ODIR 1,1": timed_map("fit_matrix_scaling ODIR 1,1", fit_matrix_scaling,
                                                         odir=(1.0, 1.0)),
                "fit_matrix_scaling ODIR cv": timed_map("fit_matrix_scaling ODIR cv", fit_matrix_scaling, odir="cv"),
                "fit_dirichlet ODIR 1,1": timed_map("fit_dirichlet ODIR 1,1", fit_dirichlet, odir=(1.0, 1.0)),
            })
        else:
            print(f"\n{rows:,} x {classes}: matrix scaling / Dirichlet not timed "
                  f"(rows * K^2 = {rows * classes ** 2:.2g} > {MATRIX_MAPS_MAX_COST:.2g})")
        times, peaks = measure(variants, repeats, args.device)
        times[loop_name] = tuple(seconds * loop_scale for seconds in times[loop_name])
        base_wall, base_cpu = times["fit_temperature grid ECE (100 T)"]
        print(f"\n{rows:,} x {classes} float32 logits ({rows * classes * 4 / 2 ** 20:,.0f} MiB), true T = 2.5: "
              f"grid T = {fits['grid']:g}, lbfgs T = {fits['lbfgs']:.4f}; median of {repeats} rounds")
        maps = [name for name in variants if name.startswith("fit_") and name in fits]
        print("validation NLL at the fit: " + ", ".join(
            f"{name} {fits[name].nll:.4f} ({fits[name].n_iter} it.{'' if fits[name].converged else ', not converged'})"
            for name in maps))
        print(f"{'variant':36s} {'wall s':>8s} {'x grid':>7s} {'CPU s':>8s} {'x grid':>7s} {'peak MiB':>9s}")
        for name, (wall, cpu) in times.items():
            peak = f"{peaks[name]:9.0f}" if name in peaks else f"{'-':>9s}"
            print(f"{name:36s} {wall:8.3f} {wall / base_wall:7.2f} {cpu:8.3f} {cpu / base_cpu:7.2f} {peak}")
            readme.append(f"| {name} | {rows:,} x {classes} | {wall:.3f} s | {wall / base_wall:.2f}x | {cpu:.3f} s "
                          f"| {cpu / base_cpu:.2f}x | {peak.strip()} MiB |")
        logits = labels = None  # free this size's problem before the next one
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")
    print("README rows (variant | input | median wall time | ratio | CPU time of all threads | ratio | extra peak):")
    print("\n".join(readme))


if __name__ == "__main__":
    main()
