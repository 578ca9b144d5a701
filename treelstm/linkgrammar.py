"""Offline constituency trees for raw sentences with Debian's ``link-grammar`` (``apt-get install link-grammar``).

SST's own trees cannot be downloaded here, so the offline demo parses the Rotten Tomatoes sentences it was built from.
``link-parser en`` with ``!constituents=1`` prints Penn-style constituency trees (``(S (NP the film) (VP is.v
good.a) .)``); we strip link-grammar's annotations, check that the leaves are exactly our tokens, collapse unary
nodes and right-factor n-ary ones (:func:`treelstm.trees.binarize`).

Fallback (documented, deterministic): a sentence gets the balanced binary tree of
:func:`treelstm.trees.balanced_tree` (split at the middle, recursively) when
* link-grammar could only parse it by skipping words (a "null-linked" word, printed ``{word}``), or
* the parser gave no tree, timed out, or its leaves do not line up with our tokens, or
* the sentence starts with ``!`` / ``%`` (link-parser would read the line as a command / comment).
Every cached tree records which way it was made (``"source"``), so the fraction of real parses is reported.

Options: ``-spell=0`` (no spelling guesses that would change words), ``-morphology=0``, ``-echo=1`` (each output
block starts with its input line, so a failed sentence cannot shift the others), default ``-limit``
(``-limit=1`` made parsing ~10x slower here), ``-timeout`` per sentence.

Cache: a JSON-lines file ``{"sentence": "<tokens joined by spaces>", "tree": "<binary bracketed>", "source": ...}``,
rewritten atomically; :func:`parse_sentences` parses only what the cache lacks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from treelstm.trees import Nested, balanced_tree, binarize, parse_bracketed

__all__ = ["tokenize", "link_parser_available", "parse_sentences", "tree_to_string", "tree_from_string",
           "run_link_parser", "SOURCES"]

SOURCES = ("parse", "fallback-skipped-words", "fallback-no-parse", "fallback-command-line")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_TOKEN = re.compile(r"[A-Za-z]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|(?:[A-Za-z]\.){2,}|\w+(?:[-/&.]\w+)*|"
                    r"\.\.\.|--|''|``|[^\w\s]", re.IGNORECASE)


def tokenize(text: str) -> list[str]:
    """PTB-style tokens: clitics split (``do n't``, ``film 's``), punctuation separate, brackets as ``-lrb-``
    etc. (as in GloVe's vocabulary), curly quotes made ASCII. Case is kept (lowercasing is the vocabulary's job)."""
    text = (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u2014", "--").replace("\u2013", "-").replace("\u2026", "..."))
    return [_BRACKETS.get(token, token) for token in _TOKEN.findall(text)]


def link_parser_available() -> bool:
    return shutil.which("link-parser") is not None


def tree_to_string(tree: Nested) -> str:
    """Binary nested pairs -> ``"((a b) c)"``; a one-token tree is ``"(a)"``."""
    def write(node):
        return node if isinstance(node, str) else f"({write(node[0])} {write(node[1])})"
    return write(tree) if isinstance(tree, tuple) else f"({tree})"


def tree_from_string(text: str, *, where: str = "<string>") -> Nested:
    def convert(node):
        if isinstance(node, str):
            return node
        if len(node) == 1:
            return convert(node[0])
        if len(node) != 2:
            raise ValueError(f"{where}: binary tree nodes have 2 children, got {len(node)}")
        return (convert(node[0]), convert(node[1]))
    return convert(parse_bracketed(text, where=where))


# ----------------------------------------------------------------------------------------------------------------
# Running link-parser

_MARKER = re.compile(r"\{[!?~*]*\}|\[[!?~*]*\]")      # unknown-word / guessed-word markers: word{!}, word[?]
_SUBSCRIPT = re.compile(r"\.[a-z0-9#\-_]+$")           # dictionary subscripts: good.a, is.v, 's.p, and.j-n


class _SkippedWord(Exception):
    pass


class _Mismatch(Exception):
    pass


def _align(tree, tokens: Sequence[str]):
    """Replace link-grammar leaves by our tokens; None when they do not match one-to-one or a word was skipped."""
    position = 0

    def walk(node):
        nonlocal position
        if isinstance(node, str):
            if node.startswith("{") and node.endswith("}"):
                raise _SkippedWord
            core = _MARKER.sub("", node)
            if position >= len(tokens):
                raise _Mismatch
            expected = tokens[position]
            if core.lower() != expected.lower() and _SUBSCRIPT.sub("", core).lower() != expected.lower():
                raise _Mismatch
            position += 1
            return expected
        return [node[0]] + [walk(child) for child in node[1:]]

    try:
        aligned = walk(tree)
    except _SkippedWord:
        return None, "fallback-skipped-words"
    except _Mismatch:
        return None, "fallback-no-parse"
    if position != len(tokens):
        return None, "fallback-no-parse"
    return aligned, "parse"


def _parse_output(output: str, lines: Sequence[str]) -> list:
    """Split link-parser's echoed output into one tree text (or None) per input line."""
    out_lines = output.splitlines()
    trees: list = [None] * len(lines)
    i = 0
    for k, line in enumerate(lines):
        target = line.strip()
        following = lines[k + 1].strip() if k + 1 < len(lines) else None
        j = i
        while j < len(out_lines) and out_lines[j].strip() != target:
            if following is not None and out_lines[j].strip() == following:
                break                                  # this sentence's echo is missing: leave it None
            j += 1
        if j >= len(out_lines) or out_lines[j].strip() != target:
            continue
        block = []
        j += 1
        while j < len(out_lines) and out_lines[j].strip():
            block.append(out_lines[j])
            j += 1
        text = " ".join(block).strip()
        trees[k] = text if text.startswith("(") else None
        i = j
    return trees


def run_link_parser(sentences: Sequence[Sequence[str]], *, timeout_per_sentence: int = 5,
                    language: str = "en") -> list:
    """Parse token lists with one ``link-parser`` process; returns the raw tree text (or None) per sentence."""
    if not link_parser_available():
        raise RuntimeError("link-parser is not installed (Debian/Ubuntu: apt-get install link-grammar)")
    lines = [" ".join(tokens) for tokens in sentences]
    command = ["link-parser", language, "-constituents=1", "-graphics=0", "-verbosity=0", "-spell=0",
               "-morphology=0", "-echo=1", f"-timeout={timeout_per_sentence}"]
    try:
        result = subprocess.run(command, input="\n".join(lines) + "\n", capture_output=True, text=True,
                                timeout=60 + 4 * timeout_per_sentence * len(lines),
                                env={**os.environ, "LANG": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        return [None] * len(lines)
    return _parse_output(result.stdout, lines)


def _binary_tree(tokens: Sequence[str], raw: str | None) -> tuple[Nested, str]:
    if raw is None:
        return balanced_tree(tokens), "fallback-no-parse"
    try:
        parsed = parse_bracketed(raw)
    except ValueError:
        return balanced_tree(tokens), "fallback-no-parse"
    aligned, source = _align(parsed, tokens)
    if aligned is None:
        return balanced_tree(tokens), source
    return binarize(aligned), "parse"


# ----------------------------------------------------------------------------------------------------------------
# Cache

def _read_cache(path: Path) -> dict:
    cache = {}
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    cache[record["sentence"]] = (tree_from_string(record["tree"], where=f"{path}:{lineno}"),
                                                 record["source"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{lineno}: not a parse-cache record ({error}); delete the file to "
                                     f"rebuild it") from None
    return cache


def _write_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for sentence, (tree, source) in cache.items():
                handle.write(json.dumps({"sentence": sentence, "tree": tree_to_string(tree), "source": source}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_sentences(sentences: Sequence[Sequence[str]], cache_path, *, workers: int = 2, chunk_size: int = 250,
                    timeout_per_sentence: int = 5, progress=None) -> list[tuple[Nested, str]]:
    """Binary trees (nested pairs over exactly the given tokens) and their source for every sentence, parsing only
    the sentences missing from the cache at ``cache_path`` (updated atomically after every ``workers`` chunks)."""
    cache_path = Path(cache_path)
    cache = _read_cache(cache_path)
    if any(len(tokens) == 0 for tokens in sentences):
        raise ValueError("cannot parse an empty sentence")
    keys = [" ".join(tokens) for tokens in sentences]
    todo: dict[str, Sequence[str]] = {}
    for key, tokens in zip(keys, sentences):
        if key not in cache and key not in todo:
            if tokens[0][0] in "!%":
                cache[key] = (balanced_tree(tokens), "fallback-command-line")
            else:
                todo[key] = tokens
    pending = list(todo.values())
    chunks = [pending[i:i + chunk_size] for i in range(0, len(pending), chunk_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(chunks), max(1, workers)):
            group = chunks[start:start + max(1, workers)]
            raws = pool.map(lambda chunk: run_link_parser(chunk, timeout_per_sentence=timeout_per_sentence), group)
            for chunk, raw_trees in zip(group, raws):
                for tokens, raw in zip(chunk, raw_trees):
                    cache[" ".join(tokens)] = _binary_tree(tokens, raw)
            _write_cache(cache_path, cache)
            if progress is not None:
                progress(min(len(pending), (start + len(group)) * chunk_size), len(pending))
    if not pending and not cache_path.is_file():
        _write_cache(cache_path, cache)
    return [cache[key] for key in keys]
