"""The pure math of the losses: per-row terms (loss, c) of every loss that depends on the logits only through log p_y,
Proposition 1's g(p, γ), Proposition 2's γ* and eq. 5's optimal confidence.

Mukhoti et al. (NeurIPS 2020), §4:  L_f = -(1 - p_y)^γ log p_y.  Each ``*_terms`` function maps log p_y (elementwise,
<= 0) and its parameter to ``(loss, c)`` with c = -dL/d(log p_y), the coefficient of the fused backward
dL/dz = c · (softmax(z) - onehot(y)) (:func:`focal_calibration.losses.fused.fused_row_loss`); for focal loss c is
g(p, γ) of Proposition 1.

Numerics: log-space inputs, 1 - p as -expm1(log p) (exact as p -> 1), p·log p taken as 0 where p underflows to 0.
This module imports nothing else of the package: everything above it builds on it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import lambertw

from focal_calibration.validation import check_nonnegative_number

__all__ = ["focal_terms", "g", "gamma_star", "optimal_confidence", "inverse_focal_terms", "signed_focal_terms",
           "poly1_terms"]


def _p_log_p(log_p: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """p · log p, 0 where p underflows to 0 (its limit), never 0 · -inf = NaN."""
    return torch.where(p > 0, p * log_p, torch.zeros_like(p))


def inverse_focal_terms(log_p: torch.Tensor, gamma) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse focal loss (Wang et al., NeurIPS 2021): L = -(1 + p)^γ log p, γ >= 0.

    c = -dL/d(log p) = (1 + p)^γ + γ p (1 + p)^(γ-1) log p = (1 + p)^γ · (1 + γ p log p / (1 + p)).
    """
    p = torch.exp(log_p)
    one_plus_p = 1.0 + p
    weight = one_plus_p.pow(gamma)
    return -weight * log_p, weight * (1.0 + gamma * _p_log_p(log_p, p) / one_plus_p)


def signed_focal_terms(log_p: torch.Tensor, gamma) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaFocal's loss (Ghosh et al., NeurIPS 2022) with a signed per-row γ: focal -(1 - p)^γ log p where γ >= 0,
    inverse focal -(1 + p)^|γ| log p where γ < 0. Both forms are evaluated per row (cheap: one number per row)."""
    gamma = torch.as_tensor(gamma, dtype=log_p.dtype, device=log_p.device)
    magnitude = gamma.abs()
    focal_loss, focal_c = focal_terms(log_p, magnitude)
    inverse_loss, inverse_c = inverse_focal_terms(log_p, magnitude)
    inverse = gamma < 0
    return torch.where(inverse, inverse_loss, focal_loss), torch.where(inverse, inverse_c, focal_c)


def poly1_terms(log_p: torch.Tensor, epsilon) -> tuple[torch.Tensor, torch.Tensor]:
    """Poly-1 (Leng et al., ICLR 2022): L = -log p + ε (1 - p); c = 1 + ε p."""
    p = torch.exp(log_p)
    return -log_p - epsilon * torch.expm1(log_p), 1.0 + epsilon * p


# ----------------------------------------------------------------------------------------------------------------
# Per-row terms shared by the forward, the backward and g()

def focal_terms(log_p: torch.Tensor, gamma) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, g) elementwise from log p_y <= 0: loss = -(1-p)^γ log p, g = g(p, γ) of Proposition 1."""
    one_minus_p = -torch.expm1(log_p)
    weight = one_minus_p.pow(gamma)  # 0^0 = 1, so γ = 0 is cross-entropy exactly
    loss = -weight * log_p
    # p · log p / (1 - p) is 0/0 at p == 1 and 0·(-inf) at p == 0 (log p = -inf); both become 0. At p == 0 that is the
    # limit; at p == 1 the limit is -1, but there weight = 0^γ is 0 (γ > 0) or γ is 0, so g is the same exactly.
    # One nan_to_num instead of two where()s: 12 small ops instead of 17 (it runs once per batch on small batches).
    p_ratio = torch.nan_to_num(torch.exp(log_p) * (log_p / one_minus_p), nan=0.0)
    return loss, weight * (1.0 - gamma * p_ratio)


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
