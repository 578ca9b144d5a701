"""Focal loss against a label-smoothed target, with an analytic backward (for fairseq's ``--label-smoothing``).

The paper's focal loss with a soft target s (eq. 5 in the binary case, written for K classes):

    L = -sum_k s_k (1 - p_k)^γ log p_k,      s = (1 - α) onehot(y) + α (1 - onehot(y)) / (K - 1)

(the smoothed target of §5.1 / Müller et al. 2019, which is also fairseq's ``label_smoothed_cross_entropy``: the
true class gets 1 - α, every other class α / (K - 1)). At γ = 0 it is label-smoothed cross-entropy exactly; at α = 0
it is the focal loss of :func:`focal_calibration.losses.fused.focal_loss`.

Backward: with f(p) = -(1-p)^γ log p, p f'(p) = -g(p, γ) (Proposition 1's factor), so

    dL/dz_j = p_j · sum_k s_k g(p_k, γ) - s_j g(p_j, γ)

(for a one-hot s this is Proposition 1's g(p_y) (p - onehot)). The per-class terms come from the core's
``focal_terms`` (one implementation of the focal term and of g), evaluated in row chunks so the N×K temporaries stay
small; the forward turns its log-softmax buffer into the gradient chunk by chunk, so that buffer is the only N×K
tensor kept between forward and backward (as fairseq's criterion keeps its log-probabilities).
γ is a number, a per-row tensor or a policy called with the detached p_y of each row (FLSD); the same γ is used for
all classes of a row.
"""

from __future__ import annotations

import torch

from focal_calibration import constants
from focal_calibration.losses.backend import resolve_backend
from focal_calibration.losses.fused import Gamma
from focal_calibration.losses.math import focal_terms
from focal_calibration.validation import (check_finite, check_nonnegative_number, check_reduction, compute_dtype,
                                          prepare_focal_inputs, value_checks_enabled)

__all__ = ["focal_label_smoothed_loss"]



def _row_chunks(n_rows: int, num_classes: int):
    step = max(1, constants.SMOOTHED_FOCAL_CHUNK_ELEMENTS // num_classes)
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


class _FocalSmoothedFunction(torch.autograd.Function):
    """Per-row loss; the forward also turns its log-softmax buffer, chunk by chunk, into dL/dz (when a gradient is
    needed), so the focal terms and g are evaluated once and the only N×K tensor kept is that buffer."""

    @staticmethod
    def forward(ctx, logits, target, gamma, alpha, ignore_index):
        n_rows, num_classes = logits.shape
        buffer = torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)  # log p, becomes the gradient
        valid = target != ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_p_y = buffer.gather(1, safe_target[:, None]).squeeze(1)
        if value_checks_enabled(log_p_y):
            check_finite(log_p_y, "logits")
        if callable(gamma):
            gamma = gamma(torch.exp(log_p_y))
        per_row = isinstance(gamma, torch.Tensor) and gamma.dim() > 0
        gamma_col = gamma.to(buffer)[:, None] if per_row else gamma
        off = alpha / (num_classes - 1)  # weight of every wrong class
        on = 1.0 - alpha - off  # extra weight of the true class (it also gets `off` in the sum over all classes)
        needs_grad = ctx.needs_input_grad[0]
        loss = torch.empty(n_rows, dtype=buffer.dtype, device=buffer.device)
        for rows in _row_chunks(n_rows, num_classes):
            log_p = buffer[rows]
            y = safe_target[rows, None]
            terms, g = focal_terms(log_p, gamma_col[rows] if per_row else gamma_col)
            loss[rows] = off * terms.sum(-1) + on * terms.gather(1, y).squeeze(1)
            if needs_grad:  # dL/dz_j = p_j sum_k s_k g_k - s_j g_j, written over this chunk's log p
                g_y = g.gather(1, y)
                weighted_sum = off * g.sum(-1, keepdim=True) + on * g_y  # sum_k s_k g_k
                log_p.exp_().mul_(weighted_sum).sub_(g, alpha=off).scatter_add_(1, y, -on * g_y)
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        nll = torch.where(valid, -log_p_y, torch.zeros_like(log_p_y))  # for the caller's perplexity
        ctx.mark_non_differentiable(nll)
        if needs_grad:
            ctx.save_for_backward(buffer, valid)
        ctx.logits_dtype = logits.dtype
        return loss, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_nll):
        gradient, valid = ctx.saved_tensors
        coef = torch.where(valid, grad_loss.to(gradient.dtype), torch.zeros_like(grad_loss, dtype=gradient.dtype))
        return (gradient * coef[:, None]).to(ctx.logits_dtype), None, None, None, None


def focal_label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, gamma: Gamma = 1.0, alpha: float = 0.1, *,
                              reduction: str = "mean", ignore_index: int = -100, return_nll: bool = False,
                              backend: str = "auto"):
    """Focal loss against the label-smoothed target, -sum_k s_k (1 - p_k)^γ log p_k (see the module docstring).

    Args:
        logits: ``[..., K]`` scores, classes last (K >= 2). target: ``[...]`` class indices; ``ignore_index`` rows
            contribute 0 loss and 0 gradient.
        gamma: number >= 0, per-sample tensor shaped like ``target``, or a policy called with the detached p_y.
        alpha: smoothing in [0, 1]: the true class gets 1 - α, every other class α / (K - 1).
        reduction: "mean" (over non-ignored rows), "sum" or "none".
        return_nll: also return the (detached) negative log-likelihood -log p_y with the same reduction, for logging
            perplexity without a second pass over the logits.
        backend: ``"auto"`` (the fused Triton kernel of :mod:`focal_calibration.losses.triton_kernels` for
            CUDA float32 / float16 / bfloat16 logits when triton is importable, the PyTorch path otherwise),
            ``"torch"`` or ``"triton"``.
    """
    check_reduction(reduction)
    backend = resolve_backend(backend, logits)
    alpha = check_nonnegative_number(alpha, "alpha")
    if alpha > 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    logits2d, target1d, gamma = prepare_focal_inputs(logits, target, gamma, ignore_index,
                                                      "focal_label_smoothed_loss")
    if logits2d.shape[1] < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got K={logits2d.shape[1]}")

    if backend == "triton":
        from focal_calibration.losses import triton_kernels  # imports triton: only when asked for
        loss, nll = triton_kernels.focal_smoothed_rows(logits2d, target1d, gamma, alpha, ignore_index)
    else:
        loss, nll = _FocalSmoothedFunction.apply(logits2d, target1d, gamma, alpha, ignore_index)
    if reduction == "none":
        loss, nll = loss.reshape(target.shape), nll.reshape(target.shape)
    else:
        loss, nll = loss.sum(), nll.sum()
        if reduction == "mean":
            n_valid = (target1d != ignore_index).sum().clamp_min(1)
            loss, nll = loss / n_valid, nll / n_valid
    return (loss, nll) if return_nll else loss
