"""Copy result tables from the scripts' output files into the README, so that no result number there is typed.

    python scripts/readme_tables.py            # rewrite README.md in place
    python scripts/readme_tables.py --check    # exit 1 if a block differs from its file (nothing written)
    python scripts/readme_tables.py --publish  # first copy results/X to docs/results/X for every docs/results path

Every generated block in the README looks like

    <!-- generated from results/demo/claims.md by `make demo` -->
    ...the file's content...
    <!-- end generated -->

The block's content is replaced by the named file's content (relative to the repository root). A missing file is an
error, so a block is never silently left stale; a block whose file has not been produced on this machine can be kept
with ``--keep-missing``.

``results/`` is not committed (runs, checkpoints, logits); the files the README shows are: ``docs/results/X`` is a
copy of ``results/X`` that ``--publish`` makes for every ``docs/results/...`` path the README names (generated blocks
and figures), so a fresh clone shows the numbers and ``--check`` (run by the tests) keeps the README equal to them.
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
PUBLISHED = re.compile(r"docs/results/[\w./-]+\.(?:md|json|png|svg)")


def publish(text: str, root: Path) -> list[str]:
    """Copy ``results/X`` to ``docs/results/X`` for every ``docs/results/X`` the README names; returns the copies."""
    copied = []
    for name in sorted(set(PUBLISHED.findall(text))):
        source = root / "results" / name.removeprefix("docs/results/")
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            data = source.read_bytes()
            atomic_write(target, lambda handle, data=data: handle.write(data))
            copied.append(name)
    return copied


def fill(text: str, root: Path, keep_missing: bool = False) -> tuple[str, list[str]]:
    """The README text with every generated block refilled, and the list of files read."""
    read: list[str] = []

    def replace(match: re.Match) -> str:
        path = root / match["path"]
        if not path.is_file():
            if keep_missing:
                return match[0]
            raise ValueError(f"README block needs {match['path']!r} (made by `{match['command']}`), which does not "
                             f"exist; run that command first or pass --keep-missing")
        read.append(match["path"])
        body = path.read_text(encoding="utf-8").rstrip("\n") + "\n"
        return match[1] + body + match[5]

    return BLOCK.sub(replace, text), read


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="the README to fill")
    parser.add_argument("--check", action="store_true", help="only report blocks that differ from their files")
    parser.add_argument("--publish", action="store_true",
                        help="first copy results/X to docs/results/X for every docs/results path the README names")
    parser.add_argument("--keep-missing", action="store_true", help="leave blocks whose file does not exist")
    return parser


def main(args) -> int:
    readme = Path(args.readme)
    if not readme.is_file():
        raise ValueError(f"--readme {str(readme)!r} is not a file")
    text = readme.read_text(encoding="utf-8")
    if args.publish:
        copied = publish(text, ROOT)
        print(f"published {len(copied)} files: " + ", ".join(copied))
    filled, read = fill(text, ROOT, args.keep_missing)
    if args.check:
        if filled != text:
            raise SystemExit(f"{readme}: generated blocks differ from their files (run scripts/readme_tables.py)")
        print(f"{readme}: {len(read)} generated blocks match their files")
        return 0
    if filled != text:
        atomic_write(readme, lambda handle: handle.write(filled), binary=False)
    print(f"{readme}: {len(read)} generated blocks filled from " + ", ".join(read))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(get_args_parser(), main))
