"""Focal loss with an analytic backward: the fused path for logits with classes on the last dimension.

Mukhoti et al. (NeurIPS 2020), §4:  L_f = -(1 - p_y)^γ log p_y.

Proposition 1 says dL_f/dw = dL_c/dw · g(p_y, γ) with g(p, γ) = (1-p)^γ - γ p (1-p)^(γ-1) log p. The same relation
holds for the logits z, since L_f depends on z only through log p_y and dL_f/d(log p_y) = -g(p_y, γ):

    dL_f/dz = g(p_y, γ) · (softmax(z) - onehot(y))          (Prop. 1 carried to the logits)

so the backward is one in-place pass over the forward's softmax (or, with keep_softmax=False, a recomputation from the
logits and one number per row): no autograd graph over N×K intermediates, no one-hot, no N×K temporaries.

Numerics: log-softmax form, 1 - p = -expm1(log p) (exact as p -> 1), γ p (1-p)^(γ-1) log p evaluated as
γ p (1-p)^γ · log p / (1-p) (finite as p -> 1 even for γ < 1), float32 compute for half / bfloat16 inputs.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from focal_calibration import constants
from focal_calibration.losses.backend import resolve_backend
from focal_calibration.losses.math import focal_terms
from focal_calibration.validation import (check_finite, check_labels_in_range, check_reduction, compute_dtype,
                                          prepare_focal_inputs, value_checks_enabled)

Gamma = Union[float, torch.Tensor, Callable[[torch.Tensor], Union[float, torch.Tensor]]]

__all__ = ["focal_loss", "fused_row_loss", "Gamma"]


class _FocalLossFunction(torch.autograd.Function):
    """Per-row loss L(log p_y; γ) of 2-D logits; the gradient is c · (softmax - onehot) with c = -dL/d(log p_y).

    Every loss that depends on the logits only through log p_y has this gradient. ``row_terms(log_p, γ) -> (loss, c)``
    gives both per row; the default :func:`focal_terms` is focal loss, where c = g(p_y, γ) (Proposition 1). γ is the
    per-row parameter row_terms takes: a number, a per-row tensor, or a callable of the detached p_y.

    keep_softmax=True (default): the forward's softmax buffer is kept and the backward turns it into the gradient in
    place (one pass, no exp) -- as much memory between forward and backward as F.cross_entropy keeps (its log-softmax),
    and a lower peak. keep_softmax=False keeps only one number per row and recomputes the softmax in the backward.
    """

    @staticmethod
    def forward(ctx, logits, target, gamma, ignore_index, keep_softmax, row_terms=focal_terms):
        z = logits.to(compute_dtype(logits.dtype))  # no copy for float32/64; float32 compute for half / bfloat16
        valid = target != ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        z_y = z.gather(1, safe_target[:, None]).squeeze(1)
        if keep_softmax:
            probs = torch.softmax(z, dim=-1)
            # log p_y = z_y - max - log S, and the largest probability is exactly 1/S (>= 1/K, so never underflows).
            log_p = (z_y - z.amax(dim=-1)) + torch.log(probs.amax(dim=-1))
        else:
            probs = None
            lse = torch.logsumexp(z, dim=-1)
            log_p = z_y - lse
        if value_checks_enabled(log_p):
            check_finite(log_p, "logits")
        if callable(gamma):  # sample-dependent policy: γ from the detached p_y
            gamma = gamma(torch.exp(log_p))
        if isinstance(gamma, torch.Tensor):
            gamma = gamma.to(device=log_p.device, dtype=log_p.dtype)
        loss, g_factor = row_terms(log_p, gamma)
        zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
        loss = torch.where(valid, loss, zero)
        g_factor = torch.where(valid, g_factor, zero)
        if keep_softmax:
            ctx.probs = probs
            ctx.save_for_backward(safe_target, g_factor)
        else:
            ctx.probs = None
            ctx.save_for_backward(safe_target, g_factor, logits, lse)
        ctx.logits_dtype = logits.dtype
        ctx.keep_softmax = keep_softmax
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.keep_softmax:
            safe_target, g_factor = ctx.saved_tensors
            grad = ctx.probs
            if grad is None:
                raise RuntimeError("focal_loss(keep_softmax=True) reuses its softmax buffer for the gradient, so its "
                                   "graph can be backpropagated once; pass keep_softmax=False to use retain_graph")
            ctx.probs = None
        else:
            safe_target, g_factor, logits, lse = ctx.saved_tensors
            grad = (logits.to(lse.dtype) - lse[:, None]).exp_()  # the only N×K tensor this backward allocates
        coef = (grad_loss.to(g_factor.dtype) * g_factor)[:, None]
        grad.mul_(coef)  # softmax · coef
        grad.scatter_add_(1, safe_target[:, None], -coef)
        return (grad.to(ctx.logits_dtype),) + (None,) * (len(ctx.needs_input_grad) - 1)


def _focal_loss_small_batch(logits: torch.Tensor, target: torch.Tensor, gamma, ignore_index: int,
                            reduction: str) -> torch.Tensor:
    """Small-batch fast path: plain autograd through one fused ``F.cross_entropy`` and as few small ops as possible.

    With nll = -log p_y from cross-entropy (0 exactly at ignored rows), the value is L = (1-p)^γ · nll and the
    gradient is g(p_y, γ) · dnll/dz (Proposition 1 on the logits): the result is the product of g and nll (a dot
    product for "sum" / "mean"), whose value is then overwritten with L's through a detached alias -- that product's
    backward reads only g and nll, so the gradient stays g · dnll/dz. No Python backward, no one-hot, nothing N×K beyond
    cross-entropy's own log-softmax. The per-row terms are focal_terms() written for N numbers with fewer ops (the
    mean's 1/n folded into the weight). Checks cost nothing on good input: a bad label is found by cross-entropy's own
    bounds check (CPU), a non-finite logit by the loss itself (or, in a batch with ignored rows, by the exact check).
    """
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # Tensor.to() costs µs here
    try:
        nll = F.cross_entropy(z, target, reduction="none", ignore_index=ignore_index)
    except (IndexError, RuntimeError):
        check_labels_in_range(target, z.shape[1], ignore_index)  # raises naming the bad label
        raise
    # From here on detached tensors, which record nothing (cheaper than two no_grad blocks).
    checks = value_checks_enabled(z)
    if target.is_cpu:  # the count as a number: NumPy takes ~1 µs for N labels, torch's ne + sum + item ~8
        n_valid = int(np.count_nonzero(target.numpy() != ignore_index))
    else:  # no host sync unless value checks are on
        n_valid = (target != ignore_index).sum()
        n_valid = int(n_valid) if checks else n_valid
    nll_value = nll.detach()
    log_p = -nll_value
    if callable(gamma):
        gamma = gamma(torch.exp(log_p))
    weight = torch.expm1(log_p).neg_().pow_(gamma)  # (1-p)^γ with 1-p = -expm1(log p); 0^0 = 1
    if reduction == "mean":
        weight.div_(max(n_valid, 1) if isinstance(n_valid, int) else n_valid.clamp_min_(1))
    # g = weight · (1 + γ · p·nll/(1-p)) with p/(1-p) = 1/expm1(nll); nll/expm1(nll) is 0/0 at p == 1, made 0 (the
    # limit is 1, but there weight is 0 or γ is 0): the finite form of focal_terms().
    p_ratio = torch.div(nll_value, torch.expm1(nll_value)).nan_to_num_(nan=0.0)
    if isinstance(gamma, torch.Tensor):
        g_factor = torch.addcmul(weight, weight, p_ratio.mul_(gamma))
    else:
        g_factor = torch.addcmul(weight, weight, p_ratio, value=gamma)
    product = torch.mul if reduction == "none" else torch.dot
    result = product(g_factor, nll)
    value = product(weight, nll_value, out=result.detach())  # the value: L = (1-p)^γ · nll (summed, or per row)
    # A non-finite logit makes its row's nll inf or nan, hence L; an ignored row's (whose gradient it would make nan)
    # is looked for only when the batch has ignored rows.
    if checks and (not math.isfinite(value if value.dim() == 0 else value.sum()) or n_valid < len(target)):
        _check_finite_log_p(z.detach(), target, ignore_index)  # raises naming the value, if there is one
    return result


def _check_finite_log_p(z: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """The exact check of the fused path, every row's log p_y (ignored rows at class 0): raises naming the value."""
    safe_target = torch.where(target != ignore_index, target, torch.zeros_like(target))
    check_finite(z.gather(1, safe_target[:, None]).squeeze(1) - torch.logsumexp(z, dim=-1), "logits")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: Gamma = 1.0, *, reduction: str = "mean",
               ignore_index: int = -100, keep_softmax: bool = True, backend: str = "auto") -> torch.Tensor:
    """Focal loss L = -(1 - p_y)^γ log p_y (Mukhoti et al. 2020, §4; Lin et al. 2017), with an analytic backward.

    Args:
        logits: ``[..., K]`` unnormalised scores, classes on the last dimension (any leading shape is flattened).
        target: ``[...]`` integer class indices; entries equal to ``ignore_index`` contribute 0 loss and 0 gradient.
        gamma: a number >= 0 (γ = 0 is cross-entropy exactly), a per-sample tensor shaped like ``target``, or a
            callable mapping the (detached) p_y of each sample to γ (how sample-dependent policies such as FLSD-53
            avoid a second pass over the logits). γ is not differentiated.
        reduction: ``"mean"`` (over non-ignored samples; 0 if there are none), ``"sum"``, or ``"none"`` (shape of
            ``target``, 0 at ignored positions).
        keep_softmax: keep the forward's softmax and turn it into the gradient in place (fastest; the graph can be
            backpropagated once). ``False`` keeps one number per row instead and recomputes the softmax in the
            backward (least memory between forward and backward; allows ``retain_graph``). Batches of at most
            ``constants.SMALL_BATCH_ELEMENTS`` logits take the small-batch path, where neither restriction applies.
        backend: ``"auto"`` (the fused Triton kernel of :mod:`focal_calibration.losses.triton_kernels` for
            CUDA float32 / float16 / bfloat16 logits when triton is importable, the PyTorch path otherwise),
            ``"torch"`` or ``"triton"``.

    The gradient w.r.t. the logits is ``g(p_y, γ) · (softmax - onehot)`` (Proposition 1 applied to the logits).
    Half-precision logits are computed in float32; the loss is float32 (float64 for float64 logits) and the gradient
    has the logits' dtype.
    """
    check_reduction(reduction)
    backend = resolve_backend(backend, logits)
    small = backend == "torch" and logits.numel() <= constants.SMALL_BATCH_ELEMENTS
    logits2d, target1d, gamma = prepare_focal_inputs(logits, target, gamma, ignore_index, "focal_loss",
                                                      check_labels=not (small and logits.is_cpu))
    if small:
        loss = _focal_loss_small_batch(logits2d, target1d, gamma, ignore_index, reduction)
        return loss.reshape(target.shape) if reduction == "none" else loss
    if backend == "triton":
        from focal_calibration.losses import triton_kernels  # imports triton: only when asked for
        loss = triton_kernels.focal_loss_rows(logits2d, target1d, gamma, ignore_index)
    else:
        loss = _FocalLossFunction.apply(logits2d, target1d, gamma, ignore_index, keep_softmax)
    if reduction == "none":
        return loss.reshape(target.shape)
    total = loss.sum()
    if reduction == "sum":
        return total
    n_valid = (target1d != ignore_index).sum().clamp_min(1)
    return total / n_valid


def fused_row_loss(logits2d: torch.Tensor, target1d: torch.Tensor, row_terms, param, *, ignore_index: int = -100,
                   keep_softmax: bool = True) -> torch.Tensor:
    """Per-row values ``[N]`` of any loss L(log p_y; θ) through the fused kernel above (forward keeps the softmax, the
    backward turns it into c·(softmax - onehot) in place).

    ``row_terms(log_p, θ) -> (loss, c)`` with c = -dL/d(log p_y), elementwise over the rows; ``param`` θ is a number,
    a per-row tensor or a callable of the detached p_y. Inputs are already flattened and checked (``logits2d [N, K]``,
    ``target1d [N]``, as :class:`focal_calibration.losses.modules.CalibrationLoss` does); ignored rows give 0.
    """
    return _FocalLossFunction.apply(logits2d, target1d, param, ignore_index, keep_softmax, row_terms)


