"""The offline tree path: tokenization, link-grammar parses (Debian link-grammar, installed by `make install`'s
apt step), the balanced fallback, the output splitter, parser failures and time-outs as errors, and the parse cache."""

import json
import os
import stat

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
    assert source2 == "fallback-no-complete-linkage" and tree2 == balanced_tree(sentences[1])
    assert source3 == "fallback-command-line" and tree3 == balanced_tree(sentences[2])


def test_cache_is_reused_and_validated(tmp_path, monkeypatch):
    path = tmp_path / "cache.jsonl"
    first = lg.parse_sentences([["the", "film", "is", "good", "."]], path, workers=1)

    def no_parser(*args, **kwargs):
        raise AssertionError("link-parser must not run for cached sentences")

    monkeypatch.setattr(lg, "run_link_parser", no_parser)
    assert lg.parse_sentences([["the", "film", "is", "good", "."]], path) == first
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"parse_cache": 2, "link_grammar": lg.link_grammar_version(),
                                    "options": list(lg.PARSER_OPTIONS)}
    path.write_text("\n".join(lines) + "\n{not json\n")
    with pytest.raises(ValueError, match=f"{path}:3: not a parse-cache record"):
        lg.parse_sentences([["x"]], path)
    path.write_text("\n".join(lines[1:]) + "\n")            # a cache of the old format: built by older code
    with pytest.raises(ValueError, match="was built by older code; .* delete the file to rebuild it"):
        lg.parse_sentences([["x"]], path)


# link-parser -verbosity=1 -echo=1 output: each block starts with its sentence; a sentence without a complete linkage
# prints no tree (and no blank line), one that hits the time limit also prints "Timer is expired!".
VERBOSE = ["link-grammar: Info: Dictionary found at /usr/share/link-grammar/en/4.0.dict",
           "a b", "Found 2 linkages (2 had no P.P. violations)",
           "\tLinkage 1, cost vector = (UNUSED=0 DIS= 0.00 LEN=1)", "(S a", "   b)", "",
           "c d", "No complete linkages found.",
           "e f", "Found 1 linkage (1 had no P.P. violations)", "\tLinkage 1, cost vector = (UNUSED=0 DIS= 0.00 LEN=1)",
           "(S (NP e) f)", "", "Bye."]


def test_output_splitter_reads_trees_and_missing_linkages():
    assert lg._parse_output("\n".join(VERBOSE), ["a b", "c d", "e f"]) == ["(S a b)", None, "(S (NP e) f)"]


def test_an_expired_timer_or_a_missing_block_is_an_error_not_a_fallback():
    timed_out = VERBOSE[:9] + ["Timer is expired!"] + VERBOSE[9:]
    with pytest.raises(lg.LinkParserError, match="timer expired on the sentence 'c d'.*--parse-timeout"):
        lg._parse_output("\n".join(timed_out), ["a b", "c d", "e f"])
    with pytest.raises(lg.LinkParserError, match="no block for the sentence 'x y'"):
        lg._parse_output("\n".join(VERBOSE), ["a b", "x y", "e f"])


@pytest.fixture
def stand_in_parser(tmp_path, monkeypatch):
    """Put a shell script named link-parser first on PATH: it answers --version, then runs the given body."""
    def install(body: str):
        fake = tmp_path / "link-parser"
        fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Version: link-grammar-5.12.0'; exit 0; fi\n"
                        + body)
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        lg.link_grammar_version.cache_clear()
    yield install
    lg.link_grammar_version.cache_clear()


def test_an_expired_timer_of_the_real_parser_is_an_error(stand_in_parser):
    # Whether a sentence outlasts link-parser's CPU timer depends on the machine, so the time-out itself is played by
    # a stand-in that prints what link-parser prints; the message it prints is the installed binary's own.
    import shutil
    assert lg._TIMEOUT.encode() in open(shutil.which("link-parser"), "rb").read()
    stand_in_parser("read line; echo \"$line\"; echo 'Timer is expired!'; echo 'No complete linkages found.'\n")
    with pytest.raises(lg.LinkParserError, match="timer expired on the sentence 'a long sentence'"):
        lg.run_link_parser([["a", "long", "sentence"]], timeout=1)


def test_a_parser_failure_is_an_error(tmp_path, stand_in_parser):
    stand_in_parser("echo 'Segmentation fault' >&2\nexit 139\n")  # fails like a crashed parser
    with pytest.raises(lg.LinkParserError, match="exited with status 139: 'Segmentation fault'"):
        lg.parse_sentences([["the", "film", "is", "good"]], tmp_path / "cache.jsonl", workers=1)
    assert not (tmp_path / "cache.jsonl").exists()


def test_trees_do_not_depend_on_chunks_order_or_workers(tmp_path):
    sentences = [lg.tokenize(text) for text in (
        "The quick brown fox jumped over the lazy dog.", "A gorgeous, witty, seductive movie.",
        "It's a lovely film with lovely performances by Buy and Accorsi.", "Effective but too-tepid biopic",
        "The story is also as unoriginal as they come, already having been recycled more times than I'd care to "
        "count.")]
    together = lg.parse_sentences(sentences, tmp_path / "a.jsonl", workers=1)
    apart = lg.parse_sentences(sentences[::-1], tmp_path / "b.jsonl", workers=2, chunk_size=1)[::-1]
    assert together == apart
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()   # sorted, so comparable


def test_a_tree_does_not_depend_on_the_sentence_parsed_before_it(tmp_path):
    # With link-parser's defaults (null links, panic mode, a 5 s timer) the second sentence got a complete parse when
    # parsed alone and a skipped-word fallback when parsed right after the first one in the same process: trees
    # depended on the chunk a sentence fell into, hence on the order and on what the cache already held.
    before = lg.tokenize("There aren't too many films that can be as simultaneously funny, offbeat and heartwarming "
                         "(without a thick shmear of the goo, at least), but \"Elling\" manages to do all three quite "
                         "well, making it one of the year's most enjoyable releases.")
    before = [t.replace('"', "''") for t in before]
    sentence = lg.tokenize("Suffers from a lack of clarity and audacity that a subject as monstrous and pathetic as "
                           "Dahmer demands.")
    alone = lg.parse_sentences([sentence], tmp_path / "alone.jsonl", workers=1)[0]
    after = lg.parse_sentences([before, sentence], tmp_path / "after.jsonl", workers=1)[1]
    assert alone == after and alone[1] == "parse"


def test_alignment_rejects_mismatched_leaves():
    from treelstm.trees import parse_bracketed

    aligned = lg._align(parse_bracketed("(S (NP the film.n) (VP is.v good.a))"), ["the", "film", "is", "good"])
    assert aligned == ["S", ["NP", "the", "film"], ["VP", "is", "good"]]
    assert lg._align(parse_bracketed("(S the movie.n)"), ["the", "film"]) is None
    assert lg._align(parse_bracketed("(S the film.n good)"), ["the", "film"]) is None
    assert lg._binary_tree(["the", "film"], "(S the movie.n)") == (("the", "film"), "fallback-misaligned")


def test_tree_string_round_trip():
    for tree in ["solo", ("a", ("b", "c")), (("a", "b"), ("c", "d"))]:
        assert lg.tree_from_string(lg.tree_to_string(tree)) == tree
