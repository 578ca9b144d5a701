"""focal_calibration.losses.fused_smoothed: focal loss against a label-smoothed target, checked against a naive formula
(autograd), torch's gradcheck, the core focal loss (α = 0) and fairseq's label_smoothed_nll_loss (γ = 0)."""

import pytest
import torch

from focal_calibration.losses.fused import focal_loss_classes_last
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss_classes_last
from focal_calibration.losses.gamma import SampleDependentGamma

IGNORE = -100


def naive(logits, target, gamma, alpha):
    """-sum_k s_k (1 - p_k)^γ log p_k with s = (1-α) onehot + α/(K-1) elsewhere, summed over non-ignored rows."""
    k = logits.shape[-1]
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    s = torch.full_like(p, alpha / (k - 1))
    s.scatter_(1, target.clamp_min(0)[:, None], 1 - alpha)
    g = gamma[:, None] if isinstance(gamma, torch.Tensor) else gamma
    per_row = -(s * (1 - p) ** g * log_p).sum(-1)
    return torch.where(target != IGNORE, per_row, torch.zeros_like(per_row)).sum()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(9, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 6, (9,), generator=gen)
    target[4] = IGNORE
    return logits, target


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.4])
def test_matches_naive_formula_and_its_gradient(batch, gamma, alpha):
    logits, target = batch
    loss = focal_label_smoothed_loss_classes_last(logits, target, gamma, alpha, reduction="sum", ignore_index=IGNORE)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = naive(logits, target, gamma, alpha)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert grad[4].abs().max() == 0  # ignored row


def test_gradcheck(batch):
    logits, target = batch
    assert torch.autograd.gradcheck(
        lambda z: focal_label_smoothed_loss_classes_last(z, target, 2.0, 0.2, reduction="sum", ignore_index=IGNORE),
        (logits,))


def test_alpha_zero_is_the_core_focal_loss_with_a_policy(batch):
    logits, target = batch
    policy = SampleDependentGamma((5, 3), thresholds=(0.2,))
    ours = focal_label_smoothed_loss_classes_last(logits, target, policy, 0.0, reduction="mean", ignore_index=IGNORE)
    core = focal_loss_classes_last(logits, target, policy, reduction="mean", ignore_index=IGNORE)
    g1, = torch.autograd.grad(ours, logits)
    g2, = torch.autograd.grad(core, logits)
    torch.testing.assert_close(ours, core)
    torch.testing.assert_close(g1, g2)
    # the per-row γ the policy chose, fed back as a tensor, gives the same again
    p_y = torch.softmax(logits.detach(), -1).gather(1, target.clamp_min(0)[:, None]).squeeze(1)
    per_row = torch.where(p_y < 0.2, 5.0, 3.0).to(logits.dtype)
    torch.testing.assert_close(
        focal_label_smoothed_loss_classes_last(logits, target, per_row, 0.0, ignore_index=IGNORE), ours)


def test_gamma_zero_is_fairseq_label_smoothed_cross_entropy(batch):
    fairseq_ls = pytest.importorskip("fairseq.criterions.label_smoothed_cross_entropy",
                                     reason="the [fairseq] extra is not installed")
    logits, target = batch
    pad = 1  # fairseq's padding index is a vocabulary entry
    target = torch.where(target == IGNORE, pad, target)
    ours, nll = focal_label_smoothed_loss_classes_last(logits, target, 0.0, 0.1, reduction="sum", ignore_index=pad,
                                          return_nll=True)
    ref, ref_nll = fairseq_ls.label_smoothed_nll_loss(torch.log_softmax(logits, -1), target, 0.1, ignore_index=pad)
    g1, = torch.autograd.grad(ours, logits)
    g2, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(g1, g2)


def test_half_logits_are_computed_in_float32(batch):
    logits, target = batch
    half = logits.detach().half().requires_grad_()
    loss = focal_label_smoothed_loss_classes_last(half, target, 1.0, 0.1, reduction="sum", ignore_index=IGNORE)
    assert loss.dtype == torch.float32
    ref = naive(half.detach().float().double(), target, 1.0, 0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert half.grad.dtype == torch.float16


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=-1.0), "gamma must be a finite number >= 0, got -1.0"),
    (dict(alpha=1.5), "alpha must lie in [0, 1], got 1.5"),
    (dict(alpha=-0.1), "alpha must be a finite number >= 0, got -0.1"),
    (dict(reduction="avg"), "reduction must be"),
])
def test_bad_inputs(batch, kwargs, message):
    logits, target = batch
    args = dict(gamma=1.0, alpha=0.1, ignore_index=IGNORE) | kwargs
    with pytest.raises(ValueError) as info:
        focal_label_smoothed_loss_classes_last(logits, target, **args)
    assert message in str(info.value)


def test_one_class_and_bad_labels_are_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        focal_label_smoothed_loss_classes_last(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), 1.0, 0.1)
    with pytest.raises(ValueError, match="class index 7"):
        focal_label_smoothed_loss_classes_last(torch.zeros(3, 4), torch.tensor([0, 7, 1]), 1.0, 0.1)
