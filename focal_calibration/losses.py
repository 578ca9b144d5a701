"""The paper's training losses as small modules, and ``build_loss(spec)``, the one factory every trainer uses.

Every loss takes ``logits[..., K]`` (classes last, any leading shape) and integer ``target[...]``, skips entries equal
to ``ignore_index``, and reduces with ``"mean"`` (over non-ignored entries; 0 if none), ``"sum"`` or ``"none"``.
The official code trains CE / focal losses with ``"sum"`` and Brier with a per-batch mean; trainers choose and say so.
``loss.set_epoch(epoch)`` feeds epoch-scheduled γ (a no-op for the others).

Spec names (Tables 1, 2 and Appendix E of the paper):

=====================  =======================================================================================
``ce``                 cross-entropy
``ls-<α>``             label smoothing in the paper's form s = (1-α) q + α (1-q) / (K-1)   (e.g. ``ls-0.05``)
``ls-torch-<α>``       PyTorch's ``label_smoothing``: s = (1-α) q + α / K  (a different loss, for comparison)
``brier``              Brier loss: sum_k (softmax_k - onehot_k)^2
``mmce-<λ>``           CE + λ · MMCE_w (Kumar et al. 2018, weighted); λ = 2 for images, 8 for text in the paper
``fl-<γ>``             focal loss with fixed γ (``fl-1``, ``fl-2``, ``fl-3``)
``flsc-<γs>``          epoch-scheduled γ: ``flsc-531`` = 5 / 3 / 1 with epoch milestones 100, 250
``flsd-<γs>``          sample-dependent γ: ``flsd-53`` = 5 if p_y < 0.2 else 3; ``flsd-532`` adds 2 for p_y >= 0.5
``flsd-prop2-<p0s>``   sample-dependent γ from Proposition 2, e.g. ``flsd-prop2-0.2-0.25`` (γ*(0.2), γ*(0.25))
=====================  =======================================================================================

γ lists are single digits (``531``) or comma-separated (``5,3,1.5``).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from focal_calibration._internal import (check_labels_in_range, check_nonnegative_number, check_reduction,
                                         compute_dtype, flatten_scores_and_labels, value_checks_enabled)
from focal_calibration.focal import focal_loss
from focal_calibration.gamma import (EpochScheduledGamma, FixedGamma, GammaPolicy, SampleDependentGamma,
                                     prop2_gamma_policy)

__all__ = ["CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss",
           "mmce_weighted", "build_loss", "PAPER_LOSS_SPECS"]

PAPER_LOSS_SPECS = ("ce", "ls-0.05", "brier", "mmce-2", "fl-1", "fl-2", "fl-3", "flsc-531", "flsc-532", "flsd-53",
                    "flsd-532", "flsd-prop2-0.2-0.25")


class CalibrationLoss(nn.Module):
    """Shared plumbing: flattening, label checks, ignore_index, reduction, set_epoch."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index

    def set_epoch(self, epoch: int) -> None:
        """Called by trainers at the start of each epoch (0-based)."""

    def _prepare(self, logits, target):
        """Return float logits [N, K] (fp32 for half inputs), safe targets [N], and the non-ignored mask [N]."""
        logits2d, target1d = flatten_scores_and_labels(logits, target)
        if logits2d.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} got an empty batch (logits shape {tuple(logits.shape)})")
        if value_checks_enabled(target1d):
            check_labels_in_range(target1d, logits2d.shape[1], self.ignore_index)
        valid = target1d != self.ignore_index
        safe_target = torch.where(valid, target1d, torch.zeros_like(target1d))
        return logits2d.to(compute_dtype(logits2d.dtype)), safe_target, valid

    def _reduce(self, per_sample, valid, target_shape):
        per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))
        if self.reduction == "none":
            return per_sample.reshape(target_shape)
        total = per_sample.sum()
        return total if self.reduction == "sum" else total / valid.sum().clamp_min(1)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"


class FocalLoss(CalibrationLoss):
    """Focal loss -(1-p_y)^γ log p_y (§4) with any γ policy: a number, FixedGamma, EpochScheduledGamma (FLSc),
    SampleDependentGamma (FLSD) or a Proposition-2 policy. Uses the fused analytic-backward kernel."""

    def __init__(self, gamma: float | GammaPolicy = 1.0, reduction: str = "mean", ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.policy = gamma if isinstance(gamma, GammaPolicy) else FixedGamma(gamma)

    def set_epoch(self, epoch: int) -> None:
        self.policy.set_epoch(epoch)

    def forward(self, logits, target):
        gamma = self.policy if self.policy.sample_dependent else self.policy(None)
        return focal_loss(logits, target, gamma, reduction=self.reduction, ignore_index=self.ignore_index)

    def extra_repr(self):
        return f"policy={self.policy!r}, " + super().extra_repr()


class CrossEntropyLoss(FocalLoss):
    """Cross-entropy, -log p_y: focal loss at γ = 0 exactly, through the same fused kernel (faster than
    ``F.cross_entropy`` on CPU, same value)."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100):
        super().__init__(0.0, reduction, ignore_index)


class LabelSmoothingLoss(CalibrationLoss):
    """Cross-entropy against a smoothed target (§5.1, Müller et al. 2019).

    ``form="paper"``: s = (1-α) q + α (1-q) / (K-1) -- the true class gets 1-α and every other class α/(K-1)
    (the paper's definition; also what fairseq's ``label_smoothed_cross_entropy`` uses).
    ``form="torch"``: s = (1-α) q + α / K -- PyTorch's ``F.cross_entropy(label_smoothing=α)``; the true class gets
    1-α+α/K. The two differ: name the one you mean.
    """

    def __init__(self, alpha: float, form: str = "paper", reduction: str = "mean", ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.alpha = check_nonnegative_number(alpha, "alpha")
        if self.alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        if form not in ("paper", "torch"):
            raise ValueError(f"form must be 'paper' or 'torch', got {form!r}")
        self.form = form

    def forward(self, logits, target):
        z, y, valid = self._prepare(logits, target)
        num_classes = z.shape[1]
        if self.form == "torch":
            per_sample = F.cross_entropy(z, y, reduction="none", label_smoothing=self.alpha)
        else:
            if num_classes < 2:
                raise ValueError(f"label smoothing needs at least 2 classes, got K={num_classes}")
            off = self.alpha / (num_classes - 1)  # weight of each wrong class
            lse = torch.logsumexp(z, dim=-1)
            log_p_y = z.gather(1, y[:, None]).squeeze(1) - lse
            sum_log_p = z.sum(dim=-1) - num_classes * lse
            per_sample = -((1.0 - self.alpha - off) * log_p_y + off * sum_log_p)
        return self._reduce(per_sample, valid, target.shape)

    def extra_repr(self):
        return f"alpha={self.alpha:g}, form={self.form!r}, " + super().extra_repr()


class BrierLoss(CalibrationLoss):
    """Brier loss (Brier 1950): sum_k (softmax(z)_k - onehot(y)_k)^2 per sample (not divided by K)."""

    def forward(self, logits, target):
        z, y, valid = self._prepare(logits, target)
        probs = torch.softmax(z, dim=-1)
        per_sample = probs.square().sum(dim=-1) - 2.0 * probs.gather(1, y[:, None]).squeeze(1) + 1.0
        return self._reduce(per_sample, valid, target.shape)


def mmce_weighted(confidence, correct, valid=None, *, bandwidth: float = 0.4, variant: str = "kumar"):
    """MMCE_w of Kumar et al. (2018), the weighted maximum mean calibration error of one batch.

    With r_i the top-1 confidence, D_c / D_w the correctly / wrongly classified samples (sizes m_c, m_w) and the
    Laplacian kernel k(r, r') = exp(-|r - r'| / bandwidth):

        MMCE_w^2 = sum_{i,j in D_c} (1-r_i)(1-r_j) k / m_c^2 + sum_{i,j in D_w} r_i r_j k / m_w^2
                   - 2 sum_{i in D_c, j in D_w} (1-r_i) r_j k / (m_c m_w)

    computed as w^T K w with w_i = (1-r_i)/m_c on D_c and -r_i/m_w on D_w (K is positive semi-definite, so the
    square is >= 0). A group that is empty drops out. ``variant="official"`` reproduces the paper's released code,
    which divides each term once more (w_i = (1-r_i)/m_c^2, -r_i/m_w^2) and returns 0 when a group is empty.
    Returns sqrt(MMCE_w^2), differentiable w.r.t. the confidences.
    """
    if variant not in ("kumar", "official"):
        raise ValueError(f"variant must be 'kumar' or 'official', got {variant!r}")
    correct = correct.to(confidence.dtype)
    wrong = 1.0 - correct
    if valid is not None:
        correct = correct * valid
        wrong = wrong * valid
    m_c, m_w = correct.sum(), wrong.sum()
    power = 1 if variant == "kumar" else 2
    w = correct * (1.0 - confidence) / m_c.clamp_min(1) ** power - wrong * confidence / m_w.clamp_min(1) ** power
    kernel = torch.exp(-(confidence[:, None] - confidence[None, :]).abs() / bandwidth)
    mmce = (w @ kernel @ w).clamp_min(1e-12).sqrt()
    if variant == "official":
        mmce = mmce * ((m_c > 0) & (m_w > 0))
    return mmce


class MMCELoss(CalibrationLoss):
    """CE + λ · MMCE_w (Kumar et al. 2018), the paper's MMCE baseline (λ = 2 for images, 8 for text).

    MMCE is a batch-level quantity; ``"sum"`` returns CE_sum + λ · n · MMCE (n non-ignored samples, as the official
    code multiplies by the batch size), ``"mean"`` CE_mean + λ · MMCE, ``"none"`` CE_i + λ · MMCE per sample.
    """

    def __init__(self, lam: float = 2.0, bandwidth: float = 0.4, variant: str = "kumar", reduction: str = "mean",
                 ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.lam = check_nonnegative_number(lam, "lambda")
        self.bandwidth = check_nonnegative_number(bandwidth, "bandwidth")
        if self.bandwidth == 0:
            raise ValueError("bandwidth must be > 0, got 0")
        if variant not in ("kumar", "official"):
            raise ValueError(f"variant must be 'kumar' or 'official', got {variant!r}")
        self.variant = variant

    def forward(self, logits, target):
        z, y, valid = self._prepare(logits, target)
        log_probs = torch.log_softmax(z, dim=-1)
        ce = -log_probs.gather(1, y[:, None]).squeeze(1)
        log_conf, prediction = log_probs.max(dim=-1)
        mmce = mmce_weighted(log_conf.exp(), prediction == y, valid.to(z.dtype), bandwidth=self.bandwidth,
                             variant=self.variant)
        return self._reduce(ce + self.lam * mmce, valid, target.shape)

    def extra_repr(self):
        return f"lam={self.lam:g}, bandwidth={self.bandwidth:g}, variant={self.variant!r}, " + super().extra_repr()


# ----------------------------------------------------------------------------------------------------------------
# The factory

_SPEC_FORMS = ("ce", "ls-<alpha>", "ls-torch-<alpha>", "brier", "mmce-<lambda>", "fl-<gamma>", "flsc-<gammas>",
               "flsd-<gammas>", "flsd-prop2-<p0>[-<p0>...]")
_DEFAULT_MILESTONES = {3: (100, 250)}       # Appendix E: 5 for 100 epochs, 3 for the next 150, last γ after
_DEFAULT_THRESHOLDS = {2: (0.2,), 3: (0.2, 0.5)}  # §4 FLSD-53 and Appendix E FLSD-532


def _unknown(spec: str, why: str = "") -> ValueError:
    return ValueError(f"unknown loss spec {spec!r}{': ' + why if why else ''}. Valid forms: {', '.join(_SPEC_FORMS)} "
                      f"(the paper's: {', '.join(PAPER_LOSS_SPECS)})")


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _unknown(spec, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise _unknown(spec, f"{text!r} is not a finite number")
    return value


def _gamma_list(text: str, spec: str) -> list[float]:
    if "," in text:
        return [_number(t, spec) for t in text.split(",")]
    if re.fullmatch(r"\d+", text):
        return [float(c) for c in text]
    raise _unknown(spec, f"γ list {text!r} must be digits (531) or comma-separated numbers (5,3,1.5)")


def build_loss(spec: str, *, reduction: str = "mean", ignore_index: int = -100, milestones=None, thresholds=None,
               mmce_variant: str = "kumar") -> CalibrationLoss:
    """Build a loss module from a paper-style spec (see the module docstring), e.g. ``build_loss("flsd-53")``.

    ``milestones`` (epochs) override FLSc's default (100, 250); ``thresholds`` (probabilities) override FLSD's
    default (0.2,) / (0.2, 0.5); they are required for γ lists of other lengths.
    """
    if not isinstance(spec, str):
        raise TypeError(f"loss spec must be a string, got {spec!r}")
    name = spec.strip().lower()
    common = dict(reduction=reduction, ignore_index=ignore_index)
    if name == "ce":
        return CrossEntropyLoss(**common)
    if name == "brier":
        return BrierLoss(**common)
    if name.startswith("ls-torch-"):
        return LabelSmoothingLoss(_number(name[len("ls-torch-"):], spec), form="torch", **common)
    if name.startswith("ls-"):
        return LabelSmoothingLoss(_number(name[3:], spec), form="paper", **common)
    if name.startswith("mmce-"):
        return MMCELoss(_number(name[5:], spec), variant=mmce_variant, **common)
    if name.startswith("flsd-prop2-"):
        p0s = [_number(t, spec) for t in name[len("flsd-prop2-"):].split("-")]
        return FocalLoss(prop2_gamma_policy(p0s), **common)
    if name.startswith("flsc-"):
        gammas = _gamma_list(name[5:], spec)
        steps = milestones if milestones is not None else _DEFAULT_MILESTONES.get(len(gammas))
        if steps is None:
            raise _unknown(spec, f"{len(gammas)} scheduled γ values need explicit milestones=")
        return FocalLoss(EpochScheduledGamma(gammas, steps), **common)
    if name.startswith("flsd-"):
        gammas = _gamma_list(name[5:], spec)
        bands = thresholds if thresholds is not None else _DEFAULT_THRESHOLDS.get(len(gammas))
        if bands is None:
            raise _unknown(spec, f"{len(gammas)} sample-dependent γ values need explicit thresholds=")
        return FocalLoss(SampleDependentGamma(gammas, bands), **common)
    if name.startswith("fl-"):
        return FocalLoss(_number(name[3:], spec), **common)
    raise _unknown(spec)
