"""`make study`: the regime study — Fashion-MNIST training-set size against calibration, per loss, over seeds.

    python scripts/regime_study.py --output-dir results/study
    python scripts/regime_study.py --sizes 2500 55000 --losses ce flsd-53 --epochs 8 --output-dir results/quick

Every cell (size, loss, seed) trains the same recipe (classification/study.py: same number of updates for every
size); only the training-set size differs. Writes under --output-dir:
  study.json                 one record per finished run (train error, ECE / AdaECE pre / post, T, error, NLL, the
                             §3 signature nll_misclassified_rising, ...); a killed study resumes where it stopped
  study.md                   mean ± std over seeds per cell, and the §3 regime per size and loss
  study_*_vs_size.png        pre-T ECE, optimal T and final training error against size (band: spread over seeds)
  runs/<cell>/               each run's folder (checkpoint, log.jsonl, results.json, logits.pt, diagrams, train.out)

The runs go through the grid runner: processes on this machine (--jobs at a time), or a SLURM job array with
--launcher slurm (docs/guide/running-grids.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from classification.datasets import load_dataset
from classification.study import FULL_TRAIN_SIZE, Cell, Recipe, plot_study, run_cells, study_markdown
from classification.claims import compute_claims, verdicts_by_size_markdown
from focal_calibration import bootstrap_samples
from focal_calibration.experiments import cli, runner
from focal_calibration.files import write_json_atomic, write_text_atomic
from focal_calibration.losses import build_loss

DEFAULT_SIZES = (2500, 5000, 10000, 20000, 55000)
DEFAULT_LOSSES = ("ce", "brier", "ls-0.05", "fl-3", "flsd-53")


def get_args_parser() -> cli.ArgumentParser:
    defaults = Recipe()
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="results/study", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="training-set sizes")
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES),
                        help="focal_calibration.build_loss specs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N per cell")
    parser.add_argument("--model", default=defaults.model, choices=("mlp", "small_cnn"), help="image model")
    parser.add_argument("--epochs", type=int, default=8,
                        help="passes over the full 55,000-image set; every size gets that many updates")
    parser.add_argument("--n-resamples", type=int, default=1000,
                        help="test-set bootstrap resamples of the per-size verdicts (0: seed intervals only)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the Debian package's)")
    parser.add_argument("--limit-eval", type=int, default=None, help="evaluate on the first N val / test images "
                        "only (smoke tests)")
    runner.add_launcher_arguments(parser, jobs_default=os.cpu_count() or 1,
                                  jobs_help="runs trained at once, one CPU thread each (default: the number of cores)")
    return parser


def main(args: argparse.Namespace) -> dict:
    recipe = Recipe.from_epochs(args.epochs, model=args.model)
    launcher = runner.launcher_from_args(args)
    bad_sizes = [s for s in args.sizes if not 1 <= s <= FULL_TRAIN_SIZE]
    if bad_sizes:
        raise ValueError(f"--sizes must lie in [1, {FULL_TRAIN_SIZE}], got {bad_sizes[0]}")
    if args.n_resamples < 0:
        raise ValueError(f"--n-resamples must be >= 0, got {args.n_resamples}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    for loss in args.losses:
        build_loss(loss, epochs=args.epochs)  # an unknown spec fails now, not inside a training process
    load_dataset("fashion-mnist", data_dir=args.data_dir)  # missing data: one clear message, not one per run
    cells = [Cell(seed, size, loss) for seed in range(1, args.seeds + 1) for size in args.sizes
             for loss in args.losses]
    out = Path(args.output_dir)
    print(f"regime study: {len(cells)} runs ({len(args.sizes)} sizes x {len(args.losses)} losses x "
          f"{args.seeds} seeds), "
          f"{recipe.updates} updates each, {args.jobs} at a time ({args.launcher}) -> {out}", flush=True)
    start = time.perf_counter()
    study = run_cells(cells, recipe, out, launcher=launcher, data_dir=args.data_dir, limit_eval=args.limit_eval,
                      log=lambda line: print(line, flush=True))
    table = study_markdown(study)
    write_text_atomic(out / "study.md", table)
    figures = plot_study(study, out)
    # the paper's claims at every size where CE ran: the verdict read against the regime (verdicts.md)
    bootstrap = bootstrap_samples if args.n_resamples else None
    blocks = [compute_claims(study["runs"], size, bootstrap=bootstrap, n_resamples=args.n_resamples)
              for size in sorted({r["size"] for r in study["runs"] if r["loss"] == "ce"})]
    write_json_atomic(out / "verdicts.json", {"n_resamples": args.n_resamples, "sizes": blocks})
    write_text_atomic(out / "verdicts.md", verdicts_by_size_markdown(blocks))
    print("\n" + table + "\n" + verdicts_by_size_markdown(blocks))
    print("figures: " + ", ".join(str(f) for f in figures))
    print(f"study time {time.perf_counter() - start:.0f}s")
    return study


if __name__ == "__main__":
    sys.exit(runner.run_cli(get_args_parser(), main))  # a failed run: one error naming it, exit status 1
