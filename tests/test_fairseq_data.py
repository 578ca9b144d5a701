"""Data preparation of the NMT suite on tiny hand-made inputs: LibreOffice help alignment / splitting and the WMT14
cleaning rules."""

from pathlib import Path

import pytest

from scripts import nmt_prepare_libreoffice as lo
from scripts import nmt_wmt14_clean as wmt

PAGE = """<html><body><div id="DisplayArea">
<h1 id="hd_id1" dir="auto">{title}</h1>
<p id="par_id11" class="paragraph">{first} <span class="menuitem">{menu}</span>.</p>
<p id="par_id12">{second}</p>
<p>no id: {second}</p>
<p id="bm_id3">{second}</p>
<div class="tip"><p id="par_id13">  {tip}\n  </p></div>
</div></body></html>"""


def write_page(root: Path, lang: str, name: str, **text):
    path = root / lang / "text" / f"{name}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.format(**text), encoding="utf-8")


def test_pages_align_through_paragraph_ids(tmp_path):
    write_page(tmp_path, "en-US", "a", title="Find Bar", first="Use the", menu="Find", second="Press Enter",
               tip="A tip")
    write_page(tmp_path, "de", "a", title="Suchleiste", first="Verwenden Sie", menu="Suchen",
               second="Drücken Sie Eingabe", tip="Ein Tipp")
    write_page(tmp_path, "en-US", "only_english", title="x", first="y", menu="z", second="w", tip="v")
    pairs = lo.extract_pairs(tmp_path)
    assert pairs == [("Find Bar", "Suchleiste"), ("Use the Find.", "Verwenden Sie Suchen."),
                     ("Press Enter", "Drücken Sie Eingabe"), ("A tip", "Ein Tipp")]


def test_splits_are_deduplicated_and_share_no_sentence():
    pairs = [(f"english {i % 300}", f"deutsch {i % 250}") for i in range(3000)]  # many shared sides
    pairs += [(f"solo {i}", f"allein {i}") for i in range(2000)]
    pairs += [("same", "same")]  # untranslated: dropped
    splits = lo.split_pairs(pairs, valid_fraction=0.1, test_fraction=0.1)
    all_pairs = [p for items in splits.values() for p in items]
    assert len(all_pairs) == len(set(all_pairs)) == len({p for p in pairs if p[0] != p[1]})
    for lang in (0, 1):
        sides = [{p[lang] for p in splits[name]} for name in ("train", "valid", "test")]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert 100 < len(splits["test"]) < 500 and 100 < len(splits["valid"]) < 500
    with pytest.raises(ValueError, match="fractions"):
        lo.split_pairs(pairs, valid_fraction=0.6, test_fraction=0.5)


def test_missing_help_tree_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="en-US"):
        lo.extract_pairs(tmp_path)


@pytest.mark.parametrize("src, tgt, kept", [
    ("a b c", "x y z", True), ("a b", "x y z", True), ("a", "x y", False), ("", "x", False),
    ("a " * 251, "x " * 251, False), ("a " * 250, "x " * 250, True),
])
def test_wmt14_cleaning_rules(src, tgt, kept):
    assert wmt.keep_pair(src, tgt) is kept


def test_wmt14_clean_files(tmp_path, capsys):
    (tmp_path / "s").write_text("a  b\na b\nfoo\n\nx y z w\n")
    (tmp_path / "t").write_text("c d\nc  d\nbar\nbaz\nq\n")
    wmt.main(["--src", str(tmp_path / "s"), "--tgt", str(tmp_path / "t"), "--out-src", str(tmp_path / "cs"),
              "--out-tgt", str(tmp_path / "ct")])
    assert (tmp_path / "cs").read_text() == "a b\nfoo\n"
    assert (tmp_path / "ct").read_text() == "c d\nbar\n"
    (tmp_path / "t").write_text("c d\n")
    with pytest.raises(SystemExit) as info:
        wmt.main(["--src", str(tmp_path / "s"), "--tgt", str(tmp_path / "t"), "--out-src", str(tmp_path / "cs"),
                  "--out-tgt", str(tmp_path / "ct")])
    assert info.value.code == 2 and "have different numbers of lines" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        wmt.main(["--src", str(tmp_path / "s"), "--tgt", str(tmp_path / "t"), "--out-src", str(tmp_path / "cs"),
                  "--out-tgt", str(tmp_path / "ct"), "--ratio", "0.5"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: --max-len must be >= 1 and --ratio >= 1, got 250, 0.5")
