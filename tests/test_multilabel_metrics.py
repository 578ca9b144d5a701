"""Tests of focal_calibration.calibration.multilabel against independent references: torchmetrics'
BinaryCalibrationError label by label, hand-computed edge cases, the multi-class metrics on the 2-class layout, the
single-vector metrics of metrics.py / extra_metrics.py label by label, explicit resampling for the bootstrap."""

import math

import numpy as np
import pytest
import torch

from focal_calibration import (BinaryCalibrationAccumulator, MultilabelCalibrationAccumulator, binary_bootstrap_ci,
                               binary_bootstrap_samples, binary_calibration_metrics, calibration_metrics,
                               multilabel_bootstrap_ci, multilabel_bootstrap_samples, multilabel_calibration_metrics,
                               multilabel_reliability_bins)
from focal_calibration.calibration.bootstrap import resample_indices
from focal_calibration.calibration.extra_metrics import EXTRA_METRICS, extra_metrics
from focal_calibration.calibration.metrics import adaptive_ece

ALL_EXTRA = EXTRA_METRICS


def multilabel_problem(n, labels, seed, dtype=torch.float64, scale=2.0, sharpen=1.4):
    """Over-confident logits: targets drawn from σ(z / sharpen)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, labels, generator=generator, dtype=torch.float64) * scale
    logits += torch.linspace(-2, 2, labels, dtype=torch.float64)  # labels of different base rates
    targets = (torch.rand(n, labels, generator=generator, dtype=torch.float64)
               < torch.sigmoid(logits / sharpen)).long()
    return logits.to(dtype), targets


def close(a, b, rel=1e-10, abs_=1e-12):
    if a is None or b is None:
        return a is None and b is None
    return a == pytest.approx(b, rel=rel, abs=abs_)


# ----------------------------------------------------------------------------------------------------------------
# torchmetrics, label by label


@pytest.mark.parametrize("n_bins", [5, 15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_label_ece_and_mce_equal_torchmetrics(n_bins, dtype):
    from torchmetrics.functional.classification import binary_calibration_error

    logits, targets = multilabel_problem(500, 6, seed=1, dtype=dtype)
    probs = torch.sigmoid(logits)
    result = multilabel_calibration_metrics(targets, logits=logits, n_bins=n_bins)
    from_probs = multilabel_calibration_metrics(targets, probs=probs, n_bins=n_bins)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    for label in range(6):
        p, y = probs[:, label], targets[:, label]
        ece = float(binary_calibration_error(p, y, n_bins=n_bins, norm="l1"))
        mce = float(binary_calibration_error(p, y, n_bins=n_bins, norm="max"))
        assert result["per_label"]["ece"][label] == pytest.approx(ece, abs=tolerance)
        assert result["per_label"]["mce"][label] == pytest.approx(mce, abs=tolerance)
        assert from_probs["per_label"]["ece"][label] == pytest.approx(ece, abs=tolerance)
    assert not ((probs * n_bins) == (probs * n_bins).round()).any()  # no value on a bin edge: the conventions agree


def test_binning_difference_on_edges_hand_computed():
    """Values exactly on bin edges: ours ((i-1)/M, i/M], torchmetrics [(i-1)/M, i/M) with p = 1 in a bin of its
    own. M = 4, p = (0.25, 0.25, 0.5, 0.6, 1.0, 1.0), y = (0, 0, 1, 1, 1, 0).

    Ours: (0, .25] {.25, .25} gap |0 - .5| = .5; (.25, .5] {.5} |1 - .5| = .5; (.5, .75] {.6} .4; (.75, 1] {1, 1}
    |1 - 2| = 1 -> ECE = 2.4 / 6 = 0.4, MCE = max(.25, .5, .4, .5) = 0.5.
    torchmetrics: [.25, .5) {.25, .25} .5; [.5, .75) {.5, .6} |2 - 1.1| = .9; [1, 1] {1, 1} 1 -> ECE = 2.4 / 6 = 0.4
    (the same here, by chance), MCE = max(.25, .45, .5) = 0.5.
    """
    from torchmetrics.functional.classification import binary_calibration_error

    p = torch.tensor([0.25, 0.25, 0.5, 0.6, 1.0, 1.0], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    ours = binary_calibration_metrics(y, probs=p, n_bins=4)
    assert ours["ece"] == pytest.approx(0.4) and ours["mce"] == pytest.approx(0.5)
    assert float(binary_calibration_error(p, y, n_bins=4, norm="l1")) == pytest.approx(0.4)
    # A case where the edge changes the value: p = (.5, .5, .6), y = (0, 0, 1), M = 2.
    # Ours: (0, .5] {.5, .5} |0 - 1| = 1; (.5, 1] {.6} |1 - .6| = .4 -> ECE 1.4 / 3, MCE max(.5, .4) = .5.
    # torchmetrics: [.5, 1) {.5, .5, .6} |1 - 1.6| = .6 -> ECE .6 / 3 = .2, MCE .2.
    p, y = torch.tensor([0.5, 0.5, 0.6], dtype=torch.float64), torch.tensor([0, 0, 1])
    ours = binary_calibration_metrics(y, probs=p, n_bins=2)
    assert ours["ece"] == pytest.approx(1.4 / 3) and ours["mce"] == pytest.approx(0.5)
    assert float(binary_calibration_error(p, y, n_bins=2, norm="l1")) == pytest.approx(0.2)
    assert float(binary_calibration_error(p, y, n_bins=2, norm="max")) == pytest.approx(0.2)


def test_top_label_equals_multiclass_metrics_on_two_classes():
    logits, targets = multilabel_problem(400, 1, seed=2)
    p = torch.sigmoid(logits[:, 0])
    p[:5] = 0.5  # ties: the negative class wins, as argmax over (1 - p, p)
    two_class = torch.stack([1 - p, p], 1)
    want = calibration_metrics(targets[:, 0], probs=two_class, extra=ALL_EXTRA)
    got = binary_calibration_metrics(targets[:, 0], probs=p, confidence="top_label", extra=ALL_EXTRA)
    for key in ("accuracy", "nll", "ece", "adaece", "mce", *ALL_EXTRA):
        assert close(got[key], want[key]), key
    assert got["brier"] == pytest.approx(want["brier"] / 2)  # the binary Brier score; the 2-class one counts both
    from_logits = binary_calibration_metrics(targets[:, 0], logits=logits[:, 0], confidence="top_label")
    assert from_logits["ece"] == pytest.approx(
        calibration_metrics(targets[:, 0], logits=torch.cat([torch.zeros_like(logits), logits], 1))["ece"],
        rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Per label, macro, micro against the single-vector metrics


@pytest.mark.parametrize("confidence", ["positive", "top_label"])
def test_per_label_macro_micro_against_single_vector_metrics(confidence):
    logits, targets = multilabel_problem(300, 5, seed=3)
    result = multilabel_calibration_metrics(targets, logits=logits, n_bins=10, confidence=confidence,
                                            extra=ALL_EXTRA)
    p = torch.sigmoid(logits)
    conf = torch.maximum(p, 1 - p) if confidence == "top_label" else p
    correct = ((p > 0.5) == targets.bool()) if confidence == "top_label" else targets.bool()
    for label in range(5):
        c, ok, y = conf[:, label], correct[:, label], targets[:, label].double()
        per = {name: values[label] for name, values in result["per_label"].items()}
        assert per["n"] == 300
        assert close(per["adaece"], float(adaptive_ece(c, ok, 10)))
        reference = extra_metrics(ALL_EXTRA, c, ok, 10)
        for name in ALL_EXTRA:
            assert close(per[name], float(reference[name][0]), rel=1e-9), name
        assert close(per["nll"], float(torch.nn.functional.binary_cross_entropy_with_logits(logits[:, label], y)))
        assert close(per["brier"], float(((p[:, label] - y) ** 2).mean()))
        assert close(per["accuracy"], float(((p[:, label] > 0.5) == targets[:, label].bool()).double().mean()))
    # macro = mean of the per-label values
    for name, value in result["macro"].items():
        assert close(value, float(np.mean(result["per_label"][name]))), name
    # micro = the binary metrics of every (sample, label) pair pooled
    pooled = binary_calibration_metrics(targets.reshape(-1), logits=logits.reshape(-1), n_bins=10,
                                        confidence=confidence, extra=ALL_EXTRA)
    assert set(result["micro"]) == set(pooled)
    for name, value in pooled.items():
        assert close(result["micro"][name], value, rel=1e-9), name


def test_masks_and_ignore_index_equal_the_kept_pairs():
    logits, targets = multilabel_problem(250, 4, seed=4)
    generator = torch.Generator().manual_seed(5)
    mask = torch.rand(250, 4, generator=generator) < 0.8
    unknown = torch.rand(250, 4, generator=generator) < 0.1
    labels = torch.where(unknown, -1, targets)
    logits[~mask] = math.nan  # pairs that do not count may hold anything
    result = multilabel_calibration_metrics(labels, logits=logits, mask=mask, ignore_index=-1, extra=ALL_EXTRA)
    keep = mask & ~unknown
    for label in range(4):
        rows = keep[:, label]
        alone = binary_calibration_metrics(targets[rows, label], logits=logits[rows, label], extra=ALL_EXTRA)
        for name, value in alone.items():
            assert close(result["per_label"][name][label], value, rel=1e-9), (label, name)
    pooled = binary_calibration_metrics(targets[keep], logits=logits[keep], extra=ALL_EXTRA)
    for name, value in pooled.items():
        assert close(result["micro"][name], value, rel=1e-9), name


def test_label_without_pairs_is_none_and_left_out_of_macro():
    logits, targets = multilabel_problem(100, 3, seed=6)
    mask = torch.ones(100, 3, dtype=torch.bool)
    mask[:, 1] = False
    result = multilabel_calibration_metrics(targets, logits=logits, mask=mask, extra=("smece", "ks"))
    assert result["per_label"]["n"] == [100, 0, 100]
    assert all(values[1] is None for name, values in result["per_label"].items() if name != "n")
    assert close(result["macro"]["ece"], (result["per_label"]["ece"][0] + result["per_label"]["ece"][2]) / 2)


def test_logits_and_probs_agree_and_half_computes_in_float32():
    logits, targets = multilabel_problem(200, 3, seed=7)
    from_logits = multilabel_calibration_metrics(targets, logits=logits)
    from_probs = multilabel_calibration_metrics(targets, probs=torch.sigmoid(logits))
    for name in ("ece", "adaece", "mce", "nll", "brier"):
        np.testing.assert_allclose(from_logits["per_label"][name], from_probs["per_label"][name], rtol=1e-9)
    half = multilabel_calibration_metrics(targets, logits=logits.half())
    upcast = multilabel_calibration_metrics(targets, logits=logits.half().float())
    assert half == upcast


def test_hand_computed_multilabel_case():
    # label 0: p = (.1, .9, .8), y = (0, 1, 0); label 1: p = (.3, .3, .7), y = (1, 0, 1); M = 2
    # label 0 bins: (0, .5] {.1}: |0 - .1| = .1; (.5, 1] {.9, .8}: |1 - 1.7| = .7 -> ECE .8 / 3, MCE .35
    # label 1 bins: (0, .5] {.3, .3}: |1 - .6| = .4; (.5, 1] {.7}: |1 - .7| = .3 -> ECE .7 / 3, MCE .3
    # micro: (0, .5] {.1, .3, .3}: |1 - .7| = .3; (.5, 1] {.9, .8, .7}: |2 - 2.4| = .4 -> ECE .7 / 6
    probs = torch.tensor([[0.1, 0.3], [0.9, 0.3], [0.8, 0.7]], dtype=torch.float64)
    labels = torch.tensor([[0, 1], [1, 0], [0, 1]])
    result = multilabel_calibration_metrics(labels, probs=probs, n_bins=2)
    assert result["per_label"]["ece"] == pytest.approx([0.8 / 3, 0.7 / 3])
    assert result["per_label"]["mce"] == pytest.approx([0.35, 0.3])
    assert result["macro"]["ece"] == pytest.approx(0.75 / 3)
    assert result["micro"]["ece"] == pytest.approx(0.7 / 6)
    assert result["micro"]["mce"] == pytest.approx(0.4 / 3)
    bins = multilabel_reliability_bins(labels, probs=probs, n_bins=2)
    np.testing.assert_array_equal(bins[0].counts, [1, 2])
    np.testing.assert_allclose(bins[1].accuracy, [0.5, 1.0])
    np.testing.assert_allclose(bins[1].confidence, [0.3, 0.7])
    assert bins[0].ece == pytest.approx(0.8 / 3)


# ----------------------------------------------------------------------------------------------------------------
# Streaming and processes


def test_accumulator_over_batches_equals_one_call():
    logits, targets = multilabel_problem(300, 4, seed=8)
    mask = torch.rand(300, 4, generator=torch.Generator().manual_seed(1)) < 0.9
    accumulator = MultilabelCalibrationAccumulator(12, extra=ALL_EXTRA)
    for rows in torch.arange(300).split([7, 100, 1, 192]):
        accumulator.update(targets[rows], logits=logits[rows], mask=mask[rows])
    whole = multilabel_calibration_metrics(targets, logits=logits, mask=mask, n_bins=12, extra=ALL_EXTRA)
    streamed = accumulator.compute()
    for part in ("per_label", "macro", "micro"):
        for name, value in whole[part].items():
            np.testing.assert_allclose(streamed[part][name], value, rtol=1e-10, atol=1e-13, err_msg=name)
    other = MultilabelCalibrationAccumulator(12, extra=ALL_EXTRA)
    other.update(targets[:150], logits=logits[:150], mask=mask[:150])
    rest = MultilabelCalibrationAccumulator(12, extra=ALL_EXTRA)
    rest.update(targets[150:], logits=logits[150:], mask=mask[150:])
    merged = other.merge(rest).compute()
    np.testing.assert_allclose(merged["per_label"]["adaece"], whole["per_label"]["adaece"], rtol=1e-10)
    binary = BinaryCalibrationAccumulator(12)
    binary.update(targets[:100, 0], logits=logits[:100, 0])
    binary.update(targets[100:, 0], logits=logits[100:, 0])
    assert binary.compute() == pytest.approx(binary_calibration_metrics(targets[:, 0], logits=logits[:, 0],
                                                                        n_bins=12), rel=1e-12)


def _all_reduce_worker(rank, world_size, init_file, logits, targets, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    accumulator = MultilabelCalibrationAccumulator(10, extra=ALL_EXTRA)
    rows = torch.arange(len(targets))[rank::world_size][: 40 + 30 * rank]  # unequal shares
    accumulator.update(targets[rows], logits=logits[rows])
    accumulator.all_reduce()
    if rank == 0:
        torch.save(accumulator.compute(), result_file)
    dist.destroy_process_group()


def test_all_reduce_two_processes(tmp_path):
    import torch.multiprocessing as mp

    logits, targets = multilabel_problem(200, 3, seed=9)
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), logits, targets, str(tmp_path / "out.pt")),
             nprocs=2)
    used = torch.cat([torch.arange(200)[0::2][:40], torch.arange(200)[1::2][:70]])
    want = multilabel_calibration_metrics(targets[used], logits=logits[used], n_bins=10, extra=ALL_EXTRA)
    got = torch.load(tmp_path / "out.pt")
    for part in ("per_label", "macro", "micro"):
        for name, value in want[part].items():
            np.testing.assert_allclose(got[part][name], value, rtol=1e-12, atol=1e-14, err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_replicates_equal_metrics_of_resampled_rows():
    logits, targets = multilabel_problem(60, 3, seed=10)
    mask = torch.rand(60, 3, generator=torch.Generator().manual_seed(2)) < 0.85
    samples = multilabel_bootstrap_samples(targets, logits=logits, mask=mask, n_bins=5, n_resamples=7, seed=3,
                                           extra=ALL_EXTRA)
    indices = resample_indices(np.random.Generator(np.random.PCG64(3)), 7, 60)
    for r in (0, 4, 6):
        rows = torch.from_numpy(indices[r])
        want = multilabel_calibration_metrics(targets[rows], logits=logits[rows], mask=mask[rows], n_bins=5,
                                              extra=ALL_EXTRA)
        for name, values in samples["per_label"].items():
            expected = [math.nan if v is None else v for v in want["per_label"][name]]
            np.testing.assert_allclose(values[r], expected, rtol=1e-9, atol=1e-12, err_msg=name)
        for part in ("macro", "micro"):
            for name, values in samples[part].items():
                assert close(values[r], want[part][name], rel=1e-9), (part, name)
    binary = binary_bootstrap_samples(targets[:, 0], logits=logits[:, 0], n_resamples=7, seed=3, extra=("ks",))
    want = binary_calibration_metrics(targets[indices[2], 0], logits=logits[indices[2], 0], extra=("ks",))
    assert binary["ece"][2] == pytest.approx(want["ece"]) and binary["ks"][2] == pytest.approx(want["ks"])


def test_bootstrap_intervals():
    logits, targets = multilabel_problem(80, 2, seed=11)
    samples = multilabel_bootstrap_samples(targets, logits=logits, n_resamples=50, seed=0)
    intervals = multilabel_bootstrap_ci(targets, logits=logits, n_resamples=50, level=0.9, seed=0)
    low, high = np.quantile(samples["per_label"]["ece"][:, 1], [0.05, 0.95])
    assert intervals["per_label"]["ece"][1] == pytest.approx((low, high))
    assert intervals["micro"]["adaece"] == pytest.approx(tuple(np.quantile(samples["micro"]["adaece"], [0.05, 0.95])))
    binary = binary_bootstrap_ci(targets[:, 0], probs=torch.sigmoid(logits[:, 0]), n_resamples=50, level=0.9)
    point = binary_calibration_metrics(targets[:, 0], logits=logits[:, 0])["ece"]
    assert binary["ece"][0] <= point <= binary["ece"][1]


# ----------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("call, message", [
    (lambda: binary_calibration_metrics(torch.tensor([0, 2]), probs=torch.tensor([0.1, 0.2])), "0 or 1, got 2"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), probs=torch.tensor([0.1, 1.2])), "got 1.2"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), logits=torch.tensor([0.1, math.inf])), "got inf"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), logits=torch.zeros(3)), "shape mismatch"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), logits=torch.zeros(2), probs=torch.zeros(2)), "both"),
    (lambda: multilabel_calibration_metrics(torch.tensor([0, 1]), logits=torch.zeros(2)), r"\[N, L\]"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), logits=torch.zeros(2), mask=torch.ones(2)), "bool"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), logits=torch.zeros(2), confidence="max"),
     "confidence"),
    (lambda: binary_calibration_metrics(torch.tensor([0, 1]), logits=torch.zeros(2), extra=("bogus",)), "bogus"),
    (lambda: MultilabelCalibrationAccumulator().compute(), "no samples"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_adaptive_ece_with_given_order_and_counts_equals_the_kept_samples():
    """metrics.adaptive_ece's order= / counts= (the temperature fits sort once and leave uncounted pairs last)."""
    generator = torch.Generator().manual_seed(12)
    conf = torch.rand(3, 40, generator=generator, dtype=torch.float64).round(decimals=1)  # many ties
    correct = torch.rand(3, 40, generator=generator) < 0.6
    keep = torch.rand(3, 40, generator=generator) < 0.7
    order = torch.where(keep, conf, torch.inf).sort(dim=-1).indices
    got = adaptive_ece(conf, correct, 6, order=order, counts=keep.sum(-1))
    for row in range(3):
        assert float(got[row]) == pytest.approx(float(adaptive_ece(conf[row, keep[row]], correct[row, keep[row]], 6)),
                                                rel=1e-12)
