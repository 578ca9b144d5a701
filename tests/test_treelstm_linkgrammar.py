"""The offline tree path: tokenization, link-grammar parses (Debian link-grammar, installed by `make install`'s
apt step), the balanced fallback, the output splitter and the parse cache."""

import pytest

import treelstm.linkgrammar as lg
from treelstm.trees import balanced_tree


def _subtrees(tree):
    yield tree
    if isinstance(tree, tuple):
        for child in tree:
            yield from _subtrees(child)


def _leaves(tree):
    return [t for t in _subtrees(tree) if isinstance(t, str)]


def test_tokenize_ptb_style():
    assert lg.tokenize("I didn't like Tolkien's (co-writer) film\u2026 it\u2019s bad!") == [
        "I", "did", "n't", "like", "Tolkien", "'s", "-lrb-", "co-writer", "-rrb-", "film", "...", "it", "'s", "bad",
        "!"]
    assert lg.tokenize("J.R.R. costs $3.50") == ["J.R.R.", "costs", "$", "3.50"]


def test_parse_full_sentence_and_fallbacks(tmp_path):
    sentences = [lg.tokenize("The quick brown fox jumped over the lazy dog."),
                 lg.tokenize("Effective but too tepid biopic"),        # link-grammar skips words here
                 ["!", "wow", "great"]]                                # would be read as a command
    results = lg.parse_sentences(sentences, tmp_path / "cache.jsonl", workers=1)
    (tree, source), (tree2, source2), (tree3, source3) = results
    assert source == "parse"
    assert _leaves(tree) == sentences[0]
    assert ("the", ("lazy", "dog")) in list(_subtrees(tree))             # the NP "the lazy dog" is a constituent
    assert source2 == "fallback-skipped-words" and tree2 == balanced_tree(sentences[1])
    assert source3 == "fallback-command-line" and tree3 == balanced_tree(sentences[2])


def test_cache_is_reused_and_validated(tmp_path, monkeypatch):
    path = tmp_path / "cache.jsonl"
    first = lg.parse_sentences([["the", "film", "is", "good", "."]], path, workers=1)

    def no_parser(*args, **kwargs):
        raise AssertionError("link-parser must not run for cached sentences")

    monkeypatch.setattr(lg, "run_link_parser", no_parser)
    assert lg.parse_sentences([["the", "film", "is", "good", "."]], path) == first
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=f"{path}:2: not a parse-cache record"):
        lg.parse_sentences([["x"]], path)


def test_output_splitter_survives_a_missing_block():
    lines = ["a b", "c d", "e f"]
    output = "\n".join(["verbosity set to 0", "a b", "(S a b)", "", "c d", "", "e f", "(S (NP e) f)", "", "Bye."])
    assert lg._parse_output(output, lines) == ["(S a b)", None, "(S (NP e) f)"]
    # a sentence whose echo never comes does not shift the next one
    output = "\n".join(["a b", "(S a b)", "", "e f", "(X e f)", ""])
    assert lg._parse_output(output, lines) == ["(S a b)", None, "(X e f)"]


def test_alignment_rejects_mismatched_leaves():
    from treelstm.trees import parse_bracketed

    aligned, source = lg._align(parse_bracketed("(S (NP the film.n) (VP is.v good.a))"), ["the", "film", "is", "good"])
    assert source == "parse" and aligned == ["S", ["NP", "the", "film"], ["VP", "is", "good"]]
    assert lg._align(parse_bracketed("(S the movie.n)"), ["the", "film"]) == (None, "fallback-no-parse")
    assert lg._align(parse_bracketed("(S {the} film.n)"), ["the", "film"]) == (None, "fallback-skipped-words")


def test_tree_string_round_trip():
    for tree in ["solo", ("a", ("b", "c")), (("a", "b"), ("c", "d"))]:
        assert lg.tree_from_string(lg.tree_to_string(tree)) == tree
