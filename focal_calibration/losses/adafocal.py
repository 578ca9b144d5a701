"""AdaFocal's update rule (Ghosh, Schaaf & Gormley, NeurIPS 2022) as small pure functions.

AdaFocal keeps one signed γ per equal-mass confidence bin of the validation set. After every epoch, with C_b and A_b
the mean top-1 confidence and the accuracy of the validation samples in bin b (calibration gap E_b = C_b - A_b):

    γ_b <- γ_b · exp( λ · E_b)   while γ_b > 0  (focal loss -(1 - p)^γ log p: over-confident bins get a larger γ)
    γ_b <- γ_b · exp(-λ · E_b)   while γ_b < 0  (inverse focal loss -(1 + p)^|γ| log p: under-confident bins a
                                                  larger |γ|)

and a γ whose magnitude falls below S_th switches form: γ_b <- -S_th from focal, +S_th from inverse focal. γ is then
clipped to [γ_min, γ_max]. A training sample uses the γ of the bin its true-class probability p_y falls in.
:class:`focal_calibration.losses.modules.AdaFocalLoss` holds the state and applies the loss.

Bins (this package's convention, shared by the validation statistics and the training lookup): sort the N validation
confidences; bin b (0-based, of B) starts at the confidence of rank ceil(b·N/B), the first rank that AdaECE's
equal-mass assignment floor(r·B/N) puts in bin b; bin b is [e_b, e_{b+1}) with e_0 = -inf and e_B = +inf. Equal
confidences always share a bin (the result does not depend on how a sort orders ties), and a bin that holds no
validation sample (N < B, or ties) keeps its γ. Everything is vectorised (sort, bucketize, bincount).
"""

from __future__ import annotations

import torch

__all__ = ["equal_mass_edges", "bin_of", "bin_calibration_gaps", "adafocal_update"]


def equal_mass_edges(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """The B - 1 inner edges e_1 .. e_{B-1} of the equal-mass bins of ``confidence`` ``[N]`` (float64): e_b is the
    confidence of rank ceil(b·N/B) of the ascending sort, +inf where that rank is past the end (N < B)."""
    n = confidence.numel()
    values = torch.sort(confidence.to(torch.float64)).values
    first_rank = (torch.arange(1, n_bins, device=values.device) * n + n_bins - 1) // n_bins  # ceil(b·N/B), exact
    inf = torch.full((), float("inf"), dtype=torch.float64, device=values.device)
    return torch.where(first_rank < n, values[first_rank.clamp(max=n - 1)], inf)


def bin_of(values: torch.Tensor, inner_edges: torch.Tensor) -> torch.Tensor:
    """The bin (0-based) of each value: b with e_b <= value < e_{b+1} (compared in float64, so exact for float32)."""
    return torch.bucketize(values.to(torch.float64), inner_edges, right=True)


def bin_calibration_gaps(confidence: torch.Tensor, correct: torch.Tensor, inner_edges: torch.Tensor):
    """(count int64 [B], E_b = mean confidence - accuracy float64 [B], 0 for empty bins) of validation samples."""
    n_bins = inner_edges.numel() + 1
    index = bin_of(confidence, inner_edges)
    count = torch.bincount(index, minlength=n_bins)
    surplus = torch.zeros(n_bins, dtype=torch.float64, device=index.device).index_add_(
        0, index, confidence.to(torch.float64) - correct.to(torch.float64))
    return count, surplus / count.clamp(min=1)


def adafocal_update(gammas: torch.Tensor, gaps: torch.Tensor, counts: torch.Tensor, *, lam: float, switch: float,
                    gamma_min: float, gamma_max: float) -> torch.Tensor:
    """One epoch's update of the signed γ per bin (see the module docstring); bins with ``counts == 0`` keep γ."""
    direction = torch.where(gammas > 0, 1.0, -1.0).to(gammas)
    updated = gammas * torch.exp(direction * lam * gaps)
    plus = torch.full_like(gammas, switch)
    switch_to = torch.where(updated > 0, -plus, plus)  # focal -> inverse focal and back
    switched = torch.where(updated.abs() < switch, switch_to, updated)
    return torch.where(counts > 0, switched.clamp(gamma_min, gamma_max), gammas)
