"""Focal loss with an analytic backward, Proposition 1's g(p, γ), Proposition 2's γ*, and eq. 5.

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

from typing import Callable, Union

import numpy as np
import torch
from scipy.special import lambertw

from focal_calibration._internal import (check_finite, check_nonnegative_number, check_reduction, compute_dtype,
                                         prepare_focal_inputs, value_checks_enabled)

Gamma = Union[float, torch.Tensor, Callable[[torch.Tensor], Union[float, torch.Tensor]]]

__all__ = ["focal_loss", "fused_row_loss", "g", "gamma_star", "optimal_confidence"]


# ----------------------------------------------------------------------------------------------------------------
# Per-row terms shared by the forward, the backward and g()

def focal_terms(log_p: torch.Tensor, gamma) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, g) elementwise from log p_y <= 0: loss = -(1-p)^γ log p, g = g(p, γ) of Proposition 1."""
    one_minus_p = -torch.expm1(log_p)
    p = torch.exp(log_p)
    weight = one_minus_p.pow(gamma)  # 0^0 = 1, so γ = 0 is cross-entropy exactly
    loss = -weight * log_p
    # log p / (1 - p) -> -1 as p -> 1; the where() covers p == 1 exactly, and p == 0 (log p = -inf) gives p·ratio = 0.
    ratio = torch.where(one_minus_p > 0, log_p / one_minus_p, torch.full_like(log_p, -1.0))
    p_ratio = torch.where(p > 0, p * ratio, torch.zeros_like(p))
    return loss, weight * (1.0 - gamma * p_ratio)


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


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: Gamma = 1.0, *, reduction: str = "mean",
               ignore_index: int = -100, keep_softmax: bool = True) -> torch.Tensor:
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
            backward (least memory between forward and backward; allows ``retain_graph``).

    The gradient w.r.t. the logits is ``g(p_y, γ) · (softmax - onehot)`` (Proposition 1 applied to the logits).
    Half-precision logits are computed in float32; the loss is float32 (float64 for float64 logits) and the gradient
    has the logits' dtype.
    """
    check_reduction(reduction)
    logits2d, target1d, gamma = prepare_focal_inputs(logits, target, gamma, ignore_index, "focal_loss")
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
    ``target1d [N]``, as :class:`focal_calibration.losses.CalibrationLoss` does); ignored rows give 0.
    """
    return _FocalLossFunction.apply(logits2d, target1d, param, ignore_index, keep_softmax, row_terms)


# ----------------------------------------------------------------------------------------------------------------
# Proposition 1 and 2, eq. 5

def g(p, gamma):
    """g(p, γ) = (1-p)^γ - γ p (1-p)^(γ-1) log p  (Proposition 1): the factor by which focal loss scales the
    cross-entropy gradient of a sample whose true-class probability is p. g(0, γ) = 1; g(1, γ) = 0 for γ > 0.

    Accepts numbers, numpy arrays or torch tensors (returned in the same kind; numbers and numpy in float64).
    """
    is_tensor = isinstance(p, torch.Tensor)
    p_t = p if is_tensor else torch.as_tensor(np.asarray(p, dtype=np.float64))
    gamma_t = gamma if isinstance(gamma, torch.Tensor) else torch.as_tensor(np.asarray(gamma, dtype=np.float64))
    if bool(((p_t < 0) | (p_t > 1) | torch.isnan(p_t)).any()):
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if bool((gamma_t < 0).any()):
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _, factor = focal_terms(torch.log(p_t), gamma_t.to(p_t.dtype))
    if is_tensor:
        return factor
    return float(factor) if factor.dim() == 0 else factor.numpy()


def gamma_star(p0):
    """γ* of Proposition 2: the γ with g(p0, γ) = 1, so that g(p, γ*) < 1 for p > p0 and > 1 for p < p0.

        γ* = a/b + W_{-1}(-a^(1 - a/b) log(a) / b) / log(a),   a = 1 - p0,  b = p0 log p0,

    with W_{-1} the lower branch of the Lambert-W function. Defined for 0 < p0 < 0.5 (for p0 >= 0.5 there is no
    positive solution). γ*(0.2) ≈ 4.85 and γ*(0.25) ≈ 3.07, the two γ of FLSD-53. Accepts a number or an array.
    """
    p0_arr = np.asarray(p0, dtype=np.float64)
    bad = ~((p0_arr > 0) & (p0_arr < 0.5))
    if bad.any():
        raise ValueError(f"p0 must lie in the open interval (0, 0.5), got {float(p0_arr[bad].reshape(-1)[0])}")
    a = 1.0 - p0_arr
    b = p0_arr * np.log(p0_arr)
    log_a = np.log(a)
    w = lambertw(-np.power(a, 1.0 - a / b) * log_a / b, k=-1).real
    out = a / b + w / log_a
    return float(out) if out.ndim == 0 else out


def optimal_confidence(q, gamma, *, tol: float = 1e-10):
    """The minimiser p̂ of eq. 5, -(1-x)^γ q log x - x^γ (1-q) log(1-x) over x in [0, 1] (binary case, soft target q).

    For γ = 0 (cross-entropy) p̂ = q; focal loss pulls p̂ towards 0.5 (Fig. 6). Vectorised over q: a grid search
    brackets the minimum, then golden-section search refines all q at once to ``tol``.
    """
    gamma = check_nonnegative_number(gamma, "gamma")
    q_arr = np.asarray(q, dtype=np.float64)
    if ((q_arr < 0) | (q_arr > 1) | np.isnan(q_arr)).any():
        raise ValueError(f"q must lie in [0, 1], got {q}")
    q_col = q_arr.reshape(-1, 1)

    def objective(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = np.where(q_col > 0, -(1 - x) ** gamma * q_col * np.log(x), 0.0)
            neg = np.where(q_col < 1, -(x ** gamma) * (1 - q_col) * np.log1p(-x), 0.0)
        return np.nan_to_num(pos + neg, nan=np.inf)

    grid = np.linspace(0.0, 1.0, 2001)[None, :]
    best = np.argmin(objective(grid), axis=1)
    step = grid[0, 1]
    lo = np.clip(grid[0, best] - step, 0.0, 1.0)[:, None]
    hi = np.clip(grid[0, best] + step, 0.0, 1.0)[:, None]
    inv_phi = (np.sqrt(5.0) - 1.0) / 2.0
    while (hi - lo).max() > tol:
        x1 = hi - inv_phi * (hi - lo)
        x2 = lo + inv_phi * (hi - lo)
        left_better = objective(x1) <= objective(x2)
        hi = np.where(left_better, x2, hi)
        lo = np.where(left_better, lo, x1)
    out = ((lo + hi) / 2).reshape(q_arr.shape)
    return float(out) if out.ndim == 0 else out
