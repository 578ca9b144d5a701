"""The paper's training losses as small modules, and ``build_loss(spec)``, the one factory every trainer uses.

Every loss takes ``logits[..., K]`` (classes last, any leading shape) and integer ``target[...]``, skips entries equal
to ``ignore_index``, and reduces with ``"mean"`` (over non-ignored entries; 0 if none), ``"sum"`` or ``"none"``.
The official code trains CE / focal losses with ``"sum"`` and Brier with a per-batch mean; trainers choose and say so.
Trainers call three hooks on every loss (no-ops where a loss has no use for them): ``set_epoch(epoch)`` at the start
of each epoch (epoch-scheduled γ), ``observe_validation(val_logits, val_labels)`` after each epoch when
``uses_validation`` is true (AdaFocal), and ``describe_state()`` for the epoch's log line. A loss's own state is in
registered buffers, so ``state_dict()`` / ``load_state_dict()`` carry it into checkpoints.

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

Beyond the paper (options as keyword arguments of ``build_loss``):

=========================  ===================================================================================
``adafocal``               AdaFocal (Ghosh et al. 2022): γ per validation confidence bin, updated every epoch
                           through ``observe_validation``; options ``lam``, ``gamma_init``, ``switch_threshold``,
                           ``gamma_min``, ``gamma_max``, ``n_bins``
``inverse-focal-<γ>``      inverse focal loss -(1 + p_y)^γ log p_y (Wang et al. 2021)
``dual-focal-<γ>``         dual focal loss -(1 - p_y + p_j)^γ log p_y (Tao et al. 2023); option ``pj``
``poly-<ε>``               Poly-1: CE + ε (1 - p_y) (Leng et al. 2022), ε >= -1
``mbls-<m>-<λ>``           margin-based label smoothing CE + λ·penalty(max_j z_j - z_k - m) (Liu et al. 2022);
                           option ``normalization``
=========================  ===================================================================================

γ lists are single digits (``531``) or comma-separated (``5,3,1.5``). Losses that depend on the logits only through
log p_y (focal, inverse focal, AdaFocal, Poly-1) share the fused analytic backward of
:func:`focal_calibration.losses.fused.fused_row_loss`; dual focal and MbLS use plain autograd over their formulas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from focal_calibration.losses.adafocal import adafocal_update, bin_calibration_gaps, bin_of, equal_mass_edges
from focal_calibration.losses.fused import focal_loss, fused_row_loss
from focal_calibration.losses.gamma import FixedGamma, GammaPolicy
from focal_calibration.losses.math import inverse_focal_terms, poly1_terms, signed_focal_terms
from focal_calibration.validation import (check_choice, check_finite_logits, check_labels_in_range, check_n_bins,
                                          check_nonnegative_number, check_number, check_reduction, compute_dtype,
                                          flatten_scores_and_labels, value_checks_enabled)

__all__ = ["CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss",
           "mmce_weighted", "InverseFocalLoss", "AdaFocalLoss", "DualFocalLoss", "PolyLoss",
           "MarginLabelSmoothingLoss"]



class CalibrationLoss(nn.Module):
    """Shared plumbing: flattening, label checks, ignore_index, reduction, and the trainers' hooks."""

    uses_validation = False  # True: trainers must call observe_validation after every epoch

    def __init__(self, reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index

    def set_epoch(self, epoch: int) -> None:
        """Called by trainers at the start of each epoch (0-based)."""

    def observe_validation(self, val_logits: torch.Tensor, val_labels: torch.Tensor) -> None:
        """Called by trainers after each epoch with the validation set's logits and labels (AdaFocal)."""

    def describe_state(self) -> dict:
        """The loss's adaptive state as JSON-ready values for the epoch's log line ({} for stateless losses)."""
        return {}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module's, with a ValueError naming the loss when the state does not fit (e.g. a checkpoint written
        before the loss had state)."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            raise ValueError(f"cannot restore the state of {type(self).__name__}: {error}") from None

    def _flatten_checked(self, logits, target):
        """Flattened logits [N, K] and targets [N] (with ignore_index entries), shapes and label range checked."""
        logits2d, target1d = flatten_scores_and_labels(logits, target)
        if logits2d.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} got an empty batch (logits shape {tuple(logits.shape)})")
        if value_checks_enabled(target1d):
            check_labels_in_range(target1d, logits2d.shape[1], self.ignore_index)
        return logits2d, target1d

    def _prepare(self, logits, target):
        """Return float logits [N, K] (fp32 for half inputs), safe targets [N], and the non-ignored mask [N]."""
        logits2d, target1d = self._flatten_checked(logits, target)
        valid = target1d != self.ignore_index
        safe_target = torch.where(valid, target1d, torch.zeros_like(target1d))
        z = logits2d.to(compute_dtype(logits2d.dtype))
        if value_checks_enabled(z):  # a NaN / +inf logit would give a NaN loss: named instead (one sum)
            check_finite_logits(z)
        return z, safe_target, valid

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
# Beyond the paper: losses of log p_y alone (fused analytic backward)

class _RowLoss(CalibrationLoss):
    """A loss L(log p_y; θ) through the fused kernel: dL/dz = c·(softmax - onehot), c = -dL/d(log p_y).
    Subclasses set ``row_terms`` ((log p, θ) -> (loss, c)) and return θ from ``_row_param``."""

    row_terms = None

    def _row_param(self):
        """θ: a number, or a callable of the detached p_y returning a per-row tensor."""
        raise NotImplementedError

    def forward(self, logits, target):
        logits2d, target1d = self._flatten_checked(logits, target)
        per_row = fused_row_loss(logits2d, target1d, self.row_terms, self._row_param(), ignore_index=self.ignore_index)
        return self._reduce(per_row, target1d != self.ignore_index, target.shape)


class InverseFocalLoss(_RowLoss):
    """Inverse focal loss -(1 + p_y)^γ log p_y (Wang et al., NeurIPS 2021), γ >= 0: it weights confident samples
    *more* than cross-entropy, the opposite of focal loss (AdaFocal's form for under-confident bins)."""

    row_terms = staticmethod(inverse_focal_terms)

    def __init__(self, gamma: float, reduction: str = "mean", ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.gamma = check_nonnegative_number(gamma, "gamma")

    def _row_param(self):
        return self.gamma

    def extra_repr(self):
        return f"gamma={self.gamma:g}, " + super().extra_repr()


class PolyLoss(_RowLoss):
    """Poly-1 (Leng et al., ICLR 2022): -log p_y + ε (1 - p_y). ε >= -1 keeps every coefficient of the loss's
    expansion in powers of (1 - p_y) non-negative (ε = -1 drops the linear term); ε = 0 is cross-entropy."""

    row_terms = staticmethod(poly1_terms)

    def __init__(self, epsilon: float, reduction: str = "mean", ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.epsilon = check_number(epsilon, "epsilon")
        if self.epsilon < -1:
            raise ValueError(f"epsilon must be a finite number >= -1, got {epsilon!r}")

    def _row_param(self):
        return self.epsilon

    def extra_repr(self):
        return f"epsilon={self.epsilon:g}, " + super().extra_repr()


class AdaFocalLoss(_RowLoss):
    """AdaFocal (Ghosh, Schaaf & Gormley, NeurIPS 2022): focal loss with a signed γ per equal-mass confidence bin of
    the validation set, inverse focal loss where γ < 0; see :mod:`focal_calibration.losses.adafocal` for the update
    rule.

    Call :meth:`observe_validation` after every epoch (the trainers do); until the first call every bin has
    ``gamma_init`` and the bins are equal-width (as the released code). Defaults are the released code's: λ = 1,
    γ_init = 1, S_th = 0.2, γ in [-2, 20], 15 bins. The state (γ per bin, the bins' edges, the number of updates) is
    in registered buffers, so ``state_dict()`` carries it and a resumed run continues exactly.
    """

    uses_validation = True
    row_terms = staticmethod(signed_focal_terms)

    def __init__(self, lam: float = 1.0, gamma_init: float = 1.0, switch_threshold: float = 0.2,
                 gamma_min: float = -2.0, gamma_max: float = 20.0, n_bins: int = 15, reduction: str = "mean",
                 ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.lam = check_nonnegative_number(lam, "lam")
        self.switch_threshold = check_nonnegative_number(switch_threshold, "switch_threshold")
        self.gamma_min, self.gamma_max, gamma_init = (check_number(v, name) for v, name in (
            (gamma_min, "gamma_min"), (gamma_max, "gamma_max"), (gamma_init, "gamma_init")))
        if not self.gamma_min <= -self.switch_threshold or not self.gamma_max >= self.switch_threshold:
            raise ValueError(f"need gamma_min <= -switch_threshold and gamma_max >= switch_threshold, got gamma_min="
                             f"{gamma_min!r}, gamma_max={gamma_max!r}, switch_threshold={switch_threshold!r}")
        if not self.gamma_min <= gamma_init <= self.gamma_max or gamma_init == 0 or \
                abs(gamma_init) < self.switch_threshold:
            raise ValueError(f"gamma_init must be non-zero, in [gamma_min, gamma_max] = [{gamma_min}, {gamma_max}] "
                             f"and at least switch_threshold = {switch_threshold} in magnitude, got {gamma_init!r}")
        n_bins = check_n_bins(n_bins)
        self.register_buffer("gammas", torch.full((n_bins,), gamma_init, dtype=torch.float64))
        self.register_buffer("inner_edges", torch.arange(1, n_bins, dtype=torch.float64) / n_bins)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._lookup = {}  # device -> (edges, gammas) there: no host-to-device copy (and sync) per step

    @property
    def n_bins(self) -> int:
        return self.gammas.numel()

    def _row_param(self):
        return self.gamma_of

    def gamma_of(self, p_y: torch.Tensor) -> torch.Tensor:
        """The signed γ of each sample: that of the bin its (detached) true-class probability falls in."""
        if p_y.device not in self._lookup:
            self._lookup[p_y.device] = (self.inner_edges.to(p_y.device), self.gammas.to(p_y.device))
        edges, gammas = self._lookup[p_y.device]
        return gammas[bin_of(p_y, edges)]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._lookup = {}

    @torch.no_grad()
    def observe_validation(self, val_logits, val_labels) -> None:
        """One AdaFocal update from the validation set: equal-mass bins of its top-1 confidences, each bin's
        calibration gap E_b = C_b - A_b, γ_b updated, the new bins kept for the training lookup."""
        logits2d, labels = flatten_scores_and_labels(torch.as_tensor(val_logits), torch.as_tensor(val_labels),
                                                     labels_name="val_labels")
        check_labels_in_range(labels, logits2d.shape[1], self.ignore_index, "val_labels")
        keep = labels != self.ignore_index
        logits2d, labels = logits2d[keep], labels[keep]
        if logits2d.shape[0] == 0:
            raise ValueError("observe_validation needs at least one validation sample, got none")
        log_probs = torch.log_softmax(logits2d.to(compute_dtype(logits2d.dtype)), dim=-1)
        log_confidence, prediction = log_probs.max(dim=-1)
        check_finite_logits(logits2d, log_confidence, "val_logits")
        self.observe_confidences(log_confidence.exp(), prediction == labels.to(prediction.device))

    @torch.no_grad()
    def observe_confidences(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        """The update of :meth:`observe_validation` from top-1 confidences and their correctness (1-D tensors)."""
        confidence = confidence.detach().to(self.gammas.device)
        edges = equal_mass_edges(confidence, self.n_bins)
        counts, gaps = bin_calibration_gaps(confidence, correct.to(confidence.device), edges)
        self._update(counts, gaps, edges)

    @torch.no_grad()
    def observe_bin_sums(self, count, confidence_sum, correct_sum, next_edges) -> None:
        """The update from per-bin sums over the validation set on the bins in use (count, Σ confidence,
        Σ correct, each ``[B]``); ``next_edges`` ``[B - 1]`` become the bins of the next epoch (the fairseq
        criterion's route: sums that can be added over batches and workers)."""
        count, confidence_sum, correct_sum = (torch.as_tensor(t, dtype=torch.float64, device=self.gammas.device)
                                              for t in (count, confidence_sum, correct_sum))
        gaps = (confidence_sum - correct_sum) / count.clamp(min=1)
        self._update(count, gaps, torch.as_tensor(next_edges, dtype=torch.float64, device=self.gammas.device))

    def _update(self, counts, gaps, next_edges) -> None:
        self.gammas.copy_(adafocal_update(self.gammas, gaps, counts, lam=self.lam, switch=self.switch_threshold,
                                          gamma_min=self.gamma_min, gamma_max=self.gamma_max))
        self.inner_edges.copy_(next_edges)
        self.updates += 1
        self._lookup = {}

    def describe_state(self) -> dict:
        edges = [None if math.isinf(e) else e for e in self.inner_edges.tolist()]
        return {"adafocal_gammas": self.gammas.tolist(), "adafocal_edges": edges,
                "adafocal_updates": int(self.updates)}

    def extra_repr(self):
        return (f"lam={self.lam:g}, switch_threshold={self.switch_threshold:g}, gamma_min={self.gamma_min:g}, "
                f"gamma_max={self.gamma_max:g}, n_bins={self.n_bins}, " + super().extra_repr())


# ----------------------------------------------------------------------------------------------------------------
# Beyond the paper: losses of the whole probability / logit vector (plain autograd over the formula)

class DualFocalLoss(CalibrationLoss):
    """Dual focal loss (Tao, Dong & Xu, ICML 2023): -(1 - p_y + p_j)^γ log p_y.

    ``pj="below-target"`` (default): p_j is the largest probability below p_y, "the highest logit ranked after the
    ground truth logit" (the paper's abstract), which is also what the released code computes (0 when no class is
    below the target). ``pj="max-other"``: p_j is the largest probability of any other class. The two agree on every
    correctly classified sample; on a misclassified one ``max-other`` takes the predicted class (weight up to 2^γ).
    Gradients flow through p_y and p_j (plain autograd, as the released code).
    """

    PJ_CHOICES = ("below-target", "max-other")

    def __init__(self, gamma: float, pj: str = "below-target", reduction: str = "mean", ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.gamma = check_nonnegative_number(gamma, "gamma")
        self.pj = check_choice(pj, self.PJ_CHOICES, "pj")

    def forward(self, logits, target):
        z, y, valid = self._prepare(logits, target)
        log_probs = torch.log_softmax(z, dim=-1)
        with torch.no_grad():  # which class is j
            if self.pj == "below-target":
                others = torch.where(log_probs < log_probs.gather(1, y[:, None]), log_probs, -math.inf)
            else:
                others = log_probs.scatter(1, y[:, None], -math.inf)
            best_other, j = others.max(dim=-1, keepdim=True)
        log_p_y, log_p_j = log_probs.gather(1, torch.cat([y[:, None], j], dim=1)).split(1, dim=1)  # one gather
        p_j = torch.where(best_other > -math.inf, log_p_j.exp(), 0.0)  # 0 when no class qualifies
        base = -torch.expm1(log_p_y) + p_j  # 1 - p_y + p_j, exact as p_y -> 1
        # base == 0 only when p_y == 1 and p_j == 0, where log p_y = 0 too: feed pow a safe value there so that its
        # backward (γ·base^(γ-1), infinite for γ < 1) never meets a zero gradient.
        positive = base > 0
        weight = torch.where(positive, torch.where(positive, base, torch.ones_like(base)).pow(self.gamma),
                             torch.full_like(base, 0.0 if self.gamma > 0 else 1.0))
        return self._reduce((-weight * log_p_y).squeeze(1), valid, target.shape)

    def extra_repr(self):
        return f"gamma={self.gamma:g}, pj={self.pj!r}, " + super().extra_repr()


class MarginLabelSmoothingLoss(CalibrationLoss):
    """Margin-based label smoothing, MbLS (Liu, Ben Ayed, Galdran & Dolz, CVPR 2022):
    CE + λ · penalty, penalty = Σ_k max(0, max_j z_j - z_k - m) per sample.

    ``normalization="mean"`` (default) divides the penalty by K, as the released code (``LogitMarginL1``: the mean of
    ``relu(max - z - m)`` over all N×K entries) -- the normalisation its defaults m = 10, λ = 0.1 were tuned with;
    ``"sum"`` is the penalty as the paper writes it (Σ_k, K times stronger for the same λ).
    """

    NORMALIZATIONS = ("mean", "sum")

    def __init__(self, margin: float = 10.0, lam: float = 0.1, normalization: str = "mean", reduction: str = "mean",
                 ignore_index: int = -100):
        super().__init__(reduction, ignore_index)
        self.margin = check_nonnegative_number(margin, "margin")
        self.lam = check_nonnegative_number(lam, "lambda")
        self.normalization = check_choice(normalization, self.NORMALIZATIONS, "normalization")

    def forward(self, logits, target):
        z, y, valid = self._prepare(logits, target)
        # Logit distances are log-probability distances (z_j - z_k = log p_j - log p_k), so everything is read off
        # one log_softmax. Σ_k max(0, top - l_k - m) = n·(top - m) - Σ_{k active} l_k over the n active classes
        # (l_k < top - m): the hinge sum's value and (sub)gradient without an autograd graph over N×K hinges.
        log_probs = torch.log_softmax(z, dim=-1)
        with torch.no_grad():
            best, top = log_probs.max(dim=-1, keepdim=True)
            active = log_probs < best - self.margin
        log_p_y, log_p_top = log_probs.gather(1, torch.cat([y[:, None], top], dim=1)).unbind(dim=1)  # one gather
        n_active = active.sum(dim=-1).to(z.dtype)
        penalty = n_active * (log_p_top - self.margin) - torch.where(active, log_probs, 0.0).sum(dim=-1)
        if self.normalization == "mean":
            penalty = penalty / z.shape[1]
        return self._reduce(-log_p_y + self.lam * penalty, valid, target.shape)

    def extra_repr(self):
        return (f"margin={self.margin:g}, lam={self.lam:g}, normalization={self.normalization!r}, "
                + super().extra_repr())
