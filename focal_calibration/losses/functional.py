"""The losses as functions with ``F.cross_entropy``'s contract: the math of every loss module, and the user's
``focal_loss``.

Every function takes what ``F.cross_entropy`` takes (docs/guide/losses.md has the table):

* ``input``: logits ``[N, C]`` or ``[N, C, d1, ..., dk]`` (classes on dim 1), or ``[C]`` for one unbatched sample;
* ``target``: class indices ``[N]`` / ``[N, d1, ..., dk]`` (integers; positions equal to ``ignore_index`` count
  nothing), or class probabilities of the input's shape (floating: mixup, cutmix, distillation);
* ``weight``: one weight per class, PyTorch's semantics -- with class indices w[y] scales each position and the mean
  divides by Σ w[y]; with probabilities the per-class form weights each class term and the mean divides by the number
  of positions;
* ``label_smoothing``: PyTorch's, q' = (1 - α) q + α / C, combined with ``weight`` and probability targets as PyTorch
  combines them;
* ``reduction``: ``"mean"``, ``"sum"`` or ``"none"`` (the target's shape without the class dimension).

Everything after ``weight`` is keyword-only: ``F.cross_entropy``'s fourth and sixth positional parameters are the
deprecated ``size_average`` / ``reduce``, so a positional call could not mean the same thing here.

The focal family (focal loss with every γ policy, cross-entropy, inverse focal, Poly-1) has the per-class form of the
paper's Appendix A, L = -Σ_k w_k q'_k (1 - p_k)^γ log p_k (:mod:`focal_calibration.losses.fused_soft`); a combination
a loss has no published definition for raises, naming the argument and the loss. Differences from PyTorch: a mean over
nothing (every position ignored, or zero total weight) divides by 1 instead of 0, so it is 0, not NaN; probability
targets with a non-default ``ignore_index`` are refused (PyTorch ignores the argument there).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from focal_calibration import constants
from focal_calibration.losses.fused import (Gamma, _class_weight_of_targets, _focal_index_loss, _index_target_divisor,
                                            _reduce)
from focal_calibration.losses.fused_soft import soft_target_loss
from focal_calibration.losses.gamma import GammaPolicy
from focal_calibration.losses.math import focal_terms, inverse_focal_terms, poly1_terms
from focal_calibration.validation import (check_choice, check_class_weight, check_finite_logits,
                                          check_label_smoothing, check_labels_in_range, check_nonnegative_number,
                                          check_number, check_reduction, compute_dtype, prepare_class_dim_inputs,
                                          prepare_gamma, value_checks_enabled)

__all__ = ["focal_loss", "inverse_focal_loss", "poly1_loss", "brier_loss", "dual_focal_loss",
           "margin_label_smoothing_loss", "mmce_loss", "mmce_weighted", "paper_smoothing"]

DEFAULT_IGNORE_INDEX = -100


class _Batch:
    """A checked call: logits [N, C, ...], target, its kind, the class weight, α, and how to undo an unbatched
    input."""

    __slots__ = ("alpha", "logits", "target", "probabilities", "unbatched", "num_classes", "weight", "caller",
                 "ignore_index", "reduction")

    def __init__(self, caller, input, target, weight, ignore_index, reduction, label_smoothing):
        check_reduction(reduction)
        self.alpha = check_label_smoothing(label_smoothing)
        self.logits, self.target, self.probabilities, self.unbatched = prepare_class_dim_inputs(input, target, caller)
        self.num_classes = self.logits.shape[1]
        self.weight = check_class_weight(weight, self.num_classes, caller)
        self.caller, self.ignore_index, self.reduction = caller, ignore_index, reduction
        if self.probabilities:
            if ignore_index != DEFAULT_IGNORE_INDEX:
                raise ValueError(f"{caller}: ignore_index={ignore_index} applies to class-index targets only; "
                                 f"probability targets have no ignored positions (F.cross_entropy silently ignores "
                                 f"the argument there). Leave ignore_index at -100, or give class indices")
            if value_checks_enabled(self.target):
                bad = ~torch.isfinite(self.target) | (self.target < 0)
                if bool(bad.any()):
                    raise ValueError(f"{caller}: target class probabilities must be finite and >= 0, got "
                                     f"{float(self.target[bad][0])}")

    @property
    def soft(self) -> bool:
        """Whether the target is a distribution beyond one class per position (probabilities or label smoothing)."""
        return self.probabilities or self.alpha > 0

    def refuse(self, what: str, why: str):
        raise ValueError(f"{self.caller} does not take {what}: {why}")

    def refuse_soft(self, why: str):
        if self.probabilities:
            self.refuse("probability targets", why + "; give class indices")
        if self.alpha > 0:
            self.refuse(f"label_smoothing={self.alpha:g}", why + " (label smoothing makes the target a distribution)")

    def check_labels(self):
        if not self.probabilities and value_checks_enabled(self.target):
            check_labels_in_range(self.target, self.num_classes, self.ignore_index)

    def check_finite_logits(self):
        """A NaN or +inf logit named (one sum over the logits), for the losses without a fused path's check."""
        if value_checks_enabled(self.logits):
            check_finite_logits(self.logits)

    def valid(self) -> torch.Tensor:
        return self.target != self.ignore_index

    def safe_target(self) -> torch.Tensor:
        """Class indices with ignored positions at class 0, ``[N, 1, ...]`` for gather / scatter over dim 1."""
        valid = self.valid()
        return torch.where(valid, self.target, torch.zeros_like(self.target)).unsqueeze(1)

    def divisor(self, dtype):
        """The mean's divisor, PyTorch's: class indices, Σ w[y] over non-ignored positions (their count without a
        weight); probabilities, the number of positions. Never 0 (see the module docstring)."""
        if self.probabilities:
            return self.target.numel() // self.num_classes
        weight_of_targets = None if self.weight is None else _class_weight_of_targets(
            self.weight, self.target, self.ignore_index, dtype)
        return _index_target_divisor(self.target, self.ignore_index, weight_of_targets)

    def finish(self, loss: torch.Tensor) -> torch.Tensor:
        return loss.squeeze(0) if self.unbatched and self.reduction == "none" else loss


def _per_class_form(batch: _Batch, row_terms, param, *, on_off=None, focal: bool = False, keep_softmax: bool = True,
                    backend: str = "auto") -> torch.Tensor:
    """Σ_k w_k s_k ℓ(log p_k; θ) reduced, s = on · q + off (PyTorch's label smoothing unless ``on_off`` is given):
    the fused index-target kernels when s is one-hot, the soft-target kernel otherwise."""
    if on_off is None and not batch.probabilities and not batch.alpha:  # one-hot: the fast paths of the fused kernel
        loss = _focal_index_loss(batch.logits, batch.target, param, reduction=batch.reduction,
                                 ignore_index=batch.ignore_index, keep_softmax=keep_softmax, backend=backend,
                                 weight=batch.weight, row_terms=None if focal else row_terms)
        return batch.finish(loss)
    if focal and on_off is None and not batch.probabilities and not isinstance(param, torch.Tensor) and \
            not callable(param) and param == 0 and batch.logits.numel() <= constants.SMALL_BATCH_ELEMENTS:
        return _small_smoothed_cross_entropy(batch)
    on, off = on_off if on_off is not None else (1.0 - batch.alpha, batch.alpha / batch.num_classes)
    batch.check_labels()
    loss = soft_target_loss(batch.logits, batch.target, row_terms, param, weight=batch.weight, on=on, off=off,
                            ignore_index=batch.ignore_index)
    if batch.reduction == "mean":
        return _reduce(loss, "mean", batch.divisor(loss.dtype))
    return batch.finish(_reduce(loss, batch.reduction, None))


def _small_smoothed_cross_entropy(batch: _Batch) -> torch.Tensor:
    """Cross-entropy with PyTorch's smoothing of class indices, small batch: F.cross_entropy is that loss, in a few
    ops (the soft-target kernel's ~30 small ops cost 2.4x its time at [128 x 10]; benchmarks/focal_loss.py). Its
    own bounds check names a bad label on CPU (as in the small-batch focal path); the mean divides as ours."""
    z = batch.logits if batch.logits.dtype in (torch.float32, torch.float64) else batch.logits.float()
    weight = None if batch.weight is None else batch.weight.to(device=z.device, dtype=z.dtype)
    if not z.is_cpu:
        batch.check_labels()
    try:
        loss = F.cross_entropy(z, batch.target, weight, ignore_index=batch.ignore_index, label_smoothing=batch.alpha,
                               reduction="none" if batch.reduction == "none" else "sum")
    except (IndexError, RuntimeError):
        batch.check_labels()  # raises naming the bad label
        raise
    if value_checks_enabled(loss) and not math.isfinite(loss.detach().sum()):
        check_finite_logits(z)  # a NaN / +inf logit named (a -inf one gives F.cross_entropy's inf)
    if batch.reduction != "mean":
        return batch.finish(loss)
    if weight is None and z.is_cpu:  # the count as a number: NumPy takes ~1 µs, torch's ne + sum + clamp ~3 ops
        return loss / max(int(np.count_nonzero(batch.target.numpy() != batch.ignore_index)), 1)
    return loss / batch.divisor(loss.dtype)


def focal_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
               ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
               gamma: Gamma | GammaPolicy = 1.0, keep_softmax: bool = True, backend: str = "auto") -> torch.Tensor:
    """Focal loss (Mukhoti et al. 2020, §4) with ``F.cross_entropy``'s contract: -(1 - p_y)^γ log p_y for class
    indices, the per-class form -Σ_k w_k q'_k (1 - p_k)^γ log p_k (the paper's Appendix A) for probability targets
    and label smoothing. γ = 0 is ``F.cross_entropy`` exactly, in every combination of the arguments.

    Args:
        input: logits ``[N, C]`` or ``[N, C, d1, ..., dk]`` (classes on dim 1), or ``[C]``.
        target: class indices ``[N]`` / ``[N, d1, ..., dk]`` (``ignore_index`` positions give 0 loss and 0 gradient)
            or class probabilities of the input's shape.
        weight: per-class weights ``[C]`` (PyTorch's semantics; see the module docstring), or None.
        ignore_index: the class index that marks a position to skip (class-index targets only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the target's shape without the class dimension).
        label_smoothing: α in [0, 1]: the target becomes q' = (1 - α) q + α / C (PyTorch's form).
        gamma: a number >= 0; a tensor of one γ per position (the index target's shape); or a γ policy
            (:class:`~focal_calibration.losses.gamma.GammaPolicy`: fixed, epoch-scheduled at its current epoch,
            sample-dependent such as FLSD-53) or any callable of the detached probabilities. A sample-dependent γ is
            evaluated at p_y for class indices and, per class term, at p_k for soft targets. γ is not differentiated.
        keep_softmax: index targets: keep the forward's softmax and turn it into the gradient in place (the graph
            can then be backpropagated once); ``False`` recomputes it in the backward (allows ``retain_graph``).
        backend: ``"auto"`` (the Triton kernel for CUDA index targets without label smoothing when triton is
            importable), ``"torch"`` or ``"triton"``.

    Returns:
        The loss: a scalar, or per position for ``"none"`` (float32 for half inputs).

    Raises:
        ValueError / TypeError: naming the bad argument (shapes, dtypes, a class index out of range, γ < 0, ...).
    """
    batch = _Batch("focal_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    if isinstance(gamma, GammaPolicy) and not gamma.sample_dependent:
        gamma = gamma(None)
    sample_shape = batch.target.shape if not batch.probabilities else batch.logits.shape[:1] + batch.logits.shape[2:]
    if batch.unbatched and isinstance(gamma, torch.Tensor) and gamma.dim() > 0:
        gamma = gamma.unsqueeze(0)
    gamma = prepare_gamma(gamma, sample_shape)
    if backend == "triton" and batch.soft:
        batch.refuse("backend='triton' with probability targets or label_smoothing",
                     "the Triton kernel covers class-index targets; leave backend='auto' (the PyTorch path)")
    return _per_class_form(batch, focal_terms, gamma, focal=True, keep_softmax=keep_softmax, backend=backend)


def inverse_focal_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                       ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                       gamma: float = 2.0) -> torch.Tensor:
    """Inverse focal loss -(1 + p_y)^γ log p_y (Wang et al., NeurIPS 2021) with ``F.cross_entropy``'s contract;
    probability targets and label smoothing take the per-class form -Σ_k w_k q'_k (1 + p_k)^γ log p_k, as focal loss
    (see :func:`focal_loss`). γ >= 0; γ = 0 is cross-entropy."""
    batch = _Batch("inverse_focal_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    return _per_class_form(batch, inverse_focal_terms, check_nonnegative_number(gamma, "gamma"))


def poly1_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
               ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
               epsilon: float = 1.0) -> torch.Tensor:
    """Poly-1 (Leng et al., ICLR 2022), -log p_y + ε (1 - p_y), with ``F.cross_entropy``'s contract. For probability
    targets and label smoothing it is the published soft form CE(q') + ε (1 - Σ_k q'_k p_k) (the paper's code smooths
    the labels of its p_t too), which is the per-class form Σ_k w_k q'_k (-log p_k + ε (1 - p_k)). ε >= -1."""
    batch = _Batch("poly1_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    epsilon = check_number(epsilon, "epsilon")
    if epsilon < -1:
        raise ValueError(f"epsilon must be a finite number >= -1, got {epsilon!r}")
    return _per_class_form(batch, poly1_terms, epsilon)


def paper_smoothing(alpha: float, num_classes: int) -> tuple[float, float]:
    """(on, off) of the paper's label smoothing (§5.1), s = (1 - α) q + α (1 - q) / (C - 1) = on · q + off: the true
    class gets 1 - α, every other class α / (C - 1). Needs C >= 2."""
    if num_classes < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got K={num_classes}")
    off = alpha / (num_classes - 1)
    return 1.0 - alpha - off, off


def brier_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
               ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    """Brier loss (Brier 1950), Σ_k (softmax(z)_k - q_k)^2 per position (not divided by C), with
    ``F.cross_entropy``'s contract: q is the one-hot class index or the probability target, smoothed by
    ``label_smoothing`` into q' = (1 - α) q + α / C. ``weight`` scales a class-index position's loss by w[y] (the mean
    divides by Σ w[y]); with a soft target (probabilities or label smoothing) a class weight has no published meaning
    for the Brier score and is refused."""
    batch = _Batch("brier_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    batch.check_finite_logits()
    if batch.weight is not None and batch.soft:
        batch.refuse("weight= with probability targets or label_smoothing",
                     "a class weight of the Brier score against a distribution has no published definition (with "
                     "class indices w[y] scales the position's loss)")
    alpha, num_classes = batch.alpha, batch.num_classes
    probs = torch.softmax(batch.logits.to(compute_dtype(batch.logits.dtype)), dim=1)
    if batch.probabilities:
        smoothed = batch.target.to(probs.dtype) * (1.0 - alpha) + alpha / num_classes
        per_position = (probs - smoothed).square().sum(dim=1)
        weight_of_targets = None
    else:
        batch.check_labels()
        p_y = probs.gather(1, batch.safe_target()).squeeze(1)
        # Σ_k (p_k - q'_k)^2 = Σ p_k^2 - 2 ((1-α) p_y + α/C) + Σ q'_k^2 for q' = (1-α) onehot + α/C
        on, off = 1.0 - alpha, alpha / num_classes
        sum_q_squared = on * on + 2.0 * on * off + num_classes * off * off
        per_position = probs.square().sum(dim=1) - 2.0 * (on * p_y + off) + sum_q_squared
        per_position = torch.where(batch.valid(), per_position, torch.zeros((), dtype=probs.dtype))
        weight_of_targets = None if batch.weight is None else _class_weight_of_targets(
            batch.weight, batch.target, batch.ignore_index, probs.dtype)
        if weight_of_targets is not None:
            per_position = per_position * weight_of_targets
    if reduction == "mean":
        divisor = batch.target.numel() // num_classes if batch.probabilities else _index_target_divisor(
            batch.target, ignore_index, weight_of_targets)
        return _reduce(per_position, "mean", divisor)
    return batch.finish(_reduce(per_position, reduction, None))


def dual_focal_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                    ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                    gamma: float = 5.0, pj: str = "below-target") -> torch.Tensor:
    """Dual focal loss (Tao, Dong & Xu, ICML 2023), -(1 - p_y + p_j)^γ log p_y, for class-index targets (the released
    code's only kind; probability targets and label smoothing are refused). ``weight`` scales a position's loss by
    w[y] (PyTorch's class-index semantics). ``pj``: ``"below-target"`` (p_j the largest probability below p_y, 0 when
    none; the paper's and the released code's) or ``"max-other"`` (the largest other probability). Plain autograd
    through p_y and p_j, as the released code."""
    batch = _Batch("dual_focal_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    batch.check_finite_logits()
    batch.refuse_soft("dual focal loss is defined for one target class per sample (its p_j is ranked against p_y)")
    gamma = check_nonnegative_number(gamma, "gamma")
    check_choice(pj, ("below-target", "max-other"), "pj")
    batch.check_labels()
    log_probs = torch.log_softmax(batch.logits.to(compute_dtype(batch.logits.dtype)), dim=1)
    y = batch.safe_target()
    with torch.no_grad():  # which class is j
        if pj == "below-target":
            others = torch.where(log_probs < log_probs.gather(1, y), log_probs, -math.inf)
        else:
            others = log_probs.scatter(1, y, -math.inf)
        best_other, j = others.max(dim=1, keepdim=True)
    log_p_y, log_p_j = log_probs.gather(1, torch.cat([y, j], dim=1)).split(1, dim=1)  # one gather
    p_j = torch.where(best_other > -math.inf, log_p_j.exp(), 0.0)  # 0 when no class qualifies
    base = -torch.expm1(log_p_y) + p_j  # 1 - p_y + p_j, exact as p_y -> 1
    # base == 0 only when p_y == 1 and p_j == 0, where log p_y = 0 too: feed pow a safe value there so that its
    # backward (γ·base^(γ-1), infinite for γ < 1) never meets a zero gradient.
    positive = base > 0
    factor = torch.where(positive, torch.where(positive, base, torch.ones_like(base)).pow(gamma),
                         torch.full_like(base, 0.0 if gamma > 0 else 1.0))
    per_position = (-factor * log_p_y).squeeze(1)
    return _reduce_index_positions(batch, per_position)


def _reduce_index_positions(batch: _Batch, per_position: torch.Tensor) -> torch.Tensor:
    """A per-position loss of class-index targets: 0 at ignored positions, scaled by w[y], PyTorch's reduction."""
    per_position = torch.where(batch.valid(), per_position, torch.zeros((), dtype=per_position.dtype))
    weight_of_targets = None
    if batch.weight is not None:
        weight_of_targets = _class_weight_of_targets(batch.weight, batch.target, batch.ignore_index,
                                                     per_position.dtype)
        per_position = per_position * weight_of_targets
    if batch.reduction == "mean":
        return _reduce(per_position, "mean", _index_target_divisor(batch.target, batch.ignore_index,
                                                                   weight_of_targets))
    return batch.finish(_reduce(per_position, batch.reduction, None))


def _cross_entropy_term(batch: _Batch, log_probs: torch.Tensor, also: torch.Tensor):
    """The CE term of a "CE + λ·R" loss from the log-probabilities R needs too (one log-softmax for both):
    nn.CrossEntropyLoss's per-position loss with every argument of the call, -Σ_k w_k q'_k log p_k, 0 at ignored
    positions (the caller reduces it with :meth:`_Batch.divisor`); and ``log_probs`` at the classes ``also``
    ``[N, 1, ...]`` that R needs, in the same gather (each gather's backward writes an N×C tensor)."""
    alpha, num_classes = batch.alpha, batch.num_classes
    w = None if batch.weight is None else batch.weight.to(device=log_probs.device, dtype=log_probs.dtype).view(
        (1, num_classes) + (1,) * (log_probs.dim() - 2))
    if batch.probabilities:
        q = batch.target.to(log_probs.dtype) * (1.0 - alpha) + alpha / num_classes
        return -((q if w is None else q * w) * log_probs).sum(dim=1), log_probs.gather(1, also)
    batch.check_labels()
    y = batch.safe_target()
    log_p_y, at_also = log_probs.gather(1, torch.cat([y, also], dim=1)).split(1, dim=1)
    per_position = -(log_p_y if w is None else log_p_y * w.expand_as(log_probs).gather(1, y)).squeeze(1)
    if alpha:  # PyTorch's smoothing: (1 - α) w_y (-log p_y) + α/C Σ_k w_k (-log p_k)
        smooth = -(log_probs if w is None else log_probs * w).sum(dim=1)
        per_position = (1.0 - alpha) * per_position + (alpha / num_classes) * smooth
    return torch.where(batch.valid(), per_position, torch.zeros((), dtype=log_probs.dtype)), at_also


def margin_label_smoothing_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                                ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                                margin: float = 10.0, lam: float = 0.1, normalization: str = "mean") -> torch.Tensor:
    """Margin-based label smoothing, MbLS (Liu, Ben Ayed, Galdran & Dolz, CVPR 2022): CE + λ · penalty with
    penalty = Σ_k max(0, max_j z_j - z_k - m) per position (divided by C for ``normalization="mean"``, the released
    code's ``LogitMarginL1`` and the normalisation its defaults m = 10, λ = 0.1 were tuned with; ``"sum"`` is the
    paper's Σ_k).

    The CE term is ``nn.CrossEntropyLoss``'s (as in the released code; computed from the log-softmax the penalty
    reads too), so it takes every argument of the contract
    (weight, label_smoothing, probability targets); the penalty depends on the logits alone, unweighted, averaged over
    the non-ignored positions for ``"mean"``: mean = CE_mean + λ · mean penalty (with a class weight the CE mean is
    PyTorch's weighted one), sum = CE_sum + λ Σ penalty, none = CE + λ · penalty per position.
    """
    batch = _Batch("margin_label_smoothing_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    batch.check_finite_logits()
    margin = check_nonnegative_number(margin, "margin")
    lam = check_nonnegative_number(lam, "lambda")
    check_choice(normalization, ("mean", "sum"), "normalization")
    log_probs = torch.log_softmax(batch.logits.to(compute_dtype(batch.logits.dtype)), dim=1)
    # Logit distances are log-probability distances (z_j - z_k = log p_j - log p_k), so the penalty is read off the
    # same log-softmax. Σ_k max(0, top - l_k - m) = n·(top - m) - Σ_{k active} l_k over the n active classes
    # (l_k < top - m): the hinge sum's value and (sub)gradient without an autograd graph over N×C hinges.
    with torch.no_grad():
        best, top = log_probs.max(dim=1, keepdim=True)
        active = log_probs < best - margin
    ce, log_p_top = _cross_entropy_term(batch, log_probs, top)
    n_active = active.sum(dim=1).to(log_probs.dtype)
    penalty = n_active * (log_p_top.squeeze(1) - margin) - torch.where(active, log_probs, 0.0).sum(dim=1)
    if normalization == "mean":
        penalty = penalty / batch.num_classes
    if not batch.probabilities:
        penalty = torch.where(batch.valid(), penalty, torch.zeros((), dtype=log_probs.dtype))
    if reduction == "none":
        return batch.finish(ce + lam * penalty)
    if reduction == "sum":
        return (ce + lam * penalty).sum()
    counted = batch.target.numel() // batch.num_classes if batch.probabilities else batch.valid().sum().clamp_min(1)
    return ce.sum() / batch.divisor(log_probs.dtype) + lam * penalty.sum() / counted


def mmce_weighted(confidence, correct, valid=None, *, bandwidth: float = 0.4, variant: str = "kumar"):
    """MMCE_w of Kumar et al. (2018), the weighted maximum mean calibration error of one batch.

    With r_i the top-1 confidence, D_c / D_w the correctly / wrongly classified samples (sizes m_c, m_w) and the
    Laplacian kernel k(r, r') = exp(-|r - r'| / bandwidth):

        MMCE_w^2 = sum_{i,j in D_c} (1-r_i)(1-r_j) k / m_c^2 + sum_{i,j in D_w} r_i r_j k / m_w^2
                   - 2 sum_{i in D_c, j in D_w} (1-r_i) r_j k / (m_c m_w)

    computed as w^T K w with w_i = (1-r_i)/m_c on D_c and -r_i/m_w on D_w (K is positive semi-definite, so the
    square is >= 0). A group that is empty drops out. ``variant="official"`` reproduces the paper's released code,
    which divides each term once more (w_i = (1-r_i)/m_c^2, -r_i/m_w^2) and returns 0 when a group is empty.
    Returns sqrt(MMCE_w^2), differentiable w.r.t. the confidences (1-D tensors of one batch).
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


def mmce_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
              ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, lam: float = 2.0,
              bandwidth: float = 0.4, variant: str = "kumar") -> torch.Tensor:
    """CE + λ · MMCE_w (Kumar et al. 2018), the paper's MMCE baseline (λ = 2 for images, 8 for text), with
    ``F.cross_entropy``'s contract for the CE term (``weight`` and ``label_smoothing`` act on it); MMCE_w is computed
    over the batch's non-ignored positions from their top-1 confidence and correctness, so it needs class-index
    targets (probability targets are refused: "correct" has no published meaning for them).

    MMCE is a batch-level quantity: ``"sum"`` returns CE_sum + λ · n · MMCE (n non-ignored positions, as the official
    code multiplies by the batch size), ``"mean"`` CE_mean + λ · MMCE, ``"none"`` CE + λ · MMCE per position (0 at
    ignored ones).
    """
    batch = _Batch("mmce_loss", input, target, weight, ignore_index, reduction, label_smoothing)
    batch.check_finite_logits()
    if batch.probabilities:
        batch.refuse("probability targets", "MMCE_w splits the batch into correctly and wrongly classified samples, "
                     "which needs one target class per sample; give class indices")
    lam = check_nonnegative_number(lam, "lambda")
    bandwidth = check_nonnegative_number(bandwidth, "bandwidth")
    if bandwidth == 0:
        raise ValueError("bandwidth must be > 0, got 0")
    log_probs = torch.log_softmax(batch.logits.to(compute_dtype(batch.logits.dtype)), dim=1)
    with torch.no_grad():
        prediction = log_probs.argmax(dim=1, keepdim=True)
    ce, log_conf = _cross_entropy_term(batch, log_probs, prediction)
    log_conf, prediction = log_conf.squeeze(1), prediction.squeeze(1)
    valid = batch.valid()
    mmce = mmce_weighted(log_conf.exp().reshape(-1), (prediction == batch.target).reshape(-1),
                         valid.reshape(-1).to(log_probs.dtype), bandwidth=bandwidth, variant=variant)
    if reduction == "none":
        return batch.finish(torch.where(valid, ce + lam * mmce, torch.zeros((), dtype=log_probs.dtype)))
    if reduction == "sum":
        return ce.sum() + lam * valid.sum() * mmce
    return ce.sum() / batch.divisor(log_probs.dtype) + lam * mmce

