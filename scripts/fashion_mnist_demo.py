"""`make demo`: cross-entropy vs focal loss (and baselines) on Fashion-MNIST: 5.5 min measured on 2 quiet CPU cores.

    python scripts/fashion_mnist_demo.py --out results/demo

Setup (chosen before looking at the calibration numbers, not tuned to them):
  * data: the real Fashion-MNIST (Debian package dataset-fashion-mnist), seeded 55,000 / 5,000 / 10,000
    train / validation / test split; T is chosen on the validation ECE (§5.1);
  * model: ``mlp`` (784-512-512-10 with BN) -- the paper's CIFAR ResNets do not fit minutes of CPU;
  * optimiser: the paper's SGD (momentum 0.9, weight decay 5e-4, lr 0.1 with 10x drops) on a short schedule:
    30 epochs, drops after epochs 15 and 25, batch 128, seed 1;
  * no augmentation: the paper's miscalibration appears once a network fits its training set (§3); an MLP cannot
    use crop / flip invariance, and with them it stayed at ~16% training error after 12 epochs (under-fitted, CE
    then already calibrated), so the demo trains without them (``--augment`` turns them back on);
  * losses: CE, FLSD-53, FL-3, LS-0.05, Brier; two runs at a time, one CPU thread each (``--jobs``).

Writes under --out: one run folder per loss (checkpoint, log.jsonl, results.json, reliability_{pre,post}.png,
train.out), table.md (Table 1 / 2 layout + error / NLL / classwise ECE), figures/ (Figs. 2, 3, 10 from the logs) and
claims.md (the paper's claims beside the numbers). Re-running resumes interrupted runs from their checkpoints.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from classification.datasets import DatasetNotFoundError, load_dataset  # noqa: E402
from classification.figures import plot_runs  # noqa: E402
from focal_calibration.evaluation import read_results  # noqa: E402
from focal_calibration.tables import to_markdown  # noqa: E402


def claims(records: list[dict]) -> str:
    """The paper's §5.1 claims beside this run's numbers (pre-T ECE, optimal T, accuracy)."""
    by_loss = {r["loss"]: r["evaluation"] for r in records}
    lines = ["| claim (paper §5.1, Tables 1-2, 4) | this run | holds? |", "|---|---|---|"]
    if "ce" not in by_loss or "flsd-53" not in by_loss:
        return "CE and FLSD-53 runs are needed for the comparison.\n"
    ce, fl = by_loss["ce"], by_loss["flsd-53"]
    holds = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines.append(f"| FLSD-53 has a lower pre-T ECE than CE | FLSD-53 {100 * fl['pre']['ece']:.2f}% vs CE "
                 f"{100 * ce['pre']['ece']:.2f}% | {holds(fl['pre']['ece'] < ce['pre']['ece'])} |")
    lines.append(f"| optimal T of FLSD-53 is near 1 (paper: 0.9-1.1) | T = {fl['temperature']:g} | "
                 f"{holds(0.9 <= fl['temperature'] <= 1.1)} |")
    lines.append(f"| optimal T of CE is > 1 (paper: 2.0-2.8 on CIFAR) | T = {ce['temperature']:g} | "
                 f"{holds(ce['temperature'] > 1.0)} |")
    gap = 100 * (fl["pre"]["error"] - ce["pre"]["error"])
    lines.append(f"| FLSD-53 accuracy within ~1 point of CE | error FLSD-53 {100 * fl['pre']['error']:.2f}% vs CE "
                 f"{100 * ce['pre']['error']:.2f}% ({gap:+.2f} points) | {holds(abs(gap) <= 1.0)} |")
    for loss, evaluation in by_loss.items():
        if loss not in ("ce", "flsd-53"):
            lines.append(f"| (also) {loss} | pre-T ECE {100 * evaluation['pre']['ece']:.2f}%, "
                         f"T = {evaluation['temperature']:g}, error {100 * evaluation['pre']['error']:.2f}% | |")
    return "\n".join(lines) + "\n"


def _run_command(run_dir: Path, loss: str, args) -> list[str]:
    command = [sys.executable, str(REPO / "classification" / "train.py"), "--dataset", "fashion-mnist",
               "--model", args.model, "--loss", loss, "--epochs", str(args.epochs),
               "--lr-milestones", *map(str, args.lr_milestones), "--seed", str(args.seed),
               "--output-dir", str(run_dir), "--workers", "0", "--no-progress", "--print-freq", "1000000",
               "--augment" if args.augment else "--no-augment"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if (run_dir / "checkpoint.pt").exists():
        command += ["--resume", "auto"]  # re-running the demo continues (or just re-evaluates) finished runs
    for name in ("limit_train", "limit_eval"):
        if getattr(args, name) is not None:
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return command


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/demo")
    parser.add_argument("--losses", nargs="+", default=["ce", "flsd-53", "fl-3", "ls-0.05", "brier"])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr-milestones", type=int, nargs="+", default=[15, 25])
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs trained at once, one CPU thread each (small matmuls scale badly across threads)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit-train", type=int, default=None, help="smoke tests only")
    parser.add_argument("--limit-eval", type=int, default=None, help="smoke tests only")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:  # fail here, with the message that says how to get the data, not inside five training processes
        load_dataset("fashion-mnist", data_dir=args.data_dir)
    except DatasetNotFoundError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = dict(os.environ, MPLBACKEND="Agg")
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = "1"
    pending = [(loss, out / loss) for loss in args.losses]
    running: list = []
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            loss, run_dir = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.out", "w")
            print(f"[{time.perf_counter() - start:5.0f}s] start {loss} -> {run_dir / 'train.out'}", flush=True)
            running.append((loss, run_dir, log, subprocess.Popen(_run_command(run_dir, loss, args), stdout=log,
                                                                 stderr=subprocess.STDOUT, env=env, cwd=REPO)))
        time.sleep(0.5)
        for item in list(running):
            loss, run_dir, log, process = item
            if process.poll() is not None:
                log.close()
                running.remove(item)
                last = (run_dir / "train.out").read_text().strip().splitlines()[-1:]
                print(f"[{time.perf_counter() - start:5.0f}s] {loss} exited {process.returncode}: "
                      f"{last[0] if last else ''}", flush=True)
                if process.returncode != 0:
                    failed.append(loss)
    if failed:
        parser.exit(1, f"{parser.prog}: error: runs failed: {', '.join(failed)} (see their train.out)\n")

    run_dirs = [out / loss for loss in args.losses]
    records = read_results([d / "results.json" for d in run_dirs])
    tables = "\n".join(to_markdown(records, metric) for metric in ("ece", "adaece", "error", "nll", "classwise_ece"))
    (out / "table.md").write_text(tables)
    figures = plot_runs(run_dirs, out / "figures")
    claim_text = claims(records)
    (out / "claims.md").write_text(claim_text)
    print("\n" + tables + "\n" + claim_text)
    print("reliability diagrams: " + ", ".join(str(d / "reliability_pre.png") for d in run_dirs) + " (and _post)")
    print("figures: " + ", ".join(str(f) for f in figures))
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
