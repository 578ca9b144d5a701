"""Losses beyond the paper (AdaFocal, inverse focal, dual focal, Poly-1, MbLS) against autograd of their naive
formulas written out here in float64, hand-computed cases, and a hand computation of AdaFocal's update rule."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from focal_calibration.losses import (BEYOND_PAPER_LOSS_SPECS, AdaFocalLoss, DualFocalLoss, InverseFocalLoss,
                                              MarginLabelSmoothingLoss, PolyLoss)
from focal_calibration.losses import build_loss

TIGHT = dict(rtol=1e-10, atol=1e-12)


def value_and_grad(loss_fn, logits, target):
    logits = logits.detach().clone().requires_grad_(True)
    value = loss_fn(logits, target)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    return value.detach(), grad


def per_sample_reference(logits, target, formula):
    """Sum over samples of formula(z_i [K], y_i) written one sample at a time (no vectorisation to share bugs)."""
    return torch.stack([formula(logits[i], int(target[i])) for i in range(logits.shape[0])])


def random_case(seed, n=24, k=7, scale=3.0):
    torch.manual_seed(seed)
    return torch.randn(n, k, dtype=torch.float64) * scale, torch.randint(0, k, (n,))


def assert_matches_naive(loss_fn, formula, seed=0, **case):
    logits, target = random_case(seed, **case)
    ours, ours_grad = value_and_grad(loss_fn, logits, target)
    ref, ref_grad = value_and_grad(lambda z, y: per_sample_reference(z, y, formula), logits, target)
    torch.testing.assert_close(ours, ref, **TIGHT)
    torch.testing.assert_close(ours_grad, ref_grad, **TIGHT)


# ------------------------------------------------------------------------------------------------ formulas

def inverse_focal_formula(gamma):
    def formula(z, y):
        p = torch.softmax(z, -1)[y]
        return -(1 + p) ** gamma * torch.log(p)
    return formula


def poly_formula(epsilon):
    def formula(z, y):
        p = torch.softmax(z, -1)[y]
        return -torch.log(p) + epsilon * (1 - p)
    return formula


def dual_focal_formula(gamma, pj):
    def formula(z, y):
        p = torch.softmax(z, -1)
        others = [p[k] for k in range(len(p)) if k != y and (pj == "max-other" or p[k] < p[y])]
        p_j = max(others, key=lambda t: float(t.detach())) if others else torch.zeros((), dtype=p.dtype)
        return -(1 - p[y] + p_j) ** gamma * torch.log(p[y])
    return formula


def mbls_formula(margin, lam, normalization):
    def formula(z, y):
        ce = -torch.log_softmax(z, -1)[y]
        top = z[int(torch.argmax(z))]
        penalty = sum(torch.clamp(top - z[k] - margin, min=0) for k in range(len(z)))
        return ce + lam * (penalty / len(z) if normalization == "mean" else penalty)
    return formula


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 3.0])
def test_inverse_focal_matches_autograd_of_its_formula(gamma):
    assert_matches_naive(InverseFocalLoss(gamma, reduction="none"), inverse_focal_formula(gamma))


@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 2.5])
def test_poly1_matches_autograd_of_its_formula(epsilon):
    assert_matches_naive(PolyLoss(epsilon, reduction="none"), poly_formula(epsilon))


@pytest.mark.parametrize("pj", ["below-target", "max-other"])
@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_dual_focal_matches_autograd_of_its_formula(gamma, pj):
    assert_matches_naive(DualFocalLoss(gamma, pj=pj, reduction="none"), dual_focal_formula(gamma, pj), seed=1)


@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_mbls_matches_autograd_of_its_formula(normalization):
    # scale 8: many logit distances exceed the margin 10, so the penalty is active
    assert_matches_naive(MarginLabelSmoothingLoss(10.0, 0.1, normalization, reduction="none"),
                         mbls_formula(10.0, 0.1, normalization), seed=2, scale=8.0)


# ------------------------------------------------------------------------------------------------ hand cases

def test_hand_cases():
    zero = torch.zeros(1, 4, dtype=torch.float64)  # p_y = 1/4
    y = torch.tensor([0])
    assert float(PolyLoss(2.0)(zero, y)) == pytest.approx(math.log(4) + 2 * 0.75, rel=1e-12)
    assert float(InverseFocalLoss(2.0)(zero, y)) == pytest.approx(1.25 ** 2 * math.log(4), rel=1e-12)
    # probabilities (0.5, 0.3, 0.2), target 1 (misclassified): the largest probability below p_y is 0.2, the
    # largest other probability 0.5
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    target = torch.tensor([1])
    assert float(DualFocalLoss(2.0)(logits, target)) == pytest.approx(-(0.9 ** 2) * math.log(0.3), rel=1e-12)
    assert float(DualFocalLoss(2.0, pj="max-other")(logits, target)) == pytest.approx(-(1.2 ** 2) * math.log(0.3),
                                                                                     rel=1e-12)
    # z = (12, 0, 1), y = 0, m = 10: distances (0, 12, 11) -> hinge (0, 2, 1): mean 1, sum 3
    z = torch.tensor([[12.0, 0.0, 1.0]], dtype=torch.float64)
    ce = math.log(math.exp(12) + 1 + math.e) - 12
    assert float(build_loss("mbls-10-0.1")(z, torch.tensor([0]))) == pytest.approx(ce + 0.1, rel=1e-12)
    assert float(build_loss("mbls-10-0.1", normalization="sum")(z, torch.tensor([0]))) == pytest.approx(
        ce + 0.3, rel=1e-12)


def test_poly_zero_and_inverse_focal_zero_are_cross_entropy():
    logits, target = random_case(3)
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(PolyLoss(0.0)(logits, target), ce, **TIGHT)
    torch.testing.assert_close(InverseFocalLoss(0.0)(logits, target), ce, **TIGHT)
    torch.testing.assert_close(DualFocalLoss(0.0)(logits, target), ce, **TIGHT)
    torch.testing.assert_close(build_loss("mbls-10-0")(logits, target), ce, **TIGHT)


# ------------------------------------------------------------------------------------------------ AdaFocal: the rule

# A hand-made validation set of 10 samples, 4 bins. Sorted confidences and correctness:
CONF = [0.30, 0.35, 0.50, 0.55, 0.60, 0.70, 0.80, 0.90, 0.95, 0.99]
CORRECT = [0, 1, 0, 1, 1, 1, 1, 1, 0, 1]
# Bin b starts at rank ceil(b·10/4) = 3, 5, 8: edges 0.55, 0.70, 0.95; bins {0.30, 0.35, 0.50}, {0.55, 0.60},
# {0.70, 0.80, 0.90}, {0.95, 0.99}.
EDGES = [0.55, 0.70, 0.95]


def hand_update():
    """The paper's rule written out bin by bin (λ = 1, S_th = 0.2, γ in [-2, 20]) from γ = (1, 0.21, -1.9, -0.22)."""
    lam = 1.0
    gap0 = (0.30 + 0.35 + 0.50) / 3 - 1 / 3          # over-confident by 0.05
    gap1 = (0.55 + 0.60) / 2 - 1.0                    # under-confident by 0.425
    gap2 = (0.70 + 0.80 + 0.90) / 3 - 1.0             # under-confident by 0.2
    gap3 = (0.95 + 0.99) / 2 - 0.5                    # over-confident by 0.47
    g0 = 1.0 * math.exp(lam * gap0)                   # focal: γ grows
    g1 = 0.21 * math.exp(lam * gap1)                  # focal: 0.137 < S_th -> switch to inverse focal, -0.2
    assert abs(g1) < 0.2
    g2 = -1.9 * math.exp(-lam * gap2)                 # inverse focal: |γ| grows to 2.32 -> clipped at -2
    assert g2 < -2
    g3 = -0.22 * math.exp(-lam * gap3)                # inverse focal: |γ| = 0.1375 < S_th -> switch to focal, +0.2
    assert abs(g3) < 0.2
    return [g0, -0.2, -2.0, 0.2]


def adafocal_with(gammas, **options):
    loss = AdaFocalLoss(**options)
    loss.gammas.copy_(torch.tensor(gammas, dtype=torch.float64))
    return loss


def test_adafocal_update_follows_the_hand_computation():
    loss = adafocal_with([1.0, 0.21, -1.9, -0.22], n_bins=4)
    loss.observe_confidences(torch.tensor(CONF[::-1], dtype=torch.float64), torch.tensor(CORRECT[::-1]) > 0)
    assert loss.inner_edges.tolist() == EDGES
    assert loss.gammas.tolist() == pytest.approx(hand_update(), rel=1e-12)
    assert int(loss.updates) == 1
    # training samples take the γ of the bin their p_y falls in: [e_b, e_{b+1})
    p_y = torch.tensor([0.1, 0.5499, 0.55, 0.6999, 0.70, 0.9499, 0.95, 1.0], dtype=torch.float64)
    expected = hand_update()
    assert loss.gamma_of(p_y).tolist() == pytest.approx([expected[b] for b in (0, 0, 1, 1, 2, 2, 3, 3)], rel=1e-12)


def test_adafocal_observe_validation_takes_top1_confidences_from_logits():
    # 4 classes, probabilities (c, (1-c)/3, (1-c)/3, (1-c)/3): top-1 confidence c (c >= 0.3 > 0.7/3)
    probs = torch.tensor([[c] + [(1 - c) / 3] * 3 for c in CONF], dtype=torch.float64)
    labels = torch.tensor([0 if ok else 1 for ok in CORRECT])
    loss = adafocal_with([1.0, 0.21, -1.9, -0.22], n_bins=4)
    order = torch.tensor([3, 9, 0, 7, 1, 8, 2, 6, 4, 5])  # any order: the bins come from the sorted confidences
    loss.observe_validation(torch.log(probs)[order], labels[order])
    assert loss.inner_edges.tolist() == pytest.approx(EDGES, rel=1e-12)
    assert loss.gammas.tolist() == pytest.approx(hand_update(), rel=1e-12)


def test_adafocal_clips_at_gamma_max_and_keeps_empty_bins():
    # λ = 10, one bin over-confident by 0.5: 15·e^5 > 20 -> 20
    loss = adafocal_with([15.0], n_bins=1, lam=10.0)
    loss.observe_confidences(torch.tensor([0.9, 0.7]), torch.tensor([False, True]))
    assert loss.gammas.tolist() == [20.0]
    # 2 validation samples, 4 bins: first ranks ceil(b·2/4) = 1, 1, 2 -> edges (c1, c1, +inf); the samples land in
    # bins 0 and 2, bins 1 and 3 are empty and keep their γ
    loss = adafocal_with([1.0, 2.0, 3.0, 4.0], n_bins=4)
    loss.observe_confidences(torch.tensor([0.8, 0.6], dtype=torch.float64), torch.tensor([True, True]))
    assert loss.inner_edges.tolist() == [0.8, 0.8, math.inf]
    assert loss.gammas.tolist() == pytest.approx([1.0 * math.exp(0.6 - 1), 2.0, 3.0 * math.exp(0.8 - 1), 4.0])
    assert loss.describe_state()["adafocal_edges"] == [0.8, 0.8, None]


def test_adafocal_ties_share_a_bin_whatever_the_order():
    conf = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9, 0.9], dtype=torch.float64)
    correct = torch.tensor([True, False, True, True, False, True])
    results = []
    for order in (torch.arange(6), torch.tensor([5, 3, 1, 0, 4, 2])):
        loss = adafocal_with([1.0, 1.0, 1.0], n_bins=3)
        loss.observe_confidences(conf[order], correct[order])
        results.append((loss.inner_edges.tolist(), loss.gammas.tolist()))
    assert results[0] == results[1]
    # first ranks 2, 4 -> edges 0.5 and 0.9: every 0.5 is in bin 1, bin 0 is empty
    assert results[0][0] == [0.5, 0.9]
    assert results[0][1] == pytest.approx([1.0, math.exp(0.5 - 0.75), math.exp(0.9 - 0.5)])


def test_adafocal_loss_matches_autograd_of_its_formula():
    loss = adafocal_with([3.0, 0.5, -0.5, -2.0, 1.0], n_bins=5, reduction="none")
    loss.inner_edges.copy_(torch.tensor([0.1, 0.3, 0.5, 0.8], dtype=torch.float64))
    edges = [-math.inf, 0.1, 0.3, 0.5, 0.8, math.inf]
    gammas = [3.0, 0.5, -0.5, -2.0, 1.0]

    def formula(z, y):
        log_p = torch.log_softmax(z, -1)[y]
        p = torch.exp(log_p)
        b = next(i for i in range(5) if edges[i] <= float(p.detach()) < edges[i + 1])
        gamma = gammas[b]
        if gamma >= 0:
            return -(1 - p) ** gamma * log_p
        return -(1 + p) ** (-gamma) * log_p

    logits, target = random_case(4, n=60, scale=2.0)
    ours, ours_grad = value_and_grad(loss, logits, target)
    ref, ref_grad = value_and_grad(lambda z, y: per_sample_reference(z, y, formula), logits, target)
    torch.testing.assert_close(ours, ref, **TIGHT)
    torch.testing.assert_close(ours_grad, ref_grad, **TIGHT)
    probs = torch.softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    assert len(set(torch.bucketize(probs, loss.inner_edges, right=True).tolist())) == 5  # every bin is used


def test_adafocal_state_round_trips_and_resumes_exactly():
    torch.manual_seed(5)
    val_logits, val_labels = torch.randn(50, 6) * 2, torch.randint(0, 6, (50,))
    logits, target = torch.randn(30, 6), torch.randint(0, 6, (30,))
    straight = AdaFocalLoss()
    for epoch in range(3):
        straight.observe_validation(val_logits * (1 + epoch), val_labels)
    interrupted = AdaFocalLoss()
    interrupted.observe_validation(val_logits, val_labels)
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    resumed = AdaFocalLoss()
    resumed(logits, target)  # builds its lookup cache with the initial state: loading must refresh it
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.describe_state() == interrupted.describe_state()
    for epoch in range(1, 3):
        resumed.observe_validation(val_logits * (1 + epoch), val_labels)
    assert torch.equal(resumed.gammas, straight.gammas) and torch.equal(resumed.inner_edges, straight.inner_edges)
    assert torch.equal(resumed(logits, target), straight(logits, target))
    assert set(AdaFocalLoss().state_dict()) == {"gammas", "inner_edges", "updates"}


# ------------------------------------------------------------------------------------------------ common behaviour

@pytest.mark.parametrize("spec", BEYOND_PAPER_LOSS_SPECS)
def test_ignore_index_reductions_and_leading_shapes(spec):
    logits, target = random_case(8, n=12, k=5)
    padded = target.clone()
    padded[[1, 4, 9]] = -100
    keep = padded != -100
    per_row = build_loss(spec, reduction="none")(logits, padded)
    assert per_row.shape == (12,) and (per_row[~keep] == 0).all()
    torch.testing.assert_close(build_loss(spec)(logits, padded), build_loss(spec)(logits[keep], target[keep]))
    torch.testing.assert_close(build_loss(spec, reduction="sum")(logits, padded), per_row.sum())
    # [3, 5, 4]: classes on dim 1, as nn.CrossEntropyLoss
    torch.testing.assert_close(build_loss(spec, reduction="none")(logits.view(3, 4, 5).movedim(-1, 1),
                                                                  padded.view(3, 4)), per_row.view(3, 4))
    logits = logits.detach().requires_grad_(True)
    build_loss(spec)(logits, padded).backward()
    assert (logits.grad[~keep] == 0).all()


@pytest.mark.parametrize("spec", BEYOND_PAPER_LOSS_SPECS)
def test_half_precision_inputs_compute_in_float32(spec):
    logits, target = random_case(9, n=16, k=6)
    ref = build_loss(spec)(logits.float(), target)
    half = logits.to(torch.bfloat16).requires_grad_(True)
    value = build_loss(spec)(half, target)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad).all()
    torch.testing.assert_close(value, ref, rtol=2e-2, atol=2e-2)


def test_factory_routes_options():
    assert build_loss("adafocal", lam=0.5, n_bins=10).lam == 0.5 and build_loss("adafocal", n_bins=10).n_bins == 10
    assert build_loss("dual-focal-2", pj="max-other").pj == "max-other"
    assert build_loss("mbls-5-0.2").margin == 5 and build_loss("mbls-5-0.2").lam == 0.2
    assert build_loss("mbls-10-1e-3").lam == 1e-3
    assert build_loss("poly--1").epsilon == -1
    assert build_loss("inverse-focal-2").gamma == 2


@pytest.mark.parametrize("spec,options,message", [
    ("poly--2", {}, r"epsilon must be a finite number >= -1, got -2"),
    ("poly-x", {}, r"unknown loss spec 'poly-x': 'x' is not a number"),
    ("mbls-10", {}, r"'10' is not two numbers <margin>-<lambda>"),
    ("mbls--1-0.1", {}, r"margin must be a finite number >= 0, got -1.0"),
    ("mbls-10--0.1", {}, r"lambda must be a finite number >= 0, got -0.1"),
    ("dual-focal--1", {}, r"gamma must be a finite number >= 0, got -1"),
    ("inverse-focal-inf", {}, r"'inf' is not a finite number"),
    ("dual-focal-2", {"pj": "largest"}, r"pj must be one of \('below-target', 'max-other'\), got 'largest'"),
    ("mbls-10-0.1", {"normalization": "max"}, r"normalization must be one of \('mean', 'sum'\), got 'max'"),
    ("poly-1", {"lam": 1.0}, r"build_loss\('poly-1'\) got unknown option\(s\) \['lam'\]; it accepts no options"),
    ("adafocal", {"gamma": 2}, r"unknown option\(s\) \['gamma'\]; it accepts lam, gamma_init"),
    ("adafocal", {"gamma_init": 0.1}, r"gamma_init must be non-zero, .* at least switch_threshold = 0.2 in magn"),
    ("adafocal", {"gamma_min": -0.1}, r"need gamma_min <= -switch_threshold"),
    ("adafocal", {"n_bins": 0}, r"n_bins must be an integer >= 1, got 0"),
    ("adafocal", {"lam": float("nan")}, r"lam must be a finite number >= 0, got nan"),
])
def test_bad_specs_and_options_raise_clear_errors(spec, options, message):
    with pytest.raises(ValueError, match=message):
        build_loss(spec, **options)


@pytest.mark.parametrize("spec", BEYOND_PAPER_LOSS_SPECS)
def test_bad_inputs_raise_clear_errors(spec):
    loss = build_loss(spec)
    with pytest.raises(ValueError, match=r"target holds class index 9, outside \[0, 2\]"):
        loss(torch.zeros(2, 3), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match=r"got an empty batch"):
        loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape mismatch"):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_adafocal_bad_validation_inputs():
    loss = AdaFocalLoss()
    with pytest.raises(ValueError, match=r"val_labels holds class index 5, outside \[0, 2\]"):
        loss.observe_validation(torch.zeros(2, 3), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"val_logits must be finite, got nan"):
        loss.observe_validation(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"needs at least one validation sample"):
        loss.observe_validation(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert int(loss.updates) == 0 and loss.gammas.tolist() == [1.0] * 15  # nothing half-applied
