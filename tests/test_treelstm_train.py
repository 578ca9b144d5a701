"""Tiny end-to-end runs of treelstm/train.py: both models, several losses, both engines, exact resume (refused when a
run-defining option changed), the split independent of the training seed, the run folder and its per-epoch log, offline
data, and clear errors for bad input."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

import torch

from focal_calibration.experiments.evidence import regime_check
from treelstm.train import cli_main, get_args_parser, main

POSITIVE, NEGATIVE = ["good", "great", "nice", "wonderful"], ["bad", "awful", "poor", "boring"]
SUBJECTS = [("the", "film"), ("this", "movie"), ("the", "plot"), ("that", "story"), ("the", "acting")]


def _sst_line(subject, adjective, positive):
    label, word = (4, 3) if positive else (0, 1)
    return f"({label} (2 (2 {subject[0]}) (2 {subject[1]})) ({word} (2 is) ({word} {adjective})))"


@pytest.fixture(scope="module")
def tiny_sst(tmp_path_factory):
    """SST-format trees whose sentiment is carried by one adjective (learnable in a few epochs)."""
    folder = tmp_path_factory.mktemp("sst")
    rng = np.random.default_rng(0)
    for name, n in (("train.txt", 80), ("dev.txt", 24), ("test.txt", 24)):
        lines = []
        for _ in range(n):
            positive = bool(rng.integers(2))
            adjective = (POSITIVE if positive else NEGATIVE)[rng.integers(4)]
            lines.append(_sst_line(SUBJECTS[rng.integers(len(SUBJECTS))], adjective, positive))
        lines.append("(2 (2 a) (2 neutral))")  # neutral root: dropped from SST binary
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def _run(tmp_path, *extra):
    # matrix scaling off (its cross-validation costs seconds here), as in tests/test_classification_train.py
    args = get_args_parser().parse_args(["--output-dir", str(tmp_path), "--no-plots", "--matrix-scaling", "off",
                                         *extra])
    return main(args)


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["ce", "flsd-53", "brier"])
def test_treelstm_learns_tiny_sst(tmp_path, tiny_sst, loss):
    _run(tmp_path, "--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--loss", loss,
         "--epochs", "6", "--mem-dim", "16", "--lr", "0.1")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["suite"] == "text" and saved["loss"] == loss and saved["dataset"] == "sst-binary"
    evaluation = saved["evaluation"]
    assert evaluation["pre"]["n"] == 24                  # the neutral-root sentence was dropped
    assert max(r["val_accuracy"] for r in _log(tmp_path)) == 1.0
    assert evaluation["pre"]["error"] <= 1 / 24           # the best-validation model generalises to test
    assert 0.1 <= evaluation["temperature"] <= 10.0


def test_treelstm_with_mmce_lowers_its_loss(tmp_path, tiny_sst):
    # MMCE-8 (the paper's text λ) on every node holds the tiny model near 50 % for several epochs, so only check that
    # it trains end to end and that its objective goes down.
    _run(tmp_path, "--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--loss", "mmce-8",
         "--epochs", "4", "--mem-dim", "16", "--lr", "0.1")
    losses = [r["train_loss"] for r in _log(tmp_path)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]


@pytest.mark.skipif(importlib.util.find_spec("dgl") is None, reason="the [dgl] extra is not installed")
def test_engines_give_the_same_training_run(tmp_path, tiny_sst):
    runs = [_run(tmp_path / engine, "--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst),
                 "--engine", engine, "--epochs", "2", "--mem-dim", "8", "--limit-train", "40")
            for engine in ("torch", "dgl")]
    for a, b in zip(_log(tmp_path / "torch"), _log(tmp_path / "dgl")):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    pre_t, pre_d = runs[0]["evaluation"]["pre"], runs[1]["evaluation"]["pre"]
    assert pre_t["nll"] == pytest.approx(pre_d["nll"], rel=1e-5)
    assert pre_t["accuracy"] == pre_d["accuracy"]


def test_resume_continues_exactly(tmp_path, tiny_sst):
    common = ["--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--mem-dim", "8",
              "--limit-train", "40", "--loss", "flsd-53"]
    straight = _run(tmp_path / "a", *common, "--epochs", "3")
    _run(tmp_path / "b", *common, "--epochs", "1")
    (tmp_path / "b" / "log.jsonl").write_text("")        # a resume rewrites the log from the checkpoint
    resumed = _run(tmp_path / "b", *common, "--epochs", "3", "--resume", "auto")
    assert [r["train_loss"] for r in _log(tmp_path / "b")] == [r["train_loss"] for r in _log(tmp_path / "a")]
    assert [r["epoch"] for r in _log(tmp_path / "b")] == [1, 2, 3]
    assert resumed["evaluation"]["pre"] == straight["evaluation"]["pre"]
    with pytest.raises(ValueError, match="already holds a run"):   # a fresh run never overwrites a folder
        _run(tmp_path / "b", *common, "--epochs", "4")


def test_adafocal_resume_restores_its_gamma_per_bin(tmp_path, tiny_sst):
    # AdaFocal's γ per bin, updated after every epoch, comes back from the checkpoint too
    common = ["--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--mem-dim", "8",
              "--limit-train", "40", "--loss", "adafocal", "--eval-every", "0"]
    straight = _run(tmp_path / "a", *common, "--epochs", "3")
    _run(tmp_path / "b", *common, "--epochs", "1")
    resumed = _run(tmp_path / "b", *common, "--epochs", "3", "--resume", "auto")
    log_a, log_b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["adafocal_updates"] for r in log_a] == [1, 2, 3]
    assert [r["adafocal_gammas"] for r in log_b] == [r["adafocal_gammas"] for r in log_a]
    assert [r["train_loss"] for r in log_b] == [r["train_loss"] for r in log_a]
    assert resumed["evaluation"]["pre"] == straight["evaluation"]["pre"]


@pytest.mark.parametrize("changed, flag", [
    (["--loss", "ce"], "--loss"),
    (["--dropout", "0.2"], "--dropout"),
    (["--weight-decay", "0"], "--weight-decay"),
    (["--emb-lr", "0.5"], "--emb-lr"),
    (["--no-tune-embeddings"], "--tune-embeddings"),
    (["--max-length", "50"], "--max-length"),
    (["--split-seed", "7"], "--split-seed"),
    (["--select", "last"], "--select"),
])
def test_resume_refuses_a_changed_run_defining_option(tmp_path, tiny_sst, changed, flag):
    common = ["--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--mem-dim", "4",
              "--limit-train", "10", "--limit-eval", "4", "--loss", "flsd-53", "--eval-every", "0"]
    _run(tmp_path, *common, "--epochs", "1")
    with pytest.raises(ValueError, match=f"cannot resume: {flag} was"):
        _run(tmp_path, *common, *changed, "--epochs", "2", "--resume", "auto")


def test_resume_refuses_a_checkpoint_with_another_number_of_optimizers(tmp_path, tiny_sst):
    common = ["--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--mem-dim", "4",
              "--limit-train", "10", "--limit-eval", "4", "--eval-every", "0"]
    _run(tmp_path, *common, "--epochs", "1")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(state["optimizers"]) == 2                  # AdaGrad for the network, SGD for the tuned embeddings
    state["optimizers"] = state["optimizers"][:1]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="holds 1 optimizer states, this run has 2"):
        _run(tmp_path, *common, "--epochs", "2", "--resume", "auto")


def test_run_folder_and_the_regime_log(tmp_path, tiny_sst):
    _run(tmp_path, "--model", "treelstm", "--dataset", "sst", "--data-dir", str(tiny_sst), "--mem-dim", "8",
         "--epochs", "3", "--lr", "0.1", "--select", "last")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"args.json", "log.jsonl", "results.json", "logits.pt", "checkpoint.pt"} <= names
    log = _log(tmp_path)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    saved = json.loads((tmp_path / "results.json").read_text())
    logits = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert saved["selected_epoch"] == 3 and saved["suite"] == "text"
    # the last epoch's log line is the final evaluation of the selected (last) model
    assert log[-1]["test_ece"] == pytest.approx(saved["evaluation"]["pre"]["ece"])
    assert log[-1]["temperature"] == saved["evaluation"]["temperature"]
    assert log[-1]["train_error"] == pytest.approx(saved["evaluation"]["train"]["error"])
    # test NLL of the misclassified samples, recomputed from the saved logits
    wrong = logits["test_logits"].argmax(1) != logits["test_labels"]
    if wrong.any():
        nll = torch.nn.functional.cross_entropy(logits["test_logits"][wrong], logits["test_labels"][wrong])
        assert log[-1]["test_nll_incorrect"] == pytest.approx(float(nll), rel=1e-5)
    assert set(regime_check(log)) >= {"meets", "near_zero_train_error", "nll_misclassified_rising"}


@pytest.fixture(scope="module")
def tiny_newsgroups(tmp_path_factory):
    """A 20news-bydate-style folder: three groups, each document mixes shared words with its group's words."""
    root = tmp_path_factory.mktemp("news")
    rng = np.random.default_rng(1)
    groups = {"rec.autos": ["car", "engine", "wheel", "driver"], "sci.space": ["orbit", "rocket", "planet", "moon"],
              "misc.forsale": ["price", "sale", "offer", "shipping"]}
    shared = ["the", "a", "and", "is", "of", "it", "with", "for", "this", "that"]
    for split, n in (("20news-bydate-train", 40), ("20news-bydate-test", 14)):
        for group, words in groups.items():
            folder = root / split / group
            folder.mkdir(parents=True)
            for k in range(n):
                body = [str(w) for w in rng.choice(shared, 30)] + [str(w) for w in rng.choice(words, 4)]
                rng.shuffle(body)
                (folder / f"{k}").write_text(f"From: someone@{group}\nSubject: {words[0]}\n\n" + " ".join(body))
    return root


@pytest.mark.parametrize("loss", ["ce", "flsd-53", "ls-0.05"])
def test_gpcnn_learns_tiny_newsgroups(tmp_path, tiny_newsgroups, loss):
    record = _run(tmp_path, "--model", "gpcnn", "--dataset", "20newsgroups", "--data-dir", str(tiny_newsgroups),
                  "--loss", loss, "--epochs", "8", "--batch-size", "16", "--lr", "3e-3", "--tune-embeddings")
    evaluation = record["evaluation"]
    # 162 documents split 15,098 : 900 : 3,999 -> 125 / 7 / 32 minus rounding
    assert record["dataset"] == "20newsgroups" and evaluation["pre"]["n"] == 32
    assert evaluation["pre"]["accuracy"] >= 0.9        # chance is 1/3
    log = _log(tmp_path)
    assert log[-1]["train_loss"] < log[0]["train_loss"]


def test_gpcnn_runs_on_offline_trec_and_the_split_ignores_the_training_seed(tmp_path):
    common = ["--model", "gpcnn", "--epochs", "1", "--limit-train", "200", "--limit-eval", "60", "--eval-every", "0"]
    runs = {name: _run(tmp_path / name, *common, *extra)
            for name, extra in (("a", ["--seed", "1"]), ("b", ["--seed", "2"]))}
    assert runs["a"]["dataset"] == "trec-offline" and runs["a"]["evaluation"]["pre"]["n"] == 60
    assert np.isfinite(_log(tmp_path / "a")[0]["train_loss"])
    labels = {name: torch.load(tmp_path / name / "logits.pt", weights_only=True)["test_labels"] for name in runs}
    from treelstm.data import load_trec
    tests = {seed: [tokens for tokens, _ in load_trec(split_seed=seed, limit_eval=60).test] for seed in (1, 2)}
    assert torch.equal(labels["a"], labels["b"])         # another training seed: the same test set
    assert tests[1] != tests[2]                           # another split seed: another test set
    assert tests[1] == [tokens for tokens, _ in load_trec(split_seed=1).test[:60]]   # limits cut, never re-split


def test_offline_rotten_tomatoes_trees_carry_root_labels_only(tmp_path):
    from treelstm.data import load_rotten_tomatoes_trees
    from treelstm.trees import IGNORE_INDEX

    splits = load_rotten_tomatoes_trees(tmp_path / "link_grammar_parses.jsonl", limit_train=30, limit_eval=5,
                                        workers=1)
    trees = splits.train + splits.val + splits.test
    assert len(trees) == 40 and sum(splits.info["tree_sources"].values()) == 40
    for tree in trees:
        assert (tree.labels[:-1] == IGNORE_INDEX).all() and tree.root_label in (0, 1)
    record = _run(tmp_path / "run", "--model", "treelstm", "--limit-train", "30", "--limit-eval", "5", "--epochs", "1",
                  "--mem-dim", "8", "--data-dir", str(tmp_path))
    assert record["data_info"]["labels"] == "root only"


@pytest.mark.parametrize("extra, message", [
    (["--model", "bert"], "argument --model: invalid choice: 'bert'"),
    (["--engine", "jax"], "argument --engine: invalid choice: 'jax'"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (["--loss", "focal"], "unknown loss spec 'focal'"),
    (["--model", "gpcnn", "--dataset", "rt-offline"], "--dataset 'rt-offline' is not a gpcnn dataset"),
    (["--dataset", "sst"], "--dataset sst needs --data-dir"),
    (["--dropout", "1"], "--dropout must lie in [0, 1), got 1.0"),
    (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
])
def test_bad_arguments_are_one_error_line_and_status_2(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        cli_main(["--output-dir", str(tmp_path / "run"), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and ": error: " in lines[0] and message in lines[0]


def test_a_bad_argument_in_a_fresh_process_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "treelstm.train", "--output-dir", str(tmp_path / "run"),
                             "--loss", "focal"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("train.py: error: unknown loss spec 'focal'")


def test_missing_embeddings_and_empty_data(tmp_path, tiny_sst):
    with pytest.raises(ValueError, match="embeddings file .*missing.txt' does not exist"):
        _run(tmp_path / "a", "--dataset", "sst", "--data-dir", str(tiny_sst), "--embeddings",
             str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty_sst"
    empty.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (empty / name).write_text("")
    with pytest.raises(ValueError, match="train.txt: no trees"):
        _run(tmp_path / "b", "--dataset", "sst", "--data-dir", str(empty))
    neutral = tmp_path / "neutral_sst"
    neutral.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (neutral / name).write_text("(2 (2 a) (2 b))\n")
    with pytest.raises(ValueError, match="the train split is empty"):
        _run(tmp_path / "c", "--dataset", "sst", "--data-dir", str(neutral))
