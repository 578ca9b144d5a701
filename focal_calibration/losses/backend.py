"""Which implementation computes a fused focal loss: the PyTorch path or the Triton kernels, and the kernels'
one-time self-check.

``backend="auto"`` (the default) sends CUDA float32 / float16 / bfloat16 logits to the fused Triton kernels of
:mod:`focal_calibration.losses.triton_kernels` -- but only after those kernels have passed a self-check on that device
and dtype: the first such call of each kind of kernel (the plain or the label-smoothed focal loss, times the kind of
γ: a number, a per-sample tensor, a threshold table such as FLSD-53's, any other policy callable) first computes a
small batch of the caller's number of classes with both backends and compares the values and the gradients. The
result is cached for the process, so later calls cost a dictionary lookup and no host synchronisation. A mismatch, or
an error while compiling or launching the kernel, sends every call of that kind to the PyTorch path, with one
warning (:class:`TritonSelfCheckWarning`) that names the device, the dtype, the error or the largest difference, and
how to choose a backend yourself.

Choosing a backend yourself skips the check:

* the ``backend=`` argument of the loss: ``"torch"`` or ``"triton"`` for that call (it wins over the variable);
* the environment variable ``FOCAL_CALIBRATION_BACKEND``, for every call left at ``"auto"``: ``torch`` never uses
  the kernels; ``triton`` uses them, unchecked, wherever ``auto`` would (CUDA float logits; other tensors keep the
  PyTorch path); ``auto`` or unset: the checked choice above. It is read at every call whose logits the kernels could
  take (so it can be changed while the process runs), and a value other than these three is an error there.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import threading
import time
import warnings
from typing import Callable, Optional, Union

import torch

from focal_calibration.losses.gamma import SampleDependentGamma

__all__ = ["BACKENDS", "BACKEND_ENV", "TRITON_DTYPES", "TRITON_DEVICE_TYPES", "triton_available", "resolve_backend",
           "select_backend", "SelfCheckResult", "TritonSelfCheckWarning", "self_check_results", "reset_self_checks"]


BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "FOCAL_CALIBRATION_BACKEND"
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_DEVICE_TYPES = ("cuda",)  # the device types "auto" considers for the kernels (tests add "cpu" to simulate one)

# The self-check's batch: SELF_CHECK_ROW_ELEMENTS // K rows (at least 16, at most the caller's), so the kernels' row
# tile (triton_kernels.TILE_ELEMENTS // next_pow2(K) rows) and launch configuration are the caller's.
SELF_CHECK_MIN_ROWS = 16
SELF_CHECK_ROW_ELEMENTS = 4096
# Tolerances, as |ours - ref| <= atol + rtol·|ref|. The loss values are float32 for every input dtype; the GPU's
# softmax sums use Triton's fast exp (~1e-6 relative). The gradient has the logits' dtype: float32 within 1e-3
# relative; float16 / bfloat16 two rounding steps of that dtype. A broken kernel is off by far more.
VALUE_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
GRADIENT_TOLERANCE = {
    torch.float32: dict(rtol=1e-3, atol=1e-5),
    torch.float16: dict(rtol=2 * torch.finfo(torch.float16).eps, atol=2 * torch.finfo(torch.float16).eps),
    torch.bfloat16: dict(rtol=2 * torch.finfo(torch.bfloat16).eps, atol=2 * torch.finfo(torch.bfloat16).eps),
}
_CHECK_GAMMA = 3.0  # the γ of the check of the fixed-γ kernels (a runtime argument: every number runs the same code)


class TritonSelfCheckWarning(RuntimeWarning):
    """Warned once per (device, dtype, kernel) when the Triton kernel failed its self-check and the PyTorch path is
    used instead."""


@dataclasses.dataclass(frozen=True)
class SelfCheckResult:
    """The outcome of one self-check of a Triton kernel against the PyTorch path.

    Attributes:
        device: the device, e.g. ``"cuda:0"``.
        dtype: the logits' dtype, e.g. ``"torch.bfloat16"``.
        kernel: which kernel, e.g. ``"focal loss, per-sample γ"``.
        passed: whether the kernel's values and gradients matched the PyTorch path's within the tolerances.
        detail: the batch and the largest differences, the first difference beyond the tolerance, or the error the
            kernel raised.
        value_difference: the largest |kernel - PyTorch| of the loss values (and other outputs); None after an error.
        gradient_difference: the same for the gradient; None after an error.
        seconds: how long the check took (compilation included).
    """

    device: str
    dtype: str
    kernel: str
    passed: bool
    detail: str
    value_difference: Optional[float]
    gradient_difference: Optional[float]
    seconds: float


_RESULTS: dict = {}  # (device, dtype, loss, γ kind) -> SelfCheckResult
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the triton package can be imported (it ships with CUDA builds of torch); imports nothing."""
    return importlib.util.find_spec("triton") is not None


def _checked(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package (pip install triton), which is not installed")
    return backend


def _from_environment() -> str:
    """``FOCAL_CALIBRATION_BACKEND`` (``"auto"`` when unset or empty). Read only where the kernels could run: for
    other tensors every value means the PyTorch path, and os.environ costs ~0.5 µs a call."""
    chosen = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
    if chosen not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be 'auto', 'torch' or 'triton', got {os.environ[BACKEND_ENV]!r}")
    return chosen


def _kernels_apply(logits: torch.Tensor) -> bool:
    """Whether "auto" may use the kernels for these logits (is_cuda first: ~40 ns, Tensor.device ~0.5 µs)."""
    if logits.is_cuda:
        on_device = "cuda" in TRITON_DEVICE_TYPES
    else:
        on_device = TRITON_DEVICE_TYPES != ("cuda",) and logits.device.type in TRITON_DEVICE_TYPES
    return on_device and logits.dtype in TRITON_DTYPES and triton_available()


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """The backend before any self-check: ``"torch"`` / ``"triton"`` as given; ``"auto"``: the Triton kernels for
    CUDA float32 / float16 / bfloat16 logits when triton is importable and ``FOCAL_CALIBRATION_BACKEND`` is not
    ``torch``, the PyTorch path otherwise. The losses call :func:`select_backend`, which adds the self-check.

    Raises:
        ValueError: an unknown backend (argument or variable), or ``"triton"`` without the triton package.
    """
    if _checked(backend) != "auto":
        return backend
    return "triton" if _kernels_apply(logits) and _from_environment() != "torch" else "torch"


def _gamma_kind(gamma) -> str:
    if isinstance(gamma, SampleDependentGamma):
        return "threshold-table γ"
    if callable(gamma):
        return "γ policy callable"
    if isinstance(gamma, torch.Tensor):
        return "per-sample γ"
    return "fixed γ"


def _check_rows(logits: torch.Tensor) -> int:
    num_classes = logits.shape[-1]
    return min(max(logits.numel() // num_classes, 1), max(SELF_CHECK_MIN_ROWS, SELF_CHECK_ROW_ELEMENTS // num_classes))


def _check_gamma(gamma, kind: str, rows: int, device):
    """The γ the check runs for this kind of γ: the same code in the kernel, none of the caller's objects called."""
    if kind == "threshold-table γ":  # the caller's table (its length is a compile-time constant of the kernel)
        return SampleDependentGamma(gamma.gammas, gamma.thresholds)
    if kind == "γ policy callable":
        return lambda p_y: torch.where(p_y < 0.5, 4.0, 1.0)
    if kind == "per-sample γ":
        return torch.linspace(0.0, 5.0, rows, device=device)
    return _CHECK_GAMMA


def _largest_excess(ours: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> Optional[str]:
    """None if ``ours`` matches ``ref`` elementwise within atol + rtol·|ref|; else the largest difference, named."""
    if ours.shape != ref.shape or ours.dtype != ref.dtype:
        return f"shape / dtype {tuple(ours.shape)} {ours.dtype} instead of {tuple(ref.shape)} {ref.dtype}"
    ours64, ref64 = ours.detach().double(), ref.detach().double()
    diff = (ours64 - ref64).abs()
    bad = ~(diff <= atol + rtol * ref64.abs())  # NaN in ours compares False: a mismatch
    if not bool(bad.any()):
        return None
    worst = torch.where(torch.isnan(diff), torch.inf, diff).flatten().argmax()
    return (f"differs from the PyTorch path by up to {float(diff.flatten()[worst]):.3g} "
            f"({float(ours64.flatten()[worst]):.6g} vs {float(ref64.flatten()[worst]):.6g}; tolerance {atol:g} + "
            f"{rtol:g}·|ref|, {int(bad.sum())} of {bad.numel()} entries outside)")


def _largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.nan
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _run_self_check(logits: torch.Tensor, gamma, gamma_kind: str, check_case: Callable) -> tuple:
    """Both backends on one small batch of the caller's number of classes: (passed, detail, value difference,
    gradient difference)."""
    rows, num_classes = _check_rows(logits), logits.shape[-1]
    gen = torch.Generator().manual_seed(0)  # on the CPU: the caller's random streams are left alone
    x = (4.0 * torch.randn(rows, num_classes, generator=gen)).to(device=logits.device, dtype=logits.dtype)
    target = torch.randint(0, num_classes, (rows,), generator=gen)
    if rows > 2:
        target[1] = -100  # an ignored row (the check cases use the default ignore_index)
    target = target.to(logits.device)
    upstream = (torch.rand(rows, generator=gen) + 0.5).to(logits.device)  # a different weight per row
    check_gamma = _check_gamma(gamma, gamma_kind, rows, logits.device)

    def value_and_grad(backend: str):
        leaf = x.detach().clone().requires_grad_()
        out = check_case(leaf, target, check_gamma, backend)
        out = out if isinstance(out, tuple) else (out,)
        (grad,) = torch.autograd.grad((out[0] * upstream).sum(), leaf)
        return [o.detach() for o in out], grad

    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(logits.device.type, enabled=False):
        ref, ref_grad = value_and_grad("torch")  # the reference: its errors are the caller's to see
        try:
            ours, grad = value_and_grad("triton")
            if logits.is_cuda:
                torch.cuda.synchronize(logits.device)  # an asynchronous launch error surfaces here
        except Exception as error:  # any failure to compile or launch: the kernel is not used
            return False, f"the kernel raised {type(error).__name__}: {error}", None, None
    value_diff = max(_largest_difference(a, b) for a, b in zip(ours, ref))
    grad_diff = _largest_difference(grad, ref_grad)
    grad_tolerance = GRADIENT_TOLERANCE[logits.dtype]
    for name, a, b, tolerance in [("loss", ours[0], ref[0], VALUE_TOLERANCE)] + [
            (f"output {i}", a, b, VALUE_TOLERANCE) for i, (a, b) in enumerate(zip(ours[1:], ref[1:]), 1)] + [
            ("gradient", grad, ref_grad, grad_tolerance)]:
        problem = _largest_excess(a, b, **tolerance)
        if problem is not None:
            return False, f"the {name} {problem}", value_diff, grad_diff
    return True, (f"[{rows} x {num_classes}]: largest differences {value_diff:.2g} (values), {grad_diff:.2g} "
                  f"(gradient)"), value_diff, grad_diff


def _fallback_warning(result: SelfCheckResult) -> str:
    return (f"focal_calibration: the Triton kernel ({result.kernel}) failed its one-time self-check on "
            f"{result.device} with {result.dtype} logits: {result.detail}. Using the PyTorch path for these calls "
            f"(same results, slower). To choose yourself: backend='torch' or {BACKEND_ENV}=torch (no kernel, no "
            f"check); backend='triton' or {BACKEND_ENV}=triton (the kernel, unchecked). Please report this with your "
            f"GPU, driver, torch and triton versions.")


def select_backend(backend: str, logits: torch.Tensor, gamma, loss: str,
                   check_case: Callable[..., Union[torch.Tensor, tuple]]) -> str:
    """The backend a fused loss runs: ``"torch"`` or ``"triton"`` (see the module docstring).

    ``"torch"`` / ``"triton"`` (argument, or ``FOCAL_CALIBRATION_BACKEND`` for ``"auto"`` calls) are used as given.
    ``"auto"`` uses the Triton kernel for CUDA float32 / float16 / bfloat16 logits once its self-check for this
    (device, dtype, kernel) has passed; the first call runs the check (one small batch on both backends, one host
    synchronisation), later calls reuse its result.

    Args:
        backend: the caller's ``backend`` argument.
        logits: the caller's logits (classes last); only their device, dtype and number of classes are used.
        gamma: the caller's γ; only its kind (number, tensor, threshold table, callable) is used.
        loss: the name of the loss, e.g. ``"focal loss"``: with the kind of γ, the kernel the check is for.
        check_case: ``check_case(logits2d, target1d, gamma, backend)`` -> the per-row loss (``reduction="none"``,
            differentiable), or a tuple whose first entry is, and whose other entries are compared too.

    Returns:
        ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: an unknown backend (argument or variable), or ``"triton"`` without the triton package.
    """
    if backend == "auto" and not logits.is_cuda and TRITON_DEVICE_TYPES == ("cuda",):
        return "torch"  # the CPU's small batches take a few µs: this answer takes 0.1
    if _checked(backend) != "auto":
        return backend
    if not _kernels_apply(logits):
        return "torch"
    chosen = _from_environment()
    if chosen != "auto":
        return chosen
    if logits.dim() == 0 or logits.shape[-1] < 2 or logits.numel() == 0:  # left to the loss's own error
        return "torch"
    gamma_kind = _gamma_kind(gamma)
    key = (logits.device, logits.dtype, loss, gamma_kind)
    result = _RESULTS.get(key)
    if result is None:
        if torch.compiler.is_compiling() or (logits.is_cuda and torch.cuda.is_current_stream_capturing()):
            return "torch"  # no synchronising check inside a traced or captured region: the PyTorch path
        with _LOCK:
            result = _RESULTS.get(key)
            if result is None:
                start = time.perf_counter()
                outcome = _run_self_check(logits, gamma, gamma_kind, check_case)
                result = SelfCheckResult(str(logits.device), str(logits.dtype), f"{loss}, {gamma_kind}", *outcome,
                                         seconds=round(time.perf_counter() - start, 3))
                _RESULTS[key] = result
                if not result.passed:
                    warnings.warn(_fallback_warning(result), TritonSelfCheckWarning, stacklevel=3)
    return "triton" if result.passed else "torch"


def self_check_results() -> list[SelfCheckResult]:
    """The self-checks this process has run so far, in order (one per device, dtype and kernel)."""
    return list(_RESULTS.values())


def reset_self_checks() -> None:
    """Forget the self-checks' results: the next ``"auto"`` call of each kernel checks it again."""
    with _LOCK:
        _RESULTS.clear()
