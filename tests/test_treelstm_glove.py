"""GloVe loading (text format and the offline package) and the unknown-word policy."""

import numpy as np
import pytest
import torch

from treelstm.glove import PACKAGE_SOURCE, Vocabulary, embedding_matrix, load_glove

GLOVE_TEXT = "good 0.5 1.0 -1.5\nbad -0.5 -1.0 1.5\nfilm 0.25 0 0\n. . . 9 9 9\nThe 1 2 3\n"


@pytest.fixture
def glove_file(tmp_path):
    path = tmp_path / "glove.tiny.3d.txt"
    path.write_text(GLOVE_TEXT, encoding="utf-8")
    return path


def test_text_file_loads_only_requested_words(glove_file):
    vectors = load_glove(glove_file, ["good", "film", ". . .", "missing"])
    assert set(vectors) == {"good", "film", ". . ."}          # a word with spaces, as in glove.840B
    np.testing.assert_array_equal(vectors["good"], np.array([0.5, 1.0, -1.5], np.float32))
    np.testing.assert_array_equal(vectors[". . ."], np.array([9, 9, 9], np.float32))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_text("good 0.5 1.0 -1.5\nbad -0.5\n")
    with pytest.raises(ValueError, match=f"{path}:2: expected a word and 3 numbers"):
        load_glove(path, ["bad"])
    path.write_text("good 0.5 1.0 -1.5\nbad -0.5 x 1\n")
    with pytest.raises(ValueError, match=f"{path}:2: non-numeric vector for 'bad'"):
        load_glove(path, ["bad"])


def test_missing_embeddings_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="embeddings file .*nope.txt' does not exist"):
        load_glove(tmp_path / "nope.txt", ["good"])


def test_unknown_word_policy(glove_file):
    vocab = Vocabulary.build([["good", "Film", "zzzz", "The"], ["good"]])
    assert vocab.itos[:3] == ["<pad>", "<unk>", "good"]      # most frequent first
    matrix, stats = embedding_matrix(vocab, glove_file, seed=3)
    assert stats == {"vocabulary": 6, "dim": 3, "in_glove": 3, "random_init": 1}
    assert torch.equal(matrix[0], torch.zeros(3)) and torch.equal(matrix[1], torch.zeros(3))   # <pad>, <unk>
    assert matrix[vocab.stoi["good"]].tolist() == [0.5, 1.0, -1.5]
    assert matrix[vocab.stoi["The"]].tolist() == [1, 2, 3]       # exact match
    assert matrix[vocab.stoi["Film"]].tolist() == [0.25, 0, 0]   # via its lowercase form
    random_row = matrix[vocab.stoi["zzzz"]]                      # not in GloVe: uniform in [-0.05, 0.05]
    assert (random_row.abs() <= 0.05).all() and random_row.abs().sum() > 0
    # held-out words map to <unk>
    assert vocab.encode(["good", "never-seen"]).tolist() == [2, 1]


def test_no_vocabulary_word_in_embeddings(glove_file):
    with pytest.raises(ValueError, match="no word of the 1-word vocabulary"):
        embedding_matrix(Vocabulary(["qqqq"]), glove_file)


def test_package_source_holds_stanford_glove_6b_50d():
    vectors = load_glove(PACKAGE_SOURCE, ["the", "movie"])
    assert vectors["the"].shape == (50,) and vectors["the"].dtype == np.float32
    # first values of "the" in Stanford's glove.6B.50d.txt
    np.testing.assert_allclose(vectors["the"][:4], [0.418, 0.24968, -0.41242, 0.1217], rtol=0, atol=1e-6)
    assert set(vectors) == {"the", "movie"}
