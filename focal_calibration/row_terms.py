"""Per-row terms (loss, c) of the losses beyond the paper that depend on the logits only through log p_y.

Each function maps log p_y (elementwise, <= 0) and its parameter to ``(loss, c)`` with c = -dL/d(log p_y), the
coefficient of the fused backward dL/dz = c · (softmax(z) - onehot(y)) (:func:`focal_calibration.focal.fused_row_loss`;
:func:`focal_calibration.focal.focal_terms` is the focal loss's, where c = g(p, γ) of Proposition 1).

Numerics as the focal terms: log-space inputs, 1 - p as -expm1(log p), p·log p taken as 0 where p underflows to 0.
"""

from __future__ import annotations

import torch

from focal_calibration.focal import focal_terms

__all__ = ["inverse_focal_terms", "signed_focal_terms", "poly1_terms"]


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
