"""scripts/doc_tables.py: the generated blocks of the README and the docs pages are refilled from the named files,
never left stale silently."""

import pytest

from scripts.doc_tables import ROOT, default_pages, fill, get_args_parser, main, publish

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
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "claims.md").write_text("| claim |\n")
    (tmp_path / "results" / "demo" / "fig.png").write_bytes(b"\x89PNG")
    (tmp_path / "results" / "demo" / "page.png").write_bytes(b"\x89PNG2")
    page = ("<!-- generated from docs/results/demo/claims.md by `make demo` -->\n<!-- end generated -->\n"
            "![figure](docs/results/demo/fig.png) and docs/results/demo/absent.md\n"
            "![from a docs page](../results/demo/page.png)\n")
    assert publish(page, tmp_path) == ["docs/results/demo/claims.md", "docs/results/demo/fig.png",
                                       "docs/results/demo/page.png"]
    assert (tmp_path / "docs/results/demo/claims.md").read_text() == "| claim |\n"
    assert (tmp_path / "docs/results/demo/fig.png").read_bytes() == b"\x89PNG"
    assert (tmp_path / "docs/results/demo/page.png").read_bytes() == b"\x89PNG2"
    assert not (tmp_path / "docs/results/demo/absent.md").exists()


def test_every_page_shows_the_committed_result_files():
    # every generated block of the README and the docs equals the file it names (no typed or stale result numbers)
    pages = default_pages(ROOT)
    assert ROOT / "README.md" in pages and any("evidence" in p.parts for p in pages)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert fill(text, ROOT)[0] == text, f"{page}: blocks differ from their files: run scripts/doc_tables.py"


def test_a_missing_page_is_one_error_line(tmp_path, capsys):
    from focal_calibration.experiments import cli
    with pytest.raises(SystemExit) as info:
        cli.run_cli(get_args_parser(), main, ["--page", str(tmp_path / "absent.md")])
    assert info.value.code == 2 and "error: --page" in capsys.readouterr().err
