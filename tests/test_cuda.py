"""CUDA checks (``pytest -m cuda``; skipped without a CUDA device; scripts/gpu_check.sh runs them): the Triton kernel
cases compiled on the GPU (against the PyTorch path and float64 autograd of the naive formula), the PyTorch path on
CUDA against the CPU, value checks on CUDA tensors, and calibration_metrics / fit_temperature on CUDA tensors
against the CPU."""

import numpy as np
import pytest
import torch

from focal_calibration import (build_loss, calibration_metrics, fit_temperature, focal_loss_classes_last,
                               set_value_checks)
from focal_calibration.losses.backend import resolve_backend
from focal_reference import IGNORE, assert_cases_passed, batch, run_kernel_cases, value_and_grad

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_backend_is_triton_for_cuda_tensors():
    assert resolve_backend("auto", torch.zeros(2, 3, device="cuda")) == "triton"
    assert resolve_backend("auto", torch.zeros(2, 3, device="cuda", dtype=torch.float64)) == "torch"
    assert resolve_backend("auto", torch.zeros(2, 3)) == "torch"


def test_kernel_cases_compiled_on_cuda():
    """tests/triton_kernel_cases.py (run in the interpreter by test_focal_triton.py) with the compiled kernels."""
    pytest.importorskip("triton")
    assert_cases_passed(run_kernel_cases(TRITON_INTERPRET=None, FOCAL_KERNEL_DEVICE="cuda"))


@pytest.mark.parametrize("rows,classes", [(128, 10), (512, 2000)])  # the small-batch and the fused torch path
def test_torch_path_on_cuda_matches_cpu(rows, classes):
    logits, target, upstream = batch(rows, classes, seed=4)
    policy = build_loss("flsd-53").policy
    cpu, cpu_grad = value_and_grad(
        lambda x: focal_loss_classes_last(x, target, policy, reduction="none", ignore_index=IGNORE), logits, upstream)
    target_cuda = target.cuda()
    gpu, gpu_grad = value_and_grad(lambda x: focal_loss_classes_last(x, target_cuda, policy, reduction="none",
                                                        ignore_index=IGNORE, backend="torch"),
                                   logits.cuda(), upstream.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, rtol=1e-4, atol=1e-6)


def test_value_checks_on_cuda_when_turned_on():
    """The PyTorch path (the kernel cases check the Triton one)."""
    logits = torch.randn(4, 5, device="cuda")
    bad = logits.clone()
    bad[1, 2] = float("nan")
    set_value_checks(True)
    try:
        with pytest.raises(ValueError, match=r"target holds class index 7, outside \[0, 4\]"):
            focal_loss_classes_last(logits, torch.tensor([0, 7, 2, 3], device="cuda"), 2.0, backend="torch")
        with pytest.raises(ValueError, match="logits must be finite"):
            focal_loss_classes_last(bad, torch.tensor([0, 1, 2, 3], device="cuda"), 2.0, backend="torch")
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
