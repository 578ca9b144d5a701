"""focal_calibration.experiments.records against independent NumPy / SciPy references (eq. 1 ECE, §5.1 temperature
choice)."""

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from focal_calibration.experiments.records import (MATRIX_SCALING_COST_LIMIT, evaluate_calibration, make_run_record,
                                                   matrix_scaling_plan, read_results, save_reliability_diagrams)
from focal_calibration.files import write_json_atomic
from focal_calibration.calibration.metrics import calibration_metrics
from focal_calibration.calibration.scaling import fit_matrix_scaling, fit_vector_scaling


def _reference_ece(logits, labels, n_bins=15):
    """Eq. (1) with an explicit loop over bins ((i-1)/M, i/M]."""
    probs = np.exp(log_softmax(logits, axis=1))
    confidence, prediction = probs.max(1), probs.argmax(1)
    correct = prediction == labels
    total = 0.0
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        members = (confidence > lo) & (confidence <= hi) if i else (confidence <= hi)
        if members.any():
            total += abs(correct[members].sum() - confidence[members].sum())
    return total / len(labels)


def _reference_nll(logits, labels):
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def _overconfident_data(n, seed, scale=4.0, k=6):
    """Logits of a model that is right ~70% of the time and far too sure: the optimal T is > 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    hit = rng.random(n) < 0.7
    logits[np.arange(n), np.where(hit, labels, (labels + 1) % k)] += 2.0
    return (scale * logits).astype(np.float64), labels


@pytest.fixture(scope="module")
def data():
    val_logits, val_labels = _overconfident_data(1500, 0)
    test_logits, test_labels = _overconfident_data(2000, 1)
    return val_logits, val_labels, test_logits, test_labels


@pytest.fixture(scope="module")
def result(data):
    val_logits, val_labels, test_logits, test_labels = data
    return evaluate_calibration(torch.from_numpy(val_logits), torch.from_numpy(val_labels),
                                torch.from_numpy(test_logits), torch.from_numpy(test_labels))


def test_temperature_is_the_validation_ece_minimiser_on_the_papers_grid(data, result):
    val_logits, val_labels, _, _ = data
    grid = np.arange(1, 101) / 10
    curve = np.array([_reference_ece(val_logits / t, val_labels) for t in grid])
    assert result["temperature"] == pytest.approx(grid[np.argmin(curve)], abs=1e-12)
    assert result["temperature"] > 1.5  # an overconfident model gets T > 1


def test_nll_temperature_matches_a_scalar_minimiser(data, result):
    val_logits, val_labels, _, _ = data
    best = minimize_scalar(lambda log_t: _reference_nll(val_logits / np.exp(log_t), val_labels),
                           bounds=(-3, 3), method="bounded", options={"xatol": 1e-8})
    assert result["temperature_nll"] == pytest.approx(np.exp(best.x), rel=2e-3)


def test_test_metrics_pre_and_post_match_references_and_the_core(data, result):
    val_logits, val_labels, test_logits, test_labels = data
    t = result["temperature"]
    assert result["pre"]["ece"] == pytest.approx(_reference_ece(test_logits, test_labels), abs=1e-12)
    assert result["post"]["ece"] == pytest.approx(_reference_ece(test_logits / t, test_labels), abs=1e-12)
    assert result["pre"]["nll"] == pytest.approx(_reference_nll(test_logits, test_labels), rel=1e-10)
    accuracy = float((test_logits.argmax(1) == test_labels).mean())
    assert result["pre"]["accuracy"] == result["post"]["accuracy"] == pytest.approx(accuracy)
    assert result["post"]["ece"] < result["pre"]["ece"]
    assert result["val_post"]["ece"] <= result["val_pre"]["ece"]
    # the saved-logits contract: exactly the core's numbers
    assert result["pre"] == calibration_metrics(test_labels, logits=test_logits)
    assert result["post"] == calibration_metrics(test_labels, logits=test_logits / t)
    assert result["post_nll"] == calibration_metrics(test_labels, logits=test_logits / result["temperature_nll"])
    assert result["val_pre"] == calibration_metrics(val_labels, logits=val_logits)
    assert result["n_bins"] == 15
    json.dumps(result)  # JSON-ready


def test_post_hoc_maps_are_fitted_on_validation_and_reported_on_test(data, result):
    val_logits, val_labels, test_logits, test_labels = data
    vector, matrix = fit_vector_scaling(val_logits, val_labels), fit_matrix_scaling(val_logits, val_labels)
    assert result["post_vs"] == calibration_metrics(test_labels, logits=vector.scale(test_logits))
    # K^2 + K = 42 <= N_val / 10 = 150: Guo et al.'s unregularised matrix scaling
    assert result["post_ms"] == calibration_metrics(test_labels, logits=matrix.scale(test_logits))
    assert result["vector_scaling"] == vector.summary() and result["vector_scaling"]["n_params"] == 12
    assert result["matrix_scaling"]["n_params"] == 42 and result["matrix_scaling"]["odir"] is None
    for key in ("post_vs", "post_ms"):  # an over-confident model: both maps help on the test set (unlike T, they
        # may change the argmax: here matrix scaling learns the data's class confusion and trades accuracy for NLL)
        assert result[key]["nll"] < result["pre"]["nll"] and result[key]["ece"] < result["pre"]["ece"]


@pytest.mark.parametrize("n, k, mode, covered, want", [
    (1500, 6, "auto", True, "plain"),      # 42 parameters, 1500 samples: >= 10 per parameter
    (419, 6, "auto", True, "odir"),        # 42 > 41.9
    (420, 6, "auto", True, "plain"),       # 42 <= 42.0
    (1500, 6, "auto", False, "odir"),      # a class missing from the validation labels: no finite plain optimum
    (5000, 100, "auto", True, "odir"),     # CIFAR-100-like: 10,100 parameters
    (25000, 1000, "auto", True, "skip"),   # ImageNet-like: N K^2 = 2.5e10 > 2^27
    (10000, 200, "auto", True, "skip"),    # Tiny-ImageNet-like: 4e8 > 2^27
    (25000, 1000, "odir", True, "odir"),
    (50, 6, "plain", True, "plain"),
    (1500, 6, "off", True, "skip"),
])
def test_matrix_scaling_plan(n, k, mode, covered, want):
    plan, reason = matrix_scaling_plan(n, k, mode, labels_cover_classes=covered)
    assert plan == want
    if want == "skip" and mode == "auto":
        assert f"{n * k * k:,}" in reason and f"{MATRIX_SCALING_COST_LIMIT:,}" in reason and "'odir'" in reason
    with pytest.raises(ValueError, match="matrix_scaling must be one of .* got 'dirichlet'"):
        matrix_scaling_plan(n, k, "dirichlet")


def test_small_validation_sets_get_odir_or_skips_with_reasons(data):
    val_logits, val_labels, test_logits, test_labels = data
    small = evaluate_calibration(val_logits[:200], val_labels[:200], test_logits, test_labels)
    assert small["matrix_scaling"]["odir"]["chosen_by"].startswith("3-fold cross-validated NLL")
    refit = fit_matrix_scaling(val_logits[:200], val_labels[:200], odir="cv")
    assert small["post_ms"] == calibration_metrics(test_labels, logits=refit.scale(test_logits))
    off = evaluate_calibration(val_logits[:200], val_labels[:200], test_logits, test_labels, matrix_scaling="off")
    assert off["post_ms"] is None and off["matrix_scaling"] == {"skipped": "matrix_scaling='off'"}
    missing = val_labels[:300] != 5  # class 5 never in the validation labels: vector scaling has no finite optimum
    partial = evaluate_calibration(val_logits[:300][missing], val_labels[:300][missing], test_logits, test_labels,
                                   matrix_scaling="off")
    assert partial["post_vs"] is None and "all classes present: False" in partial["vector_scaling"]["skipped"]
    json.dumps(partial)
    with pytest.raises(ValueError, match="matrix_scaling must be one of"):
        evaluate_calibration(val_logits, val_labels, test_logits, test_labels, matrix_scaling="yes")


def test_half_precision_logits_are_evaluated_in_float32(data):
    val_logits, val_labels, test_logits, test_labels = data
    half = evaluate_calibration(torch.from_numpy(val_logits).half(), val_labels,
                                torch.from_numpy(test_logits).half(), test_labels)
    rounded = torch.from_numpy(test_logits).half().float().numpy()
    assert half["pre"]["ece"] == pytest.approx(_reference_ece(rounded, test_labels), abs=1e-6)


def test_bad_inputs_are_named():
    logits, labels = torch.randn(20, 3), torch.randint(0, 3, (20,))
    with pytest.raises(ValueError, match="same number of classes"):
        evaluate_calibration(logits, labels, torch.randn(20, 4), labels)
    with pytest.raises(ValueError, match="test_logits must have shape"):
        evaluate_calibration(logits, labels, torch.randn(20), labels)
    with pytest.raises(TypeError, match="val_logits must be floating-point"):
        evaluate_calibration(labels[:, None].expand(20, 3), labels, logits, labels)
    with pytest.raises(ValueError, match="n_bins"):
        evaluate_calibration(logits, labels, logits, labels, n_bins=0)
    with pytest.raises(ValueError, match="temperature must be"):
        save_reliability_diagrams(logits, labels, 0.0, "unused")


def test_reliability_diagrams_are_written(tmp_path, data):
    _, _, test_logits, test_labels = data
    paths = save_reliability_diagrams(test_logits, test_labels, 2.0, tmp_path, prefix="run_")
    assert [p.name for p in paths] == ["run_reliability_pre.png", "run_reliability_post.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_round_trip_and_errors(tmp_path, result):
    record = make_run_record(suite="image", dataset="cifar10", model="resnet50", loss="flsd-53", seed=1,
                             args={"lr": 0.1, "milestones": (150, 250), "out": tmp_path}, evaluation=result,
                             paths={"checkpoint": tmp_path / "checkpoint.pt"})
    write_json_atomic(tmp_path / "a" / "results.json", record)
    write_json_atomic(tmp_path / "b" / "results.json", dict(record, loss="ce", nan_value=float("nan")))
    records = read_results([tmp_path])
    assert [r["loss"] for r in records] == ["flsd-53", "ce"]
    assert records[0]["args"]["milestones"] == [150, 250] and records[1]["nan_value"] is None
    assert records[0]["evaluation"]["temperature"] == result["temperature"]
    assert records[0]["path"].endswith("a/results.json")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["results.json"]

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_results([tmp_path / "bad.json"])
    (tmp_path / "partial.json").write_text(json.dumps({"suite": "image", "dataset": "x", "model": "m",
                                                        "loss": "ce", "evaluation": {"pre": {}}}))
    with pytest.raises(ValueError, match="partial.json.* lacks evaluation.temperature"):
        read_results([tmp_path / "partial.json"])
    with pytest.raises(ValueError, match="does not exist"):
        read_results([tmp_path / "missing.json"])
