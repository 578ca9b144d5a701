"""Focal loss forward+backward vs F.cross_entropy and the naive formula: time and peak-memory ratios.

    python benchmarks/focal_loss.py [--rows 4096 --classes 32000 --device cpu|cuda]

Time: best of --repeats rounds after a warm-up, variants taking turns in this process, ratio to F.cross_entropy.
Peak memory: each variant runs in a fresh subprocess. On CPU the extra peak is the process's resident high-water mark
(VmHWM) after one forward+backward minus the mark once the inputs exist (the true peak, whatever the allocator
caches); on CUDA it is torch.cuda.max_memory_allocated() minus the memory held by the inputs. The gradient itself
(one N×K tensor) is part of every variant's peak.
"""

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from focal_calibration import build_loss, focal_loss

VARIANTS = {
    "F.cross_entropy": lambda z, y: F.cross_entropy(z, y),
    "focal γ=3 (ours)": lambda z, y: focal_loss(z, y, 3.0),
    "FLSD-53 (ours)": build_loss("flsd-53"),
    "focal γ=3 (ours, keep_softmax=False)": lambda z, y: focal_loss(z, y, 3.0, keep_softmax=False),
    "cross-entropy γ=0 (ours)": lambda z, y: focal_loss(z, y, 0.0),
    "naive -(1-exp(logp))**γ·logp": lambda z, y: (-(1 - (lp := F.log_softmax(z, -1).gather(1, y[:, None]))
                                                  .exp()) ** 3.0 * lp).mean(),
}


# ---- losses beyond the paper (losses branch: a separate block to ease merges) --------------------------------------

def _adafocal_mixed():
    """AdaFocal as it trains after some epochs: 15 equal-mass bins, focal and inverse-focal rows mixed."""
    loss = build_loss("adafocal")
    loss.gammas.copy_(torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.2, -0.5, 1.0, 2.0, -1.0, 0.3, 4.0, -2.0, 1.5, 0.2],
                                   dtype=torch.float64))
    loss.inner_edges.copy_(torch.logspace(-9, -4.6, 14, dtype=torch.float64))  # spreads these inputs' p_y over bins
    return loss


VARIANTS.update({
    "AdaFocal, mixed focal / inverse-focal rows (ours, fused)": _adafocal_mixed(),
    "inverse focal γ=2 (ours, fused)": build_loss("inverse-focal-2"),
    "Poly-1 ε=1 (ours, fused)": build_loss("poly-1"),
    "dual focal γ=5 (ours, autograd)": build_loss("dual-focal-5"),
    "MbLS m=10 λ=0.1 (ours, autograd)": build_loss("mbls-10-0.1"),
})
# ---- end of the losses-beyond-the-paper block ----------------------------------------------------------------------


def make_inputs(rows, classes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.empty(rows, classes).normal_(generator=gen).mul_(3)  # in place: no transient copy in the peak
    logits = logits.to(device).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=gen).to(device)
    return logits, target


def step(fn, logits, target):
    logits.grad = None
    fn(logits, target).backward()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(args):
    """Round-robin over the variants (so a busy machine slows them alike); best of --repeats rounds."""
    logits, target = make_inputs(args.rows, args.classes, args.device)
    runs = {name: [] for name in VARIANTS}
    for name, fn in VARIANTS.items():  # warm-up
        step(fn, logits, target)
    for _ in range(args.repeats):
        for name, fn in VARIANTS.items():
            sync(args.device)
            start = time.perf_counter()
            step(fn, logits, target)
            sync(args.device)
            runs[name].append(time.perf_counter() - start)
    return {name: min(times) for name, times in runs.items()}


def peak_memory_of(name, args):
    """Run in a fresh process: extra peak memory (bytes) of one forward+backward of variant `name`."""
    logits, target = make_inputs(args.rows, args.classes, args.device)
    fn = VARIANTS[name]
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, logits, target)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = high_water_rss()
    step(fn, logits, target)
    return high_water_rss() - base


def high_water_rss():
    """This process's peak resident memory in bytes (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_variant:
        print(json.dumps(peak_memory_of(args.memory_variant, args)))
        return
    times = time_variants(args)
    peaks = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--classes", str(args.classes),
                              "--device", args.device, "--memory-variant", name],
                             check=True, capture_output=True, text=True).stdout
        peaks[name] = json.loads(out.strip().splitlines()[-1])
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"focal loss forward+backward, logits [{args.rows}, {args.classes}] float32, {device}, "
          f"torch {torch.__version__}")
    print("| variant | time (ms) | time vs F.cross_entropy | extra peak memory (MiB) | peak vs F.cross_entropy |")
    print("|---|---|---|---|---|")
    ce_time, ce_peak = times["F.cross_entropy"], peaks["F.cross_entropy"]
    for name in VARIANTS:
        print(f"| {name} | {times[name] * 1e3:.0f} | {times[name] / ce_time:.2f}× | {peaks[name] / 2**20:.0f} | "
              f"{peaks[name] / ce_peak:.2f}× |")


if __name__ == "__main__":
    main()
