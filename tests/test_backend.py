"""The backend choice and the Triton kernels' one-time self-check (focal_calibration.losses.backend), on the CPU.

A CUDA device is simulated: "cpu" joins backend.TRITON_DEVICE_TYPES, and the kernel module is replaced by a fake
whose per-row functions are the PyTorch path (tested against the naive formula elsewhere), exact or corrupted. So
"the kernel was used" means the fake was called by the loss, and each corruption must be caught by the check's own
comparison. tests/triton_kernel_cases.py runs the check with the real kernels (interpreter / CUDA).
"""

import sys
import types
import warnings

import pytest
import torch

import focal_calibration.losses as losses_package
from focal_calibration import build_loss, focal_loss_classes_last
from focal_calibration.losses import backend
from focal_calibration.losses.fused import fused_row_loss
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss_classes_last
from focal_calibration.losses.math import focal_terms
from focal_reference import IGNORE, batch, naive_focal, value_and_grad

KERNEL_MODULE = "focal_calibration.losses.triton_kernels"


class FakeKernels(types.ModuleType):
    """Stands for triton_kernels: the PyTorch path's per-row values, changed by ``corrupt(loss) -> loss``."""

    def __init__(self, corrupt=None, error=None):
        super().__init__(KERNEL_MODULE)
        self.corrupt, self.error, self.calls = corrupt or (lambda loss: loss), error, 0

    def focal_loss_rows(self, logits2d, target1d, gamma, ignore_index):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.corrupt(fused_row_loss(logits2d, target1d, focal_terms, gamma, ignore_index=ignore_index))

    def focal_smoothed_rows(self, logits2d, target1d, gamma, alpha, ignore_index):
        self.calls += 1
        if self.error is not None:
            raise self.error
        loss, nll = focal_label_smoothed_loss_classes_last(logits2d, target1d, gamma, alpha, reduction="none",
                                                           return_nll=True, ignore_index=ignore_index, backend="torch")
        return self.corrupt(loss), nll


def scaled(value_scale, grad_scale=None):
    """A corruption: values times value_scale, gradients times grad_scale (value_scale by default)."""
    grad_scale = value_scale if grad_scale is None else grad_scale
    return lambda loss: value_scale * loss.detach() + grad_scale * (loss - loss.detach())


@pytest.fixture
def simulated(monkeypatch):
    """A simulated CUDA device (the CPU), no cached checks, no backend variable; install(fake) puts a fake kernel
    module in place."""
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    monkeypatch.setattr(backend, "TRITON_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    monkeypatch.setattr(backend, "_RESULTS", {})

    def install(fake):
        monkeypatch.setitem(sys.modules, KERNEL_MODULE, fake)
        monkeypatch.setattr(losses_package, "triton_kernels", fake, raising=False)
        return fake

    return install


def calls(n=5, **kwargs):
    """n training-like calls of focal_loss_classes_last on a [37 x 50] batch; the last call's value and gradient."""
    logits, target, upstream = batch()
    for _ in range(n):
        out, grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, 2.0, reduction="none",
                                                                     ignore_index=IGNORE, **kwargs), logits, upstream)
    return out, grad


def test_a_passing_check_uses_the_kernel_and_runs_once(simulated):
    fake = simulated(FakeKernels())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passing check is silent
        calls(5)
    assert fake.calls == 1 + 5  # the check's one call, then every call of the loss
    (result,) = backend.self_check_results()
    assert result.passed and result.device == "cpu" and result.dtype == "torch.float32"
    assert result.kernel == "focal loss, fixed γ" and "largest differences" in result.detail


@pytest.mark.parametrize("corrupt,named", [
    (scaled(1.001), "the loss differs from the PyTorch path by up to"),
    (scaled(1.0, 1.01), "the gradient differs from the PyTorch path by up to"),  # right values, wrong gradient
    (lambda loss: torch.where(torch.arange(len(loss)) == 5, torch.nan, loss), "by up to nan"),
    (lambda loss: loss.double(), "the loss shape / dtype (37,) torch.float64 instead of (37,) torch.float32"),
])
def test_a_wrong_kernel_is_caught_and_the_torch_path_used_with_one_warning(simulated, corrupt, named):
    fake = simulated(FakeKernels(corrupt))
    with pytest.warns(backend.TritonSelfCheckWarning) as record:
        out, grad = calls(6)
    assert len(record) == 1  # one warning over many calls
    message = str(record[0].message)
    assert named in message
    assert "on cpu with torch.float32 logits" in message and "(focal loss, fixed γ)" in message
    assert "backend='torch' or FOCAL_CALIBRATION_BACKEND=torch" in message
    assert fake.calls == 1  # the check only: every call of the loss took the PyTorch path
    logits, target, upstream = batch()
    ref, ref_grad = value_and_grad(lambda x: naive_focal(x, target, 2.0), logits.double(), upstream.double())
    torch.testing.assert_close(out, ref.float())
    torch.testing.assert_close(grad, ref_grad.float())
    assert not backend.self_check_results()[0].passed


def test_a_difference_within_the_tolerance_passes(simulated):
    fake = simulated(FakeKernels(scaled(1 + 2e-6, 1 + 2e-5)))
    calls(2)
    assert fake.calls == 3 and backend.self_check_results()[0].passed


def test_a_kernel_error_falls_back_naming_the_error(simulated):
    fake = simulated(FakeKernels(error=RuntimeError("CUDA error: an illegal memory access was encountered")))
    with pytest.warns(backend.TritonSelfCheckWarning, match="the kernel raised RuntimeError: CUDA error: an illegal "
                                                            "memory access was encountered") as record:
        calls(3)
    assert len(record) == 1 and fake.calls == 1


def test_each_device_dtype_and_kernel_is_checked_once(simulated):
    fake = simulated(FakeKernels())
    logits, target, _ = batch()
    policy = build_loss("flsd-53").policy
    for _ in range(2):
        for dtype in (torch.float32, torch.bfloat16):
            x = logits.to(dtype)
            focal_loss_classes_last(x, target, 2.0, ignore_index=IGNORE)
            focal_loss_classes_last(x, target, torch.full(target.shape, 2.0), ignore_index=IGNORE)
            focal_loss_classes_last(x, target, policy, ignore_index=IGNORE)
            focal_loss_classes_last(x, target, lambda p: 1.0 + p, ignore_index=IGNORE)
            focal_label_smoothed_loss_classes_last(x, target, policy, 0.1, ignore_index=IGNORE)
    kernels = [(r.dtype, r.kernel) for r in backend.self_check_results()]
    assert kernels == [(dtype, f"{loss}, {gamma}") for dtype in ("torch.float32", "torch.bfloat16")
                       for loss, gamma in [("focal loss", "fixed γ"), ("focal loss", "per-sample γ"),
                                           ("focal loss", "threshold-table γ"), ("focal loss", "γ policy callable"),
                                           ("label-smoothed focal loss", "threshold-table γ")]]
    assert all(r.passed for r in backend.self_check_results())
    assert fake.calls == 2 * 5 + 2 * 2 * 5  # one check per kernel, then every call on the kernel


def test_a_label_smoothed_kernel_with_a_wrong_nll_is_caught(simulated):
    class WrongNll(FakeKernels):
        def focal_smoothed_rows(self, *args):
            loss, nll = super().focal_smoothed_rows(*args)
            return loss, nll * 1.001

    simulated(WrongNll())
    logits, target, _ = batch()
    with pytest.warns(backend.TritonSelfCheckWarning, match="the output 1 differs from the PyTorch path"):
        focal_label_smoothed_loss_classes_last(logits, target, 2.0, 0.1, ignore_index=IGNORE)


def test_the_check_leaves_the_callers_random_streams_and_grad_mode_alone(simulated):
    simulated(FakeKernels())
    logits, target, _ = batch()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with torch.no_grad():
        # the check needs gradients: it turns them on
        loss = focal_loss_classes_last(logits, target, 2.0, ignore_index=IGNORE)
    assert not loss.requires_grad and torch.equal(torch.rand(3), expected)
    assert backend.self_check_results()[0].passed


@pytest.mark.parametrize("how", ["variable", "argument"])
def test_forcing_torch_skips_the_check_and_the_kernel(simulated, monkeypatch, how):
    fake = simulated(FakeKernels())
    if how == "variable":
        monkeypatch.setenv(backend.BACKEND_ENV, "torch")
        calls(3)
    else:
        monkeypatch.setenv(backend.BACKEND_ENV, "triton")  # the argument wins over the variable
        calls(3, backend="torch")
    assert fake.calls == 0 and backend.self_check_results() == []


@pytest.mark.parametrize("how", ["variable", "argument"])
def test_forcing_triton_skips_the_check(simulated, monkeypatch, how):
    fake = simulated(FakeKernels(scaled(1.5)))  # a wrong kernel, used as asked
    if how == "variable":
        monkeypatch.setenv(backend.BACKEND_ENV, "Triton")
        out, _ = calls(3)
    else:
        monkeypatch.setenv(backend.BACKEND_ENV, "torch")
        out, _ = calls(3, backend="triton")
    assert fake.calls == 3 and backend.self_check_results() == []
    logits, target, _ = batch()
    ref = focal_loss_classes_last(logits, target, 2.0, reduction="none", ignore_index=IGNORE, backend="torch")
    torch.testing.assert_close(out, 1.5 * ref)


def test_the_variable_forces_triton_only_where_the_kernels_apply(simulated, monkeypatch):
    fake = simulated(FakeKernels())
    monkeypatch.setenv(backend.BACKEND_ENV, "triton")
    logits, target, _ = batch()
    focal_loss_classes_last(logits.double(), target, 2.0, ignore_index=IGNORE)  # float64: the kernels do not compute it
    monkeypatch.setattr(backend, "TRITON_DEVICE_TYPES", ("cuda",))
    focal_loss_classes_last(logits, target, 2.0, ignore_index=IGNORE)  # a CPU tensor
    assert fake.calls == 0


def test_auto_without_a_device_for_the_kernels_checks_nothing(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    monkeypatch.setattr(backend, "_RESULTS", {})
    logits, target, _ = batch()
    focal_loss_classes_last(logits, target, 2.0)
    assert backend.self_check_results() == []
    assert backend.select_backend("auto", logits, 2.0, "focal loss", None) == "torch"


def test_a_bad_backend_is_named(simulated, monkeypatch):
    logits, target, _ = batch()
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'triton', got 'cuda'"):
        focal_loss_classes_last(logits, target, 2.0, backend="cuda")
    monkeypatch.setenv(backend.BACKEND_ENV, "gpu")  # read where the kernels could run (the simulated device)
    with pytest.raises(ValueError, match="FOCAL_CALIBRATION_BACKEND must be 'auto', 'torch' or 'triton', got 'gpu'"):
        focal_loss_classes_last(logits, target, 2.0)
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="backend='triton' needs the triton package"):
        focal_loss_classes_last(logits, target, 2.0, backend="triton")
    monkeypatch.setenv(backend.BACKEND_ENV, "triton")
    focal_loss_classes_last(logits, target, 2.0)  # without triton, "auto" is the PyTorch path whatever the variable
    # says


def test_bad_shapes_are_left_to_the_loss_without_a_check(simulated):
    fake = simulated(FakeKernels())
    with pytest.raises(ValueError, match="empty batch"):
        focal_loss_classes_last(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="label smoothing needs at least 2 classes"):
        focal_label_smoothed_loss_classes_last(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    assert fake.calls == 0 and backend.self_check_results() == []
