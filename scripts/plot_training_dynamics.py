"""Draw the paper's training-dynamics figures (Figs. 2, 3, 4b-d, 10) from the per-epoch logs of several runs.

    python scripts/plot_training_dynamics.py results/demo/ce results/demo/flsd-53 --output-dir results/demo/figures

Reads each run's ``log.jsonl`` (written by classification/train.py); the figures are described in
:mod:`classification.figures`.
"""

from __future__ import annotations

import sys

from classification.figures import plot_runs
from focal_calibration.experiments import cli


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders (holding log.jsonl) or log.jsonl files")
    parser.add_argument("--output-dir", default="figures", help="folder for the PNG files")
    return parser


def main(args) -> list:
    written = plot_runs(args.runs, args.output_dir)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    sys.exit(cli.run_cli(get_args_parser(), main))
