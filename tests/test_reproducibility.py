"""docs/reproducibility.md records which code produced each folder of docs/results/: every folder has a row, each
row's command is the one the pages' generated blocks name for that folder's files, and each row's commits exist in
this repository's history (ancestors of the checked-out commit)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
ROW = re.compile(r"^\| `(?P<folder>[\w-]+)/` \| (?P<commands>`[^|]+`) \| (?P<produced>[0-9a-f]{7,40}) \| "
                 r"(?P<checked>[^|]+) \|$")
BLOCK = re.compile(r"<!-- generated from docs/results/(?P<folder>[\w-]+)/\S+ by `(?P<command>[^`]+)` -->")


def rows() -> dict:
    text = (ROOT / "docs" / "reproducibility.md").read_text(encoding="utf-8")
    found = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            assert match["folder"] not in found, f"two rows for {match['folder']}"
            found[match["folder"]] = match
    return found


def block_commands() -> dict:
    pages = [ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*.md") if RESULTS not in p.parents)]
    commands = {}
    for page in pages:
        for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
            commands.setdefault(match["folder"], set()).add(match["command"])
    return commands


def test_every_results_folder_has_one_row_and_every_row_a_folder():
    folders = {p.name for p in RESULTS.iterdir() if p.is_dir()}
    assert sorted(folders ^ set(rows())) == []


def test_each_rows_commands_are_the_commands_the_pages_name():
    named = block_commands()
    for folder, row in rows().items():
        commands = set(re.findall(r"`([^`]+)`", row["commands"]))
        if folder in named:  # a folder no generated block shows (linked only) names its command in the row alone
            assert commands == named[folder], folder


def test_each_rows_commit_is_in_this_history():
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
        pytest.skip("not a full git checkout: the history the rows name is not here")
    for folder, row in rows().items():
        for commit in re.findall(r"\b[0-9a-f]{7,40}\b", row["produced"] + " " + row["checked"]):
            result = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True)
            assert result.returncode == 0, f"{folder}: {commit} is not a commit of this history ({result.stderr})"
