"""Tests of focal_calibration.calibration.temperature against independent references (per-T loops, a known
temperature)."""

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from focal_calibration.calibration.temperature import (DEFAULT_TEMPERATURES, TemperatureFit, TemperatureFitWarning,
                                                       fit_temperature)
from test_metrics import ref_metrics, ref_softmax


def calibrated_problem(n, k, seed, spread=2.0):
    """Logits z of a perfectly calibrated model: labels are drawn from softmax(z)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * spread
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_default_grid_is_exact_decimal():
    assert len(DEFAULT_TEMPERATURES) == 100
    for k, t in enumerate(DEFAULT_TEMPERATURES, start=1):
        assert t == k / 10  # the correctly rounded double of k/10, not an accumulated sum of 0.1 steps
        assert Decimal(repr(float(t))) == Decimal(k) / 10
    accumulated = [0.1]
    while len(accumulated) < 100:
        accumulated.append(accumulated[-1] + 0.1)
    assert any(a != t for a, t in zip(accumulated, DEFAULT_TEMPERATURES))  # why exactness matters
    logits, labels = calibrated_problem(200, 4, seed=0)
    fit = fit_temperature(logits, labels)
    np.testing.assert_array_equal(fit.temperatures, DEFAULT_TEMPERATURES)


@pytest.mark.parametrize("true_t", [2.5, 0.6])
def test_recovers_known_temperature(true_t):
    logits, labels = calibrated_problem(20_000, 10, seed=1)
    distorted = (logits * true_t).float()  # T0 > 1: over-confident; T0 < 1: under-confident
    lbfgs = fit_temperature(distorted, labels, "nll", method="lbfgs")
    assert lbfgs.temperature == pytest.approx(true_t, rel=0.03)
    for objective in ("ece", "nll", "adaece"):
        grid = fit_temperature(distorted, labels, objective)
        assert abs(grid.temperature - true_t) <= 0.2, objective
        assert grid.objective == objective and grid.method == "grid"
    # the continuous optimum sits at (or next to) the grid's NLL minimum
    assert abs(lbfgs.temperature - grid.temperatures[np.argmin(grid.nll)]) <= 0.1


def test_curves_match_per_temperature_reference_loop():
    logits, labels = calibrated_problem(400, 6, seed=2, spread=3.0)
    grid = [0.3, 1.0, 2.7, 6.0]
    fit = fit_temperature(logits, labels, temperatures=grid, n_bins=10)
    for i, t in enumerate(grid):
        probs, log_probs = ref_softmax(logits.numpy() / t)
        want = ref_metrics(probs, labels.numpy(), 10, log_probs=log_probs)
        assert fit.ece[i] == pytest.approx(want["ece"], rel=1e-9, abs=1e-12)
        assert fit.adaece[i] == pytest.approx(want["adaece"], rel=1e-9, abs=1e-12)
        assert fit.nll[i] == pytest.approx(want["nll"], rel=1e-9)
    assert fit.temperature == grid[int(np.argmin([fit.ece[i] for i in range(4)]))]


def test_float32_curves_and_chunking():
    logits, labels = calibrated_problem(300, 7, seed=3)
    logits = logits.float()
    whole = fit_temperature(logits, labels)
    tiny_chunks = fit_temperature(logits, labels, max_chunk_elements=50)  # forces 1 temperature x 7 rows blocks
    for curve in ("ece", "adaece", "nll"):
        np.testing.assert_allclose(getattr(tiny_chunks, curve), getattr(whole, curve), rtol=1e-6, atol=1e-9)
    probs, log_probs = ref_softmax(logits.double().numpy() / 1.7)
    want = ref_metrics(probs, labels.numpy(), 15, log_probs=log_probs)
    i = 16  # T = 1.7
    assert whole.ece[i] == pytest.approx(want["ece"], abs=1e-6)
    assert whole.nll[i] == pytest.approx(want["nll"], rel=1e-6)


def test_ties_pick_smallest_temperature():
    # Huge margins: every confidence is exactly 1.0 and every prediction correct at every T <= 10, so all three
    # curves are exactly 0 everywhere; the paper's loop (strict improvement) keeps the first, i.e. smallest, T.
    # Flat curves: the data do not determine T, and the fit says so (issue 17).
    logits = torch.tensor([[1000.0, 0.0, 0.0], [0.0, 0.0, 1000.0]] * 10)
    labels = torch.tensor([0, 2] * 10)
    for objective in ("ece", "adaece", "nll"):
        with pytest.warns(TemperatureFitWarning, match=f"the {objective} is the same at every temperature"):
            fit = fit_temperature(logits, labels, objective)
        assert np.all(getattr(fit, objective) == 0)
        assert fit.temperature == 0.1
    with pytest.warns(TemperatureFitWarning):
        unsorted = fit_temperature(logits, labels, temperatures=[3.0, 1.0, 2.0, 1.0])
    np.testing.assert_array_equal(unsorted.temperatures, [1.0, 2.0, 3.0])
    assert unsorted.temperature == 1.0


def test_scale_and_ignore_index():
    logits, labels = calibrated_problem(500, 5, seed=4)
    labels[::10] = -100
    fit = fit_temperature(logits * 2, labels, ignore_index=-100)
    keep = labels != -100
    want = fit_temperature(logits[keep] * 2, labels[keep])
    np.testing.assert_allclose(fit.ece, want.ece, rtol=1e-12)
    assert isinstance(fit, TemperatureFit)
    torch.testing.assert_close(fit.scale(logits), logits / fit.temperature)
    np.testing.assert_allclose(fit.scale(logits.numpy()), logits.numpy() / fit.temperature)


def test_logits_that_require_grad():
    logits, labels = calibrated_problem(300, 4, seed=7)
    for method, objective in (("grid", "ece"), ("lbfgs", "nll")):
        want = fit_temperature(logits, labels, objective, method=method)
        got = fit_temperature(logits.clone().requires_grad_(), labels, objective, method=method)
        assert got.temperature == want.temperature


def test_lbfgs_curves():
    logits, labels = calibrated_problem(1000, 4, seed=5)
    distorted = logits * 1.5
    fit = fit_temperature(distorted, labels, "nll", method="lbfgs")
    assert fit.method == "lbfgs" and math.isfinite(fit.temperature) and fit.temperature > 0
    # without a grid the curves are the metrics at the fitted T, checked against the loop reference
    np.testing.assert_array_equal(fit.temperatures, [fit.temperature])
    probs, log_probs = ref_softmax(distorted.numpy() / fit.temperature)
    want = ref_metrics(probs, labels.numpy(), 15, log_probs)
    assert fit.nll[0] == pytest.approx(want["nll"], rel=1e-9)
    assert fit.ece[0] == pytest.approx(want["ece"], rel=1e-9)
    # the continuous fit is at least as good as every point of the paper's grid, and a given grid is kept
    on_grid = fit_temperature(distorted, labels, "nll", method="lbfgs", temperatures=DEFAULT_TEMPERATURES)
    assert len(on_grid.nll) == 100 and on_grid.temperature == fit.temperature
    assert fit.nll[0] <= on_grid.nll.min() + 1e-12


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="brier"), "objective must be one of .* got 'brier'"),
    (dict(method="newton"), "method must be one of .* got 'newton'"),
    (dict(objective="ece", method="lbfgs"), "lbfgs.*objective='ece'"),
    (dict(temperatures=[1.0, 0.0]), "> 0, got 0.0"),
    (dict(temperatures=[-1.5, 2.0]), "> 0, got -1.5"),
    (dict(temperatures=[1.0, float("nan")]), "got nan"),
    (dict(temperatures=[]), "must not be empty"),
    (dict(n_bins=0), "n_bins must be an integer >= 1, got 0"),
    (dict(max_chunk_elements=0), "max_chunk_elements"),
])
def test_bad_arguments(kwargs, message):
    logits, labels = calibrated_problem(20, 3, seed=6)
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels, **kwargs)


def test_one_sample_cannot_determine_a_temperature():
    """Issue 17: one sample gave T = 0.1 without a word; now an error naming the count."""
    for method, objective in (("grid", "ece"), ("lbfgs", "nll")):
        with pytest.raises(ValueError, match="at least 2 samples .* got 1"):
            fit_temperature(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([0]), objective, method=method)
    labels = torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="got 1"):  # one sample left after ignore_index
        fit_temperature(torch.randn(4, 3), torch.tensor([0, -100, -100, -100]), ignore_index=-100)
    fit_temperature(torch.randn(4, 3), labels)  # two or more samples: no complaint


def test_constant_logits_warn_that_t_is_not_determined():
    """Issue 17: equal logits in every row gave T = 0.1 without a word: softmax(z / T) is uniform for every T."""
    logits, labels = torch.zeros(30, 4), torch.arange(30) % 4
    with pytest.warns(TemperatureFitWarning, match="do not determine T .*T = 0.1"):
        assert fit_temperature(logits, labels).temperature == 0.1
    with pytest.warns(TemperatureFitWarning, match="every row's logits are equal.*T = 1"):
        assert fit_temperature(logits + 3.0, labels, "nll", method="lbfgs").temperature == 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TemperatureFitWarning)  # an informative fit does not warn
        logits, labels = calibrated_problem(300, 4, seed=8)
        fit_temperature(logits * 2, labels)
        fit_temperature(logits * 2, labels, "nll", method="lbfgs")


@pytest.mark.parametrize("logits, labels, message", [
    (torch.tensor([[0.0, float("inf")]]), torch.tensor([0]), "finite, got inf"),
    (torch.tensor([[0.0, 1.0]]), torch.tensor([2]), "class index 2"),
    (torch.zeros(3, 2), torch.tensor([0, 1]), "shape mismatch"),
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "empty"),
])
def test_bad_inputs(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)
