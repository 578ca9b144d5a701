"""Tests of the binary / per-label temperature fits: each label's T equals fitting that label alone; a known
over-confidence factor is recovered; the curves equal the multi-label metrics of logits / T (themselves tested
against torchmetrics); fits the data cannot determine say so."""

import warnings

import numpy as np
import pytest
import torch

from focal_calibration import (LabelTemperatureFit, TemperatureFitWarning, binary_calibration_metrics,
                               fit_binary_temperature, fit_label_temperatures, multilabel_calibration_metrics)


def calibrated_labels(n, labels, seed, spread=2.0):
    """Logits z of a calibrated multi-label model (targets drawn from σ(z))."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, labels, generator=generator, dtype=torch.float64) * spread
    targets = (torch.rand(n, labels, generator=generator, dtype=torch.float64) < torch.sigmoid(logits)).long()
    return logits, targets


FACTORS = torch.tensor([0.5, 1.0, 1.8, 3.0], dtype=torch.float64)  # < 1: under-confident, > 1: over-confident


@pytest.mark.parametrize("objective, method", [("ece", "grid"), ("adaece", "grid"), ("nll", "grid"),
                                               ("nll", "newton")])
def test_per_label_temperature_equals_fitting_each_label_alone(objective, method):
    logits, targets = calibrated_labels(600, 4, seed=1)
    distorted = logits * FACTORS
    fit = fit_label_temperatures(distorted, targets, objective, method=method)
    assert isinstance(fit, LabelTemperatureFit) and fit.temperature.shape == (4,)
    for label in range(4):
        alone = fit_binary_temperature(distorted[:, label], targets[:, label], objective, method=method)
        if method == "grid":
            assert fit.temperature[label] == alone.temperature
            np.testing.assert_allclose(getattr(fit, objective)[label], getattr(alone, objective), rtol=1e-12)
        else:
            assert fit.temperature[label] == pytest.approx(alone.temperature, rel=1e-9)


def test_recovers_known_over_confidence_factor():
    logits, targets = calibrated_labels(20_000, 4, seed=2)
    distorted = (logits * FACTORS).float()
    newton = fit_label_temperatures(distorted, targets, "nll", method="newton")
    np.testing.assert_allclose(newton.temperature, FACTORS.numpy(), rtol=0.04)
    grid = fit_label_temperatures(distorted, targets, "ece")
    assert np.abs(grid.temperature - FACTORS.numpy()).max() <= 0.2
    for curve in (grid.adaece, grid.nll):  # the other objectives' grid minima (their fits take the first minimum)
        assert np.abs(grid.temperatures[np.argmin(curve, axis=1)] - FACTORS.numpy()).max() <= 0.2
    # the continuous NLL optimum: its derivative is 0 (checked with autograd on the plain formula)
    for label in range(4):
        t = torch.tensor(float(newton.temperature[label]), dtype=torch.float64, requires_grad=True)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(distorted[:, label].double() / t,
                                                                   targets[:, label].double())
        (grad,) = torch.autograd.grad(nll, t)
        assert abs(float(grad)) < 1e-9
    # one shared temperature for every label: fitted on the pairs pooled
    shared = fit_binary_temperature(logits * 2.0, targets, "nll", method="newton")
    assert shared.temperature == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("confidence", ["positive", "top_label"])
def test_curves_equal_multilabel_metrics_of_scaled_logits(confidence):
    logits, targets = calibrated_labels(300, 3, seed=3)
    mask = torch.rand(300, 3, generator=torch.Generator().manual_seed(4)) < 0.9
    grid = [0.3, 1.0, 2.7]
    fit = fit_label_temperatures(logits * 1.5, targets, temperatures=grid, n_bins=10, confidence=confidence,
                                 mask=mask)
    for i, t in enumerate(grid):
        want = multilabel_calibration_metrics(targets, logits=logits * 1.5 / t, n_bins=10, confidence=confidence,
                                              mask=mask)["per_label"]
        np.testing.assert_allclose(fit.ece[:, i], want["ece"], rtol=1e-9)
        np.testing.assert_allclose(fit.adaece[:, i], want["adaece"], rtol=1e-9)
        np.testing.assert_allclose(fit.nll[:, i], want["nll"], rtol=1e-9)
    newton = fit_label_temperatures(logits * 1.5, targets, "nll", method="newton", mask=mask)
    assert newton.temperatures.shape == (3, 1)  # each label's own T, and its metrics there
    at_fit = multilabel_calibration_metrics(targets, logits=newton.scale(logits * 1.5), mask=mask)["per_label"]
    np.testing.assert_allclose(newton.nll[:, 0], at_fit["nll"], rtol=1e-9)


def test_masks_and_ignore_index_equal_fitting_the_kept_samples():
    logits, targets = calibrated_labels(400, 3, seed=5)
    distorted = logits * FACTORS[:3]
    unknown = torch.rand(400, 3, generator=torch.Generator().manual_seed(6)) < 0.2
    labels = torch.where(unknown, -1, targets)
    fit = fit_label_temperatures(distorted, labels, ignore_index=-1)
    masked = fit_label_temperatures(distorted.masked_fill(unknown, float("nan")), targets, "nll", method="newton",
                                    mask=~unknown)  # pairs that do not count may hold anything
    for label in range(3):
        keep = ~unknown[:, label]
        alone = fit_binary_temperature(distorted[keep, label], targets[keep, label])
        assert fit.temperature[label] == alone.temperature
        alone = fit_binary_temperature(distorted[keep, label], targets[keep, label], "nll", method="newton")
        assert masked.temperature[label] == pytest.approx(alone.temperature, rel=1e-9)
        assert masked.nll[label, 0] == pytest.approx(alone.nll[0], rel=1e-9)
    binary = fit_binary_temperature(distorted[:, 0], labels[:, 0], ignore_index=-1)
    assert binary.temperature == fit.temperature[0]


def test_scale():
    fit = fit_label_temperatures(*calibrated_labels(200, 3, seed=7))
    logits = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fit.scale(logits), logits / torch.from_numpy(fit.temperature))
    np.testing.assert_allclose(fit.scale(logits.numpy()), logits.numpy() / fit.temperature)
    scaled = binary_calibration_metrics(torch.tensor([0, 1, 1]), logits=fit.scale(torch.tensor([[1.0, 2, 3]]))[0])
    assert scaled["n"] == 3


def test_fits_the_data_cannot_determine_say_so():
    logits, targets = calibrated_labels(300, 3, seed=8)
    logits[:, 1] = 0.0  # σ(0 / T) = 1/2 at every T
    with pytest.warns(TemperatureFitWarning, match=r"label\(s\) \[1\]: the ece is the same at every temperature"):
        fit_label_temperatures(logits, targets)
    with pytest.warns(TemperatureFitWarning, match=r"label\(s\) \[1\]"):
        fit_label_temperatures(logits, targets, "nll", method="newton")
    separable = torch.linspace(-3, 3, 40, dtype=torch.float64)  # every target on its logit's side
    with pytest.warns(TemperatureFitWarning, match="towards T -> 0"):
        fit = fit_binary_temperature(separable, (separable > 0).long(), "nll", method="newton")
    assert fit.temperature == pytest.approx(1e-8)
    with pytest.raises(ValueError, match=r"at least 2 counted samples .*got 1 for label\(s\) \[2\]"):
        mask = torch.ones(300, 3, dtype=torch.bool)
        mask[1:, 2] = False
        fit_label_temperatures(logits, targets, mask=mask)
    with pytest.raises(ValueError, match="at least 2 counted samples"):
        fit_binary_temperature(torch.tensor([1.0]), torch.tensor([1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TemperatureFitWarning)  # an informative fit does not warn
        fit_label_temperatures(*calibrated_labels(300, 3, seed=9))
        fit_label_temperatures(*calibrated_labels(300, 3, seed=9), "nll", method="newton")


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="brier"), "objective"),
    (dict(method="lbfgs"), "method"),
    (dict(objective="ece", method="newton"), "newton.*objective='ece'"),
    (dict(temperatures=[0.0, 1.0]), "> 0"),
    (dict(confidence="max"), "confidence"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_label_temperatures(*calibrated_labels(20, 2, seed=10), **kwargs)
