"""The paper's training losses as small modules with ``nn.CrossEntropyLoss``'s contract, thin over
:mod:`focal_calibration.losses.functional`.

Every loss takes logits ``[N, C]`` or ``[N, C, d1, ..., dk]`` (classes on dim 1) and class indices ``[N]`` /
``[N, d1, ..., dk]`` (skipping ``ignore_index``) or class probabilities of the logits' shape, and the keyword
arguments ``weight`` (per class) and ``label_smoothing`` (PyTorch's form), reducing with ``"mean"`` (PyTorch's:
over non-ignored positions, weighted by w[y]; 0 if none), ``"sum"`` or ``"none"``. What a loss cannot take (a
combination without a published definition) raises naming the argument; docs/guide/losses.md has the table.
The official code trains CE / focal losses with ``"sum"`` and Brier with a per-batch mean; trainers choose and say so.
Trainers call three hooks on every loss (no-ops where a loss has no use for them): ``set_epoch(epoch)`` at the start
of each epoch (epoch-scheduled γ), ``observe_validation(val_logits, val_labels)`` after each epoch when
``uses_validation`` is true (AdaFocal), and ``describe_state()`` for the epoch's log line. A loss's own state is in
registered buffers, so ``state_dict()`` / ``load_state_dict()`` carry it into checkpoints. An epoch-scheduled or
validation-driven loss that runs ``constants.UNSCHEDULED_LOSS_WARNING_CALLS`` forward calls without ever being given
an epoch or a validation warns once, naming the call to make.

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
:func:`focal_calibration.losses.fused.fused_row_loss` (and, for soft targets,
:func:`focal_calibration.losses.fused_soft.soft_target_loss`); dual focal and MbLS use plain autograd over their
formulas.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from focal_calibration import constants
from focal_calibration.losses import functional
from focal_calibration.losses.adafocal import adafocal_update, bin_calibration_gaps, bin_of, equal_mass_edges
from focal_calibration.losses.gamma import EpochScheduledGamma, FixedGamma, GammaPolicy
from focal_calibration.losses.math import signed_focal_terms
from focal_calibration.validation import (check_choice, check_class_weight, check_finite_logits, check_label_smoothing,
                                          check_labels_in_range, check_n_bins, check_nonnegative_number,
                                          check_number, check_reduction, compute_dtype, flatten_scores_and_labels)

__all__ = ["CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss",
           "InverseFocalLoss", "AdaFocalLoss", "DualFocalLoss", "PolyLoss", "MarginLabelSmoothingLoss"]

_CALLBACKS = ("focal_calibration.integrations.lightning.CalibrationLossCallback (Lightning) or "
              "focal_calibration.integrations.huggingface.CalibrationLossCallback (Hugging Face Trainer)")


class CalibrationLoss(nn.Module):
    """Shared plumbing: the contract's arguments (``reduction``, ``ignore_index``, ``weight``, ``label_smoothing``),
    the trainers' hooks, and the warning of a schedule that is never driven.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: the class index of positions to skip (class-index targets).
        weight: per-class weights ``[C]`` (a registered buffer, so ``.to(device)`` moves it), or None.
        label_smoothing: PyTorch's α in [0, 1], for the losses that take a soft target.
    """

    uses_validation = False  # True: trainers must call observe_validation after every epoch

    def __init__(self, reduction: str = "mean", ignore_index: int = -100, *, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index
        self.register_buffer("weight", check_class_weight(weight, None, type(self).__name__))
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self._unscheduled_calls = 0
        self._watch_schedule = False  # set by losses whose schedule a trainer must drive, until it does

    def _contract(self) -> dict:
        """The keyword arguments of the functional twin, from this module's settings."""
        return dict(ignore_index=self.ignore_index, reduction=self.reduction, label_smoothing=self.label_smoothing)

    def _refuse_label_smoothing(self, why: str) -> None:
        if self.label_smoothing > 0:
            raise ValueError(f"{type(self).__name__} does not take label_smoothing={self.label_smoothing:g}: {why}")

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

    def _unscheduled_warning(self) -> str:
        """The warning's text: what stays at its first value and which call drives it."""
        raise NotImplementedError

    def _count_unscheduled_call(self) -> None:
        """Count a forward call of a loss whose schedule no one has driven yet, and warn once at
        ``constants.UNSCHEDULED_LOSS_WARNING_CALLS``: a Python counter (no tensor, no host sync), not counted while
        torch.compile traces (its guards would otherwise see a new value every call)."""
        if torch.compiler.is_compiling():
            return
        self._unscheduled_calls += 1
        if self._unscheduled_calls >= constants.UNSCHEDULED_LOSS_WARNING_CALLS:
            self._watch_schedule = False  # once
            warnings.warn(f"{type(self).__name__} has run {self._unscheduled_calls} forward calls without "
                          f"{self._unscheduled_warning()}, or let a callback do it: {_CALLBACKS}.", UserWarning,
                          stacklevel=3)

    def extra_repr(self):
        extra = f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
        if self.weight is not None:
            extra += f", weight=[{self.weight.numel()} classes]"
        if self.label_smoothing:
            extra += f", label_smoothing={self.label_smoothing:g}"
        return extra


class FocalLoss(CalibrationLoss):
    """Focal loss -(1-p_y)^γ log p_y (§4) with any γ policy: a number, FixedGamma, EpochScheduledGamma (FLSc),
    SampleDependentGamma (FLSD) or a Proposition-2 policy; ``nn.CrossEntropyLoss``'s contract, probability targets
    and label smoothing in the per-class form -Σ_k w_k q'_k (1-p_k)^γ log p_k (see
    :func:`focal_calibration.losses.functional.focal_loss`). Uses the fused analytic-backward kernels.

    An epoch-scheduled γ needs :meth:`set_epoch` at the start of every epoch: without it the loss warns once after
    ``constants.UNSCHEDULED_LOSS_WARNING_CALLS`` forward calls.
    """

    def __init__(self, gamma: float | GammaPolicy = 1.0, reduction: str = "mean", ignore_index: int = -100, *,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self.policy = gamma if isinstance(gamma, GammaPolicy) else FixedGamma(gamma)
        self._watch_schedule = isinstance(self.policy, EpochScheduledGamma) and len(set(self.policy.gammas)) > 1

    def set_epoch(self, epoch: int) -> None:
        self.policy.set_epoch(epoch)
        self._watch_schedule = False

    def _unscheduled_warning(self) -> str:
        return (f"set_epoch(epoch): its epoch-scheduled γ {self.policy!r} stays at epoch {self.policy.epoch}'s value "
                f"{self.policy.gamma:g}. Call loss.set_epoch(epoch) at the start of every epoch (0-based)")

    def forward(self, input, target):
        if self._watch_schedule:
            self._count_unscheduled_call()
        gamma = self.policy if self.policy.sample_dependent else self.policy(None)
        return functional.focal_loss(input, target, self.weight, gamma=gamma, **self._contract())

    def extra_repr(self):
        return f"policy={self.policy!r}, " + super().extra_repr()


class CrossEntropyLoss(FocalLoss):
    """Cross-entropy, -log p_y: focal loss at γ = 0 exactly, through the same fused kernels (faster than
    ``F.cross_entropy`` on CPU, same value), with ``nn.CrossEntropyLoss``'s contract (weight, label_smoothing,
    probability targets, classes on dim 1)."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100, *, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__(0.0, reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)


class LabelSmoothingLoss(CalibrationLoss):
    """Cross-entropy against a smoothed target (§5.1, Müller et al. 2019).

    ``form="paper"``: s = (1-α) q + α (1-q) / (K-1) -- the true class gets 1-α and every other class α/(K-1)
    (the paper's definition; also what fairseq's ``label_smoothed_cross_entropy`` uses).
    ``form="torch"``: s = (1-α) q + α / K -- PyTorch's ``F.cross_entropy(label_smoothing=α)``; the true class gets
    1-α+α/K. The two differ: name the one you mean. Either takes class indices or probabilities q and a class
    ``weight`` (Σ_k w_k s_k (-log p_k), PyTorch's weighted mean for class indices); ``label_smoothing=`` is refused
    (the loss smooths the target itself).
    """

    def __init__(self, alpha: float, form: str = "paper", reduction: str = "mean", ignore_index: int = -100, *,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self.alpha = check_nonnegative_number(alpha, "alpha")
        if self.alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        if form not in ("paper", "torch"):
            raise ValueError(f"form must be 'paper' or 'torch', got {form!r}")
        self.form = form
        self._refuse_label_smoothing(f"it smooths the target itself (alpha={self.alpha:g}, form={form!r}), and a "
                                     f"second smoothing has no published meaning; give one of them")

    def forward(self, input, target):
        contract = self._contract()
        if self.form == "torch":
            contract["label_smoothing"] = self.alpha
            return functional.focal_loss(input, target, self.weight, gamma=0.0, **contract)
        batch = functional._Batch("LabelSmoothingLoss", input, target, self.weight, **contract)
        on_off = functional.paper_smoothing(self.alpha, batch.num_classes)
        return functional._per_class_form(batch, functional.focal_terms, 0.0, on_off=on_off)

    def extra_repr(self):
        return f"alpha={self.alpha:g}, form={self.form!r}, " + super().extra_repr()


class BrierLoss(CalibrationLoss):
    """Brier loss (Brier 1950): sum_k (softmax(z)_k - q_k)^2 per position (not divided by K), q the one-hot class
    or the probability target (smoothed by ``label_smoothing``); ``weight`` with class indices only (see
    :func:`focal_calibration.losses.functional.brier_loss`)."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100, *, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        if self.weight is not None:
            self._refuse_label_smoothing("with weight= the Brier score against a smoothed target has no published "
                                         "definition (weight scales a class-index position's loss by w[y])")

    def forward(self, input, target):
        return functional.brier_loss(input, target, self.weight, **self._contract())


class MMCELoss(CalibrationLoss):
    """CE + λ · MMCE_w (Kumar et al. 2018), the paper's MMCE baseline (λ = 2 for images, 8 for text); ``weight`` and
    ``label_smoothing`` act on the CE term, class-index targets only (see
    :func:`focal_calibration.losses.functional.mmce_loss`).

    MMCE is a batch-level quantity; ``"sum"`` returns CE_sum + λ · n · MMCE (n non-ignored samples, as the official
    code multiplies by the batch size), ``"mean"`` CE_mean + λ · MMCE, ``"none"`` CE_i + λ · MMCE per sample.
    """

    def __init__(self, lam: float = 2.0, bandwidth: float = 0.4, variant: str = "kumar", reduction: str = "mean",
                 ignore_index: int = -100, *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self.lam = check_nonnegative_number(lam, "lambda")
        self.bandwidth = check_nonnegative_number(bandwidth, "bandwidth")
        if self.bandwidth == 0:
            raise ValueError("bandwidth must be > 0, got 0")
        if variant not in ("kumar", "official"):
            raise ValueError(f"variant must be 'kumar' or 'official', got {variant!r}")
        self.variant = variant

    def forward(self, input, target):
        return functional.mmce_loss(input, target, self.weight, lam=self.lam, bandwidth=self.bandwidth,
                                    variant=self.variant, **self._contract())

    def extra_repr(self):
        return f"lam={self.lam:g}, bandwidth={self.bandwidth:g}, variant={self.variant!r}, " + super().extra_repr()


# ----------------------------------------------------------------------------------------------------------------
# Beyond the paper: losses of log p_y alone (fused analytic backward)

class InverseFocalLoss(CalibrationLoss):
    """Inverse focal loss -(1 + p_y)^γ log p_y (Wang et al., NeurIPS 2021), γ >= 0: it weights confident samples
    *more* than cross-entropy, the opposite of focal loss (AdaFocal's form for under-confident bins). Soft targets in
    the per-class form, as focal loss."""

    def __init__(self, gamma: float, reduction: str = "mean", ignore_index: int = -100, *,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self.gamma = check_nonnegative_number(gamma, "gamma")

    def forward(self, input, target):
        return functional.inverse_focal_loss(input, target, self.weight, gamma=self.gamma, **self._contract())

    def extra_repr(self):
        return f"gamma={self.gamma:g}, " + super().extra_repr()


class PolyLoss(CalibrationLoss):
    """Poly-1 (Leng et al., ICLR 2022): -log p_y + ε (1 - p_y). ε >= -1 keeps every coefficient of the loss's
    expansion in powers of (1 - p_y) non-negative (ε = -1 drops the linear term); ε = 0 is cross-entropy. Soft
    targets in the published form CE(q') + ε (1 - Σ_k q'_k p_k)."""

    def __init__(self, epsilon: float, reduction: str = "mean", ignore_index: int = -100, *,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self.epsilon = check_number(epsilon, "epsilon")
        if self.epsilon < -1:
            raise ValueError(f"epsilon must be a finite number >= -1, got {epsilon!r}")

    def forward(self, input, target):
        return functional.poly1_loss(input, target, self.weight, epsilon=self.epsilon, **self._contract())

    def extra_repr(self):
        return f"epsilon={self.epsilon:g}, " + super().extra_repr()


class AdaFocalLoss(CalibrationLoss):
    """AdaFocal (Ghosh, Schaaf & Gormley, NeurIPS 2022): focal loss with a signed γ per equal-mass confidence bin of
    the validation set, inverse focal loss where γ < 0; see :mod:`focal_calibration.losses.adafocal` for the update
    rule.

    Call :meth:`observe_validation` after every epoch (the trainers do; without it the loss warns once after
    ``constants.UNSCHEDULED_LOSS_WARNING_CALLS`` forward calls); until the first call every bin has ``gamma_init``
    and the bins are equal-width (as the released code). Defaults are the released code's: λ = 1, γ_init = 1,
    S_th = 0.2, γ in [-2, 20], 15 bins. The state (γ per bin, the bins' edges, the number of updates) is in
    registered buffers, so ``state_dict()`` carries it and a resumed run continues exactly. Class-index targets only
    (AdaFocal has no published definition for probability targets or label smoothing); ``weight`` scales a
    position's loss by w[y].
    """

    uses_validation = True

    def __init__(self, lam: float = 1.0, gamma_init: float = 1.0, switch_threshold: float = 0.2,
                 gamma_min: float = -2.0, gamma_max: float = 20.0, n_bins: int = 15, reduction: str = "mean",
                 ignore_index: int = -100, *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self._refuse_label_smoothing("AdaFocal is defined for one target class per sample (its γ is looked up from "
                                     "p_y); label smoothing makes the target a distribution")
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
        self._watch_schedule = True

    @property
    def n_bins(self) -> int:
        return self.gammas.numel()

    def forward(self, input, target):
        if self._watch_schedule:
            self._count_unscheduled_call()
        batch = functional._Batch("AdaFocalLoss", input, target, self.weight, **self._contract())
        batch.refuse_soft("AdaFocal has no published definition for a target distribution (its γ is looked up from "
                          "p_y)")
        return functional._per_class_form(batch, signed_focal_terms, self.gamma_of)

    def gamma_of(self, p_y: torch.Tensor) -> torch.Tensor:
        """The signed γ of each sample: that of the bin its (detached) true-class probability falls in."""
        if p_y.device not in self._lookup:
            self._lookup[p_y.device] = (self.inner_edges.to(p_y.device), self.gammas.to(p_y.device))
        edges, gammas = self._lookup[p_y.device]
        return gammas[bin_of(p_y, edges)]

    def _unscheduled_warning(self) -> str:
        return ("observe_validation(val_logits, val_labels): its γ per bin stays at its initial values (no AdaFocal "
                "update has run). Call loss.observe_validation(val_logits, val_labels) after every epoch")

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._lookup = {}
        self._watch_schedule = False  # restored state: a trainer drives this loss

    @torch.no_grad()
    def observe_validation(self, val_logits, val_labels) -> None:
        """One AdaFocal update from the validation set: equal-mass bins of its top-1 confidences, each bin's
        calibration gap E_b = C_b - A_b, γ_b updated, the new bins kept for the training lookup.

        ``val_logits`` ``[N, C]`` or ``[N, C, d1, ...]`` (classes on dim 1, as the loss takes them), ``val_labels``
        ``[N]`` / ``[N, d1, ...]``; positions at ``ignore_index`` are left out."""
        val_logits, val_labels = torch.as_tensor(val_logits), torch.as_tensor(val_labels)
        if val_logits.dim() > 2:
            val_logits = val_logits.movedim(1, -1)  # classes last, for the flattening below
        logits2d, labels = flatten_scores_and_labels(val_logits, val_labels, scores_name="val_logits",
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
        self._watch_schedule = False

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
    Gradients flow through p_y and p_j (plain autograd, as the released code). Class-index targets only; ``weight``
    scales a position's loss by w[y].
    """

    PJ_CHOICES = ("below-target", "max-other")

    def __init__(self, gamma: float, pj: str = "below-target", reduction: str = "mean", ignore_index: int = -100, *,
                 weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self._refuse_label_smoothing("dual focal loss is defined for one target class per sample (its p_j is ranked "
                                     "against p_y)")
        self.gamma = check_nonnegative_number(gamma, "gamma")
        self.pj = check_choice(pj, self.PJ_CHOICES, "pj")

    def forward(self, input, target):
        return functional.dual_focal_loss(input, target, self.weight, gamma=self.gamma, pj=self.pj,
                                          **self._contract())

    def extra_repr(self):
        return f"gamma={self.gamma:g}, pj={self.pj!r}, " + super().extra_repr()


class MarginLabelSmoothingLoss(CalibrationLoss):
    """Margin-based label smoothing, MbLS (Liu, Ben Ayed, Galdran & Dolz, CVPR 2022):
    CE + λ · penalty, penalty = Σ_k max(0, max_j z_j - z_k - m) per sample.

    ``normalization="mean"`` (default) divides the penalty by K, as the released code (``LogitMarginL1``: the mean of
    ``relu(max - z - m)`` over all N×K entries) -- the normalisation its defaults m = 10, λ = 0.1 were tuned with;
    ``"sum"`` is the penalty as the paper writes it (Σ_k, K times stronger for the same λ). The CE term is
    ``nn.CrossEntropyLoss``'s with every argument (weight, label_smoothing, probability targets); the penalty is
    unweighted (see :func:`focal_calibration.losses.functional.margin_label_smoothing_loss`).
    """

    NORMALIZATIONS = ("mean", "sum")

    def __init__(self, margin: float = 10.0, lam: float = 0.1, normalization: str = "mean", reduction: str = "mean",
                 ignore_index: int = -100, *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__(reduction, ignore_index, weight=weight, label_smoothing=label_smoothing)
        self.margin = check_nonnegative_number(margin, "margin")
        self.lam = check_nonnegative_number(lam, "lambda")
        self.normalization = check_choice(normalization, self.NORMALIZATIONS, "normalization")

    def forward(self, input, target):
        return functional.margin_label_smoothing_loss(input, target, self.weight, margin=self.margin, lam=self.lam,
                                                      normalization=self.normalization, **self._contract())

    def extra_repr(self):
        return (f"margin={self.margin:g}, lam={self.lam:g}, normalization={self.normalization!r}, "
                + super().extra_repr())
