"""Focal loss, g(p, γ), γ* and eq. 5 against independent references: autograd of the naive formula in float64,
F.cross_entropy, the paper's formulas written out here, and brute-force minimisation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focal_calibration import constants, focal_loss_classes_last, g, gamma_star, optimal_confidence


@pytest.fixture(params=["fused", "small-batch"])
def torch_path(request, monkeypatch):
    """Run a test through both PyTorch paths of focal_loss: the fused autograd Function and the small-batch path."""
    monkeypatch.setattr(constants, "SMALL_BATCH_ELEMENTS", 0 if request.param == "fused" else 2 ** 40)
    return request.param


def naive_focal(logits, target, gamma):
    """-(1 - p_y)^γ log p_y per sample, straight from §4, differentiated by autograd."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)
    return -(1 - log_p.exp()) ** gamma * log_p


def paper_g(p, gamma):
    """Proposition 1 as printed: (1-p)^γ - γ p (1-p)^(γ-1) log p (for 0 < p < 1)."""
    return (1 - p) ** gamma - gamma * p * (1 - p) ** (gamma - 1) * np.log(p)


def value_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("keep_softmax", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_gradient_match_autograd_of_naive_formula(gamma, reduction, keep_softmax, torch_path):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7, dtype=torch.float64) * 3  # leading shape [3, 4] is flattened
    target = torch.randint(0, 7, (3, 4))

    def reduce(per_sample):
        return {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]

    ours, ours_grad = value_and_grad(
        lambda x: focal_loss_classes_last(x, target, gamma, reduction=reduction, keep_softmax=keep_softmax), logits)
    ref, ref_grad = value_and_grad(lambda x: reduce(naive_focal(x, target, gamma)), logits)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_per_sample_gamma_tensor_matches_naive(torch_path):
    torch.manual_seed(1)
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (6,))
    gamma = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    ours, ours_grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, gamma, reduction="none"), logits)
    ref, ref_grad = value_and_grad(lambda x: naive_focal(x, target, gamma), logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_callable_gamma_sees_true_class_probability(torch_path):
    torch.manual_seed(2)
    logits = torch.randn(50, 4, dtype=torch.float64) * 2
    target = torch.randint(0, 4, (50,))

    def flsd53_rule(p):  # the test's own FLSD-53 rule, one sample at a time
        return torch.tensor([5.0 if float(pi) < 0.2 else 3.0 for pi in p], dtype=p.dtype)

    p_y = F.softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    ours, ours_grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, flsd53_rule, reduction="sum"), logits)
    ref, ref_grad = value_and_grad(lambda x: naive_focal(x, target, flsd53_rule(p_y)).sum(), logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma_zero_is_cross_entropy(dtype, tol, reduction, torch_path):
    torch.manual_seed(3)
    logits = torch.randn(64, 10, dtype=dtype) * 4
    target = torch.randint(0, 10, (64,))
    target[::7] = -100  # padding
    ours, ours_grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, 0.0, reduction=reduction), logits)
    ref, ref_grad = value_and_grad(lambda x: F.cross_entropy(x, target, reduction=reduction), logits)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=tol, atol=tol)


def test_ignore_index_rows_get_zero_loss_and_gradient(torch_path):
    logits = torch.randn(5, 3, dtype=torch.float64)
    target = torch.tensor([0, 1, 7, 2, 7])
    ours, grad = value_and_grad(
        lambda x: focal_loss_classes_last(x, target, 2.0, reduction="none", ignore_index=7), logits)
    assert ours[2] == 0 and ours[4] == 0
    assert torch.all(grad[[2, 4]] == 0)
    mean = focal_loss_classes_last(logits, target, 2.0, ignore_index=7)
    torch.testing.assert_close(mean, naive_focal(logits[[0, 1, 3]], target[[0, 1, 3]], 2.0).mean())
    all_padding = focal_loss_classes_last(logits, torch.full((5,), 7), 2.0, ignore_index=7)
    assert all_padding == 0  # documented: a mean over no samples is 0, not NaN


def test_proposition_1_last_layer_gradient_relation(torch_path):
    """dL_f/dW = dL_c/dW · g(p_y, γ) for the last linear layer W (Proposition 1), per sample."""
    torch.manual_seed(4)
    features = torch.randn(8, 6, dtype=torch.float64)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (8,))
    for i in range(8):
        logits = features[i:i + 1] @ weight.T
        (grad_focal,) = torch.autograd.grad(focal_loss_classes_last(logits, target[i:i + 1], 3.0), weight,
                                            retain_graph=True)
        (grad_ce,) = torch.autograd.grad(F.cross_entropy(logits, target[i:i + 1]), weight)
        p = float(F.softmax(logits.detach(), -1)[0, target[i]])
        torch.testing.assert_close(grad_focal, grad_ce * paper_g(p, 3.0), rtol=1e-10, atol=1e-12)


def test_g_matches_paper_formula_and_limits():
    p = np.linspace(0.01, 0.99, 99)
    for gamma in [0.0, 0.5, 1.0, 3.0, 5.0]:
        np.testing.assert_allclose(g(p, gamma), paper_g(p, gamma), rtol=1e-12)
    assert g(0.0, 3.0) == 1.0 and g(1.0, 3.0) == 0.0 and g(1.0, 0.0) == 1.0
    assert math.isfinite(g(1 - 1e-12, 0.3))
    torch.testing.assert_close(g(torch.tensor([0.3]), 2.0), torch.tensor([paper_g(0.3, 2.0)], dtype=torch.float32))
    # §4 says g(p, 1) crosses 1 near p0 ≈ 0.4; exactly, 1 - p - p log p = 1 at log p = -1, i.e. p0 = 1/e.
    assert g(1 / math.e, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert g(1 / math.e - 1e-3, 1.0) > 1 > g(1 / math.e + 1e-3, 1.0)


def test_gamma_star_values_and_defining_property():
    assert gamma_star(0.2) == pytest.approx(4.8506, abs=5e-5)
    assert gamma_star(0.25) == pytest.approx(3.0702, abs=5e-5)
    for p0 in [0.05, 0.2, 0.25, 0.4]:
        gs = gamma_star(p0)
        assert paper_g(p0, gs) == pytest.approx(1.0, abs=1e-9)
        above = np.linspace(p0, 1, 200)[1:-1]
        below = np.linspace(0, p0, 200)[1:-1]
        assert np.all(paper_g(above, gs) < 1) and np.all(paper_g(below, gs) > 1)
    np.testing.assert_allclose(gamma_star(np.array([0.2, 0.25])), [gamma_star(0.2), gamma_star(0.25)])


@pytest.mark.parametrize("p0", [0.0, 0.5, -0.1, 0.7, float("nan")])
def test_gamma_star_rejects_p0_outside_open_interval(p0):
    with pytest.raises(ValueError, match=r"p0 must lie in the open interval \(0, 0.5\), got"):
        gamma_star(p0)


def test_optimal_confidence_is_identity_for_ce_and_matches_brute_force():
    q = np.array([0.05, 0.2, 0.5, 0.7, 0.95])
    np.testing.assert_allclose(optimal_confidence(q, 0.0), q, atol=1e-8)
    x = np.linspace(1e-6, 1 - 1e-6, 400001)[None, :]
    for gamma in [1.0, 3.0]:
        objective = -(1 - x) ** gamma * q[:, None] * np.log(x) - x ** gamma * (1 - q[:, None]) * np.log(1 - x)
        brute = x[0, objective.argmin(axis=1)]
        ours = optimal_confidence(q, gamma)
        np.testing.assert_allclose(ours, brute, atol=1e-5)
        assert np.all(np.abs(ours - 0.5) <= np.abs(q - 0.5) + 1e-7)  # Fig. 6: focal pulls p̂ towards 0.5


def test_extreme_logits_stay_finite(torch_path):
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4], [-1e4, 1e4, 1e4]], requires_grad=True)
    target = torch.tensor([1, 2, 0])
    for gamma in [0.0, 0.3, 1.0, 5.0]:
        loss = focal_loss_classes_last(logits, target, gamma, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        # log p_y = -2e4 and 0 exactly
        assert float(loss[0].detach()) == pytest.approx(2e4) and float(loss[1].detach()) == 0


def test_confident_rows_with_gamma_below_one_have_finite_vanishing_gradient(torch_path):
    """p_y -> 1 with γ < 1: (1-p)^(γ-1) blows up, but g -> 0; the naive formula gives NaN here."""
    logits = torch.tensor([[40.0, 0.0, 0.0], [20.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 0])
    loss = focal_loss_classes_last(logits, target, 0.3, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all()
    top = logits.detach()[:, 0].numpy()
    one_minus_p = 2 * np.exp(-top) / (1 + 2 * np.exp(-top))  # exact 1 - p for logits [t, 0, 0]
    p = 1 - one_minus_p
    expected_g = one_minus_p ** 0.3 - 0.3 * p * one_minus_p ** (0.3 - 1) * np.log1p(-one_minus_p)
    expected_grad_true_class = expected_g * (p - 1)
    # (p - 1) cancels in float64 as in any softmax-minus-onehot gradient, hence rtol 1e-6
    np.testing.assert_allclose(grad[:, 0].numpy(), expected_grad_true_class, rtol=1e-6, atol=1e-20)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype, torch_path):
    torch.manual_seed(5)
    logits = (torch.randn(32, 11) * 8).to(dtype)
    target = torch.randint(0, 11, (32,))
    ours, grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, 2.0, reduction="none"), logits)
    ref, ref_grad = value_and_grad(lambda x: naive_focal(x, target, 2.0), logits.double())
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-2)


def test_second_backward_through_reused_buffer_is_refused_but_recompute_mode_allows_it(monkeypatch):
    monkeypatch.setattr(constants, "SMALL_BATCH_ELEMENTS", 0)  # the fused path, which reuses its softmax buffer
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0])
    loss = focal_loss_classes_last(logits, target, 1.0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="keep_softmax=False"):
        loss.backward()
    logits.grad = None
    loss = focal_loss_classes_last(logits, target, 1.0, keep_softmax=False)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward()
    torch.testing.assert_close(logits.grad, 2 * first)


@pytest.mark.parametrize("kwargs,message", [
    (dict(gamma=-1), r"gamma must be a finite number >= 0, got -1"),
    (dict(gamma=float("nan")), r"gamma must be a finite number >= 0, got nan"),
    (dict(gamma=torch.tensor([1.0, -2.0, 1.0])), r"gamma must be >= 0, got -2"),
    (dict(gamma=torch.tensor([1.0, 2.0])), r"per-sample gamma must have the target's shape \(3,\), got \(2,\)"),
    (dict(target=torch.tensor([0, 5, 1])), r"target holds class index 5, outside \[0, 3\]"),
    (dict(target=torch.tensor([0, -3, 1])), r"target holds class index -3"),
    (dict(target=torch.tensor([[0, 1, 2]])), r"shape mismatch"),
    (dict(target=torch.tensor([0.0, 1.0, 2.0])), r"integer class indices"),
    (dict(logits=torch.tensor([[0.0, 1, 2, 3], [float("nan"), 0, 0, 0], [0.0, 0, 0, 0]])),
     r"logits must be finite, got nan"),
    (dict(logits=torch.tensor([[0.0, 1, 2, 3], [float("inf"), 0, 0, 0], [0.0, 0, 0, 0]])), r"logits must be finite"),
    (dict(reduction="avg"), r"reduction must be 'mean', 'sum' or 'none', got 'avg'"),
    (dict(logits=torch.zeros(0, 4), target=torch.zeros(0, dtype=torch.long)), r"empty batch"),
])
def test_bad_inputs_raise_clear_errors(kwargs, message, torch_path):
    args = dict(logits=torch.randn(3, 4), target=torch.tensor([0, 1, 2]), gamma=1.0, reduction="mean")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        focal_loss_classes_last(args["logits"], args["target"], args["gamma"], reduction=args["reduction"])


def test_small_batch_path_allows_a_second_backward(monkeypatch):
    monkeypatch.setattr(constants, "SMALL_BATCH_ELEMENTS", 2 ** 40)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, -100, 1])
    loss = focal_loss_classes_last(logits, target, 2.0)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    ref = naive_focal(logits[target != -100], target[target != -100], 2.0).mean()
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(first, ref_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_non_finite_logits_in_an_ignored_row_still_raise(torch_path):
    """Their gradient would be NaN (log-softmax backward), so the check covers ignored rows too."""
    logits = torch.randn(3, 4)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logits must be finite"):
        focal_loss_classes_last(logits, torch.tensor([0, -100, 2]), 2.0)


def test_minus_inf_logit_of_another_class_is_allowed(torch_path):
    """-inf masks a class out: allowed for every class but the target, as in F.cross_entropy."""
    logits = torch.tensor([[0.5, float("-inf"), 1.0], [2.0, 0.0, float("-inf")]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    ours, grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, 2.0, reduction="none"), logits)
    ref, ref_grad = value_and_grad(lambda x: naive_focal(x, target, 2.0), logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
