"""Tests of focal_calibration.calibration.metrics against independent references.

The reference below is deliberately plain: float64 numpy, a Python loop over bins / classes / tie groups, and bin
membership decided with exact rational arithmetic (fractions.Fraction), so it shares no code with the implementation.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from focal_calibration import constants
from focal_calibration.calibration.metrics import (CalibrationAccumulator, ReliabilityBins, bin_index,
                                                   calibration_metrics, reliability_bins)

# ----------------------------------------------------------------------------------------------------------------
# Plain reference (loops over bins, small N)
# ----------------------------------------------------------------------------------------------------------------


def ref_bin(value, n_bins):
    """Paper §2: bin i (1-based) is ((i-1)/M, i/M]; 0 goes to the first bin. Exact for the stored float."""
    i = math.ceil(Fraction(float(value)) * n_bins) - 1
    return min(max(i, 0), n_bins - 1)


def ref_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return np.exp(log_p), log_p


def ref_metrics(probs, labels, n_bins=15, log_probs=None):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    n, k = probs.shape
    if log_probs is None:
        with np.errstate(divide="ignore"):
            log_probs = np.log(probs)
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    out = {"n": n, "accuracy": correct.mean(), "error": 1 - correct.mean()}
    if k >= 5:
        # top-5: fewer than 5 classes strictly more probable than the label
        rank = np.array([(probs[i] > probs[i, labels[i]]).sum() for i in range(n)])
        out["top5_error"] = 1 - (rank < 5).mean()
    out["nll"] = -np.mean([log_probs[i, labels[i]] for i in range(n)])
    onehot = np.eye(k)[labels]
    out["brier"] = ((probs - onehot) ** 2).sum(1).mean()

    bins = [ref_bin(c, n_bins) for c in conf]
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        members = [i for i in range(n) if bins[i] == b]
        if members:
            gap = abs(sum(correct[i] - conf[i] for i in members))
            ece += gap / n
            mce = max(mce, gap / len(members))
    out["ece"], out["mce"] = ece, mce

    # AdaECE: replace correctness by the mean of its tie group, sort, rank r -> bin floor(r M / N)
    tie_mean = {}
    for value in np.unique(conf):
        tie_mean[value] = correct[conf == value].mean()
    order = sorted(range(n), key=lambda i: conf[i])
    adaptive = [0.0] * n_bins
    for rank, i in enumerate(order):
        adaptive[rank * n_bins // n] += tie_mean[conf[i]] - conf[i]
    out["adaece"] = sum(abs(g) for g in adaptive) / n

    classwise = 0.0
    for c in range(k):
        per_bin = [0.0] * n_bins
        for i in range(n):
            per_bin[ref_bin(probs[i, c], n_bins)] += (labels[i] == c) - probs[i, c]
        classwise += sum(abs(g) for g in per_bin) / n
    out["classwise_ece"] = classwise / k

    s99 = conf >= 0.99
    out["s99"] = s99.mean()
    out["s99_accuracy"] = correct[s99].mean() if s99.any() else None
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * log_probs, 0.0)
    out["entropy"] = -plogp.sum(1).mean()
    return out


def assert_metrics_close(got, want, rel=1e-9, abs_=1e-12):
    assert set(got) == set(want), (set(got) ^ set(want))
    for key, value in want.items():
        if value is None or key == "n":
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=abs_), key


def random_problem(n, k, seed, scale=2.0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=generator, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, k, (n,), generator=generator)
    return logits, labels


# ----------------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------------

def test_tiny_hand_computed_case():
    # K = 3, M = 3 bins (0, 1/3], (1/3, 2/3], (2/3, 1].
    #   row  probs             label  conf  bin  correct
    #   s1   .8  .1  .1        0      .8    3    1
    #   s2   .5  .3  .2        1      .5    2    0
    #   s3   .2  .45 .35       1      .45   2    1
    #   s4   .1  .2  .7        0      .7    3    0
    # ECE  = (|1 - (.5 + .45)| + |1 - (.8 + .7)|) / 4 = (.05 + .5) / 4 = .1375
    # MCE  = max(|1/2 - .475|, |1/2 - .75|) = .25
    # AdaECE: sorted conf .45(1) .5(0) .7(0) .8(1); rank r -> bin floor(3r/4) = 0, 0, 1, 2
    #        = (|1 - .95| + |0 - .7| + |1 - .8|) / 4 = .95 / 4 = .2375
    # classwise, class 0: p = .8(y) .5 .2 .1(y) -> bins 3, 2, 1, 1: |1 - .3| + |0 - .5| + |1 - .8| = 1.4
    #            class 1: p = .1 .3(y) .45(y) .2 -> bins 1, 1, 2, 1: |1 - .6| + |1 - .45| = .95
    #            class 2: p = .1 .2 .35 .7       -> bins 1, 1, 2, 3: .3 + .35 + .7 = 1.35
    #            classwise ECE = (1.4 + .95 + 1.35) / 4 / 3 = .308333...
    # NLL = -(ln .8 + ln .3 + ln .45 + ln .1) / 4 = 4.528213 / 4 = 1.132053
    # Brier = (.06 + .78 + .465 + 1.34) / 4 = .66125
    probs = torch.tensor([[.8, .1, .1], [.5, .3, .2], [.2, .45, .35], [.1, .2, .7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    m = calibration_metrics(labels, probs=probs, n_bins=3)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["ece"] == pytest.approx(0.1375)
    assert m["mce"] == pytest.approx(0.25)
    assert m["adaece"] == pytest.approx(0.2375)
    assert m["classwise_ece"] == pytest.approx(3.7 / 12)
    assert m["nll"] == pytest.approx(-(math.log(.8) + math.log(.3) + math.log(.45) + math.log(.1)) / 4)
    assert m["brier"] == pytest.approx(0.66125)
    entropy = -sum(sum(p * math.log(p) for p in row) for row in probs.tolist()) / 4
    assert m["entropy"] == pytest.approx(entropy)
    assert m["s99"] == 0 and m["s99_accuracy"] is None
    assert "top5_error" not in m  # K < 5


@pytest.mark.parametrize("n_bins", [1, 2, 10, 15])
@pytest.mark.parametrize("k", [3, 7])
def test_logits_match_reference(n_bins, k):
    logits, labels = random_problem(300, k, seed=n_bins * 31 + k, scale=3.0)
    probs, log_probs = ref_softmax(logits)
    want = ref_metrics(probs, labels.numpy(), n_bins, log_probs=log_probs)
    assert_metrics_close(calibration_metrics(labels, logits=logits, n_bins=n_bins), want)


@pytest.mark.parametrize("k", [4, 12])
def test_probs_match_reference(k):
    logits, labels = random_problem(250, k, seed=k, scale=4.0)
    probs = torch.softmax(logits, -1)
    probs[0] = 0
    probs[0, labels[0]] = 1.0  # exact one-hot row: confidence 1.0, p = 0 entries (0 log 0 = 0)
    want = ref_metrics(probs.numpy(), labels.numpy(), 15)
    assert_metrics_close(calibration_metrics(labels, probs=probs), want)
    assert_metrics_close(calibration_metrics(labels.numpy(), probs=probs.numpy()), want)  # numpy input


def test_float32_matches_float64_reference():
    logits, labels = random_problem(2000, 10, seed=3, dtype=torch.float32)
    probs, log_probs = ref_softmax(logits.double())
    want = ref_metrics(probs, labels.numpy(), 15, log_probs=log_probs)
    assert_metrics_close(calibration_metrics(labels, logits=logits), want, rel=1e-5, abs_=1e-6)


def test_top5_and_s99_reference():
    logits, labels = random_problem(400, 20, seed=11, scale=6.0)  # sharp: S99 non-empty
    probs, log_probs = ref_softmax(logits)
    want = ref_metrics(probs, labels.numpy(), 15, log_probs=log_probs)
    got = calibration_metrics(labels, logits=logits)
    assert want["s99"] > 0.05 and 0 < want["top5_error"] < 1
    assert_metrics_close(got, want)


def test_leading_dims_and_ignore_index():
    logits, labels = random_problem(120, 6, seed=5)
    labels[::7] = -100
    keep = labels != -100
    want = calibration_metrics(labels[keep], logits=logits[keep])
    got = calibration_metrics(labels.view(4, 30), logits=logits.view(4, 30, 6), ignore_index=-100)
    assert_metrics_close(got, want, rel=1e-12)
    assert got["n"] == int(keep.sum())


def test_non_contiguous_inputs():
    logits, labels = random_problem(200, 9, seed=13)
    strided = logits.t().contiguous().t()  # same values, column-major
    assert not strided.is_contiguous()
    assert calibration_metrics(labels, logits=strided) == calibration_metrics(labels, logits=logits)
    probs = torch.softmax(logits, -1)
    assert calibration_metrics(labels, probs=probs.t().contiguous().t()) == calibration_metrics(labels, probs=probs)


def test_logits_that_require_grad():
    logits, labels = random_problem(100, 6, seed=14)
    want = calibration_metrics(labels, logits=logits)
    assert calibration_metrics(labels, logits=logits.clone().requires_grad_()) == want


def test_half_inputs_computed_in_float32():
    logits, labels = random_problem(500, 10, seed=8, dtype=torch.float32)
    half = logits.half()
    assert calibration_metrics(labels, logits=half) == calibration_metrics(labels, logits=half.float())
    bf16 = logits.bfloat16()
    assert calibration_metrics(labels, logits=bf16) == calibration_metrics(labels, logits=bf16.float())


# ----------------------------------------------------------------------------------------------------------------
# Cross-checks with torchmetrics and netcal (where their conventions agree with ours)
# ----------------------------------------------------------------------------------------------------------------

def test_torchmetrics_agrees_on_continuous_data():
    # torchmetrics bins are [lo, hi) (and 1.0 gets a bin of its own); with continuous confidences no value sits on an
    # edge, so both conventions bin identically.
    from torchmetrics.classification import MulticlassCalibrationError

    logits, labels = random_problem(5000, 10, seed=21, dtype=torch.float32)
    probs = torch.softmax(logits, -1)
    ours = calibration_metrics(labels, probs=probs)
    for norm, key in (("l1", "ece"), ("max", "mce")):
        metric = MulticlassCalibrationError(num_classes=10, n_bins=15, norm=norm)
        for part in torch.arange(5000).chunk(3):
            metric.update(probs[part], labels[part])
        assert float(metric.compute()) == pytest.approx(ours[key], abs=2e-6), key


def test_netcal_agrees_on_continuous_data():
    # netcal bins with np.histogramdd ([lo, hi), last bin closed) after clipping to [eps, 1 - eps], and treats inputs
    # whose labels take <= 2 distinct values as binary; with K >= 3 classes present and continuous confidences it
    # uses the same top-1 binning as eq. (1).
    from netcal.metrics import ECE, MCE

    logits, labels = random_problem(3000, 5, seed=4)
    probs = torch.softmax(logits, -1)
    ours = calibration_metrics(labels, probs=probs, n_bins=10)
    assert ECE(bins=10).measure(probs.numpy(), labels.numpy()) == pytest.approx(ours["ece"], abs=1e-9)
    assert MCE(bins=10).measure(probs.numpy(), labels.numpy()) == pytest.approx(ours["mce"], abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Bin convention edges
# ----------------------------------------------------------------------------------------------------------------

def boundary_values(n_bins, dtype):
    """k/M rounded to dtype and its neighbours on both sides, for every k, plus 0 and 1."""
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    exact = (np.arange(n_bins + 1) / n_bins).astype(np_dtype)
    values = np.concatenate([exact, np.nextafter(exact, np_dtype(2)), np.nextafter(exact, np_dtype(-1))])
    return values[(values >= 0) & (values <= 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_bins", [1, 3, 7, 10, 15, 100])
def test_bin_index_exact_at_edges(dtype, n_bins):
    values = boundary_values(n_bins, dtype)
    got = bin_index(torch.from_numpy(values), n_bins).tolist()
    assert got == [ref_bin(v, n_bins) for v in values]


def test_bin_edge_examples():
    # 0 -> first bin; 0.5 with M = 10 -> (0.4, 0.5]; 1.0 -> last bin; float32(0.1) > 1/10 -> (0.1, 0.2]
    assert bin_index(torch.tensor([0.0, 0.5, 1.0]), 10).tolist() == [0, 4, 9]
    assert bin_index(torch.tensor([0.1], dtype=torch.float32), 10).tolist() == [1]
    assert bin_index(torch.tensor([np.nextafter(np.float32(0.1), np.float32(0))]), 10).tolist() == [0]
    assert bin_index(torch.tensor([0.6], dtype=torch.float64), 5).tolist() == [2]  # 0.6 (f64) < 3/5 -> (0.4, 0.6]


def test_reliability_bins_edges_and_values():
    # two-class probs [c, 1 - c] give confidence c exactly
    conf = torch.tensor([0.5, 0.5, 1.0, 0.75, 0.55], dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.tensor([0, 1, 0, 1, 0])
    bins = reliability_bins(labels, probs=probs, n_bins=10)
    assert isinstance(bins, ReliabilityBins)
    np.testing.assert_array_equal(bins.edges, np.arange(11) / 10)
    np.testing.assert_array_equal(bins.counts, [0, 0, 0, 0, 2, 1, 0, 1, 0, 1])  # 0.5 in (0.4, 0.5], 1.0 in last
    np.testing.assert_allclose(bins.confidence[[4, 5, 7, 9]], [0.5, 0.55, 0.75, 1.0])
    np.testing.assert_allclose(bins.accuracy[[4, 5, 7, 9]], [0.5, 1.0, 0.0, 1.0])
    assert np.isnan(bins.confidence[0]) and np.isnan(bins.accuracy[0])
    m = calibration_metrics(labels, probs=probs, n_bins=10)
    assert bins.ece == pytest.approx(m["ece"]) and bins.mce == pytest.approx(m["mce"])
    assert bins.ece == pytest.approx((0 + 0.45 + 0.75 + 0) / 5)


def test_classwise_zero_probabilities_in_first_bin():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 2])
    want = ref_metrics(probs.numpy(), labels.numpy(), 4)
    assert_metrics_close(calibration_metrics(labels, probs=probs, n_bins=4), want)


@pytest.mark.parametrize("n_bins", [1, 4, 10, 15])
@pytest.mark.parametrize("classwise", [True, False])
def test_ties_at_the_maximum_follow_argmax(n_bins, classwise):
    # argmax takes the first maximal class: with ties the label is correct only if it is that first class
    probs = torch.tensor([[0.25] * 4, [0.25] * 4, [0.4, 0.4, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1], [0.1, 0.3, 0.3, 0.3],
                          [0.1, 0.3, 0.3, 0.3], [0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 0, 1, 1, 3, 0])
    accumulator = CalibrationAccumulator(n_bins, classwise=classwise)
    accumulator.update(labels, probs=probs)
    expected = (probs.numpy().argmax(1) == labels.numpy()).mean()  # first index: rows 0, 2, 4, 6 correct
    assert expected == pytest.approx(4 / 7)
    assert accumulator.compute()["accuracy"] == pytest.approx(expected)
    assert_metrics_close(calibration_metrics(labels, probs=probs, n_bins=n_bins),
                         ref_metrics(probs.numpy(), labels.numpy(), n_bins))


def test_probs_within_tolerance_of_one_still_exact():
    # rows may sum to 1 +- 1e-3; then more than M - 1 entries can exceed 1/M, which the classwise path must handle
    row = np.full(10, 0.1 + 5e-5)  # every entry just above 1/10, sum 1.0005
    probs = torch.tensor(np.stack([row, np.eye(10)[3]]))
    labels = torch.tensor([2, 3])
    want = ref_metrics(probs.numpy(), labels.numpy(), 10)
    assert_metrics_close(calibration_metrics(labels, probs=probs, n_bins=10), want)


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------

def test_accumulator_many_batches_equals_one_shot():
    logits, labels = random_problem(1000, 8, seed=9, scale=3.0)
    labels[::13] = -1
    one_shot = calibration_metrics(labels, logits=logits, ignore_index=-1)
    accumulator = CalibrationAccumulator(15, ignore_index=-1)
    sizes = [1, 2, 5, 100, 13, 300, 79, 500]
    for part in torch.arange(1000).split(sizes):
        accumulator.update(labels[part], logits=logits[part])
    assert_metrics_close(accumulator.compute(), one_shot, rel=1e-12, abs_=1e-14)
    np.testing.assert_allclose(accumulator.bins().counts, reliability_bins(labels, logits=logits,
                                                                           ignore_index=-1).counts)


def test_accumulator_batch_of_only_ignored_rows():
    logits, labels = random_problem(50, 4, seed=2)
    accumulator = CalibrationAccumulator(ignore_index=-100)
    accumulator.update(torch.full((10,), -100), logits=logits[:10])  # e.g. a padding-only batch
    accumulator.update(labels, logits=logits)
    assert_metrics_close(accumulator.compute(), calibration_metrics(labels, logits=logits), rel=1e-12)


def test_merge_equals_one_shot():
    logits, labels = random_problem(600, 5, seed=12)
    labels[::9] = 99
    first, second = CalibrationAccumulator(10, ignore_index=99), CalibrationAccumulator(10, ignore_index=99)
    first.update(labels[:250], logits=logits[:250])
    second.update(labels[250:400], logits=logits[250:400])
    second.update(labels[400:], probs=torch.softmax(logits[400:], -1))
    merged = first.merge(second).compute()
    assert_metrics_close(merged, calibration_metrics(labels, logits=logits, n_bins=10, ignore_index=99),
                         rel=1e-9, abs_=1e-12)
    with pytest.raises(ValueError, match="settings"):
        first.merge(CalibrationAccumulator(7))


def test_switches_omit_keys():
    logits, labels = random_problem(100, 3, seed=1)
    accumulator = CalibrationAccumulator(classwise=False, adaptive=False)
    accumulator.update(labels, logits=logits)
    result = accumulator.compute()
    assert "classwise_ece" not in result and "adaece" not in result
    full = calibration_metrics(labels, logits=logits)
    assert result == {key: value for key, value in full.items() if key in result}


def _all_reduce_worker(rank, world_size, init_file, logits, labels, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    accumulator = CalibrationAccumulator(15)
    rows = torch.arange(len(labels))[rank::world_size][: 40 + 30 * rank]  # unequal shares
    accumulator.update(labels[rows], logits=logits[rows])
    accumulator.all_reduce()
    if rank == 0:
        torch.save(accumulator.compute(), result_file)
    dist.destroy_process_group()


def test_all_reduce_two_processes(tmp_path):
    import torch.multiprocessing as mp

    logits, labels = random_problem(200, 6, seed=17)
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), logits, labels, str(tmp_path / "out.pt")),
             nprocs=2)
    used = torch.cat([torch.arange(200)[0::2][:40], torch.arange(200)[1::2][:70]])
    assert_metrics_close(torch.load(tmp_path / "out.pt"), calibration_metrics(labels[used], logits=logits[used]),
                         rel=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, labels = random_problem(3000, 10, seed=6, dtype=torch.float32)
    assert_metrics_close(calibration_metrics(labels.cuda(), logits=logits.cuda()),
                         calibration_metrics(labels, logits=logits), rel=1e-5, abs_=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------------

@st.composite
def tied_problems(draw):
    """Logits from a small integer set (many exact ties in confidence, also within AdaECE bins) and labels."""
    n = draw(st.integers(1, 60))
    k = draw(st.integers(2, 6))
    logits = draw(hnp.arrays(np.float64, (n, k), elements=st.sampled_from([-2.0, 0.0, 0.5, 3.0, 40.0])))
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    n_bins = draw(st.integers(1, 20))
    return torch.from_numpy(logits), torch.from_numpy(labels), n_bins


@settings(max_examples=60, deadline=None)
@given(tied_problems(), st.randoms(use_true_random=False))
def test_property_ranges_and_permutation_invariance(problem, random):
    logits, labels, n_bins = problem
    m = calibration_metrics(labels, logits=logits, n_bins=n_bins)
    for key in ("ece", "adaece", "mce", "classwise_ece"):
        assert -1e-12 <= m[key] <= 1 + 1e-12, key
    assert m["mce"] >= m["ece"] - 1e-12

    permutation = list(range(len(labels)))
    random.shuffle(permutation)
    permuted = calibration_metrics(labels[permutation], logits=logits[permutation], n_bins=n_bins)
    assert_metrics_close(permuted, m, rel=1e-9, abs_=1e-12)
    # the tie rule itself matches the loop reference
    probs, log_probs = ref_softmax(logits)
    assert m["adaece"] == pytest.approx(ref_metrics(probs, labels.numpy(), n_bins, log_probs)["adaece"],
                                        rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50), st.integers(2, 8), st.integers(1, 20), st.randoms(use_true_random=False))
def test_property_saturated_confidences(n, k, n_bins, random):
    labels = torch.tensor([random.randrange(k) for _ in range(n)])
    predictions = torch.tensor([random.randrange(k) for _ in range(n)])
    probs = torch.nn.functional.one_hot(predictions, k).double()  # every confidence is exactly 1.0
    m = calibration_metrics(labels, probs=probs, n_bins=n_bins)
    accuracy = float((labels == predictions).double().mean())
    assert m["accuracy"] == pytest.approx(accuracy)
    for key in ("ece", "adaece", "mce"):
        assert m[key] == pytest.approx(1 - accuracy, abs=1e-12), key
    assert m["s99"] == 1.0 and m["s99_accuracy"] == pytest.approx(accuracy)
    assert m["entropy"] == 0.0
    bins = reliability_bins(labels, probs=probs, n_bins=n_bins)
    assert bins.counts[-1] == n and bins.counts.sum() == n


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------

LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]])
LABELS = torch.tensor([0, 2])


@pytest.mark.parametrize("call, message", [
    (lambda: calibration_metrics(torch.zeros(0, dtype=torch.long), logits=torch.zeros(0, 3)), "empty"),
    (lambda: calibration_metrics(torch.full((2,), -1), logits=LOGITS, ignore_index=-1), "empty"),
    (lambda: calibration_metrics(LABELS, logits=LOGITS.index_put((torch.tensor([1]), torch.tensor([1])),
                                                                 torch.tensor(float("nan")))), "finite, got nan"),
    (lambda: calibration_metrics(LABELS, logits=LOGITS.index_put((torch.tensor([0]), torch.tensor([2])),
                                                                 torch.tensor(float("-inf")))), "finite, got -inf"),
    (lambda: calibration_metrics(torch.tensor([0, 7]), logits=LOGITS), "class index 7"),
    (lambda: calibration_metrics(torch.tensor([0, -3]), logits=LOGITS, ignore_index=-100), "class index -3"),
    (lambda: calibration_metrics(torch.tensor([0, 1, 2]), logits=LOGITS), "shape mismatch"),
    (lambda: calibration_metrics(LABELS, logits=LOGITS, n_bins=0), "n_bins must be an integer >= 1, got 0"),
    (lambda: calibration_metrics(LABELS, probs=torch.tensor([[0.5, 0.3, 0.1], [0.2, 0.2, 0.6]])),
     "row 0 sums to 0.9"),
    (lambda: calibration_metrics(LABELS, probs=torch.tensor([[1.2, -0.2, 0.0], [0.2, 0.2, 0.6]])),
     r"\[0, 1\], got 1.2"),
    (lambda: calibration_metrics(LABELS, probs=torch.tensor([[0.5, 0.5, float("nan")], [0.2, 0.2, 0.6]])),
     "finite, got nan"),
    (lambda: calibration_metrics(LABELS, logits=LOGITS, probs=LOGITS.softmax(-1)), "both"),
    (lambda: calibration_metrics(LABELS), "neither"),
])
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_half_probs_tolerance():
    probs = torch.tensor([[0.335, 0.335, 0.335]], dtype=torch.float16)  # sums to ~1.005: fine in half, not in fp32
    calibration_metrics(torch.tensor([1]), probs=probs)
    with pytest.raises(ValueError, match="sums to"):
        calibration_metrics(torch.tensor([1]), probs=probs.float())


def test_failed_update_leaves_state_unchanged():
    accumulator = CalibrationAccumulator()
    accumulator.update(LABELS, logits=LOGITS)
    before = accumulator.compute()
    with pytest.raises(ValueError):
        accumulator.update(LABELS, logits=torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="3 classes"):
        accumulator.update(LABELS, logits=torch.zeros(2, 4))
    assert accumulator.compute() == before
    with pytest.raises(ValueError, match="no samples"):
        CalibrationAccumulator().compute()


# ----------------------------------------------------------------------------------------------------------------
# The plain path of sample_statistics (used off CPU; the CPU fast path is what the tests above exercise)
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def plain_path(monkeypatch):

    monkeypatch.setattr(constants, "METRICS_CPU_FAST_PATH", False)
    monkeypatch.setattr(constants, "METRICS_CHUNK_ELEMENTS", 64)  # several row chunks even for small inputs


@pytest.mark.parametrize("n_bins, k", [(1, 3), (15, 7), (10, 12)])
def test_plain_path_matches_reference(plain_path, n_bins, k):
    logits, labels = random_problem(300, k, seed=n_bins + k, scale=3.0)
    probs, log_probs = ref_softmax(logits)
    assert_metrics_close(calibration_metrics(labels, logits=logits, n_bins=n_bins),
                         ref_metrics(probs, labels.numpy(), n_bins, log_probs=log_probs))
    given = torch.softmax(logits, -1)
    given[0] = 0
    given[0, (labels[0] + 1) % k] = 1.0  # one-hot on a wrong class: p_y = 0, NLL = inf
    assert_metrics_close(calibration_metrics(labels, probs=given, n_bins=n_bins),
                         ref_metrics(given.numpy(), labels.numpy(), n_bins))


def test_plain_path_ties_float32_and_streaming(plain_path):
    probs = torch.tensor([[0.25] * 4, [0.4, 0.4, 0.1, 0.1], [0.1, 0.3, 0.3, 0.3], [0.7, 0.1, 0.1, 0.1]],
                         dtype=torch.float64)
    labels = torch.tensor([2, 1, 1, 0])
    assert_metrics_close(calibration_metrics(labels, probs=probs, n_bins=4),
                         ref_metrics(probs.numpy(), labels.numpy(), 4))
    logits, labels = random_problem(2000, 10, seed=3, dtype=torch.float32)
    probs, log_probs = ref_softmax(logits.double())
    want = ref_metrics(probs, labels.numpy(), 15, log_probs=log_probs)
    assert_metrics_close(calibration_metrics(labels, logits=logits), want, rel=1e-5, abs_=1e-6)
    accumulator = CalibrationAccumulator(15)
    for part in torch.arange(2000).split([7, 993, 1000]):
        accumulator.update(labels[part], logits=logits[part])
    assert_metrics_close(accumulator.compute(), want, rel=1e-5, abs_=1e-6)


def test_plain_and_fast_paths_agree(monkeypatch):

    logits, labels = random_problem(3000, 20, seed=8, dtype=torch.float32, scale=4.0)
    fast = calibration_metrics(labels, logits=logits)
    monkeypatch.setattr(constants, "METRICS_CPU_FAST_PATH", False)
    assert_metrics_close(calibration_metrics(labels, logits=logits), fast, rel=1e-9, abs_=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: calibration_metrics(LABELS, logits=LOGITS.index_put((torch.tensor([1]), torch.tensor([1])),
                                                                 torch.tensor(float("nan")))), "finite, got nan"),
    (lambda: calibration_metrics(LABELS, probs=torch.tensor([[0.5, 0.3, 0.1], [0.2, 0.2, 0.6]])),
     "row 0 sums to 0.9"),
    (lambda: calibration_metrics(LABELS, probs=torch.tensor([[1.2, -0.2, 0.0], [0.2, 0.2, 0.6]])),
     r"\[0, 1\], got 1.2"),
])
def test_plain_path_bad_inputs(plain_path, call, message):
    with pytest.raises(ValueError, match=message):
        call()
