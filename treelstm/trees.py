"""Binary trees as flat arrays, PTB-line parsing (SST), binarization, and level-synchronous batching.

A :class:`BinaryTree` stores its nodes in post-order (children before parents, the root last) as NumPy arrays, so a
batch of trees is collated with array operations only. :class:`TreeBatch` renumbers the nodes of a batch by height
(leaves first, then every node whose children are all leaves, ...): a Tree-LSTM then runs one matrix product per
*level* instead of one per node (``treelstm.engines``).

Formats
-------
* SST (Socher et al. 2013, ``trainDevTestTrees_PTB``): one tree per line, ``(3 (2 It) (4 (2 's) (3 good)))``: every
  node carries a 0-4 sentiment label, every internal node has exactly two children.
* Constituency parses (``treelstm.linkgrammar``): n-ary, unlabelled-for-sentiment trees such as
  ``(S (NP the film) (VP is good) .)``. :func:`binarize` collapses unary nodes and right-factors n-ary ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["IGNORE_INDEX", "BinaryTree", "TreeBatch", "parse_bracketed", "parse_sst_line", "read_sst_file",
           "sst_to_binary", "binarize", "balanced_tree", "tree_from_nested"]

IGNORE_INDEX = -100  # nodes without a training label (neutral SST phrases, inner nodes of the offline trees)
SST_NEUTRAL = 2

Nested = Union[str, tuple]  # a binary tree as nested pairs: a token, or (left, right)


@dataclass(eq=False)
class BinaryTree:
    """A binary tree over ``tokens``; node i has children ``left[i], right[i]`` (-1 for leaves) and, for leaves,
    the token position ``word[i]`` (-1 for inner nodes). Nodes are in post-order; the root is the last node."""

    tokens: tuple
    left: np.ndarray
    right: np.ndarray
    word: np.ndarray
    labels: np.ndarray
    height: np.ndarray = field(init=False)

    def __post_init__(self):
        n = len(self.left)
        if n == 0 or not (len(self.right) == len(self.word) == len(self.labels) == n):
            raise ValueError(f"tree arrays must be non-empty and of equal length, got {len(self.left)}, "
                             f"{len(self.right)}, {len(self.word)}, {len(self.labels)}")
        height = np.zeros(n, dtype=np.int64)
        for i in range(n):  # once per tree at load time; post-order makes one pass enough
            if self.left[i] >= 0:
                if not (self.left[i] < i and self.right[i] < i):
                    raise ValueError(f"tree nodes must be in post-order (node {i} has children "
                                     f"{self.left[i]}, {self.right[i]})")
                height[i] = 1 + max(height[self.left[i]], height[self.right[i]])
        self.height = height

    @property
    def n_nodes(self) -> int:
        return len(self.left)

    @property
    def root_label(self) -> int:
        return int(self.labels[-1])

    def with_labels(self, labels) -> "BinaryTree":
        return BinaryTree(self.tokens, self.left, self.right, self.word, np.asarray(labels, dtype=np.int64))

    def to_nested(self, i: int = -1) -> Nested:
        i = self.n_nodes - 1 if i == -1 else i
        if self.left[i] < 0:
            return self.tokens[self.word[i]]
        return (self.to_nested(int(self.left[i])), self.to_nested(int(self.right[i])))


def tree_from_nested(nested: Nested) -> BinaryTree:
    """Build a :class:`BinaryTree` from nested pairs (``"word"`` or ``(left, right)``); all labels IGNORE_INDEX."""
    tokens, left, right, word = [], [], [], []
    stack = [(nested, False)]
    out = []  # node index of each finished subtree
    while stack:  # iterative post-order: long sentences must not hit the recursion limit
        node, expanded = stack.pop()
        if isinstance(node, str):
            tokens.append(node)
            left.append(-1), right.append(-1), word.append(len(tokens) - 1)
            out.append(len(left) - 1)
        elif not expanded:
            if not (isinstance(node, tuple) and len(node) == 2):
                raise ValueError(f"a binary tree node must be a token or a (left, right) pair, got {node!r}")
            stack.append((node, True))
            stack.append((node[1], False))
            stack.append((node[0], False))
        else:
            r, l_ = out.pop(), out.pop()
            left.append(l_), right.append(r), word.append(-1)
            out.append(len(left) - 1)
    n = len(left)
    return BinaryTree(tuple(tokens), np.asarray(left, np.int64), np.asarray(right, np.int64),
                      np.asarray(word, np.int64), np.full(n, IGNORE_INDEX, np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Bracketed strings

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_bracketed(text: str, *, where: str = "<string>") -> list:
    """``"(S (NP a b) c)"`` -> ``["S", ["NP", "a", "b"], "c"]``. ValueError naming ``where`` on malformed input."""
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise ValueError(f"{where}: empty tree")
    if tokens[0] != "(":
        raise ValueError(f"{where}: a tree must start with '(', got {tokens[0]!r}")
    stack: list[list] = []
    result = None
    for position, token in enumerate(tokens):
        if result is not None:
            if token == ")":
                raise ValueError(f"{where}: unbalanced ')'")
            raise ValueError(f"{where}: text after the end of the tree: {' '.join(tokens[position:])[:40]!r}")
        if token == "(":
            stack.append([])
        elif token == ")":
            if not stack:
                raise ValueError(f"{where}: unbalanced ')'")
            node = stack.pop()
            if not node:
                raise ValueError(f"{where}: empty brackets '()'")
            if stack:
                stack[-1].append(node)
            else:
                result = node
        else:
            stack[-1].append(token)
    if stack:
        raise ValueError(f"{where}: unbalanced '(' ({len(stack)} not closed)")
    return result


def parse_sst_line(line: str, *, where: str = "<string>") -> BinaryTree:
    """One SST PTB line -> :class:`BinaryTree` with the 5-class labels (0-4) on every node."""
    root = parse_bracketed(line, where=where)
    labels: list[int] = []
    tokens, left, right, word = [], [], [], []

    def label_of(text):
        if not re.fullmatch(r"[0-4]", text):
            raise ValueError(f"{where}: SST node labels must be 0-4, got {text!r}")
        return int(text)

    stack = [(root, False)]
    out = []
    while stack:
        node, expanded = stack.pop()
        if isinstance(node, str):
            raise ValueError(f"{where}: bare token {node!r}; SST leaves look like '(2 word)'")
        if len(node) == 2 and isinstance(node[1], str):       # leaf: (label word)
            tokens.append(node[1])
            left.append(-1), right.append(-1), word.append(len(tokens) - 1), labels.append(label_of(node[0]))
            out.append(len(left) - 1)
        elif not expanded:
            if len(node) != 3 or isinstance(node[1], str) or isinstance(node[2], str):
                raise ValueError(f"{where}: SST nodes must be '(label word)' or '(label left right)', got a node "
                                 f"with {len(node) - 1} children")
            stack.append((node, True)), stack.append((node[2], False)), stack.append((node[1], False))
        else:
            r, l_ = out.pop(), out.pop()
            left.append(l_), right.append(r), word.append(-1), labels.append(label_of(node[0]))
            out.append(len(left) - 1)
    return BinaryTree(tuple(tokens), np.asarray(left, np.int64), np.asarray(right, np.int64),
                      np.asarray(word, np.int64), np.asarray(labels, np.int64))


def read_sst_file(path) -> list[BinaryTree]:
    """All trees of an SST PTB file (``train.txt`` ...); errors name the file and the line."""
    trees = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                trees.append(parse_sst_line(line, where=f"{path}:{lineno}"))
    if not trees:
        raise ValueError(f"{path}: no trees in the file")
    return trees


def sst_to_binary(tree: BinaryTree) -> BinaryTree | None:
    """SST binary (Tai et al. 2015): 0-1 -> negative (0), 3-4 -> positive (1), neutral (2) nodes carry no label.
    Returns None when the root is neutral (such sentences are not part of SST binary)."""
    if tree.root_label == SST_NEUTRAL:
        return None
    labels = np.where(tree.labels < SST_NEUTRAL, 0, 1)
    return tree.with_labels(np.where(tree.labels == SST_NEUTRAL, IGNORE_INDEX, labels))


def binarize(node) -> Nested:
    """Binarize a parsed n-ary constituency tree (``parse_bracketed`` output, first item the phrase label):
    unary nodes collapse to their child, n-ary nodes are right-factored ``(c1 (c2 (... cn)))``."""
    if isinstance(node, str):
        return node
    children = [binarize(child) for child in node[1:]]
    if not children:
        raise ValueError(f"phrase {node[0]!r} has no children")
    result = children[-1]
    for child in reversed(children[:-1]):
        result = (child, result)
    return result


def balanced_tree(tokens: Sequence[str]) -> Nested:
    """The fallback binarization: split at the middle (left half gets the smaller part), recursively."""
    if len(tokens) == 0:
        raise ValueError("cannot build a tree over zero tokens")
    if len(tokens) == 1:
        return tokens[0]
    mid = len(tokens) // 2
    return (balanced_tree(tokens[:mid]), balanced_tree(tokens[mid:]))


# ----------------------------------------------------------------------------------------------------------------
# Batching

@dataclass
class TreeBatch:
    """Nodes of several trees renumbered by height: positions ``level_offsets[k]:level_offsets[k+1]`` hold level k
    (level 0 = the leaves). For an inner node at position p, ``left[p - n_leaves]`` / ``right[...]`` are the positions
    of its children (always in lower levels)."""

    leaf_words: torch.Tensor     # [n_leaves] vocabulary ids
    left: torch.Tensor           # [n_inner]
    right: torch.Tensor          # [n_inner]
    level_offsets: list          # python ints, len = n_levels + 1
    labels: torch.Tensor         # [n_nodes] class or IGNORE_INDEX
    roots: torch.Tensor          # [n_trees] position of each root
    root_labels: torch.Tensor    # [n_trees]

    @property
    def n_nodes(self) -> int:
        return self.level_offsets[-1]

    def to(self, device) -> "TreeBatch":
        """The batch with its tensors on ``device`` (``level_offsets`` stay Python ints)."""
        return TreeBatch(**{name: value.to(device) if isinstance(value, torch.Tensor) else value
                            for name, value in vars(self).items()})

    @property
    def n_leaves(self) -> int:
        return self.level_offsets[1]

    @staticmethod
    def collate(trees: Sequence[BinaryTree], token_ids: Sequence[np.ndarray]) -> "TreeBatch":
        if len(trees) == 0:
            raise ValueError("cannot collate an empty batch of trees")
        sizes = np.array([t.n_nodes for t in trees])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        height = np.concatenate([t.height for t in trees])
        shift = np.repeat(starts, sizes)
        left = np.concatenate([t.left for t in trees])
        right = np.concatenate([t.right for t in trees])
        inner = left >= 0
        left = np.where(inner, left + shift, -1)
        right = np.where(inner, right + shift, -1)
        word_ids = np.concatenate([np.asarray(ids, np.int64)[np.maximum(t.word, 0)]
                                   for t, ids in zip(trees, token_ids)])
        labels = np.concatenate([t.labels for t in trees])

        order = np.argsort(height, kind="stable")          # new position -> old node
        position = np.empty_like(order)
        position[order] = np.arange(len(order))             # old node -> new position
        counts = np.bincount(height)
        offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
        n_leaves = offsets[1]
        inner_old = order[n_leaves:]
        roots = position[starts + sizes - 1]
        return TreeBatch(
            leaf_words=torch.from_numpy(word_ids[order[:n_leaves]]),
            left=torch.from_numpy(position[left[inner_old]]),
            right=torch.from_numpy(position[right[inner_old]]),
            level_offsets=offsets,
            labels=torch.from_numpy(labels[order]),
            roots=torch.from_numpy(roots),
            root_labels=torch.from_numpy(labels[starts + sizes - 1]),
        )
