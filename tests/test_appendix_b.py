"""Tests of scripts/appendix_b_demo.py: the data it draws, the training it runs, the files it writes, and the
paper's Appendix B claims (CE ends with larger weights and more confident mistakes than focal loss γ = 1)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "appendix_b_demo.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS, LR, EVERY = 400, 0.1, 20  # converged (CE and FL reach their optima in ~200 steps at lr 0.1)


def _load_demo():
    spec = importlib.util.spec_from_file_location("appendix_b_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The model is tiny: one intra-op thread is fastest and avoids 100x slow-downs when the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def demo():
    return _load_demo()


@pytest.fixture(scope="module")
def run(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("appendix_b")
    report = demo.main(["--output-dir", str(out), "--steps", str(STEPS), "--lr", str(LR), "--record-every", str(EVERY),
                        "--seed", "0"])
    return out, report


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ----------------------------------------------------------------------------------------------------------------
# data

def test_data_matches_the_appendix_b_setup(demo):
    args = demo.parse_args(["--seed", "3"])
    mixing, splits, w0 = demo.make_data(args)
    assert {k: v[0].shape for k, v in splits.items()} == {"train": (4000, 2), "val": (1000, 2), "test": (1000, 2)}
    # square of side 4 centred at the origin, classes separated by x1 = 0
    means = demo.CLUSTER_MEANS
    assert np.all(np.abs(means) == 2.0) and len({tuple(m) for m in means}) == 4
    assert np.all((means[:, 0] > 0) == (demo.CLUSTER_LABELS == 1))
    for name, (x, y, cluster) in splits.items():
        x, y = x.numpy(), y.numpy()
        clean = demo.CLUSTER_LABELS[cluster]
        assert np.mean(y != clean) == pytest.approx(0.10, abs=1e-12)  # exactly 10% flipped per split
    x, _, cluster = splits["train"]
    x = x.numpy()
    for c in range(4):
        pts = x[cluster == c]
        np.testing.assert_allclose(pts.mean(0), means[c], atol=0.15)
        np.testing.assert_allclose(pts.std(0), 1.0, atol=0.1)  # sigma = 1 per coordinate after mixing
        cov = mixing[c] @ mixing[c].T
        np.testing.assert_allclose(np.diag(cov), 1.0)
        assert np.corrcoef(pts.T)[0, 1] == pytest.approx(cov[0, 1], abs=0.1)  # the mixing adds covariance
    # the splits are independent draws, and everything is seeded
    assert not np.allclose(splits["val"][0].numpy()[:10], splits["test"][0].numpy()[:10])
    mixing2, splits2, w02 = demo.make_data(args)
    assert np.array_equal(mixing, mixing2) and torch.equal(w0, w02)
    assert all(torch.equal(splits[k][0], splits2[k][0]) and torch.equal(splits[k][1], splits2[k][1]) for k in splits)
    _, other, _ = demo.make_data(demo.parse_args(["--seed", "4"]))
    assert not torch.equal(other["train"][0], splits["train"][0])


# ----------------------------------------------------------------------------------------------------------------
# training: one gradient step equals the closed form (CE) and Proposition 1's g-weighted closed form (FL)

@pytest.mark.parametrize("loss", ["ce", "fl"])
def test_one_gradient_step_matches_closed_form(demo, loss):
    args = demo.parse_args([])
    _, splits, w0 = demo.make_data(args)
    x, y, _ = splits["train"]
    lr = 0.3
    w1, hist = demo.train(x, y, w0, loss, gamma=1.0, lr=lr, steps=1, record_every=1)
    xn, yn, w0n = x.numpy(), y.numpy(), w0.numpy()
    s = _sigmoid(xn @ w0n)
    p_true = np.where(yn == 1, s, 1 - s)
    weight = np.ones_like(s) if loss == "ce" else (1 - p_true) - p_true * np.log(p_true)  # g(p, 1)
    grad = ((weight * (s - yn))[:, None] * xn).mean(0)
    np.testing.assert_allclose(w1.numpy(), w0n - lr * grad, rtol=1e-10, atol=1e-12)
    assert hist["step"] == [0, 1]
    np.testing.assert_allclose(hist["w"], [w0n, w1.numpy()])
    expected_loss = -np.log(p_true).mean() if loss == "ce" else (-(1 - p_true) * np.log(p_true)).mean()
    assert hist["train_loss"][0] == pytest.approx(expected_loss, rel=1e-10)


def test_training_is_deterministic(demo):
    args = demo.parse_args([])
    _, splits, w0 = demo.make_data(args)
    x, y, _ = splits["train"]
    a, ha = demo.train(x, y, w0, "fl", gamma=1.0, lr=0.1, steps=25, record_every=7)
    b, hb = demo.train(x, y, w0, "fl", gamma=1.0, lr=0.1, steps=25, record_every=7)
    assert torch.equal(a, b) and ha == hb
    assert ha["step"] == [0, 7, 14, 21, 25]


# ----------------------------------------------------------------------------------------------------------------
# the full demo

def test_demo_writes_results(run):
    out, report = run
    with open(out / "report.json", encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk["config"]["steps"] == STEPS and on_disk["config"]["lr"] == LR
    assert on_disk["data"]["sizes"] == {"train": 4000, "val": 1000, "test": 1000}
    assert set(on_disk["results"]) == {"ce", "fl"}
    expected = {"fig7_norms.png", "fig8a_misclassified_confidence.png", "fig8bc_decision_regions.png",
                "reliability_ce.png", "reliability_fl.png", "temperature_ce.png", "temperature_fl.png",
                "fig4a_g.png", "fig6_optimal_confidence.png"}
    assert set(on_disk["figures"]) == expected
    for name in expected:
        with open(out / name, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    table = (out / "metrics.md").read_text(encoding="utf-8")
    assert table.count("pre-T |") == 2 and table.count("post-T |") == 2
    seconds = on_disk["seconds"]  # speed is measured by benchmarks/, not asserted here: only the record is checked
    assert 0 < seconds["train_and_evaluate"] <= seconds["total"]


def test_demo_numbers_are_consistent(demo, run):
    out, report = run
    args = demo.parse_args(["--seed", "0"])
    _, splits, _ = demo.make_data(args)
    x_tr = splits["train"][0].numpy()
    x_te, y_te = splits["test"][0].numpy(), splits["test"][1].numpy()
    grid = np.arange(1, 101) / 10
    for key, r in report["results"].items():
        w = np.asarray(r["w"])
        hist = r["history"]
        assert hist["step"] == list(range(0, STEPS + 1, EVERY))
        np.testing.assert_allclose(hist["w"][-1], w)
        np.testing.assert_allclose(hist["weight_norm"], np.linalg.norm(hist["w"], axis=1), rtol=1e-12)
        np.testing.assert_allclose(hist["logit_norm"], np.abs(x_tr @ np.asarray(hist["w"]).T).mean(0), rtol=1e-12)
        # test error recomputed from w; temperature scaling cannot change it
        s = _sigmoid(x_te @ w)
        error = np.mean((s > 0.5) != (y_te == 1))
        assert r["pre_temperature"]["error"] == pytest.approx(error, abs=1e-9)
        assert r["post_temperature"]["error"] == pytest.approx(error, abs=1e-9)
        nll = -np.mean(np.log(np.where(y_te == 1, s, 1 - s)))
        assert r["pre_temperature"]["nll"] == pytest.approx(nll, rel=1e-6)
        assert np.isclose(grid, r["temperature"]).any()
        # confidence of the misclassified test points, recomputed
        conf = np.maximum(s, 1 - s)
        wrong = (s > 0.5) != (y_te == 1)
        assert r["misclassified"]["count"] == int(wrong.sum()) > 0
        assert r["misclassified"]["mean_confidence"] == pytest.approx(conf[wrong].mean(), rel=1e-9)
        counts = np.asarray(r["reliability_test"]["counts"])
        assert counts.sum() == 1000


def test_demo_shows_appendix_b_claims(run):
    _, report = run
    ce, fl = report["results"]["ce"], report["results"]["fl"]
    # Fig. 7: the weight and logit norms end larger for cross-entropy than for focal loss
    assert ce["weight_norm"] > 1.3 * fl["weight_norm"]
    assert ce["history"]["logit_norm"][-1] > 1.3 * fl["history"]["logit_norm"][-1]
    # Fig. 8b,c: the same decision regions (the weight vectors point the same way)
    assert report["comparison"]["cosine_w_ce_w_fl"] > 0.999
    assert report["comparison"]["test_prediction_agreement"] > 0.99
    # Fig. 8a: CE misclassifies with higher confidence than FL
    assert ce["misclassified"]["mean_confidence"] > fl["misclassified"]["mean_confidence"] + 0.05
    assert ce["misclassified"]["fraction_above_0.9"] > fl["misclassified"]["fraction_above_0.9"]
    assert report["comparison"]["ce_weight_norm_larger"] and report["comparison"]["ce_misclassified_more_confident"]


def test_bad_arguments(demo):
    with pytest.raises(SystemExit):
        demo.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--label-noise", "0.7"])
