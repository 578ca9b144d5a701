"""Build the link-grammar parse cache of the offline Rotten Tomatoes sentences (``make demo-text`` runs it first).

    python scripts/text_prepare_data.py --parse-cache data/text/link_grammar_parses.jsonl [--limit N] [--workers 2]

Parses every sentence the cache lacks with Debian's ``link-parser`` (see ``treelstm/linkgrammar.py`` for the
options, the binarization and the fallback), rewrites the cache atomically after each group of chunks (an
interrupted run keeps what it parsed), and prints how many trees are real parses and how many fell back.
The 10,566 sentences take ~5 CPU-minutes (2.5-3 minutes on 2 idle cores; 8.3 minutes measured on the busy shared
development machine); a second run reads the cache and returns in seconds.
"""

from __future__ import annotations

import argparse
import time

from treelstm.data import load_rotten_tomatoes_trees  # noqa: E402
from treelstm.linkgrammar import link_parser_available  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parse-cache", default="data/text/link_grammar_parses.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences of the shuffled order")
    parser.add_argument("--workers", type=int, default=2, help="parallel link-parser processes")
    parser.add_argument("--seed", type=int, default=1, help="the split seed (same as train.py's --seed)")
    return parser


def main(args) -> dict:
    if not link_parser_available():
        raise SystemExit("link-parser not found: apt-get install link-grammar")
    started = time.time()

    def progress(done, total):
        print(f"  parsed {done}/{total} new sentences ({time.time() - started:.0f}s)", flush=True)

    splits = load_rotten_tomatoes_trees(args.parse_cache, seed=args.seed, limit=args.limit, workers=args.workers,
                                        progress=progress)
    sources = splits.info["tree_sources"]
    total = sum(sources.values())
    print(f"{total} sentences ({len(splits.train)}/{len(splits.val)}/{len(splits.test)}), "
          + ", ".join(f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in sorted(sources.items()))
          + f"; cache {args.parse_cache}; {time.time() - started:.0f}s", flush=True)
    return sources


if __name__ == "__main__":
    main(get_args_parser().parse_args())
