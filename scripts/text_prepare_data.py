"""Build the link-grammar parse cache of the offline Rotten Tomatoes sentences (``make demo-text`` runs it first).

    python scripts/text_prepare_data.py [--data-dir data/text] [--parse-workers 2] [--parse-timeout 30]

Parses every sentence the cache (``DATA_DIR/link_grammar_parses.jsonl``) lacks with Debian's ``link-parser`` (see
``treelstm/linkgrammar.py`` for the options, the binarization, the fallbacks and why a time-out is an error),
rewrites the cache atomically after each group of chunks (an interrupted run keeps what it parsed), and prints how
many trees are real parses and how many fell back, and why. A second run reads the cache and returns in seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from focal_calibration.experiments import cli
from treelstm.data import DEFAULT_SPLIT_SEED, load_rotten_tomatoes_trees
from treelstm.linkgrammar import DEFAULT_TIMEOUT, link_grammar_version

DEFAULT_DATA_DIR = "data/text"


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder of the parse cache")
    parser.add_argument("--parse-workers", type=cli.positive_int, default=2, help="parallel link-parser processes")
    parser.add_argument("--parse-timeout", type=cli.positive_int, default=DEFAULT_TIMEOUT,
                        help="link-parser's per-sentence CPU-time limit in seconds (expiry is an error)")
    return parser


def main(args) -> dict:
    started = time.time()
    print(f"parsing with {link_grammar_version()} into {Path(args.data_dir) / 'link_grammar_parses.jsonl'}",
          flush=True)

    def progress(done, total):
        print(f"  parsed {done}/{total} new sentences ({time.time() - started:.0f}s)", flush=True)

    splits = load_rotten_tomatoes_trees(Path(args.data_dir) / "link_grammar_parses.jsonl",
                                        split_seed=DEFAULT_SPLIT_SEED, workers=args.parse_workers,
                                        timeout=args.parse_timeout, progress=progress)
    sources = splits.info["tree_sources"]
    total = sum(sources.values())
    print(f"{total} sentences ({len(splits.train)}/{len(splits.val)}/{len(splits.test)}): "
          + ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in sources.items())
          + f"; {time.time() - started:.0f}s", flush=True)
    return sources


if __name__ == "__main__":
    sys.exit(cli.run_cli(get_args_parser(), main))
