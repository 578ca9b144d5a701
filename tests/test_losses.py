"""Baseline losses, γ policies and the factory against formulas written out here and tiny hand-computed cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focal_calibration import (PAPER_LOSS_SPECS, BrierLoss, CrossEntropyLoss, EpochScheduledGamma, FocalLoss,
                               LabelSmoothingLoss, MMCELoss, SampleDependentGamma, build_loss, gamma_star,
                               mmce_weighted, prop2_gamma_policy)
from focal_calibration.losses.gamma import parse_gamma_policy
from focal_calibration.losses import BEYOND_PAPER_LOSS_SPECS


# ------------------------------------------------------------------------------------------------ label smoothing

def test_label_smoothing_paper_form_hand_case():
    # K = 3, α = 0.3: s = (0.7, 0.15, 0.15) for y = 0. Logits 0 -> log p = log(1/3) for every class,
    # so the loss is -(0.7 + 0.15 + 0.15) log(1/3) = log 3.
    loss = LabelSmoothingLoss(0.3)(torch.zeros(1, 3), torch.tensor([0]))
    assert float(loss) == pytest.approx(math.log(3), rel=1e-6)
    # Logits (2, 0, 0): log p = (2 - L, -L, -L) with L = log(e^2 + 2); loss = -(0.7·2 - L) = L - 1.4
    loss = LabelSmoothingLoss(0.3)(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    assert float(loss) == pytest.approx(math.log(math.e ** 2 + 2) - 1.4, rel=1e-6)


def test_label_smoothing_paper_form_matches_explicit_soft_target():
    torch.manual_seed(0)
    logits = torch.randn(20, 6, dtype=torch.float64)
    target = torch.randint(0, 6, (20,))
    alpha, k = 0.05, 6
    onehot = F.one_hot(target, k).double()
    smoothed = (1 - alpha) * onehot + alpha * (1 - onehot) / (k - 1)  # §5.1
    ref = -(smoothed * F.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(LabelSmoothingLoss(alpha, reduction="none")(logits, target), ref)
    assert torch.allclose(smoothed.sum(-1), torch.ones(20, dtype=torch.float64))


def test_label_smoothing_torch_form_is_pytorchs_and_differs_from_the_papers():
    torch.manual_seed(1)
    logits = torch.randn(20, 6, dtype=torch.float64)
    target = torch.randint(0, 6, (20,))
    torch_form = LabelSmoothingLoss(0.1, form="torch")(logits, target)
    torch.testing.assert_close(torch_form, F.cross_entropy(logits, target, label_smoothing=0.1))
    assert not torch.allclose(LabelSmoothingLoss(0.1, form="paper")(logits, target), torch_form)


def test_label_smoothing_gradient_matches_autograd_of_explicit_form():
    torch.manual_seed(2)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (5,))
    (ours,) = torch.autograd.grad(LabelSmoothingLoss(0.2)(logits, target), logits)
    onehot = F.one_hot(target, 4).double()
    smoothed = 0.8 * onehot + 0.2 * (1 - onehot) / 3
    (ref,) = torch.autograd.grad(-(smoothed * F.log_softmax(logits, -1)).sum(-1).mean(), logits)
    torch.testing.assert_close(ours, ref)


# ------------------------------------------------------------------------------------------------ Brier

def test_brier_hand_case_and_formula():
    # logits 0 over K = 2 -> p = (0.5, 0.5): (0.5 - 1)^2 + 0.5^2 = 0.5
    assert float(BrierLoss()(torch.zeros(1, 2), torch.tensor([0]))) == pytest.approx(0.5)
    torch.manual_seed(3)
    logits = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (10,))
    ours = BrierLoss(reduction="sum")(logits, target)
    ref = ((F.softmax(logits, -1) - F.one_hot(target, 5)) ** 2).sum()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])


# ------------------------------------------------------------------------------------------------ MMCE

def mmce_three_sums(conf, correct, power=1):
    """Kumar et al. (2018) MMCE_w^2 with explicit loops over pairs (power=2: the released code's normalisation)."""
    k = lambda a, b: math.exp(-abs(a - b) / 0.4)  # noqa: E731
    good = [c for c, ok in zip(conf, correct) if ok]
    bad = [c for c, ok in zip(conf, correct) if not ok]
    mc, mw = len(good), len(bad)
    total = 0.0
    if mc:
        total += sum((1 - a) * (1 - b) * k(a, b) for a in good for b in good) / mc ** (2 * power)
    if mw:
        total += sum(a * b * k(a, b) for a in bad for b in bad) / mw ** (2 * power)
    if mc and mw:
        total -= 2 * sum((1 - a) * b * k(a, b) for a in good for b in bad) / (mc * mw) ** power
    return math.sqrt(max(total, 1e-12))


def test_mmce_weighted_matches_kumar_three_sums():
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.3, 1.0, 12)
    correct = rng.uniform(size=12) < 0.6
    ours = mmce_weighted(torch.tensor(conf), torch.tensor(correct))
    assert float(ours) == pytest.approx(mmce_three_sums(conf, correct), rel=1e-10)
    official = mmce_weighted(torch.tensor(conf), torch.tensor(correct), variant="official")
    assert float(official) == pytest.approx(mmce_three_sums(conf, correct, power=2), rel=1e-10)


def test_mmce_with_one_group_empty():
    conf = np.array([0.9, 0.8, 0.95])
    ours = mmce_weighted(torch.tensor(conf), torch.ones(3, dtype=torch.bool))
    assert float(ours) == pytest.approx(mmce_three_sums(conf, [True] * 3), rel=1e-10)
    assert float(mmce_weighted(torch.tensor(conf), torch.ones(3, dtype=torch.bool), variant="official")) == 0.0


def test_mmce_loss_is_ce_plus_lambda_mmce_with_documented_reductions():
    torch.manual_seed(5)
    logits = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (16,))
    probs = F.softmax(logits.detach(), -1)
    conf, pred = probs.max(-1)
    mmce = mmce_three_sums(conf.tolist(), (pred == target).tolist())
    ce = F.cross_entropy(logits.detach(), target, reduction="none")
    assert float(MMCELoss(2.0)(logits, target).detach()) == pytest.approx(float(ce.mean()) + 2 * mmce, rel=1e-9)
    summed = float(MMCELoss(2.0, reduction="sum")(logits, target).detach())
    assert summed == pytest.approx(float(ce.sum()) + 32 * mmce, rel=1e-9)
    loss = MMCELoss(8.0)(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ γ policies

def test_flsd53_bands_follow_the_papers_text():
    policy = build_loss("flsd-53").policy
    p = torch.tensor([0.0, 0.1, 0.1999, 0.2, 0.5, 1.0])
    assert policy(p).tolist() == [5, 5, 5, 3, 3, 3]


def test_flsd532_bands():
    policy = build_loss("flsd-532").policy
    p = torch.tensor([0.05, 0.2, 0.49, 0.5, 0.99])
    assert policy(p).tolist() == [5, 3, 3, 2, 2]


@pytest.mark.parametrize("spec,expected", [("flsc-531", {0: 5, 99: 5, 100: 3, 249: 3, 250: 1, 349: 1}),
                                           ("flsc-532", {0: 5, 99: 5, 100: 3, 249: 3, 250: 2, 349: 2})])
def test_epoch_schedules(spec, expected):
    loss = build_loss(spec, epochs=350)  # Appendix E: 5 for 100 epochs, 3 for the next 150, the last γ for 100
    for epoch, gamma in expected.items():
        loss.set_epoch(epoch)
        assert loss.policy(None) == gamma


@pytest.mark.parametrize("epochs,first_epoch_of", [(30, {3: 9, 1: 21}), (25, {3: 7, 1: 18}), (3, {3: 1, 1: 2}),
                                                   (100, {3: 29, 1: 71})])
def test_flsc_follows_the_run_length(epochs, first_epoch_of):
    # Hand computation: the γ changes after 100/350 and 250/350 of the run, rounded to the nearest epoch
    # (30 epochs: 8.57 -> 9, 21.43 -> 21; 25: 7.14 -> 7, 17.86 -> 18; 100: 28.57 -> 29, 71.43 -> 71).
    loss = build_loss("flsc-531", epochs=epochs)
    gammas = []
    for epoch in range(epochs):
        loss.set_epoch(epoch)
        gammas.append(loss.policy(None))
    assert gammas.index(3) == first_epoch_of[3] and gammas.index(1) == first_epoch_of[1]
    assert set(gammas) == {5, 3, 1}  # every phase of the schedule happens within the run


def test_flsc_without_the_run_length_or_with_milestones_beyond_it_is_refused():
    # The absolute milestones (100, 250) made flsc-531 plain FL-5 on a 30-epoch run: now refused, never silent.
    with pytest.raises(ValueError, match=r"'flsc-531' needs the run length .* pass epochs="):
        build_loss("flsc-531")
    with pytest.raises(ValueError, match=r"milestones \[100, 250\] do not fit a run of 30 epochs"):
        build_loss("flsc-531", milestones=(100, 250), epochs=30)
    with pytest.raises(ValueError, match=r"needs a run of at least 3\) must be an integer >= 3, got 2"):
        build_loss("flsc-531", epochs=2)


def test_parse_gamma_policy_is_the_factorys_parser():
    assert parse_gamma_policy("fl-2.5").gamma == 2.5
    assert parse_gamma_policy("flsc-531", epochs=35).milestones == (10, 25)
    assert parse_gamma_policy("flsd-53").thresholds == (0.2,)
    assert parse_gamma_policy("flsd-prop2-0.25").gamma == pytest.approx(gamma_star(0.25))
    with pytest.raises(ValueError, match=r"unknown loss spec 'brier': not a focal-loss γ policy"):
        parse_gamma_policy("brier")


def test_custom_milestones_and_thresholds():
    loss = build_loss("flsc-531", milestones=(40, 60))
    loss.set_epoch(59)
    assert loss.policy(None) == 3
    policy = build_loss("flsd-5,3,1.5", thresholds=(0.1, 0.3)).policy
    assert policy(torch.tensor([0.05, 0.1, 0.3])).tolist() == [5, 3, 1.5]


def test_prop2_policy_uses_gamma_star():
    policy = build_loss("flsd-prop2-0.2-0.25").policy
    got = policy(torch.tensor([0.1, 0.2, 0.9], dtype=torch.float64)).tolist()
    assert got == pytest.approx([4.8506, 3.0702, 3.0702], abs=5e-5)
    assert prop2_gamma_policy([0.25])(None) == pytest.approx(gamma_star(0.25))


def test_flsd53_loss_equals_per_sample_reference():
    torch.manual_seed(6)
    logits = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (40,))
    ours = build_loss("flsd-53", reduction="sum")(logits, target)
    ref = 0.0
    for i in range(40):  # the paper's rule, one sample at a time
        log_p = F.log_softmax(logits[i], -1)[target[i]]
        gamma = 5.0 if float(log_p.detach().exp()) < 0.2 else 3.0
        ref = ref - (1 - log_p.exp()) ** gamma * log_p
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])


# ------------------------------------------------------------------------------------------------ factory

@pytest.mark.parametrize("spec", PAPER_LOSS_SPECS + BEYOND_PAPER_LOSS_SPECS + (
    "fl-0.5", "ls-torch-0.1", "mmce-8", "FL-3", "mbls-10-1e-3", "poly--1", "POLY-2"))
def test_every_spec_builds_and_trains_a_step(spec):
    torch.manual_seed(7)
    loss_fn = build_loss(spec, epochs=10)
    loss_fn.set_epoch(3)  # the trainers' hooks exist on every loss (no-ops where unused)
    logits = torch.randn(2, 10, 8, requires_grad=True)  # classes on dim 1, as nn.CrossEntropyLoss
    target = torch.randint(0, 10, (2, 8))
    loss_fn.observe_validation(logits.detach(), target)  # the same layout
    loss = loss_fn(logits, target)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss_fn.uses_validation == (spec == "adafocal")
    assert isinstance(loss_fn.describe_state(), dict)


def test_factory_maps_names_to_the_right_losses():
    assert type(build_loss("ce")) is CrossEntropyLoss
    assert isinstance(build_loss("fl-3"), FocalLoss) and build_loss("fl-3").policy.gamma == 3
    assert build_loss("ls-0.05").alpha == 0.05 and build_loss("ls-0.05").form == "paper"
    assert build_loss("mmce-2").lam == 2
    assert isinstance(build_loss("flsc-531", epochs=350).policy, EpochScheduledGamma)
    assert isinstance(build_loss("flsd-53").policy, SampleDependentGamma)
    assert build_loss("brier", reduction="sum").reduction == "sum"


@pytest.mark.parametrize("spec", ["ce", "ls-0.1", "ls-torch-0.1", "brier", "mmce-2", "fl-2", "flsd-53"])
def test_ignore_index_equals_dropping_the_rows(spec):
    torch.manual_seed(8)
    logits = torch.randn(12, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (12,))
    padded = target.clone()
    padded[[1, 4, 9]] = -100
    keep = padded != -100
    full = build_loss(spec)(logits, padded)
    torch.testing.assert_close(full, build_loss(spec)(logits[keep], target[keep]))


@pytest.mark.parametrize("spec,message", [
    ("focal", r"unknown loss spec 'focal'. Valid forms: ce, ls-<alpha>"),
    ("fl-x", r"'x' is not a number"),
    ("fl--1", r"gamma must be a finite number >= 0, got -1"),
    ("ls-1.5", r"alpha must lie in \[0, 1\], got 1.5"),
    ("flsc-53", r"2 scheduled γ values need explicit milestones="),
    ("flsd-5321", r"4 sample-dependent γ values need explicit thresholds="),
    ("flsd-prop2-0.6", r"p0 must lie in the open interval \(0, 0.5\), got 0.6"),
    ("flsd-prop2-0.25-0.2", r"strictly increasing"),
    ("fl-inf", r"not a finite number"),
])
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        build_loss(spec)


def test_bad_policy_arguments():
    with pytest.raises(ValueError, match=r"3 gammas need 2 epoch milestones, got \[100\]"):
        EpochScheduledGamma((5, 3, 1), milestones=(100,))
    with pytest.raises(ValueError,
                       match=r"thresholds must be strictly increasing and inside \(0, 1\), got \[0.5, 0.2\]"):
        SampleDependentGamma((5, 3, 2), thresholds=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0, got -1"):
        build_loss("flsc-531", epochs=350).set_epoch(-1)
    with pytest.raises(ValueError, match=r"label smoothing needs at least 2 classes, got K=1"):
        LabelSmoothingLoss(0.1)(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lambda must be a finite number >= 0, got -2"):
        MMCELoss(-2)
    with pytest.raises(ValueError, match=r"target holds class index 9"):
        BrierLoss()(torch.zeros(2, 3), torch.tensor([0, 9]))
