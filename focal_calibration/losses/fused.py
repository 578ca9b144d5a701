"""Focal loss with an analytic backward: the fused index-target path (classes on dim 1) and the classes-last API for
fairseq and language-model logits.

Mukhoti et al. (NeurIPS 2020), §4:  L_f = -(1 - p_y)^γ log p_y.

Proposition 1 says dL_f/dw = dL_c/dw · g(p_y, γ) with g(p, γ) = (1-p)^γ - γ p (1-p)^(γ-1) log p. The same relation
holds for the logits z, since L_f depends on z only through log p_y and dL_f/d(log p_y) = -g(p_y, γ):

    dL_f/dz = g(p_y, γ) · (softmax(z) - onehot(y))          (Prop. 1 carried to the logits)

so the backward is one in-place pass over the forward's softmax (or, with keep_softmax=False, a recomputation from the
logits and one number per position): no autograd graph over N×C intermediates, no one-hot, no N×C temporaries.

The kernels take logits with the classes on dim 1, ``[N, C]`` or ``[N, C, S]`` (segmentation maps: reductions over
dim 1 of the contiguous layout, no copy to classes-last -- measured on CPU at [8, 19, 256, 256]: 0.69x
F.cross_entropy's time with the reductions over dim 1, 1.97x with a movedim copy to classes-last first).
:func:`focal_calibration.losses.functional.focal_loss` is the ``nn.CrossEntropyLoss`` contract built on them;
:func:`focal_loss_classes_last` keeps the classes-last layout of fairseq and language-model logits ``[..., V]``.

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
from focal_calibration.losses.backend import select_backend
from focal_calibration.losses.math import focal_terms
from focal_calibration.validation import (check_finite_logits, check_labels_in_range, check_reduction, compute_dtype,
                                          prepare_focal_inputs, value_checks_enabled)

Gamma = Union[float, torch.Tensor, Callable[[torch.Tensor], Union[float, torch.Tensor]]]

__all__ = ["focal_loss_classes_last", "fused_row_loss", "Gamma"]


class _FocalLossFunction(torch.autograd.Function):
    """Per-position loss L(log p_y; γ) of logits ``[N, C]`` / ``[N, C, S]`` (classes on dim 1) and targets ``[N]`` /
    ``[N, S]``; the gradient is c · (softmax - onehot) with c = -dL/d(log p_y).

    Every loss that depends on the logits only through log p_y has this gradient. ``row_terms(log_p, γ) -> (loss, c)``
    gives both per position; the default :func:`focal_terms` is focal loss, where c = g(p_y, γ) (Proposition 1). γ is
    the parameter row_terms takes: a number, a per-position tensor, or a callable of the detached p_y.

    keep_softmax=True (default): the forward's softmax buffer is kept and the backward turns it into the gradient in
    place (one pass, no exp) -- as much memory between forward and backward as F.cross_entropy keeps (its log-softmax),
    and a lower peak. keep_softmax=False keeps only one number per position and recomputes the softmax in the backward.
    """

    @staticmethod
    def forward(ctx, logits, target, gamma, ignore_index, keep_softmax, row_terms=focal_terms):
        z = logits.to(compute_dtype(logits.dtype))  # no copy for float32/64; float32 compute for half / bfloat16
        valid = target != ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)  # [N, 1(, S)]
        z_y = z.gather(1, safe_target).squeeze(1)
        if keep_softmax:
            probs = torch.softmax(z, dim=1)
            # log p_y = z_y - max - log S, and the largest probability is exactly 1/S (>= 1/C, so never underflows).
            log_p = (z_y - z.amax(dim=1)) + torch.log(probs.amax(dim=1))
        else:
            probs = None
            lse = torch.logsumexp(z, dim=1)
            log_p = z_y - lse
        if value_checks_enabled(log_p):
            check_finite_logits(z, log_p)
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
            grad = (logits.to(lse.dtype) - lse.unsqueeze(1)).exp_()  # the only N×C tensor this backward allocates
        coef = (grad_loss.to(g_factor.dtype) * g_factor).unsqueeze(1)
        grad.mul_(coef)  # softmax · coef
        grad.scatter_add_(1, safe_target, -coef)
        return (grad.to(ctx.logits_dtype),) + (None,) * (len(ctx.needs_input_grad) - 1)


def _focal_loss_small_batch(logits: torch.Tensor, target: torch.Tensor, gamma, ignore_index: int,
                            reduction: str) -> torch.Tensor:
    """Small-batch fast path: plain autograd through one fused ``F.cross_entropy`` and as few small ops as possible.

    With nll = -log p_y from cross-entropy (0 exactly at ignored positions), the value is L = (1-p)^γ · nll and the
    gradient is g(p_y, γ) · dnll/dz (Proposition 1 on the logits): the result is the product of g and nll (a dot
    product for "sum" / "mean"), whose value is then overwritten with L's through a detached alias -- that product's
    backward reads only g and nll, so the gradient stays g · dnll/dz. No Python backward, no one-hot, nothing N×C beyond
    cross-entropy's own log-softmax. The per-position terms are focal_terms() written for N numbers with fewer ops (the
    mean's 1/n folded into the weight). Checks cost nothing on good input: a bad label is found by cross-entropy's own
    bounds check (CPU), a non-finite logit by the loss itself (or, in a batch with ignored positions, by the exact
    check). Logits ``[N, C]`` or ``[N, C, d1, ...]`` (classes on dim 1), targets ``[N]`` / ``[N, d1, ...]``.
    """
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # Tensor.to() costs µs here
    checks = value_checks_enabled(z)
    if target.is_cpu:  # the count as a number: NumPy takes ~1 µs for N labels, torch's ne + sum + item ~8
        n_valid = int(np.count_nonzero(target.numpy() != ignore_index))
    else:  # no host sync unless value checks are on
        n_valid = (target != ignore_index).sum()
        n_valid = int(n_valid) if checks else n_valid
    # γ = 0 is cross-entropy: F.cross_entropy's own reduction, when its mean is ours (something counted; PyTorch's
    # mean over nothing is NaN, ours 0): at [128 x 10] CrossEntropyLoss took 185 µs through the focal terms, F.ce 67
    cross_entropy = not callable(gamma) and not isinstance(gamma, torch.Tensor) and gamma == 0 and \
        (reduction != "mean" or isinstance(n_valid, int))
    ce_reduction = "none" if not cross_entropy else "sum" if reduction == "mean" and n_valid == 0 else reduction
    try:
        nll = F.cross_entropy(z, target, reduction=ce_reduction, ignore_index=ignore_index)
    except (IndexError, RuntimeError):
        check_labels_in_range(target, z.shape[1], ignore_index)  # raises naming the bad label
        raise
    if cross_entropy:
        result, value = nll, nll.detach()
    else:  # from here on detached tensors, which record nothing (cheaper than two no_grad blocks)
        result, value = _focal_of_nll(nll, nll.detach(), gamma, reduction, n_valid)
    # A non-finite logit makes its position's nll inf or nan, hence L; an ignored position's (whose gradient it would
    # make nan) is looked for only when the batch has ignored positions.
    if checks and (not math.isfinite(value if value.dim() == 0 else value.sum()) or n_valid < target.numel()):
        _check_finite_log_p(z.detach(), target, ignore_index)  # raises naming the value, if there is one
    return result


def _focal_of_nll(nll, nll_value, gamma, reduction, n_valid):
    """(result, its value) of the small-batch path from cross-entropy's nll (see _focal_loss_small_batch)."""
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
    if reduction == "none":
        result = torch.mul(g_factor, nll)
        value = torch.mul(weight, nll_value, out=result.detach())  # the value: L = (1-p)^γ · nll per position
    else:  # dot products (of the flattened positions: views, these tensors are fresh and contiguous)
        if nll.dim() > 1:  # a reshape costs ~1 µs a tensor: only where there is something to flatten
            g_factor, nll, weight, nll_value = (t.reshape(-1) for t in (g_factor, nll, weight, nll_value))
        result = torch.dot(g_factor, nll)
        value = torch.dot(weight, nll_value, out=result.detach())  # L summed
    return result, value


def _check_finite_log_p(z: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """The exact check of the fused path, every position's log p_y (ignored ones at class 0): raises naming the
    logit."""
    safe_target = torch.where(target != ignore_index, target, torch.zeros_like(target)).unsqueeze(1)
    check_finite_logits(z, z.gather(1, safe_target).squeeze(1) - torch.logsumexp(z, dim=1))


def _reduce(per_position: torch.Tensor, reduction: str, divisor) -> torch.Tensor:
    """"none": the per-position values; "sum"; "mean": the sum / ``divisor`` (a number or a 0-d tensor)."""
    if reduction == "none":
        return per_position
    total = per_position.sum()
    return total if reduction == "sum" else total / divisor


def _class_weight_of_targets(weight: torch.Tensor, target: torch.Tensor, ignore_index: int, dtype) -> torch.Tensor:
    """w[y] at every position, 0 at ignored ones (no host sync)."""
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    w = weight.to(device=target.device, dtype=dtype)
    return torch.where(valid, w[safe_target], torch.zeros((), dtype=dtype, device=target.device))


def _index_target_divisor(target: torch.Tensor, ignore_index: int, weight_of_targets=None):
    """The mean's divisor for class-index targets, as PyTorch: the number of non-ignored positions, or with class
    weights the sum of their weights w[y]. Where PyTorch divides by 0 (nothing counted) we divide by 1 instead, so a
    batch of ignored positions has mean 0, never NaN."""
    if weight_of_targets is None:
        return (target != ignore_index).sum().clamp_min(1)
    total = weight_of_targets.sum()
    return torch.where(total != 0, total, torch.ones_like(total))


def _focal_index_loss(logits: torch.Tensor, target: torch.Tensor, gamma, *, reduction: str, ignore_index: int,
                      keep_softmax: bool = True, backend: str = "auto", weight=None, row_terms=None,
                      check_labels: bool = True) -> torch.Tensor:
    """Focal loss of checked logits ``[N, C]`` / ``[N, C, d1, ...]`` (classes on dim 1) and class-index targets with an
    optional class weight (PyTorch's: w[y] scales each position, the mean divides by Σ w[y]); γ as prepared by
    :func:`focal_calibration.validation.prepare_gamma`. The fast paths: the small-batch path (at most
    ``constants.SMALL_BATCH_ELEMENTS`` logits, no weight), the Triton kernel (CUDA; rows of classes-last logits, so
    ``[N, C, d1, ...]`` is copied to that layout once) and the fused analytic-backward Function. ``row_terms``: another
    loss of log p_y through the fused Function (``gamma`` is then its parameter)."""
    if row_terms is not None:
        backend = "torch"
    else:  # the self-check reads the classes-last view (no copy)
        backend = select_backend(backend, logits if logits.dim() == 2 else logits.movedim(1, -1), gamma, "focal loss",
                                 _backend_check_case)
    small = backend == "torch" and weight is None and row_terms is None and \
        logits.numel() <= constants.SMALL_BATCH_ELEMENTS
    if check_labels and not (small and logits.is_cpu) and value_checks_enabled(target):
        check_labels_in_range(target, logits.shape[1], ignore_index)
    if small:
        loss = _focal_loss_small_batch(logits, target, gamma, ignore_index, reduction)
        return loss
    if backend == "triton":
        from focal_calibration.losses import triton_kernels  # imports triton: only when asked for
        rows = logits if logits.dim() == 2 else logits.movedim(1, -1).reshape(-1, logits.shape[1])  # one copy
        row_gamma = gamma.reshape(-1) if isinstance(gamma, torch.Tensor) and gamma.dim() > 0 else gamma
        loss = triton_kernels.focal_loss_rows(rows, target.reshape(-1), row_gamma, ignore_index)
        loss = loss.reshape(target.shape)
    else:
        loss = _FocalLossFunction.apply(logits, target, gamma, ignore_index, keep_softmax, row_terms or focal_terms)
    weight_of_targets = None
    if weight is not None:
        weight_of_targets = _class_weight_of_targets(weight, target, ignore_index, loss.dtype)
        loss = loss * weight_of_targets
    if reduction == "mean":
        return _reduce(loss, reduction, _index_target_divisor(target, ignore_index, weight_of_targets))
    return _reduce(loss, reduction, None)


def focal_loss_classes_last(logits: torch.Tensor, target: torch.Tensor, gamma: Gamma = 1.0, *,
                            reduction: str = "mean", ignore_index: int = -100, keep_softmax: bool = True,
                            backend: str = "auto") -> torch.Tensor:
    """Focal loss L = -(1 - p_y)^γ log p_y (Mukhoti et al. 2020, §4; Lin et al. 2017) of logits with the classes on
    the LAST dimension, with an analytic backward: the layout of fairseq and language-model logits ``[B, T, V]``.
    (The ``nn.CrossEntropyLoss`` contract, classes on dim 1, is :func:`focal_calibration.losses.functional.focal_loss`.)

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
        backend: ``"auto"``: the fused Triton kernel of :mod:`focal_calibration.losses.triton_kernels` for CUDA
            float32 / float16 / bfloat16 logits once its one-time self-check against the PyTorch path has passed on
            that device and dtype (:mod:`focal_calibration.losses.backend`), the PyTorch path otherwise; the
            environment variable ``FOCAL_CALIBRATION_BACKEND=torch|triton`` overrides ``"auto"``. ``"torch"`` or
            ``"triton"``: that one, unchecked.

    Returns:
        The loss (float32 for half inputs, float64 for float64): a scalar, or ``target``'s shape for ``"none"``.

    The gradient w.r.t. the logits is ``g(p_y, γ) · (softmax - onehot)`` (Proposition 1 applied to the logits) and has
    the logits' dtype.
    """
    check_reduction(reduction)
    backend = select_backend(backend, logits, gamma, "focal loss", _backend_check_case)  # a bad one named first
    logits2d, target1d, gamma = prepare_focal_inputs(logits, target, gamma, ignore_index, "focal_loss_classes_last",
                                                      check_labels=False)
    loss = _focal_index_loss(logits2d, target1d, gamma, reduction=reduction, ignore_index=ignore_index,
                             keep_softmax=keep_softmax, backend=backend)
    return loss.reshape(target.shape) if reduction == "none" else loss


def _backend_check_case(logits, target, gamma, backend):
    """What the backends' self-check compares (:func:`focal_calibration.losses.backend.select_backend`)."""
    return focal_loss_classes_last(logits, target, gamma, reduction="none", backend=backend)


def fused_row_loss(logits: torch.Tensor, target: torch.Tensor, row_terms, param, *, ignore_index: int = -100,
                   keep_softmax: bool = True) -> torch.Tensor:
    """Per-position values of any loss L(log p_y; θ) through the fused kernel above (forward keeps the softmax, the
    backward turns it into c·(softmax - onehot) in place).

    Args:
        logits: ``[N, C]`` or ``[N, C, S]``, classes on dim 1, already checked (as
            :func:`focal_calibration.losses.functional.focal_loss` checks them).
        target: ``[N]`` / ``[N, S]`` class indices; positions equal to ``ignore_index`` give 0.
        row_terms: ``(log_p, θ) -> (loss, c)`` with c = -dL/d(log p_y), elementwise.
        param: θ, a number, a per-position tensor or a callable of the detached p_y.

    Returns:
        The per-position losses, ``target``'s shape.
    """
    return _FocalLossFunction.apply(logits, target, param, ignore_index, keep_softmax, row_terms)
