"""Write the tiny synthetic "translation" corpus of :mod:`fairseq_focal.toy_corpus` and binarise it (no download)."""

from __future__ import annotations

import sys

from focal_calibration.experiments import cli


def get_args_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--words", type=cli.positive_int, default=40)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    def run(args):
        from fairseq_focal.toy_corpus import write_corpus  # imports fairseq: after the arguments are checked
        print(write_corpus(args.output_dir, args.words, args.seed))

    return cli.run_cli(get_args_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
