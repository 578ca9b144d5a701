"""The fused Triton kernels (focal_calibration.focal_triton) in Triton's interpreter, on CPU tensors: values and
gradients against the PyTorch path (itself tested against autograd of the naive formula) and, for the plain loss,
against autograd of the naive formula in float64. Small shapes with tiles of 16 columns, so rows span several tiles
and the last one is ragged; ignored rows; extreme logits; γ < 1 with p -> 1; every γ mode; label smoothing; half
and bfloat16 inputs.

TRITON_INTERPRET must be set before triton is first imported (triton.language's own helpers are decorated then), so
these cases run in a process of their own: tests/test_focal_triton.py starts it (``pytest
tests/triton_interpreter_cases.py`` by hand works too; the variable is set below, before anything imports triton).
"""

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

triton = pytest.importorskip("triton")

from focal_calibration import build_loss, focal_loss  # noqa: E402
from focal_calibration import focal_triton  # noqa: E402
from focal_calibration.focal_smoothing import focal_label_smoothed_loss  # noqa: E402
from focal_calibration.gamma import SampleDependentGamma, prop2_gamma_policy  # noqa: E402

IGNORE = -100


@pytest.fixture(scope="module", autouse=True)
def small_tiles():
    if not focal_triton.INTERPRETER:
        pytest.fail("TRITON_INTERPRET=1 must be set before triton is imported (run this file in a fresh process)")
    saved = focal_triton.MAX_BLOCK_COLS
    focal_triton.MAX_BLOCK_COLS = 16  # K = 50: four tiles per row, the last one 2 columns wide
    yield
    focal_triton.MAX_BLOCK_COLS = saved


def batch(rows=37, classes=50, scale=4.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, classes, generator=gen)).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[[i for i in (3, 17, 36) if i < rows]] = IGNORE
    upstream = torch.rand(rows, generator=gen) + 0.5  # a different dL/dL_i per row: exercises the row stride
    return logits, target, upstream


def value_and_grad(fn, logits, upstream):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    return out.detach(), grad


def naive_focal(logits, target, gamma):
    """-(1 - p_y)^γ log p_y per sample through autograd (§4), 0 at ignored rows."""
    valid = target != IGNORE
    log_p = F.log_softmax(logits, -1).gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
    return torch.where(valid, -(1 - log_p.exp()) ** gamma * log_p, torch.zeros_like(log_p))


GAMMAS = {
    "fixed 3": 3.0,
    "fixed 0 (cross-entropy)": 0.0,
    "fixed 0.5": 0.5,
    "per-row tensor": torch.linspace(0.0, 5.0, 37),
    "FLSD-53 table": build_loss("flsd-53").policy,
    "FLSD-532 table": build_loss("flsd-532").policy,
    "Prop. 2 table": prop2_gamma_policy([0.2, 0.25]),
    "other callable": lambda p: torch.where(p < 0.5, 4.0, 1.0),
}


@pytest.mark.parametrize("name", list(GAMMAS))
def test_plain_kernel_matches_torch_path_and_naive_formula(name):
    gamma = GAMMAS[name]
    logits, target, upstream = batch()
    ours, grad = value_and_grad(lambda x: focal_loss(x, target, gamma, reduction="none", ignore_index=IGNORE,
                                                     backend="triton"), logits, upstream)
    ref, ref_grad = value_and_grad(lambda x: focal_loss(x, target, gamma, reduction="none", ignore_index=IGNORE,
                                                        backend="torch"), logits, upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.all(grad[[3, 17, 36]] == 0) and torch.all(ours[[3, 17, 36]] == 0)
    if not callable(gamma):  # the formula itself, in float64
        naive, naive_grad = value_and_grad(lambda x: naive_focal(x, target, gamma), logits.double(), upstream.double())
        torch.testing.assert_close(ours.double(), naive, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.double(), naive_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_broadcast_the_upstream_gradient(reduction):
    logits, target, _ = batch(seed=1)
    x = logits.clone().requires_grad_()
    ours = focal_loss(x, target, 2.0, reduction=reduction, ignore_index=IGNORE, backend="triton")
    (grad,) = torch.autograd.grad(ours, x)  # autograd passes a stride-0 (expanded) gradient per row
    y = logits.clone().requires_grad_()
    ref = focal_loss(y, target, 2.0, reduction=reduction, ignore_index=IGNORE, backend="torch")
    (ref_grad,) = torch.autograd.grad(ref, y)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-8)


def test_extreme_logits_and_gamma_below_one_with_p_to_one():
    """|z| up to 1e4 and rows whose p_y is 1 in float32 (or just below): finite, equal to the torch path."""
    logits = torch.zeros(6, 19)
    logits[0, 0], logits[1, 5], logits[2, 18] = 1e4, -1e4, 1e4  # p_y = 1, 0 and 1 (target 18)
    logits[3, :] = torch.linspace(-1e4, 1e4, 19)
    logits[4, 2], logits[5, 2] = 40.0, 12.0  # p_y = 1 exactly and 1 - 1e-4
    target = torch.tensor([0, 5, 18, 0, 2, 2])
    upstream = torch.ones(6)
    for gamma in [0.3, 0.0, 3.0]:
        ours, grad = value_and_grad(lambda x: focal_loss(x, target, gamma, reduction="none", backend="triton"),
                                    logits, upstream)
        ref, ref_grad = value_and_grad(lambda x: focal_loss(x, target, gamma, reduction="none", backend="torch"),
                                       logits, upstream)
        assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        # p_y - 1 at p_y = 1 - 1e-4 cancels in float32 on both paths alike: two ulps of 1 apart at most
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=2.5e-7)
        assert float(ours[1]) == pytest.approx(1e4 + math.log(18), rel=1e-6)  # p_y = 0: L = -log p_y, any γ


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    logits, target, upstream = batch(scale=8.0, dtype=dtype, seed=2)
    policy = build_loss("flsd-53").policy
    ours, grad = value_and_grad(lambda x: focal_loss(x, target, policy, reduction="none", ignore_index=IGNORE,
                                                     backend="triton"), logits, upstream)
    ref, ref_grad = value_and_grad(lambda x: focal_loss(x, target, policy, reduction="none", ignore_index=IGNORE,
                                                        backend="torch"), logits, upstream)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=0, atol=float(torch.finfo(dtype).eps))


@pytest.mark.parametrize("name", ["fixed 0.5", "fixed 0 (cross-entropy)", "per-row tensor", "FLSD-532 table",
                                  "other callable"])
def test_label_smoothed_kernel_matches_torch_path(name):
    gamma = GAMMAS[name]
    logits, target, upstream = batch(seed=3)
    kwargs = dict(reduction="none", ignore_index=IGNORE, return_nll=True)
    x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ours_nll = focal_label_smoothed_loss(x, target, gamma, 0.1, backend="triton", **kwargs)
    ref, ref_nll = focal_label_smoothed_loss(y, target, gamma, 0.1, backend="torch", **kwargs)
    (grad,) = torch.autograd.grad((ours * upstream).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), y)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_nll, ref_nll, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.all(grad[[3, 17, 36]] == 0)


def test_label_smoothed_bfloat16_and_mean():
    logits, target, _ = batch(seed=4, dtype=torch.bfloat16)
    x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = focal_label_smoothed_loss(x, target, 1.0, 0.2, ignore_index=IGNORE, backend="triton")
    ref = focal_label_smoothed_loss(y, target, 1.0, 0.2, ignore_index=IGNORE, backend="torch")
    (grad,), (ref_grad,) = torch.autograd.grad(ours, x), torch.autograd.grad(ref, y)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=0, atol=float(torch.finfo(torch.bfloat16).eps))


def test_value_checks_and_bad_inputs(monkeypatch):
    logits, target, _ = batch(rows=4, classes=5)
    bad = logits.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logits must be finite"):  # CPU tensors: checked, as on the torch path
        focal_loss(bad, torch.tensor([0, 1, 2, 3]), 2.0, backend="triton")
    with pytest.raises(ValueError, match="logits must be finite"):  # an ignored row's NaN would poison nothing
        focal_label_smoothed_loss(bad, torch.tensor([0, IGNORE, 2, 3]), 2.0, 0.1, backend="triton")  # ...but is named
    with pytest.raises(ValueError, match=r"target holds class index 7, outside \[0, 4\]"):
        focal_loss(logits, torch.tensor([0, 7, 2, 3]), 2.0, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' computes float32, float16 and bfloat16 logits, got "
                                         "torch.float64"):
        focal_loss(logits.double(), torch.tensor([0, 1, 2, 3]), 2.0, backend="triton")
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'triton', got 'cuda'"):
        focal_loss(logits, torch.tensor([0, 1, 2, 3]), 2.0, backend="cuda")
    monkeypatch.setattr(focal_triton, "INTERPRETER", False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors, got logits on cpu"):
        focal_loss(logits, torch.tensor([0, 1, 2, 3]), 2.0, backend="triton")


def test_kernel_sees_a_table_policy_without_calling_it():
    """SampleDependentGamma is bucketized in the kernel (its tables), not called from Python."""
    class Counting(SampleDependentGamma):
        calls = 0

        def __call__(self, p_y):
            Counting.calls += 1
            return super().__call__(p_y)

    logits, target, _ = batch(seed=5)
    policy = Counting((5, 3), thresholds=(0.2,))
    ours = focal_loss(logits, target, policy, ignore_index=IGNORE, backend="triton")
    assert Counting.calls == 0
    torch.testing.assert_close(ours, focal_loss(logits, target, policy, ignore_index=IGNORE, backend="torch"))
