"""Copy result tables from the scripts' output files into the README and the documentation pages, so that no result
number there is typed.

    python scripts/doc_tables.py            # refill every page in place
    python scripts/doc_tables.py --check    # exit 1 if a block differs from its file (nothing written)
    python scripts/doc_tables.py --publish  # first copy results/X to docs/results/X for every docs/results path

The pages are README.md and every Markdown file under docs/ (docs/results/ excepted), or the ``--page`` files given.
Every generated block looks like

    <!-- generated from docs/results/demo/claims.md by `make demo` -->
    ...the file's content...
    <!-- end generated -->

The block's content is replaced by the named file's content (relative to the repository root). A missing file is an
error, so a block is never silently left stale; a block whose file has not been produced on this machine can be kept
with ``--keep-missing``.

``results/`` is not committed (runs, checkpoints, logits); the files the pages show are: ``docs/results/X`` is a
copy of ``results/X`` that ``--publish`` makes for every ``docs/results/X`` a page names (generated blocks, and
figures linked as ``docs/results/X`` from the README or relatively, ``../results/X``, from a docs page), so a fresh
clone shows the numbers and ``--check`` (run by the tests) keeps the pages equal to them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from focal_calibration.experiments import cli
from focal_calibration.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- generated from (?P<path>\S+) by `(?P<command>[^`]+)` -->\n)(?P<body>.*?)"
                   r"(<!-- end generated -->)", re.S)
PUBLISHED = re.compile(r"(?:docs/|\]\((?:\.\./)*)(results/[\w./-]+\.(?:md|json|png|svg))")


def default_pages(root: Path) -> list[Path]:
    """README.md and the documentation's Markdown pages (not the published result files themselves)."""
    docs = root / "docs"
    pages = [p for p in sorted(docs.rglob("*.md")) if (docs / "results") not in p.parents]
    return [root / "README.md", *pages]


def publish(text: str, root: Path) -> list[str]:
    """Copy ``results/X`` to ``docs/results/X`` for every ``docs/results/X`` the page names; returns the copies."""
    copied = []
    for name in sorted(set(PUBLISHED.findall(text))):
        source = root / name
        if source.is_file():
            target = root / "docs" / name
            data = source.read_bytes()
            atomic_write(target, lambda handle, data=data: handle.write(data))
            copied.append(f"docs/{name}")
    return copied


def fill(text: str, root: Path, keep_missing: bool = False) -> tuple[str, list[str]]:
    """The page's text with every generated block refilled, and the list of files read."""
    read: list[str] = []

    def replace(match: re.Match) -> str:
        path = root / match["path"]
        if not path.is_file():
            if keep_missing:
                return match[0]
            raise ValueError(f"generated block needs {match['path']!r} (made by `{match['command']}`), which does "
                             f"not exist; run that command first or pass --keep-missing")
        read.append(match["path"])
        body = path.read_text(encoding="utf-8").rstrip("\n") + "\n"
        return match[1] + body + match[5]

    return BLOCK.sub(replace, text), read


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", action="append", default=None,
                        help="a page to fill (repeatable; default: README.md and docs/**/*.md)")
    parser.add_argument("--check", action="store_true", help="only report blocks that differ from their files")
    parser.add_argument("--publish", action="store_true",
                        help="first copy results/X to docs/results/X for every docs/results path a page names")
    parser.add_argument("--keep-missing", action="store_true", help="leave blocks whose file does not exist")
    return parser


def main(args) -> int:
    pages = [Path(p) for p in args.page] if args.page else default_pages(ROOT)
    for page in pages:
        if not page.is_file():
            raise ValueError(f"--page {str(page)!r} is not a file")
    stale = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        if args.publish:
            copied = publish(text, ROOT)
            if copied:
                print(f"{page}: published {len(copied)} files: " + ", ".join(copied))
        filled, read = fill(text, ROOT, args.keep_missing)
        if filled == text:
            continue
        if args.check:
            stale.append(str(page))
        else:
            atomic_write(page, lambda handle, filled=filled: handle.write(filled), binary=False)
            print(f"{page}: {len(read)} generated blocks filled from " + ", ".join(read))
    if stale:
        raise SystemExit("generated blocks differ from their files in " + ", ".join(stale)
                         + " (run scripts/doc_tables.py)")
    if args.check:
        print(f"{len(pages)} pages: every generated block matches its file")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(get_args_parser(), main))
