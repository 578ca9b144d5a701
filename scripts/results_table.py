"""Gather results.json files of many runs (any suite) into the paper's Table 1 / 2 layout.

    python scripts/results_table.py results/ --metric ece adaece error --format markdown latex

One row per (dataset, model), one column per loss (the paper's order: CE, Brier, MMCE, LS-0.05, FL-1/2/3, FLSc,
FLSD; other specs after them), cells "pre / post (T)" in % with T chosen on validation ECE (§5.1). Runs that share
dataset, model and loss (several seeds) are summarised as mean ± std over the runs (sample std, ddof = 1) and the cell
says how many (``n=3``). Metrics that temperature scaling cannot change (error, top-5 error) get one number per cell.
The metrics beyond the paper (``--metric smece ks ece_sweep debiased_l2_ece``) are computed from each run's saved
test logits (``logits.pt``); runs without them (NMT sweeps) show "-".
"""

from __future__ import annotations

import sys
from pathlib import Path

from focal_calibration.experiments import cli
from focal_calibration.experiments.records import read_results
from focal_calibration.experiments.tables import METRICS, to_latex, to_markdown, with_extra_metrics
from focal_calibration.files import write_text_atomic


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="results.json files or folders searched recursively")
    parser.add_argument("--metric", nargs="+", default=["ece", "adaece"], choices=tuple(METRICS))
    parser.add_argument("--format", nargs="+", default=["markdown"], choices=("markdown", "latex"))
    parser.add_argument("--output", default=None, help="also write the tables to this file")
    return parser


def main(args) -> str:
    if args.output and Path(args.output).is_dir():
        raise ValueError(f"--output {args.output!r} is a folder; give the name of the file to write the tables to")
    records = read_results(args.paths)
    if not records:
        raise ValueError(f"no results.json found under {', '.join(args.paths)}")
    records = with_extra_metrics(records, args.metric)  # smece, ks, ...: from each run's saved test logits
    parts = [(to_markdown if fmt == "markdown" else to_latex)(records, metric)
             for fmt in args.format for metric in args.metric]
    text = "\n".join(parts)
    if args.output:
        write_text_atomic(args.output, text)
    print(text, end="")
    return text


if __name__ == "__main__":
    sys.exit(cli.run_cli(get_args_parser(), main))
