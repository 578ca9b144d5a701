"""Build an English-German parallel corpus from LibreOffice's help pages (offline, real, professionally translated).

Numbers (LibreOffice 7.4 help, Debian bookworm packages libreoffice-help-en-us / libreoffice-help-de, MPL-2.0):
2,561 HTML pages per language; their paragraphs and headings carry ``id`` attributes (``par_id3147762``,
``hd_id701641581066778``) that are identical in both languages, so the pages align paragraph by paragraph.

Steps (each a function, so the tests can run them on a tiny hand-made tree):

1. ``extract_pairs``: for every page present in both languages, the text of every ``<p>`` / ``<h1>``..``<h6>``
   element with an ``id`` (par_id / hd_id) -> (English, German) pairs, whitespace normalised.
2. ``split_pairs``: deduplicate pairs; pairs that share an English OR a German side are joined into one group
   (union-find), and whole groups go to train / valid / test by a hash of their first sentence, so no sentence of
   either language appears in two splits.
3. ``main``: write ``{train,valid,test}.{en,de}`` (raw text: the references BLEU is computed against), optionally train
   a joint sentencepiece model and write ``*.sp.{en,de}`` for ``fairseq-preprocess``.

Get the data (no ``apt-get install``: that pulls in libreoffice-common):

    apt-get download libreoffice-help-en-us libreoffice-help-de
    for f in libreoffice-help-*.deb; do dpkg-deb -x "$f" lo_help; done
    python scripts/nmt_prepare_libreoffice.py --help-root lo_help/usr/share/libreoffice/help --output-dir data/lo_ende
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import sys
from pathlib import Path

from focal_calibration.experiments import cli
from focal_calibration.files import write_json_atomic

PARAGRAPH_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
ID_PATTERN = re.compile(r"^(par|hd)_id\w+$")
SPLITS = ("train", "valid", "test")


class _ParagraphParser(html.parser.HTMLParser):
    """Collects {id: text} for paragraph / heading elements whose id is a par_id / hd_id (first occurrence wins)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: dict[str, str] = {}
        self._stack: list[tuple[str, str | None]] = []  # open paragraph elements: (tag, id or None)
        self._parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in PARAGRAPH_TAGS:
            pid = dict(attrs).get("id")
            if not self._stack:
                self._parts = []
            self._stack.append((tag, pid if pid and ID_PATTERN.match(pid) else None))

    def handle_endtag(self, tag):
        if self._stack and self._stack[-1][0] == tag:
            _, pid = self._stack.pop()
            if not self._stack and pid is not None:
                text = " ".join("".join(self._parts).split())
                if text and pid not in self.paragraphs:
                    self.paragraphs[pid] = text

    def handle_data(self, data):
        if self._stack:
            self._parts.append(data)


def page_paragraphs(path: Path) -> dict[str, str]:
    parser = _ParagraphParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser.paragraphs


def extract_pairs(help_root: Path, src_lang: str = "en-US", tgt_lang: str = "de") -> list[tuple[str, str]]:
    """(English, German) paragraph pairs aligned through the paragraph ids of pages present in both languages."""
    src_root, tgt_root = Path(help_root) / src_lang, Path(help_root) / tgt_lang
    if not src_root.is_dir() or not tgt_root.is_dir():
        raise cli.DataNotFoundError(f"expected {src_root} and {tgt_root} (the extracted libreoffice-help packages)")
    pairs = []
    for src_page in sorted(src_root.rglob("*.html")):
        tgt_page = tgt_root / src_page.relative_to(src_root)
        if not tgt_page.is_file():
            continue
        src, tgt = page_paragraphs(src_page), page_paragraphs(tgt_page)
        pairs.extend((src[pid], tgt[pid]) for pid in src if pid in tgt)
    if not pairs:
        raise ValueError(f"no aligned paragraphs found under {help_root}")
    return pairs


def split_pairs(pairs, valid_fraction: float = 0.035, test_fraction: float = 0.035, max_words: int = 80,
                seed: str = "lo-ende") -> dict[str, list[tuple[str, str]]]:
    """Deduplicate, drop pairs longer than ``max_words`` words on either side, then split whole groups of pairs that
    share a sentence (either language) by a stable hash, so no sentence appears in two splits."""
    if not 0 < valid_fraction < 1 or not 0 < test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise ValueError(f"valid/test fractions must be in (0, 1) with a sum < 1, got {valid_fraction}, "
                         f"{test_fraction}")
    unique = sorted({(s, t) for s, t in pairs if len(s.split()) <= max_words and len(t.split()) <= max_words
                     and s != t})
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s, t in unique:  # sides live in one namespace, tagged by language
        parent[find("en\t" + s)] = find("de\t" + t)
    splits = {name: [] for name in SPLITS}
    for s, t in unique:
        root = find("en\t" + s)
        u = int.from_bytes(hashlib.sha256((seed + root).encode()).digest()[:8], "big") / 2 ** 64
        name = "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"
        splits[name].append((s, t))
    return splits


def train_sentencepiece(train_files, model_prefix: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=",".join(map(str, train_files)), model_prefix=str(model_prefix),
                                   vocab_size=vocab_size, character_coverage=1.0, model_type="unigram",
                                   input_sentence_size=2_000_000, shuffle_input_sentence=True,
                                   bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)


def encode_files(model_file: Path, out: Path, langs) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    for split in SPLITS:
        for lang in langs:
            lines = (out / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            pieces = sp.encode(lines, out_type=str)
            _write_lines(out / f"{split}.sp.{lang}", (" ".join(p) for p in pieces))


def _write_lines(path: Path, lines) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def get_args_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--help-root", required=True, type=Path, help="…/usr/share/libreoffice/help (has en-US/ and de/)")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--valid-fraction", type=float, default=0.035)
    p.add_argument("--test-fraction", type=float, default=0.035)
    p.add_argument("--max-words", type=int, default=80, help="drop pairs longer than this on either side")
    p.add_argument("--vocab-size", type=int, default=8000, help="joint sentencepiece vocabulary (0: skip)")
    return p


def main(args):
    for name in ("valid_fraction", "test_fraction"):
        value = getattr(args, name)
        if not 0 <= value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1), got {value}")
    if args.valid_fraction + args.test_fraction >= 1:
        raise ValueError(f"--valid-fraction + --test-fraction must be < 1, got {args.valid_fraction} + "
                         f"{args.test_fraction}")
    if args.max_words < 1 or args.vocab_size < 0:
        raise ValueError(f"--max-words must be >= 1 and --vocab-size >= 0, got {args.max_words} and "
                         f"{args.vocab_size}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pairs = extract_pairs(args.help_root)
    splits = split_pairs(pairs, args.valid_fraction, args.test_fraction, args.max_words)
    for name, items in splits.items():
        _write_lines(args.output_dir / f"{name}.en", (s for s, _ in items))
        _write_lines(args.output_dir / f"{name}.de", (t for _, t in items))
    stats = {"aligned_paragraphs": len(pairs), **{name: len(items) for name, items in splits.items()},
             "train_en_words_per_pair": round(sum(len(s.split()) for s, _ in splits["train"])
                                              / max(1, len(splits["train"])), 2)}
    if args.vocab_size:
        out = args.output_dir
        train_sentencepiece([out / "train.en", out / "train.de"], out / "spm", args.vocab_size)
        encode_files(args.output_dir / "spm.model", args.output_dir, ("en", "de"))
    write_json_atomic(args.output_dir / "stats.json", stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    sys.exit(cli.run_cli(get_args_parser(), main))
