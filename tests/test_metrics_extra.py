"""Metrics beyond the paper (focal_calibration.calibration.extra_metrics) against independent references:
KS against hand-computed cases and a plain sort-and-cumsum reference (Gupta et al.'s definition); ECE-sweep against a
plain loop over bin counts (Roelofs et al.'s procedure); debiased L2 against the `uncertainty-calibration` package
(Kumar et al.'s code) and a hand-computed case; smooth ECE against a direct evaluation of the paper's integral and
against the `relplot` package (Błasiok & Nakkiran's code) where its discretisation is accurate."""

import math

import numpy as np
import pytest
import torch

from focal_calibration import CalibrationAccumulator, bootstrap_samples, calibration_metrics
from focal_calibration.calibration.extra_metrics import smece_grid_sums, smooth_ece_from_grid

ALL = ("smece", "ks", "ece_sweep", "debiased_l2_ece")


def binary_probs(confidence):
    """Two-class probabilities whose top-1 confidence is ``confidence`` (>= 0.5) on class 0."""
    confidence = np.asarray(confidence, dtype=np.float64)
    return torch.from_numpy(np.stack([confidence, 1 - confidence], 1))


def labels_for(correct):
    return torch.from_numpy(np.where(np.asarray(correct, dtype=bool), 0, 1))


def wavy_problem(n, seed):
    """Confidences in [0.5, 1) whose true accuracy crosses the diagonal (residuals of both signs)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    accuracy = np.clip(confidence + 0.25 * np.sin(12 * confidence), 0, 1)
    correct = rng.uniform(size=n) < accuracy
    return confidence, correct


def tie_means(confidence, correct):
    """Each sample's correctness replaced by the mean over samples of exactly equal confidence."""
    correct = np.asarray(correct, dtype=np.float64)
    out = np.empty_like(correct)
    for value in np.unique(confidence):
        members = confidence == value
        out[members] = correct[members].mean()
    return out


# ----------------------------------------------------------------------------------------------------------------
# KS
# ----------------------------------------------------------------------------------------------------------------

def test_ks_hand_computed():
    # sorted residuals correct - c: .4, -.7, .2, .1 -> cumulative .4, -.3, -.1, 0 -> max |.| = .4 -> KS = .4 / 4
    m = calibration_metrics(labels_for([1, 0, 1, 1]), probs=binary_probs([0.6, 0.7, 0.8, 0.9]), extra=("ks",))
    assert m["ks"] == pytest.approx(0.1)
    # ties: the curves jump at the threshold 0.6 by (0 - .6) + (1 - .6) = -.2, then by .1 -> max .2 -> KS = .2 / 3,
    # whichever order the tied samples are in (a per-element cumsum would see -.6 in one order)
    for order in ([0, 1, 2], [1, 0, 2]):
        correct = np.array([0, 1, 1])[order]
        m = calibration_metrics(labels_for(correct), probs=binary_probs(np.array([0.6, 0.6, 0.9])[order]),
                                extra=("ks",))
        assert m["ks"] == pytest.approx(0.2 / 3)


def test_ks_matches_sorted_cumsum_definition():
    confidence, correct = wavy_problem(500, seed=1)
    order = np.argsort(confidence)
    want = np.abs(np.cumsum(correct[order] - confidence[order])).max() / 500
    got = calibration_metrics(labels_for(correct), probs=binary_probs(confidence), extra=("ks",))["ks"]
    assert got == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# ECE-sweep
# ----------------------------------------------------------------------------------------------------------------

def reference_sweep(confidence, correct):
    """Roelofs et al.: b = 1, 2, ...; equal-mass bins (rank r -> bin floor(r b / N)); stop before the first b whose
    bin accuracies decrease; the L1 ECE at that b. Tie groups count with their mean correctness."""
    n = len(confidence)
    order = np.argsort(confidence, kind="stable")
    values = tie_means(confidence, correct)[order]
    conf = np.asarray(confidence, dtype=np.float64)[order]
    chosen, value = 1, abs(values.sum() - conf.sum()) / n
    for b in range(2, n + 1):
        bins = [[r for r in range(n) if r * b // n == k] for k in range(b)]
        heights = [values[members].mean() for members in bins]
        if any(heights[k + 1] < heights[k] - 1e-12 for k in range(b - 1)):
            break
        chosen, value = b, sum(abs(values[m].sum() - conf[m].sum()) for m in bins) / n
    return value, chosen


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ece_sweep_matches_plain_sweep(seed):
    rng = np.random.default_rng(seed)
    n = 120
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < confidence ** (0.5 + seed)  # calibrated (seed 0) to over-confident (seed 3)
    want, _ = reference_sweep(confidence, correct)
    got = calibration_metrics(labels_for(correct), probs=binary_probs(confidence), extra=("ece_sweep",))
    assert got["ece_sweep"] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_ece_sweep_with_ties_and_all_tied():
    rng = np.random.default_rng(5)
    confidence = rng.choice([0.55, 0.7, 0.8, 0.95, 1.0], size=90)
    correct = rng.uniform(size=90) < confidence - 0.1
    want, _ = reference_sweep(confidence, correct)
    got = calibration_metrics(labels_for(correct), probs=binary_probs(confidence), extra=("ece_sweep",))
    assert got["ece_sweep"] == pytest.approx(want, rel=1e-12, abs=1e-15)
    # one tie group: every count is monotone, so b = N and the value is |accuracy - confidence|
    same = np.full(30, 0.8)
    hits = np.arange(30) % 3 == 0
    got = calibration_metrics(labels_for(hits), probs=binary_probs(same), extra=("ece_sweep",))
    assert got["ece_sweep"] == pytest.approx(abs(hits.mean() - 0.8))


# ----------------------------------------------------------------------------------------------------------------
# Debiased L2
# ----------------------------------------------------------------------------------------------------------------

def test_debiased_l2_hand_computed():
    # N = 4, 2 bins of 2: bin 1 conf (.6, .7), correct (1, 0): p = .65, y = .5 -> .0225 - .25 / 1 = -.2275
    #                     bin 2 conf (.8, .9), correct (1, 1): p = .85, y = 1  -> .0225 - 0 = .0225
    # CE^2 = .5 * (-.2275) + .5 * .0225 < 0 -> 0
    m = calibration_metrics(labels_for([1, 0, 1, 1]), probs=binary_probs([0.6, 0.7, 0.8, 0.9]), n_bins=2,
                            extra=("debiased_l2_ece",))
    assert m["debiased_l2_ece"] == 0.0
    # all wrong at .9 in one bin of 4: (.9 - 0)^2 - 0 = .81 -> .9
    m = calibration_metrics(labels_for([0, 0, 0, 0]), probs=binary_probs([0.9] * 4), n_bins=1,
                            extra=("debiased_l2_ece",))
    assert m["debiased_l2_ece"] == pytest.approx(0.9)


@pytest.mark.parametrize("n, n_bins, seed", [(900, 15, 0), (600, 10, 1), (450, 15, 2)])
def test_debiased_l2_matches_uncertainty_calibration(n, n_bins, seed):
    # The package bins with np.array_split of the sorted confidences (edges half-way between bins); with N a multiple
    # of n_bins and distinct confidences its bins are exactly our equal-mass bins.
    from calibration import lower_bound_scaling_top_ce

    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5, generator=generator, dtype=torch.float64) * 2.5
    labels = torch.multinomial(torch.softmax(logits / 1.7, -1), 1, generator=generator).squeeze(1)
    probs = torch.softmax(logits, -1)
    want = lower_bound_scaling_top_ce(probs.numpy(), labels.numpy(), p=2, debias=True, num_bins=n_bins)
    got = calibration_metrics(labels, probs=probs, n_bins=n_bins, extra=("debiased_l2_ece",))["debiased_l2_ece"]
    assert want > 0.01
    assert got == pytest.approx(want, rel=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Smooth ECE
# ----------------------------------------------------------------------------------------------------------------

def direct_smece(confidence, residual, sigma, points=10001):
    """The paper's integral with the exact reflected Gaussian kernel at every sample, trapezoid on a fine grid."""
    t = np.linspace(0, 1, points)
    kernel = sum(np.exp(-(t[:, None] - confidence + 2 * k) ** 2 / (2 * sigma ** 2))
                 + np.exp(-(t[:, None] + confidence + 2 * k) ** 2 / (2 * sigma ** 2)) for k in range(-3, 4))
    kernel /= sigma * math.sqrt(2 * math.pi)
    return np.trapezoid(np.abs(kernel @ residual), t) / len(confidence)


def smece_at(confidence, correct, sigma):
    conf = torch.from_numpy(confidence)
    ones = torch.ones(len(conf), 1, dtype=torch.float64)
    return float(smooth_ece_from_grid(smece_grid_sums(conf, torch.from_numpy(correct), ones), len(conf),
                                      sigma=sigma)[0][0])


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2, 0.6])
def test_smece_at_fixed_width_matches_direct_integral(sigma):
    confidence, correct = wavy_problem(200, seed=2)
    confidence[:5] = [0.0, 1.0, 1.0, 0.5, 0.999]  # end points: the reflection doubles their own mass
    want = direct_smece(confidence, correct - confidence, sigma)
    assert smece_at(confidence, correct, sigma) == pytest.approx(want, rel=2e-5)


def test_smece_matches_relplot_where_its_grid_is_accurate():
    # relplot samples its Gaussian on a window of width 1 (it truncates the kernel at +-1/2), splats onto ~1001
    # points and sums 200 evaluation points; for widths <= 0.1 that costs < 1e-3 relative (measured 5e-4 here).
    import relplot

    confidence, correct = wavy_problem(2000, seed=3)
    for sigma in (0.03, 0.08):
        assert smece_at(confidence, correct, sigma) == pytest.approx(
            relplot.smECE_sigma(confidence, correct.astype(float), sigma), rel=2e-3)
    # fixed point: relplot bisects the width 10 times on [0, 1] (to 2^-10), we to 1e-9; smECE = width there
    got = calibration_metrics(labels_for(correct), probs=binary_probs(confidence), extra=("smece",))["smece"]
    theirs, width = relplot.smECE(confidence, correct.astype(float), return_width=True)
    assert got == pytest.approx(smece_at(confidence, correct, got), abs=1e-9)  # the fixed point
    assert width - 2 ** -10 <= got <= width + 1e-9
    assert got == pytest.approx(theirs, abs=3e-3)


# ----------------------------------------------------------------------------------------------------------------
# Plumbing: keys, streaming, bootstrap, errors
# ----------------------------------------------------------------------------------------------------------------

def random_problem(n, k, seed, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    return logits, torch.randint(0, k, (n,), generator=generator)


def test_keys_in_requested_order_and_opt_in():
    logits, labels = random_problem(200, 6, seed=1)
    plain = calibration_metrics(labels, logits=logits)
    assert not set(ALL) & set(plain)
    extra = calibration_metrics(labels, logits=logits, extra=("ks", "smece"))
    assert list(extra)[-2:] == ["ks", "smece"]
    assert {key: extra[key] for key in plain} == plain
    assert calibration_metrics(labels, logits=logits, extra="ks")["ks"] == extra["ks"]


def test_accumulator_streams_extra_metrics_exactly():
    logits, labels = random_problem(700, 8, seed=4, scale=3.0)
    one_shot = calibration_metrics(labels, logits=logits, extra=ALL)
    accumulator = CalibrationAccumulator(15, extra=ALL, adaptive=False)
    for part in torch.arange(700).split([1, 99, 250, 350]):
        accumulator.update(labels[part], logits=logits[part])
    streamed = accumulator.compute()
    for key in ALL:
        assert streamed[key] == pytest.approx(one_shot[key], rel=1e-12, abs=1e-14), key
    with pytest.raises(ValueError, match="settings"):
        accumulator.merge(CalibrationAccumulator(15, adaptive=False))


def test_bootstrap_replicates_of_extra_metrics():
    logits, labels = random_problem(150, 5, seed=7, scale=2.5)
    logits[::4] = logits[1::4].clone()  # duplicated rows: tie groups
    samples = bootstrap_samples(labels, logits=logits, n_resamples=12, seed=3, extra=ALL)
    indices = np.random.Generator(np.random.PCG64(3)).integers(0, 150, (12, 150), dtype=np.int64)
    for j in (0, 5, 11):
        want = calibration_metrics(labels[indices[j]], logits=logits[indices[j]], extra=ALL)
        for key in ALL:
            assert samples[key][j] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (key, j)


@pytest.mark.parametrize("extra", [("ks", "smooth"), "ECE", (1,)])
def test_unknown_extra_metric(extra):
    logits, labels = random_problem(10, 3, seed=0)
    with pytest.raises(ValueError, match="unknown extra metric"):
        calibration_metrics(labels, logits=logits, extra=extra)
    with pytest.raises(ValueError, match="unknown extra metric"):
        bootstrap_samples(labels, logits=logits, extra=extra, n_resamples=2)
