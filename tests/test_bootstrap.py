"""bootstrap_samples / bootstrap_ci against independent references.

* Each replicate equals calibration_metrics on the explicitly resampled rows, with the row indices drawn as the
  documented contract says (numpy's PCG64 generator, ``integers(0, N, (n_resamples, N))``).
* The intervals equal scipy.stats.bootstrap(method="percentile") fed the same generator (scipy draws the same
  indices in one call when ``batch`` is None), with calibration_metrics as scipy's statistic.
"""

import math

import numpy as np
import pytest
import torch

from focal_calibration import constants, bootstrap_ci, bootstrap_samples, calibration_metrics


def contract_indices(seed, n_rows, n_resamples):
    return np.random.Generator(np.random.PCG64(seed)).integers(0, n_rows, (n_resamples, n_rows), dtype=np.int64)


def random_logits(n, k, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    return logits, torch.randint(0, k, (n,), generator=generator)


def tied_logits(n, k, seed):
    """Logits from a small set of values: many exactly equal confidences (AdaECE tie groups, ties at the maximum)."""
    rng = np.random.default_rng(seed)
    logits = rng.choice([-1.0, 0.0, 0.5, 2.0, 9.0], size=(n, k))
    return torch.from_numpy(logits), torch.from_numpy(rng.integers(0, k, n))


def assert_replicates_match(samples, labels, seed, n_resamples, which, n_bins, **scores):
    name, values = next(iter(scores.items()))
    indices = contract_indices(seed, len(labels), n_resamples)
    for j in which:
        want = calibration_metrics(labels[indices[j]], n_bins=n_bins, **{name: values[indices[j]]})
        assert set(samples) == set(want) - {"n"}
        for key, value in want.items():
            if key == "n":
                continue
            if value is None:
                assert math.isnan(samples[key][j]), key
            else:
                assert samples[key][j] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, j)


# ----------------------------------------------------------------------------------------------------------------
# (a) replicates = calibration_metrics on the resampled rows
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, k, n_bins, seed", [(200, 7, 15, 0), (57, 3, 4, 5), (90, 12, 10, 11), (1, 5, 3, 2)])
def test_replicates_equal_metrics_of_resampled_rows(n, k, n_bins, seed):
    logits, labels = random_logits(n, k, seed)
    samples = bootstrap_samples(labels, logits=logits, n_bins=n_bins, n_resamples=40, seed=seed)
    assert all(value.shape == (40,) and value.dtype == np.float64 for value in samples.values())
    assert_replicates_match(samples, labels, seed, 40, [0, 1, 17, 39], n_bins, logits=logits)


@pytest.mark.parametrize("k, n_bins", [(3, 1), (5, 7), (6, 15)])
def test_replicates_with_ties(k, n_bins):
    logits, labels = tied_logits(80, k, seed=k)
    samples = bootstrap_samples(labels, logits=logits, n_bins=n_bins, n_resamples=30, seed=3)
    assert_replicates_match(samples, labels, 3, 30, range(30), n_bins, logits=logits)


def test_replicates_of_probabilities_with_zero_label_probability():
    # a given probability p_y = 0 makes the NLL of every resample that draws that row +inf; one-hot rows are S99
    logits, labels = random_logits(40, 5, seed=9)
    probs = torch.softmax(logits, -1)
    probs[0] = torch.nn.functional.one_hot((labels[0] + 1) % 5, 5).double()  # wrong and certain: p_y = 0
    probs[1] = torch.nn.functional.one_hot(labels[1], 5).double()
    samples = bootstrap_samples(labels, probs=probs, n_resamples=25, seed=4)
    indices = contract_indices(4, 40, 25)
    drew_zero = (indices == 0).any(1)
    assert 0 < drew_zero.sum() < 25
    np.testing.assert_array_equal(np.isinf(samples["nll"]), drew_zero)
    assert_replicates_match(samples, labels, 4, 25, range(25), 15, probs=probs)


def test_float32_logits_close_to_float64_reference():
    logits, labels = random_logits(300, 10, seed=1)
    samples = bootstrap_samples(labels, logits=logits.float(), n_resamples=10, seed=2)
    indices = contract_indices(2, 300, 10)
    for j in (0, 9):
        want = calibration_metrics(labels[indices[j]], logits=logits.float()[indices[j]].double())
        for key in samples:
            assert samples[key][j] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_leading_dimensions_are_flattened():
    logits, labels = random_logits(60, 4, seed=6)
    flat = bootstrap_samples(labels, logits=logits, n_resamples=5)
    nested = bootstrap_samples(labels.view(3, 20), logits=logits.view(3, 20, 4), n_resamples=5)
    for key in flat:
        np.testing.assert_array_equal(nested[key], flat[key])


# ----------------------------------------------------------------------------------------------------------------
# (b) intervals vs scipy.stats.bootstrap(method="percentile")
# ----------------------------------------------------------------------------------------------------------------

def test_intervals_equal_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    logits, labels = random_logits(50, 6, seed=21, scale=6.0)  # sharp: S99 is non-empty in every resample
    keys = [key for key in calibration_metrics(labels, logits=logits) if key != "n"]

    def statistic(rows, axis=-1):  # scipy resamples the row indices; one metric vector per resample
        rows = np.atleast_2d(rows)
        table = [calibration_metrics(labels[r], logits=logits[r]) for r in rows]
        return np.array([[m[key] for m in table] for key in keys])

    reference = bootstrap((np.arange(50),), statistic, vectorized=True, method="percentile", n_resamples=200,
                          confidence_level=0.9, rng=np.random.default_rng(8))
    ours = bootstrap_ci(labels, logits=logits, n_resamples=200, confidence=0.9, seed=8)
    assert set(ours) == set(keys)
    for index, key in enumerate(keys):
        want = (reference.confidence_interval.low[index], reference.confidence_interval.high[index])
        assert ours[key] == pytest.approx(want, rel=1e-12, abs=1e-12), key


def test_interval_is_percentile_of_samples_over_defined_replicates():
    # one S99 row among 30: about e^-1 of the resamples have no S99 sample, where s99_accuracy is undefined
    logits, labels = random_logits(30, 4, seed=2, scale=0.3)
    logits[0] = torch.tensor([12.0, 0.0, 0.0, 0.0])
    samples = bootstrap_samples(labels, logits=logits, n_resamples=200, seed=1)
    undefined = np.isnan(samples["s99_accuracy"])
    assert 20 < undefined.sum() < 180
    np.testing.assert_array_equal(undefined, ~(contract_indices(1, 30, 200) == 0).any(1))
    intervals = bootstrap_ci(labels, logits=logits, n_resamples=200, seed=1, confidence=0.8)
    for key, values in samples.items():
        want = np.percentile(values[~np.isnan(values)], [10, 90])
        assert intervals[key] == pytest.approx(tuple(want), rel=1e-12, abs=1e-15), key

    no_s99 = bootstrap_ci(labels[1:], logits=logits[1:], n_resamples=20)
    assert no_s99["s99_accuracy"] is None and no_s99["s99"] == (0.0, 0.0)


def test_infinite_nll_replicates_give_infinite_end():
    probs = torch.tensor([[0.0, 1.0], [0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])  # row 0: p_y = 0, so most resamples have NLL = +inf
    low, high = bootstrap_ci(labels, probs=probs, n_resamples=100)["nll"]
    assert high == math.inf and math.isfinite(low)


# ----------------------------------------------------------------------------------------------------------------
# (c) determinism and the pairing contract
# ----------------------------------------------------------------------------------------------------------------

def test_deterministic_for_a_seed_and_different_across_seeds():
    logits, labels = random_logits(100, 5, seed=3)
    first = bootstrap_samples(labels, logits=logits, n_resamples=20, seed=7)
    again = bootstrap_samples(labels, logits=logits, n_resamples=20, seed=7)
    other = bootstrap_samples(labels, logits=logits, n_resamples=20, seed=8)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["ece"], other["ece"])


def test_chunking_and_prefix_do_not_change_resamples(monkeypatch):
    logits, labels = random_logits(64, 5, seed=4)
    whole = bootstrap_samples(labels, logits=logits, n_resamples=30, seed=5)
    monkeypatch.setattr(constants, "BOOTSTRAP_CHUNK_ELEMENTS", 3 * 75)  # 3 resamples a chunk (K * M = 75 is widest)
    chunked = bootstrap_samples(labels, logits=logits, n_resamples=30, seed=5)
    prefix = bootstrap_samples(labels, logits=logits, n_resamples=7, seed=5)
    for key in whole:  # same resamples; sums over them may round differently with another number of columns
        np.testing.assert_allclose(chunked[key], whole[key], rtol=0, atol=1e-15)
        np.testing.assert_allclose(prefix[key], whole[key][:7], rtol=0, atol=1e-15)


def test_pairing_same_resamples_for_two_models():
    # Two models with the same per-row correctness but different K, scores and bins: resample j draws the same rows
    # for both, so the replicates of accuracy agree exactly, and a paired difference of another metric is the
    # difference of the two sample arrays, each checked against the explicitly resampled rows.
    logits_a, labels = random_logits(80, 3, seed=10)
    prediction = logits_a.argmax(-1)
    logits_b = torch.nn.functional.one_hot(prediction, 10).double() * 4 + torch.rand(80, 10, dtype=torch.float64)
    a = bootstrap_samples(labels, logits=logits_a, n_bins=15, n_resamples=50, seed=2)
    b = bootstrap_samples(labels, logits=logits_b, n_bins=10, n_resamples=50, seed=2)
    np.testing.assert_array_equal(a["accuracy"], b["accuracy"])
    indices = contract_indices(2, 80, 50)
    j = 13
    want = (calibration_metrics(labels[indices[j]], logits=logits_b[indices[j]], n_bins=10)["nll"]
            - calibration_metrics(labels[indices[j]], logits=logits_a[indices[j]])["nll"])
    assert (b["nll"] - a["nll"])[j] == pytest.approx(want, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# (d) bad arguments
# ----------------------------------------------------------------------------------------------------------------

LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]])
LABELS = torch.tensor([0, 2])


COMMON_BAD_ARGUMENTS = [
    (dict(n_resamples=0), "n_resamples must be an integer >= 1, got 0"),
    (dict(n_resamples=2.5), "n_resamples must be an integer >= 1, got 2.5"),
    (dict(n_resamples=True), "n_resamples must be an integer >= 1, got True"),
    (dict(seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
    (dict(n_bins=0), "n_bins must be an integer >= 1, got 0"),
    (dict(logits=LOGITS.index_put((torch.tensor([1]), torch.tensor([1])), torch.tensor(float("nan")))),
     "finite, got nan"),
    (dict(labels=torch.tensor([0, 7])), "class index 7"),
    (dict(labels=torch.tensor([0, 1, 2])), "shape mismatch"),
    (dict(probs=torch.tensor([[0.5, 0.3, 0.1], [0.2, 0.2, 0.6]]), logits=None), "row 0 sums to 0.9"),
    (dict(probs=LOGITS.softmax(-1)), "both"),
    (dict(logits=None), "neither"),
    (dict(labels=torch.zeros(0, dtype=torch.long), logits=torch.zeros(0, 3)), "empty"),
]
CONFIDENCE_BAD_ARGUMENTS = [
    (dict(confidence=0), r"confidence must be a number in \(0, 1\), got 0"),
    (dict(confidence=1.0), r"confidence must be a number in \(0, 1\), got 1.0"),
    (dict(confidence=95), r"confidence must be a number in \(0, 1\), got 95"),
    (dict(confidence=float("nan")), r"confidence must be a number in \(0, 1\), got nan"),
    (dict(confidence="high"), r"confidence must be a number in \(0, 1\), got 'high'"),
]


@pytest.mark.parametrize("function, kwargs, message",
                         [(bootstrap_ci, *case) for case in COMMON_BAD_ARGUMENTS + CONFIDENCE_BAD_ARGUMENTS]
                         + [(bootstrap_samples, *case) for case in COMMON_BAD_ARGUMENTS])
def test_bad_arguments_raise_value_error(function, kwargs, message):
    arguments = dict(labels=LABELS, logits=LOGITS, n_resamples=10)
    arguments.update(kwargs)
    labels = arguments.pop("labels")
    with pytest.raises(ValueError, match=message):
        function(labels, **arguments)
