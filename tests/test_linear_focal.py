"""linear_focal_loss (focal loss from the features and the output projection, in chunks) against the materialised
path -- the classes-last focal loss (or its label-smoothed form, or AdaFocalLoss) on ``F.linear(hidden, weight, bias)``
-- values and the gradients of hidden, weight and bias, in float64 and float32, every γ mode, label smoothing, every
reduction, ragged sizes with chunk sizes forced small; plus the statistics against softmax / F.cross_entropy, half
inputs, the memory bound (no tensor larger than one chunk of logits), and the errors."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from focal_calibration import constants
from focal_calibration.losses import (AdaFocalLoss, EpochScheduledGamma, LinearFocalLoss, build_loss,
                                      focal_label_smoothed_loss_classes_last, linear_focal_loss, parse_gamma_policy)
from focal_calibration.losses.fused import focal_loss_classes_last
from focal_calibration.losses.linear import chunk_plan

IGNORE = -100
N, D, V = 37, 6, 23  # ragged: neither a multiple of the forced chunk sizes
CHUNKS = [(None, None), (5, None), (8, 7)]  # (chunk_rows, chunk_classes): default, rows, rows × classes
# (reduction, recompute): "none" always recomputes in the backward; "sum" / "mean" compute the gradients in the forward
RUNS = [("mean", False), ("sum", False), ("sum", True), ("none", True)]


def inputs(n=N, d=D, v=V, *, dtype=torch.float64, scale=1.0, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = (scale * torch.randn(n, d, generator=gen)).to(dtype)
    weight = torch.randn(v, d, generator=gen).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype) if bias else None
    target = torch.randint(0, v, (n,), generator=gen)
    target[[i for i in (0, 3, 17, 36) if i < n]] = IGNORE
    return hidden, weight, b, target


def adafocal(reduction):
    """AdaFocal after some updates: 15 bins whose signed γ mixes focal and inverse-focal rows."""
    loss = build_loss("adafocal", reduction=reduction, ignore_index=IGNORE)
    loss.gammas.copy_(torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.2, -0.5, 1.0, 2.0, -1.0, 0.3, 4.0, -2.0, 1.5, 0.2],
                                   dtype=torch.float64))
    loss.inner_edges.copy_(torch.linspace(0.02, 0.6, 14, dtype=torch.float64))
    return loss


GAMMAS = ["ce", "fl-3", "fl-0.5", "per-sample", "flsd-53", "flsd-532", "prop2", "adafocal"]


def gamma_case(name, reduction, target):
    """(keyword arguments of linear_focal_loss, the materialised reference: logits -> loss)."""
    if name == "adafocal":
        loss = adafocal(reduction)
        return dict(gamma=loss.gamma_of, signed_gamma=True), loss
    if name == "per-sample":
        gamma = torch.linspace(0.0, 4.0, target.numel(), dtype=torch.float64)
    elif name in ("flsd-53", "flsd-532", "prop2"):
        gamma = parse_gamma_policy({"prop2": "flsd-prop2-0.2-0.25"}.get(name, name))
    else:
        gamma = {"ce": 0.0, "fl-3": 3.0, "fl-0.5": 0.5}[name]
    return dict(gamma=gamma), lambda z, y: focal_loss_classes_last(z, y, gamma, reduction=reduction,
                                                                   ignore_index=IGNORE)


def value_and_grads(fn, hidden, weight, bias, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
    out = fn(*leaves) if bias is not None else fn(*leaves, None)
    grads = torch.autograd.grad(out, leaves, upstream)
    return out.detach(), grads


def assert_same(ours, ref, dtype):
    tol = {} if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ours[0], ref[0], **tol)
    for a, b in zip(ours[1], ref[1]):
        scale = float(b.abs().max()) or 1.0  # float32 sums over V or N terms, in other orders
        torch.testing.assert_close(a, b, **(tol if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5 * scale)))


def upstream_for(reduction, n, dtype, seed=1):
    if reduction == "none":
        return torch.rand(n, generator=torch.Generator().manual_seed(seed)).to(dtype) + 0.5
    return torch.tensor(1.3, dtype=dtype)


def compare(kwargs, reference, hidden, weight, bias, target, reduction, chunks, recompute=False):
    dtype = hidden.dtype
    upstream = upstream_for(reduction, target.numel(), dtype)
    ours = value_and_grads(lambda h, w, b: linear_focal_loss(
        h, w, target, b, reduction=reduction, ignore_index=IGNORE, chunk_rows=chunks[0], chunk_classes=chunks[1],
        recompute=recompute, **kwargs), hidden, weight, bias, upstream)
    ref = value_and_grads(lambda h, w, b: reference(F.linear(h, w, b), target), hidden, weight, bias, upstream)
    assert_same(ours, ref, dtype)


# ----------------------------------------------------------------------------------------------------------------
# Equal to the materialised path

@pytest.mark.parametrize("chunks", CHUNKS, ids=lambda c: f"rows{c[0]}-classes{c[1]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", GAMMAS)
def test_every_gamma_mode_equals_the_materialised_loss(name, dtype, chunks):
    hidden, weight, bias, target = inputs(dtype=dtype, scale=2.0)
    for reduction, recompute in RUNS:
        kwargs, reference = gamma_case(name, reduction, target)
        compare(kwargs, reference, hidden, weight, bias, target, reduction, chunks, recompute)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_one_row_one_class_per_chunk(smoothing):
    hidden, weight, bias, target = inputs(n=9, v=5, scale=2.0)
    for name in ("fl-3", "flsd-53") if smoothing else ("fl-3", "flsd-53", "adafocal"):
        for reduction, recompute in RUNS:
            kwargs, reference = gamma_case(name, reduction, target)
            if smoothing:
                gamma = kwargs["gamma"]
                kwargs = dict(kwargs, label_smoothing=smoothing)

                def reference(z, y):
                    return focal_label_smoothed_loss_classes_last(z, y, gamma, smoothing, reduction=reduction,
                                                     ignore_index=IGNORE)
            compare(kwargs, reference, hidden, weight, bias, target, reduction, (1, 1), recompute)


@pytest.mark.parametrize("chunks", CHUNKS, ids=lambda c: f"rows{c[0]}-classes{c[1]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", ["ce", "fl-3", "per-sample", "flsd-53"])
def test_label_smoothing_equals_the_materialised_smoothed_loss(monkeypatch, name, dtype, chunks):
    monkeypatch.setattr(constants, "SMOOTHED_FOCAL_CHUNK_ELEMENTS", 3 * V)  # the per-class terms in sub-chunks of rows
    hidden, weight, bias, target = inputs(dtype=dtype, scale=2.0, seed=2)
    for reduction, recompute in RUNS:
        kwargs, _ = gamma_case(name, reduction, target)
        gamma = kwargs["gamma"]

        def reference(z, y):
            return focal_label_smoothed_loss_classes_last(z, y, gamma, 0.1, reduction=reduction, ignore_index=IGNORE)

        compare(dict(kwargs, label_smoothing=0.1), reference, hidden, weight, bias, target, reduction, chunks,
                recompute)


def test_label_smoothing_at_gamma_zero_is_label_smoothed_cross_entropy():
    """An independent reference: fairseq's label-smoothed CE, (1-α-α/(V-1)) nll + α/(V-1) Σ_k -log p_k."""
    hidden, weight, bias, target = inputs(seed=3)
    ours = linear_focal_loss(hidden, weight, target, bias, gamma=0.0, label_smoothing=0.2, reduction="sum",
                             chunk_rows=4, chunk_classes=6)
    log_p = F.log_softmax(F.linear(hidden, weight, bias), -1)
    valid = target != IGNORE
    y = torch.where(valid, target, 0)
    off = 0.2 / (V - 1)
    per_row = -(1 - 0.2 - off) * log_p.gather(1, y[:, None]).squeeze(1) - off * log_p.sum(-1)
    torch.testing.assert_close(ours, per_row[valid].sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_extreme_logits(dtype):
    """Logits in the hundreds: p_y underflows to 0 for some rows and rounds to 1 for others (targets at the argmax)."""
    hidden, weight, bias, target = inputs(dtype=dtype, scale=60.0, seed=4)
    argmax = F.linear(hidden, weight, bias).argmax(-1)
    target = torch.where(torch.arange(N) % 2 == 0, argmax, target)
    target[3] = IGNORE
    for name in ("ce", "fl-3", "flsd-53", "adafocal"):
        for reduction in ("sum", "none"):
            kwargs, reference = gamma_case(name, reduction, target)
            compare(kwargs, reference, hidden, weight, bias, target, reduction, (5, 7))
    value, grads = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target, b, gamma=3.0, chunk_rows=5,
                                                                     chunk_classes=7, ignore_index=IGNORE),
                                   hidden, weight, bias, torch.tensor(1.0, dtype=dtype))
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)


def test_naive_formula_through_autograd():
    """Independent of the fused path: -(1 - p_y)^γ log p_y with autograd through log_softmax of F.linear."""
    hidden, weight, bias, target = inputs(seed=5, scale=2.0)
    valid = target != IGNORE

    def naive(h, w, b):
        log_p = F.log_softmax(F.linear(h, w, b), -1).gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
        return torch.where(valid, -(1 - log_p.exp()) ** 2.5 * log_p, torch.zeros_like(log_p)).sum()

    ours = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target, b, gamma=2.5, reduction="sum",
                                                             chunk_rows=4, chunk_classes=5),
                           hidden, weight, bias, torch.tensor(1.0, dtype=torch.float64))
    assert_same(ours, value_and_grads(naive, hidden, weight, bias, torch.tensor(1.0, dtype=torch.float64)),
                torch.float64)


def test_without_bias_and_with_leading_dimensions():
    hidden, weight, _, target = inputs(n=24, seed=6)
    hidden3, target3 = hidden.reshape(4, 6, D), target.reshape(4, 6)
    upstream = torch.rand(4, 6, dtype=torch.float64)
    ours = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target3, gamma=2.0, reduction="none",
                                                             chunk_rows=5), hidden3, weight, None, upstream)
    ref = value_and_grads(lambda h, w, b: focal_loss_classes_last(h @ w.T, target3, 2.0, reduction="none"),
                          hidden3, weight, None, upstream)
    assert ours[0].shape == (4, 6)
    assert_same(ours, ref, torch.float64)


def test_mean_over_no_valid_row_is_zero_with_zero_gradients():
    hidden, weight, bias, target = inputs(n=6)
    target[:] = IGNORE
    value, grads = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target, b, chunk_rows=4), hidden, weight,
                                   bias, torch.tensor(1.0, dtype=torch.float64))
    assert float(value) == 0.0 and all(float(g.abs().max()) == 0.0 for g in grads)


def test_only_the_inputs_that_need_a_gradient_get_one():
    hidden, weight, bias, target = inputs()
    weight = weight.requires_grad_()
    loss = linear_focal_loss(hidden, weight, target, bias, gamma=2.0, chunk_rows=5)
    (grad_weight,) = torch.autograd.grad(loss, weight)
    ref = torch.autograd.grad(focal_loss_classes_last(F.linear(hidden, weight, bias), target, 2.0), weight)[0]
    torch.testing.assert_close(grad_weight, ref)


def test_no_grad_gives_the_value():
    hidden, weight, bias, target = inputs(scale=2.0)
    hidden.requires_grad_()
    with torch.no_grad():
        value = linear_focal_loss(hidden, weight, target, bias, gamma=2.0, chunk_rows=5, chunk_classes=7)
    assert not value.requires_grad
    torch.testing.assert_close(value, focal_loss_classes_last(F.linear(hidden, weight, bias), target, 2.0).detach())


def test_eager_gradients_backpropagate_once_recompute_twice():
    hidden, weight, bias, target = inputs()
    hidden.requires_grad_()
    loss = linear_focal_loss(hidden, weight, target, bias, chunk_rows=5)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="pass recompute=True to use retain_graph"):
        loss.backward()
    hidden.grad = None
    loss = linear_focal_loss(hidden, weight, target, bias, chunk_rows=5, recompute=True)
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    loss.backward()
    torch.testing.assert_close(hidden.grad, 2 * first)


# ----------------------------------------------------------------------------------------------------------------
# Statistics, half inputs, autocast

def test_statistics_against_softmax_and_cross_entropy():
    hidden, weight, bias, target = inputs(scale=2.0, seed=7)
    policy = parse_gamma_policy("flsd-53")
    for chunks in CHUNKS:
        _, stats = linear_focal_loss(hidden, weight, target, bias, gamma=policy, return_stats=True,
                                     chunk_rows=chunks[0], chunk_classes=chunks[1])
        logits = F.linear(hidden, weight, bias)
        probs = torch.softmax(logits, -1)
        valid = target != IGNORE
        torch.testing.assert_close(stats.nll, F.cross_entropy(logits, target, reduction="none"))
        torch.testing.assert_close(stats.confidence, probs.max(-1).values)
        assert torch.equal(stats.prediction, probs.argmax(-1))
        assert torch.equal(stats.correct, (probs.argmax(-1) == target) & valid)
        p_y = probs.gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
        expected_gamma = torch.where(p_y < 0.2, 5.0, 3.0).double()  # FLSD-53, §4
        assert torch.equal(stats.gamma[valid], expected_gamma[valid])
        assert 3 < float(stats.gamma[valid].mean()) < 5  # both bands are used


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_inputs_compute_in_float32(dtype):
    """Half inputs: the same half logits as F.linear, the focal terms in float32 (loss float32); gradients in the
    inputs' dtype, within half rounding of the materialised half path."""
    hidden, weight, bias, target = inputs(n=64, d=16, v=50, dtype=dtype, scale=0.5, seed=8)
    upstream = torch.tensor(1.0, dtype=torch.float32)
    ours = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target, b, gamma=2.0, reduction="sum",
                                                             chunk_rows=16, chunk_classes=20),
                           hidden, weight, bias, upstream)
    ref = value_and_grads(lambda h, w, b: focal_loss_classes_last(F.linear(h, w, b), target, 2.0, reduction="sum"),
                          hidden, weight, bias, upstream)
    assert ours[0].dtype == torch.float32 and [g.dtype for g in ours[1]] == [dtype] * 3
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-4)
    for a, b in zip(ours[1], ref[1]):
        scale = float(b.float().abs().max())
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * scale)


def test_autocast_casts_like_f_linear():
    hidden, weight, bias, target = inputs(n=40, d=16, v=30, dtype=torch.float32, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target, b, gamma=1.0, chunk_rows=7),
                               hidden, weight, bias, torch.tensor(1.0))
        ref = value_and_grads(lambda h, w, b: focal_loss_classes_last(F.linear(h, w, b), target, 1.0),
                              hidden, weight, bias, torch.tensor(1.0))
    torch.testing.assert_close(ours[0], ref[0].float(), rtol=1e-5, atol=1e-4)
    for a, b in zip(ours[1], ref[1]):
        assert a.dtype == torch.float32  # the parameters' dtype, through autocast's casts
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))


# ----------------------------------------------------------------------------------------------------------------
# Memory: never more than one chunk of logits

class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("smoothing, recompute, chunks", [
    (0.0, False, (16, None)), (0.0, True, (16, None)), (0.1, False, (16, None)), (0.1, True, (16, None)),
    (0.0, False, (16, 100)), (0.1, False, (16, 100)), (0.0, False, "budget")])
def test_no_tensor_is_larger_than_one_chunk_of_logits(monkeypatch, smoothing, recompute, chunks):
    n, d, v = 256, 4, 300  # the logits (76800) dwarf the features (1024) and the weight (1200)
    hidden, weight, bias, target = inputs(n=n, d=d, v=v, dtype=torch.float32, seed=10)
    if chunks == "budget":  # the default plan: rows = LINEAR_CHUNK_ELEMENTS // V
        monkeypatch.setattr(constants, "LINEAR_CHUNK_ELEMENTS", 16 * v)
        monkeypatch.setattr(constants, "LINEAR_MIN_ROWS", 4)
        chunks = (None, None)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    with _LargestTensor() as mode:
        loss = linear_focal_loss(*leaves[:2], target, leaves[2], gamma=parse_gamma_policy("flsd-53"),
                                 label_smoothing=smoothing, recompute=recompute, chunk_rows=chunks[0],
                                 chunk_classes=chunks[1])
        loss.backward()
    assert 0 < mode.largest <= 16 * (chunks[1] or v), mode.largest
    assert hidden.grad is not None and weight.grad is not None and bias.grad is not None


def test_default_plan_rows_from_the_budget(monkeypatch):
    monkeypatch.setattr(constants, "LINEAR_CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(constants, "LINEAR_MIN_ROWS", 4)
    assert chunk_plan(50, 100, None, None) == (10, 100)  # 10 rows of every class
    assert chunk_plan(5, 100, None, None) == (5, 100)  # never more rows than there are
    assert chunk_plan(50, 1000, None, None) == (4, 250)  # too few rows: blocks of classes
    assert chunk_plan(50, 100, 3, None) == (3, 100) and chunk_plan(50, 100, 3, 7) == (3, 7)
    assert chunk_plan(50, 1000, 20, None) == (20, 1000)  # rows given: every class, whatever the budget


# ----------------------------------------------------------------------------------------------------------------
# The module

def test_module_with_policies_and_adafocal():
    hidden, weight, bias, target = inputs(scale=2.0, seed=11)
    logits = F.linear(hidden, weight, bias)
    torch.testing.assert_close(LinearFocalLoss(3.0, ignore_index=IGNORE)(hidden, weight, target, bias),
                               focal_loss_classes_last(logits, target, 3.0))
    scheduled = LinearFocalLoss(EpochScheduledGamma((5, 1), milestones=(2,)), reduction="sum")
    scheduled.set_epoch(2)
    torch.testing.assert_close(scheduled(hidden, weight, target, bias),
                               focal_loss_classes_last(logits, target, 1.0, reduction="sum"))
    smoothed = LinearFocalLoss(parse_gamma_policy("flsd-53"), label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(smoothed(hidden, weight, target, bias),
                               focal_label_smoothed_loss_classes_last(logits, target, parse_gamma_policy("flsd-53"),
                                                                      0.1, reduction="none"))
    ada = adafocal("mean")
    module = LinearFocalLoss(ada)
    torch.testing.assert_close(module(hidden, weight, target, bias), ada(logits, target))
    assert isinstance(module.adafocal, AdaFocalLoss) and "AdaFocal" in repr(module)


# ----------------------------------------------------------------------------------------------------------------
# Errors

@pytest.mark.parametrize("change, error, message", [
    (dict(hidden=torch.ones(4, 3, dtype=torch.long)), TypeError, "hidden must be a floating-point tensor"),
    (dict(weight=torch.ones(5, 4)), ValueError, "hidden's last dimension d=3 does not match weight"),
    (dict(target=torch.zeros(5, dtype=torch.long)), ValueError, "target must have shape (4,), got (5,)"),
    (dict(target=torch.zeros(4)), TypeError, "target must hold integer class indices"),
    (dict(target=torch.tensor([0, 1, 5, 2])), ValueError, "target holds class index 5, outside [0, 4]"),
    (dict(bias=torch.ones(4)), ValueError, "bias must have shape (5,)"),
    (dict(weight=torch.ones(5, 3, dtype=torch.float64)), TypeError, "must have one dtype"),
    (dict(hidden=torch.full((4, 3), float("nan"))), ValueError, "logits must be finite, got nan"),
    (dict(hidden=torch.ones(0, 3), target=torch.zeros(0, dtype=torch.long)), ValueError, "empty batch"),
    (dict(gamma=-1.0), ValueError, "gamma must be a finite number >= 0, got -1.0"),
    (dict(gamma=torch.ones(3)), ValueError, "a per-sample gamma must have the target's shape (4,)"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing must be a number in [0, 1], got 1.5"),
    (dict(label_smoothing=0.1, signed_gamma=True), ValueError, "not to a signed γ"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(chunk_rows=0), ValueError, "chunk_rows must be an integer >= 1, got 0"),
    (dict(chunk_classes=2.5), ValueError, "chunk_classes must be an integer >= 1, got 2.5"),
])
def test_bad_input_is_a_clear_error(change, error, message):
    args = dict(hidden=torch.ones(4, 3), weight=torch.ones(5, 3), target=torch.tensor([0, 1, 4, IGNORE]),
                bias=None)
    args.update(change)
    tensors = [args.pop(k) for k in ("hidden", "weight", "target", "bias")]
    with pytest.raises(error) as info:
        linear_focal_loss(*tensors, **args)
    assert message in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# CUDA (pytest -m cuda; scripts/gpu_check.sh runs them)

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name, smoothing", [("fl-3", 0.0), ("flsd-53", 0.1), ("adafocal", 0.0)])
def test_on_cuda_matches_float64_on_the_cpu(dtype, name, smoothing):
    """CUDA tensors (float32, bfloat16) against float64 on the CPU, on the same (rounded) inputs: several chunks of
    rows and of classes; value and the three gradients."""
    hidden, weight, bias, target = inputs(n=300, d=64, v=1000, dtype=dtype, scale=0.3, seed=12)
    kwargs, reference = gamma_case(name, "sum", target)
    if smoothing:
        gamma = kwargs["gamma"]
        kwargs = dict(kwargs, label_smoothing=smoothing)

        def reference(z, y):
            return focal_label_smoothed_loss_classes_last(z, y, gamma, smoothing, reduction="sum", ignore_index=IGNORE)

    on_cuda = [t.cuda() for t in (hidden, weight, bias)]
    target_cuda = target.cuda()
    ours = value_and_grads(lambda h, w, b: linear_focal_loss(h, w, target_cuda, b, reduction="sum",
                                                             ignore_index=IGNORE, chunk_rows=64, chunk_classes=300,
                                                             **kwargs), *on_cuda, torch.tensor(1.0, device="cuda"))
    ref = value_and_grads(lambda h, w, b: reference(F.linear(h, w, b), target),
                          *(t.double() for t in (hidden, weight, bias)), torch.tensor(1.0, dtype=torch.float64))
    rtol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours[0].cpu().double(), ref[0], rtol=rtol, atol=rtol)
    for a, b in zip(ours[1], ref[1]):
        assert a.dtype == dtype
        torch.testing.assert_close(a.cpu().double(), b, rtol=rtol, atol=rtol * float(b.abs().max()))
