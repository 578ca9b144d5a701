"""scripts/readme_tables.py: README blocks are refilled from the named files, never left stale silently."""

import pytest

from scripts.readme_tables import fill

TEXT = """# Title
Some text.
<!-- generated from out/table.md by `make demo` -->
| old | table |
<!-- end generated -->
More text.
<!-- generated from out/missing.md by `make study` -->
kept
<!-- end generated -->
"""


def test_blocks_are_refilled_from_their_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.md").write_text("| new | table |\n| 1 | 2 |\n\n")
    filled, read = fill(TEXT, tmp_path, keep_missing=True)
    assert read == ["out/table.md"]
    assert filled == TEXT.replace("| old | table |\n", "| new | table |\n| 1 | 2 |\n")
    assert fill(filled, tmp_path, keep_missing=True)[0] == filled  # idempotent
    with pytest.raises(ValueError, match="needs 'out/missing.md' \\(made by `make study`\\)"):
        fill(TEXT, tmp_path)


def test_publish_copies_the_named_result_files(tmp_path):
    from scripts.readme_tables import publish
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "claims.md").write_text("| claim |\n")
    (tmp_path / "results" / "demo" / "fig.png").write_bytes(b"\x89PNG")
    readme = ("<!-- generated from docs/results/demo/claims.md by `make demo` -->\n<!-- end generated -->\n"
              "![figure](docs/results/demo/fig.png) and docs/results/demo/absent.md\n")
    assert publish(readme, tmp_path) == ["docs/results/demo/claims.md", "docs/results/demo/fig.png"]
    assert (tmp_path / "docs/results/demo/claims.md").read_text() == "| claim |\n"
    assert (tmp_path / "docs/results/demo/fig.png").read_bytes() == b"\x89PNG"
    assert not (tmp_path / "docs/results/demo/absent.md").exists()


def test_the_readme_shows_the_committed_result_files():
    # every generated block of the README equals the file it names (no typed or stale result numbers)
    from scripts.readme_tables import ROOT
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    filled, read = fill(text, ROOT)
    assert filled == text, "README blocks differ from their files: run scripts/readme_tables.py"


def test_a_missing_readme_is_one_error_line(tmp_path, capsys):
    from focal_calibration.experiments import cli
    from scripts.readme_tables import get_args_parser, main
    with pytest.raises(SystemExit) as info:
        cli.run_cli(get_args_parser(), main, ["--readme", str(tmp_path / "absent.md")])
    assert info.value.code == 2 and "error: --readme" in capsys.readouterr().err
