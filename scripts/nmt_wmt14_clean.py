"""Clean a parallel corpus the way Moses' clean-corpus-n.perl does for WMT14 En-De (used by nmt_wmt14_prepare.sh).

A pair is kept when both sides are non-empty after whitespace normalisation, have at most ``--max-len`` words, and
the longer side has at most ``--ratio`` times the words of the shorter one (1.5 and 250 in fairseq's
prepare-wmt14en2de.sh; the recipe applies the ratio to words, not to BPE pieces). Exact duplicate pairs are dropped
too (``--dedup``). Streams line by line: the 4.5M-pair corpus never sits in memory.

    python scripts/nmt_wmt14_clean.py --src raw.en --tgt raw.de --out-src clean.en --out-tgt clean.de
"""

from __future__ import annotations

import hashlib
import os
import sys

from focal_calibration.experiments import cli


def keep_pair(src: str, tgt: str, max_len: int = 250, ratio: float = 1.5) -> bool:
    n_src, n_tgt = len(src.split()), len(tgt.split())
    if n_src == 0 or n_tgt == 0 or n_src > max_len or n_tgt > max_len:
        return False
    return max(n_src, n_tgt) <= ratio * min(n_src, n_tgt)


def clean(src_lines, tgt_lines, max_len: int = 250, ratio: float = 1.5, dedup: bool = True):
    """Yield the kept (src, tgt) pairs, whitespace-normalised; raises if the two sides differ in length."""
    seen = set()
    n = 0
    for n, (src, tgt) in enumerate(zip(src_lines, tgt_lines, strict=True), start=1):
        src, tgt = " ".join(src.split()), " ".join(tgt.split())
        if not keep_pair(src, tgt, max_len, ratio):
            continue
        if dedup:
            key = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=12).digest()
            if key in seen:
                continue
            seen.add(key)
        yield src, tgt


def get_args_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True)
    p.add_argument("--tgt", required=True)
    p.add_argument("--out-src", required=True)
    p.add_argument("--out-tgt", required=True)
    p.add_argument("--max-len", type=int, default=250)
    p.add_argument("--ratio", type=float, default=1.5)
    p.add_argument("--no-dedup", action="store_true")
    return p


def clean_files(args) -> int:
    if args.max_len < 1 or args.ratio < 1:
        raise ValueError(f"--max-len must be >= 1 and --ratio >= 1, got {args.max_len}, {args.ratio}")
    for path in (args.src, args.tgt):
        if not os.path.isfile(path):
            raise cli.DataNotFoundError(f"input file {path!r} does not exist")
    kept = 0
    with open(args.src, encoding="utf-8") as fs, open(args.tgt, encoding="utf-8") as ft, \
            open(args.out_src + ".tmp", "w", encoding="utf-8") as gs, \
            open(args.out_tgt + ".tmp", "w", encoding="utf-8") as gt:
        try:
            for src, tgt in clean(fs, ft, args.max_len, args.ratio, not args.no_dedup):
                gs.write(src + "\n")
                gt.write(tgt + "\n")
                kept += 1
        except ValueError:
            raise ValueError(f"{args.src} and {args.tgt} have different numbers of lines") from None
    os.replace(args.out_src + ".tmp", args.out_src)
    os.replace(args.out_tgt + ".tmp", args.out_tgt)
    print(f"kept {kept} pairs")
    return kept


def main(argv=None) -> int:
    return cli.run_cli(get_args_parser(), clean_files, argv)


if __name__ == "__main__":
    sys.exit(main())
