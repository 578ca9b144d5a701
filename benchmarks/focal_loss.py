"""Focal loss forward+backward vs F.cross_entropy and the naive formula: time and peak-memory ratios, four shapes.

    python benchmarks/focal_loss.py [--shapes 128x10,128x100,20000x100,4096x32000] [--device cpu|cuda]
                                    [--dtype float32|bfloat16|float16] [--threads N] [--json OUT.json]
    python benchmarks/focal_loss.py --shapes 8x19x256x256 --threads 1   # segmentation logits [N, C, H, W]
    python benchmarks/focal_loss.py --crossover      # the small-batch path vs the fused one (SMALL_BATCH_ELEMENTS)

A shape is ROWSxCLASSES (logits [N, C]) or NxCxD1x...xDk (logits [N, C, d1, ..., dk], classes on dim 1, targets
[N, d1, ..., dk]: a Cityscapes-sized segmentation batch is 8x19x256x256); every variant takes the logits as
nn.CrossEntropyLoss does, classes on dim 1.

Time: per shape, every variant runs a number of forward+backward calls per round (many for small shapes, so a round
takes milliseconds), the variants taking turns in each of --repeats rounds in this process (in a fresh random order
every round); the best round counts, and ratios are to F.cross_entropy and to the naive formula measured alongside.
--clock cpu (the default on the CPU) counts the process's CPU time, which a machine shared with other jobs disturbs
far less than wall time; --clock wall (the default on CUDA, synchronised) counts wall time.
Peak memory (shapes with at least --memory-min-elements logits): on CPU each variant runs in a fresh subprocess, the
resident high-water mark (VmHWM) after one forward+backward minus the mark once the inputs exist; on CUDA
torch.cuda.max_memory_allocated() minus the memory the inputs hold, in this process. The gradient (one N×K tensor)
is part of every variant's peak.

Variants: F.cross_entropy; the naive formula -(1 - exp(log p))^γ log p through log_softmax + gather (autograd);
focal_loss γ=3 and build_loss("flsd-53") with the default backend (auto: the Triton kernel for CUDA tensors, the
PyTorch path otherwise); on CUDA also both with backend="torch"; on CPU also keep_softmax=False and γ=0; the
losses beyond the paper (AdaFocal, inverse focal, Poly-1, dual focal, MbLS); and the soft-target path of the
nn.CrossEntropyLoss contract (label_smoothing=0.1: F.cross_entropy's, ours at γ = 0 and γ = 3).
"""

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from common import add_device_and_threads, apply_threads, high_water_rss
from focal_calibration import build_loss, constants, focal_loss
from focal_calibration.files import write_json_atomic

DEFAULT_SHAPES = "128x10,128x100,20000x100,4096x32000"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def naive_focal(z, y, gamma=3.0):
    log_p = F.log_softmax(z, 1).gather(1, y.unsqueeze(1))
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


def naive_flsd53(z, y):
    """The naive formula with FLSD-53's γ (5 below p_y = 0.2, else 3) looked up the same way: context for FLSD-53."""
    log_p = F.log_softmax(z, 1).gather(1, y.unsqueeze(1))
    p = log_p.detach().exp()
    gamma = torch.where(p < 0.2, 5.0, 3.0)
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


def variants(device: str) -> dict:
    flsd = build_loss("flsd-53")
    out = {
        "F.cross_entropy": lambda z, y: F.cross_entropy(z, y),
        "naive -(1-exp(logp))**γ·logp": naive_focal,
        "focal γ=3 (ours)": lambda z, y: focal_loss(z, y, gamma=3.0),
        "FLSD-53 (ours)": flsd,
        "naive, FLSD-53's γ": naive_flsd53,
    }
    if device == "cuda":  # the default backend is the Triton kernel there; the PyTorch path for comparison
        out["focal γ=3 (backend=torch)"] = lambda z, y: focal_loss(z, y, gamma=3.0, backend="torch")
        out["FLSD-53 (backend=torch)"] = lambda z, y: focal_loss(z, y, gamma=flsd.policy, backend="torch")
    else:
        out["focal γ=3 (keep_softmax=False)"] = lambda z, y: focal_loss(z, y, gamma=3.0, keep_softmax=False)
        out["cross-entropy γ=0 (ours)"] = lambda z, y: focal_loss(z, y, gamma=0.0)
    out.update({name: loss.to(device) for name, loss in beyond_the_paper().items()})
    out.update(soft_targets())
    return out


def soft_targets() -> dict:
    """The contract's soft-target path (issue 15): label smoothing in PyTorch's form, cross-entropy and focal loss."""
    return {
        "F.cross_entropy, label_smoothing=0.1": lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1),
        "cross-entropy γ=0, label_smoothing=0.1 (ours)": lambda z, y: focal_loss(z, y, gamma=0.0,
                                                                                  label_smoothing=0.1),
        "focal γ=3, label_smoothing=0.1 (ours)": lambda z, y: focal_loss(z, y, gamma=3.0, label_smoothing=0.1),
    }


# ---- losses beyond the paper (losses branch: a separate block to ease merges) --------------------------------------

def _adafocal_mixed():
    """AdaFocal as it trains after some epochs: 15 equal-mass bins, focal and inverse-focal rows mixed."""
    loss = build_loss("adafocal")
    gammas = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.2, -0.5, 1.0, 2.0, -1.0, 0.3, 4.0, -2.0, 1.5, 0.2],
                          dtype=torch.float64)
    edges = torch.logspace(-9, -4.6, 14, dtype=torch.float64)  # spreads these inputs' p_y over bins
    # a restored state, as a resumed run has (and so a driven loss: no warning of an AdaFocal never updated)
    loss.load_state_dict({"gammas": gammas, "inner_edges": edges, "updates": torch.tensor(3)})
    return loss


def beyond_the_paper() -> dict:
    return {
        "AdaFocal, mixed focal / inverse-focal rows (ours, fused)": _adafocal_mixed(),
        "inverse focal γ=2 (ours, fused)": build_loss("inverse-focal-2"),
        "Poly-1 ε=1 (ours, fused)": build_loss("poly-1"),
        "dual focal γ=5 (ours, autograd)": build_loss("dual-focal-5"),
        "MbLS m=10 λ=0.1 (ours, autograd)": build_loss("mbls-10-0.1"),
    }
# ---- end of the losses-beyond-the-paper block ----------------------------------------------------------------------


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """ROWSxCLASSES or NxCxD1x... items -> logits shapes (classes on dim 1)."""
    shapes = []
    for item in text.split(","):
        try:
            shape = tuple(int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"error: --shapes wants ROWSxCLASSES or NxCxD1x...[,...], got {item!r}") from None
        if len(shape) < 2 or shape[0] < 1 or shape[1] < 2 or min(shape) < 1:
            raise SystemExit(f"error: a shape needs >= 1 row, >= 2 classes and sizes >= 1, got {item!r}")
        shapes.append(shape)
    return shapes


def shape_name(shape) -> str:
    return "x".join(str(v) for v in shape)


def make_inputs(shape, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.empty(shape).normal_(generator=gen).mul_(3)  # in place: no transient copy in the peak
    logits = logits.to(device=device, dtype=dtype).requires_grad_()
    target = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen).to(device)
    return logits, target


def step(fn, logits, target):
    logits.grad = None
    fn(logits, target).backward()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def calls_per_round(shape):
    """Enough calls that a round of a small shape lasts milliseconds (timer resolution, scheduler ticks)."""
    return max(1, min(200, 2_000_000 // math.prod(shape)))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_variants(fns, shape, device, dtype, repeats, clock="wall", seed=0):
    """Seconds per call of each variant: best of `repeats` rounds. The variants take turns in every round, in a fresh
    random order each round: a variant pays for the caches its predecessor left (~15 µs a call at [128 x 10] on
    this CPU when it always followed F.cross_entropy), so no variant may always follow the same one."""
    logits, target = make_inputs(shape, device, dtype)
    calls = calls_per_round(shape)
    now = CLOCKS[clock]
    names = list(fns)
    best = {name: float("inf") for name in names}
    for fn in fns.values():  # warm-up: allocator, thread pool, Triton compilation
        step(fn, logits, target)
        step(fn, logits, target)
    order = random.Random(seed)
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            sync(device)
            start = now()
            for _ in range(calls):
                step(fns[name], logits, target)
            sync(device)
            best[name] = min(best[name], (now() - start) / calls)
    return best


def peak_memory_here(fn, shape, device, dtype):
    """Extra peak bytes of one forward+backward (CUDA: allocator peak; CPU: this process's VmHWM)."""
    logits, target = make_inputs(shape, device, dtype)
    if device == "cuda":
        step(fn, logits, target)  # compile first; its workspace is not the variant's
        logits.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, logits, target)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = high_water_rss()
    step(fn, logits, target)
    return high_water_rss() - base


def peak_memory(names, shape, args):
    if args.device == "cuda":
        fns = variants(args.device)
        return {name: peak_memory_here(fns[name], shape, args.device, DTYPES[args.dtype]) for name in names}
    peaks = {}
    for name in names:  # CPU: a fresh process per variant, so one variant's high-water mark is not another's
        out = subprocess.run([sys.executable, __file__, "--device", "cpu", "--dtype", args.dtype,
                              "--memory-variant", name, "--memory-shape", shape_name(shape)],
                             check=True, capture_output=True, text=True).stdout
        peaks[name] = json.loads(out.strip().splitlines()[-1])
    return peaks


def shape_table(runs, peaks):
    """Markdown table of one shape: mean time per call, and the ratios as mean ± std over the runs (one run: no std)."""
    names = list(runs[0])
    ce_name, naive_name = "F.cross_entropy", "naive -(1-exp(logp))**γ·logp"
    mean_ce = statistics.fmean(run[ce_name] for run in runs)
    unit, scale = ("µs", 1e6) if mean_ce < 1e-3 else ("ms", 1e3)

    def ratio(name, base):
        values = [run[name] / run[base] for run in runs]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.2f}{spread}×"

    lines = [f"| variant | time ({unit}) | × F.cross_entropy | × naive | extra peak (MiB) | peak × F.cross_entropy |",
             "|---|---|---|---|---|---|"]
    for name in names:
        seconds = statistics.fmean(run[name] for run in runs) * scale
        memory = f"{peaks[name] / 2**20:.0f} | {peaks[name] / peaks[ce_name]:.2f}×" if peaks else "— | —"
        lines.append(f"| {name} | {seconds:.{0 if seconds >= 100 else 1}f} | {ratio(name, ce_name)} | "
                     f"{ratio(name, naive_name)} | {memory} |")
    return "\n".join(lines)


GOALS = (  # issue 11: (shape, variant, baseline, what is compared, bound)
    ("128x10", "focal γ=3 (ours)", "naive -(1-exp(logp))**γ·logp", "seconds", 1.0),
    ("128x10", "FLSD-53 (ours)", "naive -(1-exp(logp))**γ·logp", "seconds", 1.0),
    ("128x100", "focal γ=3 (ours)", "naive -(1-exp(logp))**γ·logp", "seconds", 1.0),
    ("128x100", "FLSD-53 (ours)", "naive -(1-exp(logp))**γ·logp", "seconds", 1.0),
    ("4096x32000", "focal γ=3 (ours)", "F.cross_entropy", "seconds", 0.6),
    ("8192x32000", "focal γ=3 (ours)", "F.cross_entropy", "seconds", 0.8),
    ("8192x32000", "FLSD-53 (ours)", "F.cross_entropy", "seconds", 0.8),
    ("8192x32000", "focal γ=3 (ours)", "F.cross_entropy", "peak_bytes", 1.0),
    ("8192x32000", "FLSD-53 (ours)", "F.cross_entropy", "peak_bytes", 1.0),
    # issue 15: segmentation logits [N, C, H, W], classes on dim 1 (at most one copy of the logits for the layout)
    ("8x19x256x256", "focal γ=3 (ours)", "F.cross_entropy", "seconds", 1.0),
    ("8x19x256x256", "FLSD-53 (ours)", "F.cross_entropy", "seconds", 1.0),
    ("8x19x256x256", "focal γ=3 (ours)", "F.cross_entropy", "peak_bytes", 1.0),
    ("8x19x256x256", "FLSD-53 (ours)", "F.cross_entropy", "peak_bytes", 1.0),
)


def goal_verdicts(results) -> list[str]:
    """The issue's goals that these results speak to, each MET or MISSED by the mean ratio over the runs."""
    lines = []
    for shape, name, base, kind, bound in GOALS:
        entry = results.get(shape)
        if entry is None or not entry.get(kind):
            continue
        if kind == "seconds":
            ratios = [run[name] / run[base] for run in entry.get("seconds_per_run", [entry["seconds"]])]
        else:
            ratios = [entry[kind][name] / entry[kind][base]]
        mean = statistics.fmean(ratios)
        what = "time" if kind == "seconds" else "extra peak memory"
        lines.append(f"goal [{shape}] {name} {what} <= {bound}x {base}: {'MET' if mean <= bound else 'MISSED'} "
                     f"({mean:.2f}x, max over runs {max(ratios):.2f}x)")
    return lines


def report(data: dict) -> None:
    """Tables and goal verdicts of a --json file (what a run printed, without measuring again)."""
    for shape, entry in data["results"].items():
        print(f"\n[{shape.replace('x', ' x ')}]")
        print(shape_table(entry.get("seconds_per_run", [entry["seconds"]]), entry["peak_bytes"]))
    print()
    print("\n".join(goal_verdicts(data["results"])))


def with_small_batch_elements(threshold, fn):
    """fn run with constants.SMALL_BATCH_ELEMENTS set to `threshold` (0: the fused path; 2**40: the small-batch
    path)."""
    def run(z, y):
        saved, constants.SMALL_BATCH_ELEMENTS = constants.SMALL_BATCH_ELEMENTS, threshold
        try:
            return fn(z, y)
        finally:
            constants.SMALL_BATCH_ELEMENTS = saved
    return run


def crossover(args):
    """Small-batch path vs fused Function path on a grid of sizes, interleaved (the SMALL_BATCH_ELEMENTS choice:
    the largest N·K = 2^p at which the small-batch path is at least as fast for K = 10, 100 and 1000 alike, and at
    every smaller N·K)."""
    print(f"small-batch path / fused path, focal γ=3 forward+backward, {args.dtype}, {args.device}, threads "
          f"{torch.get_num_threads()}, {args.clock} time, load average {os.getloadavg()[0]:.1f} (< 1: small-batch "
          f"path faster)")
    print("| N·K | K=10 | K=100 | K=1000 |")
    print("|---|---|---|---|")
    fns = {"small": with_small_batch_elements(2 ** 40, lambda z, y: focal_loss(z, y, gamma=3.0)),
           "fused": with_small_batch_elements(0, lambda z, y: focal_loss(z, y, gamma=3.0))}
    results, threshold, still_faster = {}, None, True
    for power in range(10, 21):
        ratios = []
        for classes in (10, 100, 1000):
            rows = max(1, 2 ** power // classes)
            times = time_variants(fns, (rows, classes), args.device, DTYPES[args.dtype], args.repeats, args.clock)
            ratios.append(times["small"] / times["fused"])
            results[f"2^{power}, K={classes}"] = ratios[-1]
        still_faster = still_faster and all(r <= 1.0 for r in ratios)
        threshold = 2 ** power if still_faster else threshold
        print(f"| 2^{power} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |", flush=True)
    print(f"criterion met up to N·K = {threshold} (SMALL_BATCH_ELEMENTS is {constants.SMALL_BATCH_ELEMENTS})")
    results["threshold"] = threshold
    return results


def profile(args):
    """torch.profiler over 200 forward+backward calls of F.cross_entropy, the naive formula and both PyTorch paths of
    focal_loss at the first --shapes shape: ATen calls per forward+backward (what a small batch pays for, whatever the
    machine's load) and each path's top ops by self CPU time (shares, profiler overhead included)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    shape, = parse_shapes(args.shapes)[:1]
    logits, target = make_inputs(shape, args.device, DTYPES[args.dtype])
    focal_3 = lambda z, y: focal_loss(z, y, gamma=3.0)  # noqa: E731
    paths = {"F.cross_entropy": lambda z, y: F.cross_entropy(z, y), "naive": naive_focal,
             "focal γ=3, fused autograd.Function path": with_small_batch_elements(0, focal_3),
             "focal γ=3, small-batch path": with_small_batch_elements(2 ** 40, focal_3),
             "FLSD-53, small-batch path": with_small_batch_elements(2 ** 40, build_loss("flsd-53"))}
    calls = 200
    for name, fn in paths.items():
        for _ in range(50):
            step(fn, logits, target)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                step(fn, logits, target)
        events = prof.key_averages()
        aten = sum(e.count for e in events if e.key.startswith("aten::")) / calls
        python = sum(e.count for e in events if not e.key.startswith(("aten::", "autograd::", "torch::"))) / calls
        print(f"\n{name}, [{' x '.join(map(str, shape))}]: {aten:.0f} ATen calls (nested ones included) and "
              f"{python:.0f} other profiled events (autograd nodes, Python autograd.Function hops) per "
              f"forward+backward")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_and_threads(parser)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="ROWSxCLASSES,... (default %(default)s)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per run; a run reports its best round")
    parser.add_argument("--runs", type=int, default=1, help="independent timing runs (orders seeded 0, 1, ...); "
                        "the table gives the ratios' mean ± std over them")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default=None,
                        help="what a round's time counts (default: cpu on the CPU, wall on CUDA)")
    parser.add_argument("--memory-min-elements", type=int, default=1_000_000,
                        help="measure peak memory for shapes with at least this many logits (default %(default)s)")
    parser.add_argument("--crossover", action="store_true", help="time the small-batch path against the fused one")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler of both PyTorch paths at the first shape")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--report", default=None, metavar="JSON", help="print the tables and goal verdicts of a "
                        "file written by --json, measuring nothing")
    parser.add_argument("--memory-variant", help=argparse.SUPPRESS)
    parser.add_argument("--memory-shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.runs < 1 or args.repeats < 1:
        raise SystemExit(f"error: --runs and --repeats must be >= 1, got {args.runs} and {args.repeats}")
    apply_threads(args)
    if args.clock is None:
        args.clock = "wall" if args.device == "cuda" else "cpu"
    if args.memory_variant:
        shape, = parse_shapes(args.memory_shape)
        fn = variants(args.device)[args.memory_variant]
        print(json.dumps(peak_memory_here(fn, shape, args.device, DTYPES[args.dtype])))
        return
    if args.report:
        report(json.loads(open(args.report, encoding="utf-8").read()))
        return
    if args.profile:
        profile(args)
        return
    if args.crossover:
        results = crossover(args)
    else:
        device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"focal loss forward+backward, {args.dtype} logits, {device}, torch {torch.__version__}, "
              f"load average {os.getloadavg()[0]:.1f}, {args.clock} time, {args.runs} run(s) of best of "
              f"{args.repeats} rounds")
        results = {}
        fns = variants(args.device)
        for shape in parse_shapes(args.shapes):
            runs = [time_variants(fns, shape, args.device, DTYPES[args.dtype], args.repeats, args.clock, seed)
                    for seed in range(args.runs)]
            peaks = peak_memory(fns, shape, args) if math.prod(shape) >= args.memory_min_elements else {}
            print(f"\n[{' x '.join(map(str, shape))}], load average {os.getloadavg()[0]:.1f}")
            print(shape_table(runs, peaks), flush=True)
            results[shape_name(shape)] = {"seconds": {name: statistics.fmean(run[name] for run in runs)
                                                        for name in fns},
                                            "seconds_per_run": runs, "peak_bytes": peaks}
        print()
        print("\n".join(goal_verdicts(results)))
    if args.json:
        write_json_atomic(args.json, {"device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
                                      "clock": args.clock, "load_average": os.getloadavg()[0], "results": results})


if __name__ == "__main__":
    main()
