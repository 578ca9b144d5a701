"""SST PTB parsing, binarization and level batching, checked against hand-written trees."""

import numpy as np
import pytest

from treelstm.trees import (IGNORE_INDEX, TreeBatch, balanced_tree, binarize, parse_bracketed, parse_sst_line,
                            read_sst_file, sst_to_binary, tree_from_nested)

LINE = "(3 (2 It) (4 (2 's) (3 (2 a) (4 good))))"


def test_parse_sst_line_structure_and_labels():
    tree = parse_sst_line(LINE)
    assert tree.tokens == ("It", "'s", "a", "good")
    assert tree.to_nested() == ("It", ("'s", ("a", "good")))
    # post-order: It, 's, a, good, (a good), ('s (a good)), root
    assert tree.labels.tolist() == [2, 2, 2, 4, 3, 4, 3]
    assert tree.height.tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert tree.root_label == 3


def test_sst_to_binary_maps_labels_and_drops_neutral_roots():
    tree = sst_to_binary(parse_sst_line("(1 (0 awful) (2 (2 the) (3 film)))"))
    # awful 0->0, the 2->ignored, film 3->1, (the film) 2->ignored, root 1->0
    assert tree.labels.tolist() == [0, IGNORE_INDEX, 1, IGNORE_INDEX, 0]
    assert sst_to_binary(parse_sst_line("(2 (3 nice) (1 bad))")) is None


@pytest.mark.parametrize("text, message", [
    ("(3 (2 It) (4 good)", "unbalanced '\\('"),
    ("(3 (2 It) (4 good)))", "unbalanced '\\)'"),
    ("(7 (2 It) (4 good))", "labels must be 0-4, got '7'"),
    ("(3 (2 a) (2 b) (2 c))", "with 3 children"),
    ("(3 (2 a) (2 b)) (2 c)", "text after the end"),
    ("2 good", "must start with"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "train.txt"
    path.write_text(LINE + "\n" + text + "\n")
    with pytest.raises(ValueError, match=f"{path}:2: .*{message}"):
        read_sst_file(path)


def test_empty_sst_file_is_an_error(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no trees"):
        read_sst_file(path)


def test_binarize_collapses_unary_and_right_factors():
    parsed = parse_bracketed("(S (NP the big film) (VP (ADJP good)) .)")
    assert binarize(parsed) == (("the", ("big", "film")), ("good", "."))


def test_balanced_tree():
    assert balanced_tree(["a"]) == "a"
    assert balanced_tree(["a", "b", "c"]) == ("a", ("b", "c"))
    assert balanced_tree(list("abcd")) == (("a", "b"), ("c", "d"))
    with pytest.raises(ValueError, match="zero tokens"):
        balanced_tree([])


def test_collate_orders_by_height_and_keeps_children_below():
    trees = [parse_sst_line(LINE), parse_sst_line("(1 (0 bad) (2 film))"), parse_sst_line("(4 great)")]
    ids = [np.arange(len(t.tokens)) + 10 * k for k, t in enumerate(trees)]
    batch = TreeBatch.collate(trees, ids)
    # heights: tree0 leaves 4 + levels 1,2,3; tree1 leaves 2 + level 1; tree2 a single leaf
    assert batch.level_offsets == [0, 7, 9, 10, 11]
    assert sorted(batch.leaf_words.tolist()) == [0, 1, 2, 3, 10, 11, 20]
    positions = np.arange(batch.n_leaves, batch.n_nodes)
    level = np.searchsorted(batch.level_offsets, np.arange(batch.n_nodes), side="right") - 1
    assert (level[batch.left.numpy()] < level[positions]).all()
    assert (level[batch.right.numpy()] < level[positions]).all()
    assert batch.root_labels.tolist() == [3, 1, 4]
    assert batch.labels[batch.roots].tolist() == [3, 1, 4]
    # the single-leaf tree's root is a leaf whose word id is 20
    assert batch.leaf_words[batch.roots[2]].item() == 20


def test_tree_from_nested_round_trip():
    nested = (("a", "b"), ("c", ("d", "e")))
    assert tree_from_nested(nested).to_nested() == nested
    with pytest.raises(ValueError, match="binary tree node"):
        tree_from_nested(("a", "b", "c"))
