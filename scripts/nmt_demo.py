"""make demo-nmt: §5.2 of Mukhoti et al. (2020) -- Table 3 and Figure 5 -- at CPU scale, in the over-fitting regime
of §3, with seeds, intervals and computed verdicts. The demo itself is fairseq_focal/demo.py; the trainings and sweeps
run through the grid runner (local processes, or a SLURM job array with --launcher slurm).

    python scripts/nmt_demo.py --output-dir results/nmt_demo                       # the regime, 3 seeds
    python scripts/nmt_demo.py --config contrast --seeds 1 --output-dir results/nmt_demo_contrast
"""

from __future__ import annotations

import sys

from fairseq_focal import demo
from focal_calibration.experiments import cli, runner


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=demo.__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", default="regime", choices=tuple(demo.CONFIGS), help="training pairs and recipe")
    parser.add_argument("--models", nargs="+", default=list(demo.MODELS), choices=tuple(demo.MODELS))
    parser.add_argument("--seeds", nargs="+", type=cli.nonnegative_int, default=[1, 2, 3],
                        help="training seeds (one run per model and seed)")
    parser.add_argument("--split-seed", type=int, default=1,
                        help="seed of the hash order that picks the training pairs (independent of --seeds)")
    parser.add_argument("--data-dir", default="data/nmt_demo", help="holds lo_help/ (the unpacked Debian packages)")
    parser.add_argument("--output-dir", default=None, help="default: results/nmt_demo (regime) or "
                                                           "results/nmt_demo_contrast")
    parser.add_argument("--contrast-dir", default=None,
                        help="a finished contrast demo whose claims.json goes into claims.md as the contrast block")
    parser.add_argument("--threads", type=cli.positive_int, default=1, help="threads per job")
    parser.add_argument("--temperatures", default="0.7,0.8,0.9,1,1.1,1.25,1.5,2,2.5,3,4,5",
                        help="decoded and scored temperatures; must contain 1 and span every model's optimum")
    parser.add_argument("--limit", type=cli.positive_int, default=500,
                        help="sentences of valid and test in the sweep (the first N)")
    parser.add_argument("--beam", type=cli.positive_int, default=4)
    runner.add_launcher_arguments(parser, jobs_default=2, jobs_help="trainings / sweeps run at once")
    return parser


if __name__ == "__main__":
    sys.exit(runner.run_cli(get_args_parser(), demo.main))  # a failed job: one error naming it, exit status 1
