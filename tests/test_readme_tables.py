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
