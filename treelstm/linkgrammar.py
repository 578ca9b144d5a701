"""Offline constituency trees for raw sentences with Debian's ``link-grammar`` (``apt-get install link-grammar``).

SST's own trees cannot be downloaded here, so the offline demo parses the Rotten Tomatoes sentences it was built from.
``link-parser en`` with ``!constituents=1`` prints Penn-style constituency trees (``(S (NP the film) (VP is.v
good.a) .)``); we strip link-grammar's annotations, check that the leaves are exactly our tokens, collapse unary
nodes and right-factor n-ary ones (:func:`treelstm.trees.binarize`).

Fallback (documented, deterministic): a sentence gets the balanced binary tree of
:func:`treelstm.trees.balanced_tree` (split at the middle, recursively), and the cache records why, when
* ``fallback-no-complete-linkage``: link-grammar has no linkage that uses every word;
* ``fallback-misaligned``: the linkage's leaves do not line up one-to-one with our tokens;
* ``fallback-command-line``: the sentence starts with ``!`` / ``%`` (link-parser would read it as a command).

Reproducibility. The trees must not depend on the machine or on its load. link-parser's ``-timeout`` is a CPU-time
limit; when it expires, the default options (null links allowed, "panic mode") return whatever a cheaper re-parse
finds, so a sentence can get a real parse on a fast machine and a fallback on a slow one. We therefore parse with
``-null=0 -panic=0`` (we never use a linkage that skips words anyway, and without null links a parse takes well under
a second), read link-parser's verbose output, and treat an expired timer as an **error** naming the sentence (raise
``timeout``), never as a silent fallback; so does a non-zero exit status or output that does not match the input.
Other options: ``-spell=0`` (no spelling guesses that would change words), ``-morphology=0``, ``-echo=1`` (each
output block starts with its input line), default ``-limit`` (linkages sampled with link-grammar's repeatable
random numbers).

Cache: a JSON-lines file whose first line records how it was built (``{"parse_cache": 2, "link_grammar": <version>,
"options": [...]}``), then ``{"sentence": "<tokens joined by spaces>", "tree": "<binary bracketed>", "source": ...}``
per sentence; written atomically (:func:`focal_calibration.files.atomic_write`). :func:`parse_sentences` parses
only what the cache lacks, and refuses a cache built with another link-grammar version or other options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Sequence

from focal_calibration.files import atomic_write
from focal_calibration.experiments.cli import UserError
from focal_calibration.validation import check_int
from treelstm.trees import Nested, balanced_tree, binarize, parse_bracketed

__all__ = ["tokenize", "link_parser_available", "link_grammar_version", "parse_sentences", "tree_to_string",
           "tree_from_string", "run_link_parser", "LinkParserError", "SOURCES", "DEFAULT_TIMEOUT", "PARSER_OPTIONS"]

SOURCES = ("parse", "fallback-no-complete-linkage", "fallback-misaligned", "fallback-command-line")
DEFAULT_TIMEOUT = 30  # CPU seconds per sentence; the longest Rotten Tomatoes sentence needs ~1 s
PARSER_OPTIONS = ("-constituents=1", "-graphics=0", "-verbosity=1", "-spell=0", "-morphology=0", "-echo=1",
                  "-null=0", "-panic=0")
CACHE_FORMAT = 2
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_TOKEN = re.compile(r"[A-Za-z]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|(?:[A-Za-z]\.){2,}|\w+(?:[-/&.]\w+)*|"
                    r"\.\.\.|--|''|``|[^\w\s]", re.IGNORECASE)


class LinkParserError(UserError):
    """link-parser failed, timed out, or printed output that does not match its input."""


def tokenize(text: str) -> list[str]:
    """PTB-style tokens: clitics split (``do n't``, ``film 's``), punctuation separate, brackets as ``-lrb-``
    etc. (as in GloVe's vocabulary), curly quotes made ASCII. Case is kept (lowercasing is the vocabulary's job)."""
    text = (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("\u2014", "--").replace("\u2013", "-").replace("\u2026", "..."))
    return [_BRACKETS.get(token, token) for token in _TOKEN.findall(text)]


def link_parser_available() -> bool:
    return shutil.which("link-parser") is not None


@lru_cache(maxsize=1)
def link_grammar_version() -> str:
    """``link-grammar-5.12.0``: the library version (its dictionary decides the trees)."""
    if not link_parser_available():
        raise LinkParserError("link-parser is not installed (Debian/Ubuntu: apt-get install link-grammar)")
    result = subprocess.run(["link-parser", "--version"], capture_output=True, text=True)
    match = re.search(r"link-grammar-[\w.]+", result.stdout)
    if result.returncode != 0 or match is None:
        raise LinkParserError(f"'link-parser --version' failed (exit status {result.returncode}): "
                              f"{(result.stdout + result.stderr).strip()[:200]!r}")
    return match.group(0)


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
_NO_LINKAGE = "No complete linkages found."
_TIMEOUT = "Timer is expired!"


class _Mismatch(Exception):
    pass


def _align(tree, tokens: Sequence[str]):
    """Replace link-grammar leaves by our tokens; None when they do not match one-to-one."""
    position = 0

    def walk(node):
        nonlocal position
        if isinstance(node, str):
            core = _MARKER.sub("", node)
            if position >= len(tokens) or (node.startswith("{") and node.endswith("}")):
                raise _Mismatch  # more leaves than tokens, or a skipped word (impossible with -null=0)
            expected = tokens[position]
            if core.lower() != expected.lower() and _SUBSCRIPT.sub("", core).lower() != expected.lower():
                raise _Mismatch
            position += 1
            return expected
        return [node[0]] + [walk(child) for child in node[1:]]

    try:
        aligned = walk(tree)
    except _Mismatch:
        return None
    return aligned if position == len(tokens) else None


def _parse_output(output: str, lines: Sequence[str]) -> list:
    """Split link-parser's echoed, verbose output into one result per input line: the tree text, ``None`` (no
    complete linkage), or raise :class:`LinkParserError` for an expired timer or output that does not match."""
    out_lines = output.splitlines()
    starts, j = [], 0
    for line in lines:  # each sentence's block starts with its echo, in input order
        target = line.strip()
        while j < len(out_lines) and out_lines[j].strip() != target:
            j += 1
        if j == len(out_lines):
            raise LinkParserError(f"link-parser's output has no block for the sentence {target[:80]!r} (it may "
                                  f"have stopped early); output ends with {output.strip()[-200:]!r}")
        starts.append(j)
        j += 1
    results = []
    for k, line in enumerate(lines):
        block = out_lines[starts[k] + 1:starts[k + 1] if k + 1 < len(lines) else len(out_lines)]
        if any(text.strip() == _TIMEOUT for text in block):
            raise LinkParserError(f"link-parser's timer expired on the sentence {line.strip()[:80]!r}: a time-out "
                                  f"would make its tree depend on the machine's speed; raise the time limit "
                                  f"(--parse-timeout)")
        if any(text.strip() == _NO_LINKAGE for text in block):
            results.append(None)
            continue
        tree_lines, inside = [], False
        for text in block:  # "Found N linkages ...", "Linkage 1, cost vector = ...", then the tree up to a blank
            if not inside and text.startswith("("):
                inside = True
            if inside:
                if not text.strip():
                    break
                tree_lines.append(text.strip())
        if not tree_lines:
            raise LinkParserError(f"link-parser printed neither a tree nor {_NO_LINKAGE!r} for the sentence "
                                  f"{line.strip()[:80]!r}: {' | '.join(block)[:200]!r}")
        results.append(" ".join(tree_lines))
    return results


def run_link_parser(sentences: Sequence[Sequence[str]], *, timeout: int = DEFAULT_TIMEOUT,
                    language: str = "en") -> list:
    """Parse token lists with one ``link-parser`` process; the raw tree text per sentence, or None when link-grammar
    has no complete linkage. Raises :class:`LinkParserError` on a non-zero exit status or an expired timer."""
    check_int(timeout, "timeout (seconds)", 1)
    link_grammar_version()  # fails clearly when link-parser is missing
    lines = [" ".join(tokens) for tokens in sentences]
    command = ["link-parser", language, *PARSER_OPTIONS, f"-timeout={timeout}"]
    result = subprocess.run(command, input="\n".join(lines) + "\n", capture_output=True, text=True,
                            env={**os.environ, "LANG": "C.UTF-8"})
    if result.returncode != 0:
        raise LinkParserError(f"link-parser exited with status {result.returncode}: "
                              f"{result.stderr.strip()[-300:]!r}")
    return _parse_output(result.stdout, lines)


def _binary_tree(tokens: Sequence[str], raw: str | None) -> tuple[Nested, str]:
    if raw is None:
        return balanced_tree(tokens), "fallback-no-complete-linkage"
    try:
        aligned = _align(parse_bracketed(raw), tokens)
    except ValueError:  # bracket text we cannot read
        aligned = None
    if aligned is None:
        return balanced_tree(tokens), "fallback-misaligned"
    return binarize(aligned), "parse"


# ----------------------------------------------------------------------------------------------------------------
# Cache

def _cache_header() -> dict:
    return {"parse_cache": CACHE_FORMAT, "link_grammar": link_grammar_version(), "options": list(PARSER_OPTIONS)}


def _read_cache(path: Path) -> dict:
    cache: dict = {}
    if not path.is_file():
        return cache
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
        try:
            header = json.loads(first) if first.strip() else None
        except json.JSONDecodeError:
            header = None
        expected = _cache_header()
        if header != expected:
            built = f"with {header}" if isinstance(header, dict) and "parse_cache" in header else "by older code"
            raise ValueError(f"parse cache {str(path)!r} was built {built}; this code builds it with {expected}: "
                             f"delete the file to rebuild it")
        for lineno, line in enumerate(handle, 2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record["source"] not in SOURCES:
                    raise KeyError(f"unknown source {record['source']!r}")
                cache[record["sentence"]] = (tree_from_string(record["tree"], where=f"{path}:{lineno}"),
                                             record["source"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{lineno}: not a parse-cache record ({error}); delete the file to "
                                 f"rebuild it") from None
    return cache


def _write_cache(path: Path, cache: dict) -> None:
    lines = [json.dumps(_cache_header())] + [
        json.dumps({"sentence": sentence, "tree": tree_to_string(tree), "source": source})
        for sentence, (tree, source) in sorted(cache.items())]
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda handle: handle.write(text), binary=False)


def parse_sentences(sentences: Sequence[Sequence[str]], cache_path, *, workers: int = 2, chunk_size: int = 250,
                    timeout: int = DEFAULT_TIMEOUT, progress=None) -> list[tuple[Nested, str]]:
    """Binary trees (nested pairs over exactly the given tokens) and their source for every sentence, parsing only
    the sentences missing from the cache at ``cache_path`` (rewritten atomically after every ``workers`` chunks).
    A sentence's tree depends on its tokens only: not on the other sentences, the chunking or the workers."""
    cache_path = Path(cache_path)
    cache = _read_cache(cache_path)
    cached = len(cache)
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
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(chunks), workers):
            group = chunks[start:start + workers]
            for chunk, raw_trees in zip(group, pool.map(partial(run_link_parser, timeout=timeout), group)):
                for tokens, raw in zip(chunk, raw_trees):
                    cache[" ".join(tokens)] = _binary_tree(tokens, raw)
            _write_cache(cache_path, cache)
            if progress is not None:
                progress(min(len(pending), (start + len(group)) * chunk_size), len(pending))
    if len(cache) != cached or not cache_path.is_file():  # command-line fallbacks, or an empty first call
        _write_cache(cache_path, cache)
    return [cache[key] for key in keys]
