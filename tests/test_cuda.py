"""CUDA checks (``pytest -m cuda``; skipped without a CUDA device; scripts/gpu_check.sh runs them): the compiled
Triton kernels against the PyTorch path on the same GPU and against float64 autograd of the naive formula on the
CPU, the PyTorch path on CUDA against the CPU, value checks on CUDA tensors, and calibration_metrics /
fit_temperature on CUDA tensors against the CPU."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from focal_calibration import build_loss, calibration_metrics, fit_temperature, focal_loss, set_value_checks
from focal_calibration._internal import resolve_backend
from focal_calibration.focal_smoothing import focal_label_smoothed_loss
from focal_calibration.gamma import prop2_gamma_policy

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

IGNORE = -100
GAMMAS = {"fixed 3": 3.0, "fixed 0.5": 0.5, "FLSD-53": build_loss("flsd-53").policy,
          "Prop. 2": prop2_gamma_policy([0.2, 0.25]), "callable": lambda p: torch.where(p < 0.5, 4.0, 1.0)}


def batch(rows, classes, dtype=torch.float32, seed=0, scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, classes, generator=gen)).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[::7] = IGNORE
    upstream = torch.rand(rows, generator=gen) + 0.5
    return logits, target, upstream


def value_and_grad(fn, logits, upstream):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    return out.detach(), grad


def naive_focal(logits, target, gamma):
    valid = target != IGNORE
    log_p = F.log_softmax(logits, -1).gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
    return torch.where(valid, -(1 - log_p.exp()) ** gamma * log_p, torch.zeros_like(log_p))


def test_auto_backend_is_triton_for_cuda_tensors():
    assert resolve_backend("auto", torch.zeros(2, 3, device="cuda")) == "triton"
    assert resolve_backend("auto", torch.zeros(2, 3, device="cuda", dtype=torch.float64)) == "torch"
    assert resolve_backend("auto", torch.zeros(2, 3)) == "torch"


@pytest.mark.parametrize("classes", [50, 32003])  # one ragged tile; several tiles of 8192 and a ragged one
@pytest.mark.parametrize("name", list(GAMMAS))
def test_kernel_matches_torch_path_and_naive_formula(name, classes):
    gamma = GAMMAS[name]
    logits, target, upstream = batch(64, classes)
    cuda = [t.cuda() for t in (logits, target, upstream)]
    ours, grad = value_and_grad(lambda x: focal_loss(x, cuda[1], gamma, reduction="none", ignore_index=IGNORE,
                                                     backend="triton"), cuda[0], cuda[2])
    ref, ref_grad = value_and_grad(lambda x: focal_loss(x, cuda[1], gamma, reduction="none", ignore_index=IGNORE,
                                                        backend="torch"), cuda[0], cuda[2])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.all(grad[::7] == 0)
    if not callable(gamma):
        naive, naive_grad = value_and_grad(lambda x: naive_focal(x, target, gamma), logits.double(), upstream.double())
        torch.testing.assert_close(ours.cpu().double(), naive, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.cpu().double(), naive_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_half_inputs(dtype):
    logits, target, upstream = batch(256, 1000, dtype=dtype, scale=8.0)
    logits, target, upstream = logits.cuda(), target.cuda(), upstream.cuda()
    policy = GAMMAS["FLSD-53"]
    ours, grad = value_and_grad(lambda x: focal_loss(x, target, policy, reduction="none", ignore_index=IGNORE,
                                                     backend="triton"), logits, upstream)
    ref, ref_grad = value_and_grad(lambda x: focal_loss(x, target, policy, reduction="none", ignore_index=IGNORE,
                                                        backend="torch"), logits, upstream)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=0, atol=2 * float(torch.finfo(dtype).eps))


def test_kernel_extreme_logits_and_gamma_below_one():
    logits = torch.zeros(6, 19, device="cuda")
    logits[0, 0], logits[1, 5], logits[2, 18] = 1e4, -1e4, 1e4
    logits[3, :] = torch.linspace(-1e4, 1e4, 19)
    logits[4, 2], logits[5, 2] = 40.0, 12.0
    target = torch.tensor([0, 5, 18, 0, 2, 2], device="cuda")
    upstream = torch.ones(6, device="cuda")
    for gamma in [0.3, 0.0, 3.0]:
        ours, grad = value_and_grad(lambda x: focal_loss(x, target, gamma, reduction="none", backend="triton"),
                                    logits, upstream)
        ref, ref_grad = value_and_grad(lambda x: focal_loss(x, target, gamma, reduction="none", backend="torch"),
                                       logits, upstream)
        assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["fixed 0.5", "FLSD-53", "callable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_label_smoothed_kernel_matches_torch_path(name, dtype):
    gamma = GAMMAS[name]
    logits, target, upstream = batch(96, 8003, dtype=dtype, seed=3)
    logits, target, upstream = logits.cuda(), target.cuda(), upstream.cuda()
    kwargs = dict(reduction="none", ignore_index=IGNORE, return_nll=True)
    x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ours_nll = focal_label_smoothed_loss(x, target, gamma, 0.1, backend="triton", **kwargs)
    ref, ref_nll = focal_label_smoothed_loss(y, target, gamma, 0.1, backend="torch", **kwargs)
    (grad,) = torch.autograd.grad((ours * upstream).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), y)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_nll, ref_nll, rtol=1e-5, atol=1e-5)
    atol = 1e-6 if dtype == torch.float32 else 2 * float(torch.finfo(dtype).eps)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-4 if dtype == torch.float32 else 0, atol=atol)


@pytest.mark.parametrize("rows,classes", [(128, 10), (512, 2000)])  # the small-batch and the fused torch path
def test_torch_path_on_cuda_matches_cpu(rows, classes):
    logits, target, upstream = batch(rows, classes, seed=4)
    policy = GAMMAS["FLSD-53"]
    cpu, cpu_grad = value_and_grad(lambda x: focal_loss(x, target, policy, reduction="none", ignore_index=IGNORE),
                                   logits, upstream)
    target_cuda = target.cuda()
    gpu, gpu_grad = value_and_grad(lambda x: focal_loss(x, target_cuda, policy, reduction="none",
                                                        ignore_index=IGNORE, backend="torch"),
                                   logits.cuda(), upstream.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_value_checks_on_cuda_when_turned_on(backend):
    logits = torch.randn(4, 5, device="cuda")
    bad = logits.clone()
    bad[1, 2] = float("nan")
    set_value_checks(True)
    try:
        with pytest.raises(ValueError, match=r"target holds class index 7, outside \[0, 4\]"):
            focal_loss(logits, torch.tensor([0, 7, 2, 3], device="cuda"), 2.0, backend=backend)
        with pytest.raises(ValueError, match="logits must be finite"):
            focal_loss(bad, torch.tensor([0, 1, 2, 3], device="cuda"), 2.0, backend=backend)
    finally:
        set_value_checks(False)


def test_calibration_metrics_and_temperature_on_cuda_equal_cpu():
    """Equal up to float32 rounding; a binned metric may move by a sample or two whose confidence sits within an ulp
    of a bin edge (the GPU's softmax rounds differently): 3/n for ECE-like sums, 0.01 for MCE (one bin's gap)."""
    n = 3000
    gen = torch.Generator().manual_seed(5)
    logits = 2.5 * torch.randn(n, 10, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    cpu = calibration_metrics(labels, logits=logits)
    gpu = calibration_metrics(labels.cuda(), logits=logits.cuda())
    assert cpu.keys() == gpu.keys()
    binned = {"ece": 3 / n, "adaece": 3 / n, "classwise_ece": 3 / n, "mce": 0.01}
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-5, abs=binned.get(key, 1e-6)), key
    for objective in ("ece", "nll"):
        fit_cpu = fit_temperature(logits, labels, objective=objective)
        fit_gpu = fit_temperature(logits.cuda(), labels.cuda(), objective=objective)
        np.testing.assert_allclose(fit_gpu.nll, fit_cpu.nll, rtol=1e-5)
        np.testing.assert_allclose(fit_gpu.ece, fit_cpu.ece, rtol=0, atol=3 / n)
        np.testing.assert_allclose(fit_gpu.adaece, fit_cpu.adaece, rtol=0, atol=3 / n)
        # the grid's argmin may only move to a temperature whose CPU objective ties within that tolerance
        chosen = int(np.argmin(np.abs(fit_cpu.temperatures - fit_gpu.temperature)))
        assert getattr(fit_cpu, objective)[chosen] <= getattr(fit_cpu, objective).min() + 3 / n, objective
    lbfgs_cpu = fit_temperature(logits, labels, objective="nll", method="lbfgs")
    lbfgs_gpu = fit_temperature(logits.cuda(), labels.cuda(), objective="nll", method="lbfgs")
    assert lbfgs_gpu.temperature == pytest.approx(lbfgs_cpu.temperature, rel=1e-3)
