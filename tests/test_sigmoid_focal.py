"""Tests of focal_calibration.losses.sigmoid against independent references: torchvision.ops.sigmoid_focal_loss,
F.binary_cross_entropy_with_logits, and autograd of the naive per-element formula written out below."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as torchvision_focal

from focal_calibration import SigmoidFocalLoss, build_sigmoid_loss, gamma_star, sigmoid_focal_loss
from focal_calibration.losses.gamma import EpochScheduledGamma, parse_gamma_policy

SHAPES = [(40,), (30, 5), (6, 4, 3, 5)]


def problem(shape, seed=0, scale=4.0, soft=False, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    if soft:
        target = torch.rand(shape, generator=generator, dtype=torch.float64)
    else:
        target = (torch.rand(shape, generator=generator) < 0.3).to(torch.float64)
    return logits.to(dtype), target.to(dtype)


def value_and_grad(fn, logits):
    z = logits.clone().requires_grad_()
    loss = fn(z)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


def naive_loss(z, y, gamma_of, alpha=None, weight=None, pos_weight=None):
    """The per-class form of eq. 5 written plainly: p = σ(z); γ_+ from p, γ_- from 1 - p (detached)."""
    p = torch.sigmoid(z)
    with torch.no_grad():
        gamma_pos, gamma_neg = gamma_of(p), gamma_of(1 - p)
    positive = -(1 - p) ** gamma_pos * y * torch.log(p)
    negative = -p ** gamma_neg * (1 - y) * torch.log(1 - p)
    if pos_weight is not None:
        positive = positive * pos_weight
    if alpha is not None:
        positive, negative = alpha * positive, (1 - alpha) * negative
    loss = positive + negative
    return loss if weight is None else loss * weight


# ----------------------------------------------------------------------------------------------------------------
# References


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, 0.9, -1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_equals_torchvision_values_and_gradients(shape, gamma, alpha, reduction):
    logits, target = problem(shape, seed=len(shape))
    want, want_grad = value_and_grad(
        lambda z: torchvision_focal(z, target, alpha=alpha, gamma=gamma, reduction=reduction), logits)
    got, got_grad = value_and_grad(
        lambda z: sigmoid_focal_loss(z, target, gamma, alpha=alpha, reduction=reduction), logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gamma_zero_equals_bce_with_logits(shape, reduction, weighted):
    logits, target = problem(shape, seed=3, soft=True)
    generator = torch.Generator().manual_seed(9)
    weight = torch.rand(shape, generator=generator, dtype=torch.float64) if weighted else None
    # pos_weight broadcast along the last dim, as nn.BCEWithLogitsLoss does
    pos_weight = torch.rand(shape[-1:], generator=generator, dtype=torch.float64) * 3 if weighted else None
    want, want_grad = value_and_grad(lambda z: F.binary_cross_entropy_with_logits(
        z, target, weight=weight, pos_weight=pos_weight, reduction=reduction), logits)
    got, got_grad = value_and_grad(lambda z: sigmoid_focal_loss(
        z, target, 0.0, weight=weight, pos_weight=pos_weight, reduction=reduction), logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-15)
    module = SigmoidFocalLoss(0.0, weight=weight, pos_weight=pos_weight, reduction=reduction)
    torch.testing.assert_close(module(logits, target), want, rtol=1e-12, atol=1e-15)
    assert build_sigmoid_loss("bce", weight=weight, pos_weight=pos_weight, reduction=reduction)(
        logits, target).allclose(want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("options", [{}, {"alpha": 0.3}, {"weight": True, "pos_weight": True}])
def test_fixed_gamma_soft_targets_equal_naive_eq5(soft, options):
    logits, target = problem((25, 4), seed=5, scale=3.0, soft=soft)
    generator = torch.Generator().manual_seed(2)
    weight = torch.rand(25, 4, generator=generator, dtype=torch.float64) if options.get("weight") else None
    pos_weight = torch.rand(4, generator=generator, dtype=torch.float64) + 0.5 if options.get("pos_weight") else None
    alpha = options.get("alpha")
    want, want_grad = value_and_grad(
        lambda z: naive_loss(z, target, lambda p: 2.5, alpha, weight, pos_weight), logits)
    got, got_grad = value_and_grad(lambda z: sigmoid_focal_loss(
        z, target, 2.5, alpha=alpha, weight=weight, pos_weight=pos_weight, reduction="none"), logits)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-14)


def flsd53(p):
    """FLSD-53 of §4 on a probability: γ = 5 below 0.2, 3 from 0.2 up (written independently of gamma.py)."""
    return torch.where(p < 0.2, torch.full_like(p, 5.0), torch.full_like(p, 3.0))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_flsd53_per_element_equals_autograd_of_naive_formula(soft, shape):
    logits, target = problem(shape, seed=11, scale=2.0, soft=soft)
    policy = parse_gamma_policy("flsd-53")
    want, want_grad = value_and_grad(lambda z: naive_loss(z, target, flsd53).mean(), logits)
    for loss in (lambda z: sigmoid_focal_loss(z, target, policy), build_sigmoid_loss("flsd-53"),
                 SigmoidFocalLoss("flsd-53")):
        got, got_grad = value_and_grad(lambda z: loss(z, target) if isinstance(loss, SigmoidFocalLoss)
                                       else loss(z), logits)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-15)
    # elements on both sides of the threshold, for both terms
    p = torch.sigmoid(logits)
    assert ((p < 0.2).any() and (p >= 0.2).any() and (1 - p < 0.2).any())


def test_flsd532_and_prop2_per_element():
    logits, target = problem((60, 3), seed=12, scale=2.5)

    def flsd532(p):
        return torch.where(p < 0.2, 5.0, torch.where(p < 0.5, 3.0, 2.0).to(p.dtype))

    star = (gamma_star(0.2), gamma_star(0.25))

    def prop2(p):
        return torch.where(p < 0.2, torch.full_like(p, star[0]), torch.full_like(p, star[1]))

    for spec, reference in (("flsd-532", flsd532), ("flsd-prop2-0.2-0.25", prop2)):
        want, want_grad = value_and_grad(lambda z: naive_loss(z, target, reference).sum(), logits)
        got, got_grad = value_and_grad(lambda z: build_sigmoid_loss(spec, reduction="sum")(z, target), logits)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-14)


def test_flsc_follows_set_epoch():
    logits, target = problem((20, 3), seed=13)
    loss = SigmoidFocalLoss(EpochScheduledGamma((5, 3, 1), milestones=(2, 4)), reduction="sum")
    for epoch, gamma in ((0, 5), (1, 5), (2, 3), (3, 3), (4, 1), (9, 1)):
        loss.set_epoch(epoch)
        want = torchvision_focal(logits, target, alpha=-1, gamma=gamma, reduction="sum")
        torch.testing.assert_close(loss(logits, target), want, rtol=1e-12, atol=0)
    scheduled = build_sigmoid_loss("flsc-531", epochs=35)  # milestones 10 and 25 (100/350, 250/350 of the run)
    scheduled.set_epoch(10)
    torch.testing.assert_close(scheduled(logits, target),
                               torchvision_focal(logits, target, alpha=-1, gamma=3, reduction="mean"), rtol=1e-12,
                               atol=0)


def test_per_element_gamma_tensor():
    logits, target = problem((10, 4), seed=14)
    gammas = torch.rand(10, 4, dtype=torch.float64) * 4
    want, want_grad = value_and_grad(lambda z: naive_loss(z, target, lambda p: gammas).sum(), logits)
    got, got_grad = value_and_grad(lambda z: sigmoid_focal_loss(z, target, gammas, reduction="sum"), logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-14)


def test_autograd_path_equals_analytic_path():
    """Targets that require a gradient take autograd over the formula: same value and logit gradient, and a
    target gradient equal to the naive formula's."""
    logits, target = problem((15, 6), seed=15, soft=True)
    policy = parse_gamma_policy("flsd-53")
    analytic, analytic_grad = value_and_grad(lambda z: sigmoid_focal_loss(z, target, policy, alpha=0.4), logits)
    z = logits.clone().requires_grad_()
    y = target.clone().requires_grad_()
    loss = sigmoid_focal_loss(z, y, policy, alpha=0.4)
    z_grad, y_grad = torch.autograd.grad(loss, (z, y))
    torch.testing.assert_close(loss.detach(), analytic, rtol=1e-12, atol=0)
    torch.testing.assert_close(z_grad, analytic_grad, rtol=1e-10, atol=1e-15)
    y2 = target.clone().requires_grad_()
    (want_y_grad,) = torch.autograd.grad(naive_loss(logits, y2, flsd53, alpha=0.4).mean(), y2)
    torch.testing.assert_close(y_grad, want_y_grad, rtol=1e-11, atol=1e-15)
    with torch.no_grad():  # evaluation takes the forward-only formula
        torch.testing.assert_close(sigmoid_focal_loss(logits, target, policy, alpha=0.4), analytic, rtol=1e-12,
                                   atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Masks, ignore_index, reductions


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mask_and_ignore_index(reduction):
    logits, target = problem((30, 5), seed=16)
    generator = torch.Generator().manual_seed(3)
    mask = torch.rand(30, 5, generator=generator) < 0.7
    unknown = torch.rand(30, 5, generator=generator) < 0.2
    labels = torch.where(unknown, -1, target.long())  # integer multi-hot with -1 = unknown
    keep = mask & ~unknown
    z = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(z, labels, 2.0, mask=mask, ignore_index=-1, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    z2 = logits.clone().requires_grad_()
    kept = torchvision_focal(z2[keep], target[keep], alpha=-1, gamma=2.0, reduction="none")
    if reduction == "none":
        want = torch.zeros(30, 5, dtype=torch.float64).masked_scatter(keep, kept)
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-15)
    else:
        want = kept.sum() if reduction == "sum" else kept.mean()  # mean divides by the kept elements' number
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    (want_grad,) = torch.autograd.grad(kept.sum() if reduction != "mean" else kept.mean(), z2)
    torch.testing.assert_close(grad, want_grad, rtol=1e-11, atol=1e-15)
    assert (grad[~keep] == 0).all()


def test_masked_elements_may_hold_anything():
    logits, target = problem((8, 3), seed=17)
    logits[0, 0], logits[1, 1] = math.nan, math.inf
    target[0, 0], target[1, 1] = 7.0, -3.0  # not probabilities, but masked out
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = False
    z = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(z, target, 2.0, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert z.grad[0, 0] == 0 and z.grad[1, 1] == 0
    torch.testing.assert_close(loss, torchvision_focal(logits[mask], target[mask], alpha=-1, reduction="mean"))


def test_everything_masked_gives_zero():
    logits, target = problem((4, 2), seed=18)
    z = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(z, target, mask=torch.zeros(4, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and (z.grad == 0).all()


def test_default_ignore_index_is_minus_100_like_cross_entropy():
    logits, target = problem((6, 2), seed=19)
    labels = target.long()
    labels[0, 0] = -100
    keep = labels != -100
    got = sigmoid_focal_loss(logits, labels, 2.0)
    torch.testing.assert_close(got, torchvision_focal(logits[keep], target[keep], alpha=-1, reduction="mean"))


# ----------------------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, "flsd-53"])
def test_extreme_logits_are_finite(dtype, gamma):
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4, 80.0, -80.0], dtype=dtype)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype)
    policy = parse_gamma_policy(gamma) if isinstance(gamma, str) else gamma
    z = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(z, target, policy, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()
    # right and confident: 0 (or below float rounding); wrong and confident: |z| (p_t = e^-|z|, 1 - p_t = 1)
    assert loss[0] == 0 and loss[3] == 0
    torch.testing.assert_close(loss[[1, 2]], torch.tensor([1e4, 1e4], dtype=dtype))
    torch.testing.assert_close(z.grad[[0, 1, 2, 3]], torch.tensor([0.0, -1.0, 1.0, 0.0], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    logits, target = problem((50, 4), seed=20, scale=3.0, dtype=torch.float32)
    half = logits.to(dtype)
    z = half.clone().requires_grad_()
    loss = sigmoid_focal_loss(z, target.to(dtype), 2.0, alpha=0.25)
    loss.backward()
    assert loss.dtype == torch.float32 and z.grad.dtype == dtype
    want, want_grad = value_and_grad(
        lambda x: torchvision_focal(x, target.double(), alpha=0.25, gamma=2.0, reduction="mean"), half.double())
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), want_grad, rtol=1e-2, atol=1e-5)  # the gradient rounded to half


# ----------------------------------------------------------------------------------------------------------------
# Module, specs, errors


def test_module_buffers_and_state_dict():
    pos_weight = torch.tensor([1.0, 2.0, 3.0])
    loss = SigmoidFocalLoss("fl-2", pos_weight=pos_weight, alpha=0.25)
    assert "pos_weight" in loss.state_dict()
    logits, target = problem((5, 3), seed=21, dtype=torch.float32)
    want = sigmoid_focal_loss(logits, target, 2.0, pos_weight=pos_weight, alpha=0.25)
    torch.testing.assert_close(loss(logits, target), want)
    loss.double()
    assert loss.pos_weight.dtype == torch.float64
    assert "alpha=0.25" in repr(loss)


@pytest.mark.parametrize("call, message", [
    (lambda: sigmoid_focal_loss(torch.zeros(3, 2), torch.zeros(3)), "input's shape"),
    (lambda: sigmoid_focal_loss(torch.zeros(3), torch.tensor([0.0, 1.5, 1.0])), "got 1.5"),
    (lambda: sigmoid_focal_loss(torch.zeros(3), torch.tensor([0, -1, 1])), "got -1"),
    (lambda: sigmoid_focal_loss(torch.tensor([0.0, math.nan]), torch.zeros(2)), "got nan"),
    (lambda: sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), alpha=1.5), "alpha"),
    (lambda: sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), -1.0), "gamma"),
    (lambda: sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="avg"), "reduction"),
    (lambda: sigmoid_focal_loss(torch.zeros(0), torch.zeros(0)), "empty"),
    (lambda: sigmoid_focal_loss(torch.zeros(3, 2), torch.zeros(3, 2), pos_weight=torch.ones(3)), "pos_weight"),
    (lambda: sigmoid_focal_loss(torch.zeros(3, 2), torch.zeros(3, 2), mask=torch.ones(3, 2)), "bool"),
    (lambda: sigmoid_focal_loss(torch.zeros(2, dtype=torch.long), torch.zeros(2)), "floating-point"),
    (lambda: build_sigmoid_loss("ce"), "unknown sigmoid loss spec"),
    (lambda: build_sigmoid_loss("flsc-531"), "epochs"),
    (lambda: SigmoidFocalLoss(alpha=2.0), "alpha"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
