"""sigmoid_focal_loss: the analytic backward (the default) against plain autograd over the same formula, and both
against ``F.binary_cross_entropy_with_logits`` and ``torchvision.ops.sigmoid_focal_loss`` (forward + backward).

    python benchmarks/sigmoid_focal.py [--repeats 7 --threads 1 --device cpu|cuda] [--shapes 4096x80 64x20x64x64]

Variants run in this process, taking turns (round-robin) after a warm-up; time = median of --repeats rounds of one
forward + backward (mean reduction, γ = 2 unless the variant says otherwise, multi-hot targets with ~10% positives),
wall clock and CPU time of all threads (with --threads 1 the CPU time is the work, whatever the machine's load);
ratio = variant / F.binary_cross_entropy_with_logits. "autograd" is sigmoid_focal_loss computed by autograd over the
per-element formula (the path taken when targets or weights require a gradient), the comparison that decides
whether the analytic backward pays.
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

from common import add_device_and_threads, apply_threads, timed
from focal_calibration.losses.gamma import parse_gamma_policy
from focal_calibration.losses.sigmoid import sigmoid_focal_loss


def variants(flsd):
    from torchvision.ops import sigmoid_focal_loss as torchvision_loss

    def ours(z, y):
        return sigmoid_focal_loss(z, y, 2.0)

    def ours_autograd(z, y):  # a target that requires a gradient takes the autograd path; nothing else changes
        return sigmoid_focal_loss(z, y.requires_grad_(), 2.0)

    return {
        "F.binary_cross_entropy_with_logits": lambda z, y: F.binary_cross_entropy_with_logits(z, y),
        "torchvision sigmoid_focal_loss (alpha=-1)": lambda z, y: torchvision_loss(z, y, alpha=-1, gamma=2,
                                                                                   reduction="mean"),
        "ours, analytic backward": ours,
        "ours, autograd": ours_autograd,
        "ours FLSD-53, analytic backward": lambda z, y: sigmoid_focal_loss(z, y, flsd),
        "ours FLSD-53, autograd": lambda z, y: sigmoid_focal_loss(z, y.requires_grad_(), flsd),
    }


def main():
    parser = add_device_and_threads(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=["4096x80", "64x20x64x64"])
    args = parser.parse_args()
    apply_threads(args)
    flsd = parse_gamma_policy("flsd-53")
    for shape_text in args.shapes:
        shape = tuple(int(s) for s in shape_text.split("x"))
        generator = torch.Generator().manual_seed(0)
        logits = (torch.randn(shape, generator=generator) * 3).to(args.device)
        target = (torch.rand(shape, generator=generator) < 0.1).float().to(args.device)
        runs = variants(flsd)

        def step(fn):
            z = logits.clone().requires_grad_()
            fn(z, target.clone()).backward()

        for fn in runs.values():  # warm-up
            step(fn)
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(lambda: step(fn), args.device))
        base = [statistics.median(v[i] for v in times["F.binary_cross_entropy_with_logits"]) for i in (0, 1)]
        print(f"shape {shape_text} ({logits.numel():,} logits, {args.device}, threads {torch.get_num_threads()}): "
              f"wall, CPU time")
        for name, values in times.items():
            wall, cpu = (statistics.median(v[i] for v in values) for i in (0, 1))
            print(f"  {name:45s} {1000 * wall:8.2f} ms {wall / base[0]:5.2f}x   CPU {1000 * cpu:8.2f} ms "
                  f"{cpu / base[1]:5.2f}x")


if __name__ == "__main__":
    main()
