"""Calibration of binary and multi-label predictions: one sigmoid probability per (sample, label).

A binary problem has one score per sample (``[N]``, or any shape, flattened); a multi-label problem has ``L`` labels
per sample (``[N, L]``, or ``[..., L]`` with labels last) and multi-hot targets. Scores are logits (``p = σ(z)``,
computed in log space) or probabilities; targets are 0 / 1 (integer, bool or float). Every metric is computed for
each label from that label's (score, target) pairs; a binary problem is the one-label case.

Conventions (shared with :mod:`focal_calibration.calibration.metrics`, whose bins, AdaECE ties and extra metrics are
reused as they are):

* **Which confidence** (``confidence=``):

  - ``"positive"`` (default; torchmetrics' ``BinaryCalibrationError``, scikit-learn's ``calibration_curve``, the
    usual multi-label reliability diagram): the confidence is the positive-class probability ``p`` and "correct" is
    the target itself, so a bin compares its mean ``p`` with its fraction of positives.
  - ``"top_label"``: the binary problem as a 2-class problem, like the multi-class metrics: the prediction is
    positive when ``p > 0.5`` (``z > 0`` for logits; at exactly 0.5 the negative class wins, as ``argmax`` over
    ``(1 - p, p)`` picks the first maximum), the confidence is ``max(p, 1 - p)`` (``σ(|z|)`` for logits) and
    "correct" is ``prediction == target``. It equals :func:`~focal_calibration.calibration_metrics` on the
    probabilities ``(1 - p, p)``.

* **Bins**: equal-width bins ``((i-1)/M, i/M]`` decided exactly for the stored value (0 in the first bin, 1 in the
  last), as in :mod:`~focal_calibration.calibration.metrics`. torchmetrics bins ``[(i-1)/M, i/M)`` instead
  (``bucketize(right=True)``), with float32 ``linspace`` edges and ``p = 1`` in a bin of its own: a value exactly on
  an inner edge ``k/M`` is in bin ``k`` here and in bin ``k + 1`` there, so the two agree whenever no confidence
  lies exactly on an edge (tested). AdaECE: equal-mass bins per label, ties by group means. Also: torchmetrics
  guesses logits vs probabilities from the values (a sigmoid is applied when any value lies outside [0, 1]); here
  ``logits=`` or ``probs=`` says which.

* **Per label, macro, micro**: ``per_label`` holds each label's metric over its own counted samples; ``macro`` is the
  mean of the per-label values over the labels that have at least one counted sample; ``micro`` is the metric of all
  counted (sample, label) pairs pooled into one binary problem (e.g. micro ECE bins every pair's confidence
  together). A label with no counted sample has ``None`` values.

* **Masks**: ``mask`` (bool, the targets' shape) and ``ignore_index`` (a target value) remove single
  (sample, label) pairs; every count and mean is over the pairs that remain.

* **Metrics**: ``n`` (counted pairs), ``accuracy`` (prediction ``p > 0.5`` equals the target), ``nll`` (binary
  cross-entropy; +inf where a given probability is exactly 0 or 1 on the wrong side), ``brier`` (``(p - y)^2``),
  ``ece`` (eq. 1), ``adaece`` (eq. 3), ``mce`` (eq. 2) of the chosen confidence, and the ``extra`` metrics of
  :mod:`~focal_calibration.calibration.extra_metrics` (``smece``, ``ks``, ``ece_sweep``, ``debiased_l2_ece``) of the
  same (confidence, correct) pairs. All are fractions.

Streaming (:class:`MultilabelCalibrationAccumulator`): ``n``, accuracy, NLL, Brier, ECE, MCE, the reliability bins
and ``smece`` are sums per label (per-label bin sums, ``[L, M]``; ``smece`` a ``[L, 2049]`` grid) and stream
exactly; ``adaece``, ``ks``, ``ece_sweep`` and ``debiased_l2_ece`` need every pair's (confidence, correct), so the
accumulator keeps them (6-10 bytes per pair: confidence, correct, counted) unless ``adaptive=False`` and none of
those extras is asked for.
Everything is vectorised over labels, bins and samples (the order-based metrics sort each label's samples with
:class:`~focal_calibration.calibration.extra_metrics.RowwiseSortedGroups`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from focal_calibration import constants
from focal_calibration.calibration.bootstrap import count_weights, percentile_interval, resample_indices
from focal_calibration.calibration.extra_metrics import (ORDER_BASED, SMECE_GRID, RowwiseSortedGroups, SortedGroups,
                                                         adaptive_ece_weighted, ascending_order, check_extra,
                                                         extra_metrics, smece_grid_sums, smooth_ece_from_grid)
from focal_calibration.calibration.metrics import ReliabilityBins, adaptive_ece, bin_index, ece_from_sums
from focal_calibration.validation import (as_tensor, check_choice, check_finite, check_int, check_n_bins,
                                          check_probability_level, compute_dtype)

__all__ = ["binary_calibration_metrics", "multilabel_calibration_metrics", "BinaryCalibrationAccumulator",
           "MultilabelCalibrationAccumulator", "multilabel_reliability_bins", "binary_bootstrap_samples",
           "binary_bootstrap_ci", "multilabel_bootstrap_samples", "multilabel_bootstrap_ci", "LabelStatistics",
           "label_statistics", "pair_statistics", "CONFIDENCES"]

CONFIDENCES = ("positive", "top_label")
_SUMMED = ("n", "hits", "nll_sum", "nll_infinite", "brier_sum", "bin_count", "bin_conf_sum", "bin_correct",
           "smece_grid")
_MAX_BINS = 2 ** 24


# ----------------------------------------------------------------------------------------------------------------
# Per-pair statistics
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class LabelStatistics:
    """What the metrics need from each (sample, label) pair of a batch, every field ``[N, L]``.

    Pairs that do not count (masked or ``ignore_index``) have ``valid`` False, confidence 0 and correct False.
    """
    confidence: torch.Tensor  # the chosen confidence (compute dtype)
    correct: torch.Tensor  # bool: the target ("positive") or prediction == target ("top_label")
    hit: torch.Tensor  # bool: (p > 0.5) == target
    nll: torch.Tensor  # float64 binary cross-entropy (0 where not valid; may be +inf for given probabilities)
    squared_error: torch.Tensor  # float64 (p - y)^2
    valid: torch.Tensor  # bool

    @property
    def num_labels(self) -> int:
        return self.confidence.shape[1]


def _as_2d(x: torch.Tensor, multilabel: bool, name: str) -> torch.Tensor:
    if not multilabel:
        return x.reshape(-1, 1)
    if x.dim() < 2:
        raise ValueError(f"multi-label {name} must have shape [N, L] (labels last), got {tuple(x.shape)}; "
                         f"use the binary functions for one score per sample")
    return x.reshape(-1, x.shape[-1])


def label_statistics(labels, *, logits=None, probs=None, mask=None, ignore_index: int | None = None,
                     confidence: str = "positive", multilabel: bool = True) -> LabelStatistics:
    """Validate one batch and compute its :class:`LabelStatistics` (``[N, L]``; ``multilabel=False``: any shape,
    flattened to ``[N, 1]``). Raises ``ValueError`` naming the first bad value."""
    check_choice(confidence, CONFIDENCES, "confidence")
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits= or probs=, got " + ("both" if logits is not None else "neither"))
    name = "logits" if logits is not None else "probs"
    scores = as_tensor(logits if logits is not None else probs, name)
    labels = as_tensor(labels, "labels")
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {scores.dtype}")
    if labels.is_complex():
        raise TypeError(f"labels must be 0 / 1 (integer, bool or float), got dtype {labels.dtype}")
    if scores.shape != labels.shape:
        raise ValueError(f"shape mismatch: {name} has shape {tuple(scores.shape)}, labels {tuple(labels.shape)} "
                         f"(one score per target)")
    if scores.numel() == 0:
        raise ValueError(f"empty input: {name} has shape {tuple(scores.shape)}")
    labels = labels.to(scores.device)
    valid = None
    if mask is not None:
        mask = as_tensor(mask, "mask").to(scores.device)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        if mask.shape != labels.shape:
            raise ValueError(f"mask must have the labels' shape {tuple(labels.shape)}, got {tuple(mask.shape)}")
        valid = mask
    if ignore_index is not None:
        kept = labels != ignore_index
        valid = kept if valid is None else valid & kept
    scores, labels = _as_2d(scores, multilabel, name), _as_2d(labels, multilabel, "labels")
    valid = torch.ones_like(labels, dtype=torch.bool) if valid is None else _as_2d(valid, multilabel, "mask")

    # values: targets 0 / 1, scores finite (probabilities in [0, 1]) -- only where they count. One flag, then the
    # value-naming check only when it fires (boolean indexing copies).
    x = scores.to(compute_dtype(scores.dtype))
    bad_label = (labels != 0) & (labels != 1) & valid
    bad_score = (~torch.isfinite(x) if logits is not None else ~((x >= 0) & (x <= 1))) & valid  # also NaN
    if bool((bad_label | bad_score).any()):
        if bool(bad_label.any()):
            extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
            raise ValueError(f"labels must be 0 or 1{extra}, got {labels[bad_label][0].item()}")
        if logits is not None:
            check_finite(x[valid], "logits")
        raise ValueError(f"probs must lie in [0, 1], got {float(x[bad_score][0])}")
    return pair_statistics(x, labels == 1, valid, confidence, from_logits=logits is not None)


def pair_statistics(x: torch.Tensor, positive_label: torch.Tensor, valid: torch.Tensor, confidence: str, *,
                    from_logits: bool) -> LabelStatistics:
    """:class:`LabelStatistics` of checked scores ``x [N, L]`` (logits or probabilities, compute dtype), bool
    targets and the pairs that count (no validation: :func:`label_statistics` validates)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(valid, x, zero)  # pairs that do not count may hold anything
    y = positive_label & valid
    if from_logits:
        p = torch.sigmoid(x)
        positive = x > 0
        nll = -F.logsigmoid(torch.where(y, x, -x)).to(torch.float64)
        conf = torch.sigmoid(x.abs()) if confidence == "top_label" else p
    else:
        p = x
        positive = p > 0.5
        nll = -torch.where(y, torch.log(p), torch.log1p(-p)).to(torch.float64)  # +inf at p = 0 (y = 1), 1 (y = 0)
        conf = torch.maximum(p, 1 - p) if confidence == "top_label" else p
    hit = (positive == y) & valid
    correct = hit if confidence == "top_label" else y
    zero64 = torch.zeros((), dtype=torch.float64, device=x.device)
    squared_error = (p.to(torch.float64) - y.to(torch.float64)) ** 2
    return LabelStatistics(confidence=torch.where(valid, conf, zero), correct=correct & valid, hit=hit,
                           nll=torch.where(valid, nll, zero64), squared_error=torch.where(valid, squared_error, zero64),
                           valid=valid)


# ----------------------------------------------------------------------------------------------------------------
# Sums (stream, all-reduce) and the metrics of sums: each summed tensor has a trailing weighting axis C
# ----------------------------------------------------------------------------------------------------------------

def _entry_weights(valid: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Weight of each pair ``[N, L, C]`` float64: the sample's weight (1, or its bootstrap count) if it counts."""
    valid = valid.to(torch.float64)[..., None]
    return valid if weights is None else valid * weights[:, None, :]


def _summed(stats: LabelStatistics, n_bins: int, weights: torch.Tensor | None = None, smece: bool = False) -> dict:
    """Per-label sums ``[L, C]`` (bins ``[L, M, C]``, smECE grid ``[L, G + 1, C]``) of weights ``[N, C]`` (None:
    C = 1, every sample once: plain sums and bincounts)."""
    n, labels = stats.confidence.shape
    M = n_bins
    device = stats.confidence.device
    nll_infinite = torch.isinf(stats.nll)
    nll = torch.where(nll_infinite, torch.zeros_like(stats.nll), stats.nll)
    bins = bin_index(stats.confidence, M) + torch.arange(labels, device=device) * M
    if weights is None:
        flat_bin = torch.where(stats.valid, bins, labels * M).reshape(-1)  # uncounted pairs: a dropped extra bin

        def over_samples(values):  # [N, L] -> [L, 1]
            return values.sum(0, dtype=torch.float64)[:, None]

        def over_bins(values):  # [N, L] -> [L, M, 1]
            weight = None if values is None else values.reshape(-1).to(torch.float64)
            return torch.bincount(flat_bin, weights=weight, minlength=labels * M + 1)[:-1].to(
                torch.float64).view(labels, M, 1)

        w = None
        hits, valid = stats.hit, stats.valid  # both False where a pair does not count
    else:
        w = _entry_weights(stats.valid, weights)  # [N, L, C]
        chunk = w.shape[2]
        flat_w = w.reshape(n * labels, chunk)
        flat_bin = bins.reshape(-1)

        def over_samples(values):  # [N, L] -> [L, C]
            return torch.einsum("nl,nlc->lc", values.to(torch.float64), w)

        def over_bins(values):  # [N, L] -> [L, M, C]
            source = flat_w if values is None else flat_w * values.reshape(-1, 1).to(torch.float64)
            return torch.zeros(labels * M, chunk, dtype=torch.float64, device=device).index_add_(
                0, flat_bin, source).view(labels, M, chunk)

        hits, valid = stats.hit, None
    sums = {"n": over_samples(valid) if w is None else w.sum(0), "hits": over_samples(hits),
            "nll_sum": over_samples(nll), "nll_infinite": over_samples(nll_infinite),
            "brier_sum": over_samples(stats.squared_error), "bin_count": over_bins(None),
            "bin_conf_sum": over_bins(stats.confidence), "bin_correct": over_bins(stats.correct)}
    if smece:
        pair_weights = stats.valid.to(torch.float64)[..., None] if w is None else w
        grid = smece_grid_sums(stats.confidence.t(), stats.correct.t(), pair_weights.permute(1, 0, 2))
        chunk = pair_weights.shape[2]
        sums["smece_grid"] = grid.view(labels, chunk, -1).permute(0, 2, 1)  # [L, G + 1, C]
    return sums


def _metrics_of_sums(sums: dict, smece: bool) -> tuple[dict, dict]:
    """(per-label ``{name: [L, C]}``, micro ``{name: [C]}``) of the summed metrics (NaN for a label without
    samples)."""
    per_label, micro = {}, {}
    for target, s in ((per_label, sums), (micro, {key: value.sum(0) for key, value in sums.items()})):
        n = s["n"]
        target["n"] = n
        target["accuracy"] = s["hits"] / n
        target["nll"] = torch.where(s["nll_infinite"] > 0, math.inf, s["nll_sum"] / n)
        target["brier"] = s["brier_sum"] / n
        count, conf, correct = (s[key].movedim(-2, -1) for key in ("bin_count", "bin_conf_sum", "bin_correct"))
        ece, mce = ece_from_sums(count, conf, correct)  # bins last
        target["ece"] = ece
        target["mce"] = torch.where(n > 0, mce, math.nan)
        if smece:
            grid = s["smece_grid"].movedim(-2, -1)  # [..., C, G + 1]
            shape = grid.shape[:-1]
            value = smooth_ece_from_grid(grid.reshape(-1, grid.shape[-1]), n.reshape(-1))[0]
            target["smece"] = value.view(shape)
    return per_label, micro


def _ordered_metrics(confidence: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor, names, n_bins: int,
                     weights: torch.Tensor | None = None, *, micro: bool = True):
    """(per-label ``{name: [L, C]}``, micro ``{name: [C]}``) of AdaECE (name ``"adaece"``) and the order-based
    extras, from every pair's (confidence, correct) ``[N, L]`` (and whether it counts) with sample weights
    ``[N, C]`` (None: C = 1, every sample once)."""
    n, labels = confidence.shape
    extras = [name for name in names if name in ORDER_BASED]
    per_label, pooled = {}, {}
    if weights is None and "adaece" in names:
        # every sample once: the plain AdaECE of metrics.py, uncounted pairs sorted last and left out
        by_label = confidence.t()
        order = ascending_order(torch.where(valid.t(), by_label, torch.inf))  # +inf: non-negative, sorts last
        per_label["adaece"] = adaptive_ece(by_label, correct.t(), n_bins, order=order,
                                           counts=valid.sum(0))[:, None]
        if micro:
            pooled["adaece"] = adaptive_ece(confidence[valid], correct[valid], n_bins).reshape(1)
        names = extras
    if not names:
        return per_label, pooled
    w = _entry_weights(valid, weights)
    chunk = w.shape[2]
    passes = [(per_label, RowwiseSortedGroups(confidence.t(), correct.t()), w.permute(1, 0, 2), labels)]
    if micro:
        passes.append((pooled, SortedGroups(confidence.reshape(-1), correct.reshape(-1)), w.reshape(n * labels, chunk),
                       None))
    for target, groups, pair_weights, rows in passes:
        cumulative = groups.cumulative(pair_weights)
        computed = {}
        if "adaece" in names:
            computed["adaece"] = adaptive_ece_weighted(groups, pair_weights, n_bins, cumulative)
        if extras:
            computed.update(extra_metrics(extras, confidence.t() if rows else confidence.reshape(-1),
                                          correct.t() if rows else correct.reshape(-1), n_bins, pair_weights,
                                          groups=groups, cumulative=cumulative))
        target.update({name: value.view(labels, chunk) if rows else value for name, value in computed.items()})
    return per_label, pooled


def _macro(per_label: dict) -> dict:
    """Means over the labels with at least one counted sample (``[C]``)."""
    present = per_label["n"] > 0
    macro = {}
    for name, value in per_label.items():
        if name == "n":
            continue
        kept = torch.where(present, value, torch.zeros_like(value))
        macro[name] = kept.sum(0) / present.sum(0)  # NaN when no label has a sample
    return macro


_ORDER = ("n", "accuracy", "nll", "brier", "ece", "adaece", "mce")


def _ordered_keys(values: dict, extra) -> list:
    return [name for name in (*_ORDER, *extra) if name in values]


def _numbers(values: dict, extra, labels_axis: bool) -> dict:
    """Tensors (C = 1 squeezed) -> floats / lists of floats, NaN -> None, ``n`` as ints."""
    out = {}
    for name in _ordered_keys(values, extra):
        array = values[name][..., 0].cpu().numpy()
        if name == "n":
            out[name] = [int(v) for v in array] if labels_axis else int(array)
        elif labels_axis:
            out[name] = [None if math.isnan(v) else float(v) for v in array.tolist()]
        else:
            out[name] = None if math.isnan(float(array)) else float(array)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Accumulators
# ----------------------------------------------------------------------------------------------------------------

class MultilabelCalibrationAccumulator:
    """Streams the metrics of :func:`multilabel_calibration_metrics` over batches (exactly equal to one call on all
    samples), and combines processes with :meth:`all_reduce`.

    State (plain tensors, on the device of the first batch): ``state[name]`` per-label sums ``[L, 1]`` and bin sums
    ``[L, M, 1]`` (``n``, ``hits``, ``nll_sum``, ``nll_infinite``, ``brier_sum``, ``bin_count``, ``bin_conf_sum``,
    ``bin_correct``; ``smece_grid`` ``[L, 2049, 1]`` with ``extra=("smece",)``) -- all float64 sums; and, when
    ``adaptive`` or an order-based extra is asked for, every pair's ``confidences`` / ``corrects`` / ``valids``
    (lists of ``[n_batch, L]`` tensors).
    """

    multilabel = True

    def __init__(self, n_bins: int = 15, *, confidence: str = "positive", ignore_index: int | None = None,
                 adaptive: bool = True, extra=()):
        self.n_bins = check_n_bins(n_bins)
        if self.n_bins > _MAX_BINS:
            raise ValueError(f"n_bins must be <= {_MAX_BINS}, got {n_bins!r}")
        self.confidence = check_choice(confidence, CONFIDENCES, "confidence")
        self.ignore_index = ignore_index
        self.adaptive = bool(adaptive)
        self.extra = check_extra(extra)
        self.keep_samples = self.adaptive or any(name in ORDER_BASED for name in self.extra)
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self.num_labels: int | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.confidences: list[torch.Tensor] = []
        self.corrects: list[torch.Tensor] = []
        self.valids: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, labels, *, logits=None, probs=None, mask=None) -> None:
        """Add one batch: 0 / 1 ``labels`` and exactly one of ``logits`` / ``probs`` of the same shape (``[N, L]``,
        labels last; binary: any shape); ``mask`` (bool, same shape) drops pairs."""
        stats = label_statistics(labels, logits=logits, probs=probs, mask=mask, ignore_index=self.ignore_index,
                                 confidence=self.confidence, multilabel=self.multilabel)
        if self.num_labels is not None and stats.num_labels != self.num_labels:
            raise ValueError(f"every batch must have {self.num_labels} labels (from the first batch), "
                             f"got {stats.num_labels}")
        batch = _summed(stats, self.n_bins, smece="smece" in self.extra)
        if not self.state:
            self.num_labels = stats.num_labels
            self.state = {name: torch.zeros_like(value) for name, value in batch.items()}
        for name, value in batch.items():
            self.state[name] += value
        if self.keep_samples:
            self.confidences.append(stats.confidence)
            self.corrects.append(stats.correct)
            self.valids.append(stats.valid)

    def merge(self, other: "MultilabelCalibrationAccumulator") -> "MultilabelCalibrationAccumulator":
        """Add another accumulator's state (same settings) into this one."""
        mine = (self.n_bins, self.confidence, self.adaptive, self.extra)
        theirs = (other.n_bins, other.confidence, other.adaptive, other.extra)
        if mine != theirs:
            raise ValueError(f"cannot merge accumulators with different settings: (n_bins, confidence, adaptive, "
                             f"extra) = {mine} vs {theirs}")
        if not other.state:
            return self
        if not self.state:
            self.num_labels = other.num_labels
            self.state = {name: torch.zeros_like(value) for name, value in other.state.items()}
        elif other.num_labels != self.num_labels:
            raise ValueError(f"cannot merge accumulators with {self.num_labels} and {other.num_labels} labels")
        device = next(iter(self.state.values())).device
        for name, value in other.state.items():
            self.state[name] += value.to(device)
        for mine_list, theirs_list in ((self.confidences, other.confidences), (self.corrects, other.corrects),
                                       (self.valids, other.valids)):
            mine_list += [t.to(device) for t in theirs_list]
        return self

    def all_reduce(self, group=None) -> "MultilabelCalibrationAccumulator":
        """Combine the state of every process of a ``torch.distributed`` group (call it on all of them): the sums
        are summed, the kept pairs all-gathered. Every process must have seen at least one batch."""
        import torch.distributed as dist

        if not self.state:
            raise ValueError("all_reduce() needs at least one update() on every process")
        for name in _SUMMED:
            if name in self.state:
                dist.all_reduce(self.state[name], group=group)
        if self.keep_samples:
            confidence, correct, valid = (torch.cat(t) for t in (self.confidences, self.corrects, self.valids))
            world = dist.get_world_size(group)
            rows = torch.tensor([confidence.shape[0]], device=confidence.device)
            sizes = [torch.zeros_like(rows) for _ in range(world)]
            dist.all_gather(sizes, rows, group=group)
            longest = int(max(sizes))  # all_gather needs equal shapes: pad, then trim

            def gathered(tensor, dtype):
                padded = torch.zeros(longest, tensor.shape[1], dtype=dtype, device=tensor.device)
                padded[:len(tensor)] = tensor.to(dtype)
                parts = [torch.zeros_like(padded) for _ in range(world)]
                dist.all_gather(parts, padded, group=group)
                return [part[:int(size)] for part, size in zip(parts, sizes)]

            self.confidences = gathered(confidence, confidence.dtype)
            self.corrects = [t.bool() for t in gathered(correct, torch.uint8)]
            self.valids = [t.bool() for t in gathered(valid, torch.uint8)]
        return self

    def _require_samples(self):
        if not self.state:
            raise ValueError("empty input: no samples were accumulated (no update())")

    def _tensors(self) -> tuple[dict, dict]:
        """(per-label ``{name: [L, 1]}``, micro ``{name: [1]}``) float64 tensors of every metric."""
        self._require_samples()
        per_label, micro = _metrics_of_sums(self.state, "smece" in self.extra)
        names = (["adaece"] if self.adaptive else []) + [name for name in self.extra if name in ORDER_BASED]
        if names:
            samples = (torch.cat(t) for t in (self.confidences, self.corrects, self.valids))
            ordered_label, ordered_micro = _ordered_metrics(*samples, names, self.n_bins)
            per_label.update(ordered_label)
            micro.update(ordered_micro)
        return per_label, micro

    @torch.no_grad()
    def compute(self) -> dict:
        """``{"per_label": {metric: [L values]}, "macro": {metric: value}, "micro": {metric: value}}`` (see the
        module docstring; None where a label has no sample)."""
        per_label, micro = self._tensors()
        macro = _macro(per_label)
        return {"per_label": _numbers(per_label, self.extra, True), "macro": _numbers(macro, self.extra, False),
                "micro": _numbers(micro, self.extra, False)}

    @torch.no_grad()
    def bins(self) -> list[ReliabilityBins]:
        """One :class:`~focal_calibration.calibration.metrics.ReliabilityBins` per label (equal-width bins of the
        chosen confidence; ``accuracy`` is the bin's fraction of positives under ``confidence="positive"``)."""
        self._require_samples()
        count, conf_sum, correct = (self.state[key][..., 0] for key in ("bin_count", "bin_conf_sum", "bin_correct"))
        ece, mce = ece_from_sums(count, conf_sum, correct)
        filled = count.clamp(min=1)
        empty = count == 0
        nan = torch.full_like(conf_sum, math.nan)
        confidence = torch.where(empty, nan, conf_sum / filled).cpu().numpy()
        accuracy = torch.where(empty, nan, correct / filled).cpu().numpy()
        counts = count.round().long().cpu().numpy()
        ece, mce = ece.cpu().numpy(), mce.cpu().numpy()
        edges = np.arange(self.n_bins + 1) / self.n_bins
        return [ReliabilityBins(edges=edges.copy(), counts=counts[i], confidence=confidence[i],
                                accuracy=accuracy[i], ece=float(ece[i]), mce=float(mce[i]) if counts[i].any()
                                else math.nan) for i in range(len(counts))]


class BinaryCalibrationAccumulator(MultilabelCalibrationAccumulator):
    """:class:`MultilabelCalibrationAccumulator` for one score per sample (any shape, flattened): :meth:`compute`
    gives the flat dict of :func:`binary_calibration_metrics`, :meth:`bins` one
    :class:`~focal_calibration.calibration.metrics.ReliabilityBins`."""

    multilabel = False

    @torch.no_grad()
    def compute(self) -> dict:
        """The metrics of :func:`binary_calibration_metrics`."""
        per_label, _ = self._tensors()
        return _numbers({name: value[0] for name, value in per_label.items()}, self.extra, False)

    @torch.no_grad()
    def bins(self) -> ReliabilityBins:
        """Equal-width reliability bins of the chosen confidence."""
        return super().bins()[0]


# ----------------------------------------------------------------------------------------------------------------
# One-shot functions
# ----------------------------------------------------------------------------------------------------------------

def binary_calibration_metrics(labels, *, logits=None, probs=None, n_bins: int = 15, confidence: str = "positive",
                               mask=None, ignore_index: int | None = None, extra=()) -> dict:
    """Calibration metrics of binary predictions: one score per sample (any shape, flattened).

    Args:
        labels: 0 / 1 targets (integer, bool or float), the scores' shape.
        logits / probs: exactly one: logits (``p = σ(z)``) or positive-class probabilities.
        n_bins: ``M`` of the equal-width bins ``((i-1)/M, i/M]`` (ECE, MCE) and of AdaECE's equal-mass bins.
        confidence: ``"positive"`` (the positive-class probability against the target: torchmetrics'
            ``BinaryCalibrationError``) or ``"top_label"`` (``max(p, 1 - p)`` against ``(p > 0.5) == target``); see
            the module docstring.
        mask: bool, the labels' shape: False drops a sample. ``ignore_index``: drop samples with this label.
        extra: metrics beyond the paper (``"smece", "ks", "ece_sweep", "debiased_l2_ece"``).

    Returns:
        ``{"n", "accuracy", "nll", "brier", "ece", "adaece", "mce", *extra}`` (fractions).
    """
    accumulator = BinaryCalibrationAccumulator(n_bins, confidence=confidence, ignore_index=ignore_index, extra=extra)
    accumulator.update(labels, logits=logits, probs=probs, mask=mask)
    return accumulator.compute()


def multilabel_calibration_metrics(labels, *, logits=None, probs=None, n_bins: int = 15,
                                   confidence: str = "positive", mask=None, ignore_index: int | None = None,
                                   extra=()) -> dict:
    """Calibration metrics of multi-label predictions ``[N, L]`` (labels last; ``[..., L]`` is flattened).

    Args: as :func:`binary_calibration_metrics`, with multi-hot ``labels [N, L]`` and scores of the same shape.

    Returns:
        ``{"per_label": {metric: [L values]}, "macro": {metric: value}, "micro": {metric: value}}`` with the
        metrics of :func:`binary_calibration_metrics`: per label; their mean over the labels with a sample; and
        of every counted (sample, label) pair pooled. ``per_label["n"]`` counts each label's pairs. None where a
        label has no counted pair.
    """
    accumulator = MultilabelCalibrationAccumulator(n_bins, confidence=confidence, ignore_index=ignore_index,
                                                   extra=extra)
    accumulator.update(labels, logits=logits, probs=probs, mask=mask)
    return accumulator.compute()


def multilabel_reliability_bins(labels, *, logits=None, probs=None, n_bins: int = 15, confidence: str = "positive",
                                mask=None, ignore_index: int | None = None) -> list[ReliabilityBins]:
    """Per-label equal-width reliability bins (one
    :class:`~focal_calibration.calibration.metrics.ReliabilityBins` per label), for
    :func:`focal_calibration.plots.label_reliability_diagrams`."""
    accumulator = MultilabelCalibrationAccumulator(n_bins, confidence=confidence, ignore_index=ignore_index,
                                                   adaptive=False)
    accumulator.update(labels, logits=logits, probs=probs, mask=mask)
    return accumulator.bins()


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------

def _bootstrap(labels, logits, probs, n_bins, confidence, mask, ignore_index, n_resamples, seed, extra,
               multilabel) -> tuple[dict, dict, dict]:
    """(per-label ``{name: [n_resamples, L]}``, macro, micro ``{name: [n_resamples]}``) numpy float64 arrays."""
    M = check_n_bins(n_bins)
    extra = check_extra(extra)
    n_resamples = check_int(n_resamples, "n_resamples", 1)
    seed = check_int(seed, "seed", 0)
    stats = label_statistics(labels, logits=logits, probs=probs, mask=mask, ignore_index=ignore_index,
                             confidence=confidence, multilabel=multilabel)
    n, num_labels = stats.confidence.shape
    ordered = ["adaece", *[name for name in extra if name in ORDER_BASED]]
    widest = max(n * num_labels, num_labels * M, num_labels * 4 * SMECE_GRID if "smece" in extra else 0)
    chunk = max(1, constants.BOOTSTRAP_CHUNK_ELEMENTS // widest)
    rng = np.random.Generator(np.random.PCG64(seed))
    parts = []
    for start in range(0, n_resamples, chunk):
        indices = torch.from_numpy(resample_indices(rng, min(chunk, n_resamples - start), n)).to(
            stats.confidence.device)
        weights = count_weights(indices, n)
        per_label, micro = _metrics_of_sums(_summed(stats, M, weights, smece="smece" in extra), "smece" in extra)
        ordered_label, ordered_micro = _ordered_metrics(stats.confidence, stats.correct, stats.valid, ordered, M,
                                                        weights)
        per_label.update(ordered_label)
        micro.update(ordered_micro)
        parts.append((per_label, _macro(per_label), micro))

    def joined(index, name):
        return torch.cat([part[index][name] for part in parts], dim=-1).t().cpu().numpy()

    keys = [name for name in _ordered_keys(parts[0][0], extra) if name != "n"]
    return tuple({name: joined(index, name) for name in keys} for index in range(3))


def multilabel_bootstrap_samples(labels, *, logits=None, probs=None, n_bins: int = 15, confidence: str = "positive",
                                 mask=None, ignore_index: int | None = None, n_resamples: int = 1000, seed: int = 0,
                                 extra=()) -> dict:
    """Bootstrap replicates of :func:`multilabel_calibration_metrics` (without ``n``), resampling samples (rows,
    each with all its labels) exactly as :func:`focal_calibration.bootstrap_samples` does (same ``seed`` and N: the
    same resamples, so two models' replicates are paired).

    Returns:
        ``{"per_label": {metric: [n_resamples, L]}, "macro": {metric: [n_resamples]}, "micro": {...}}`` float64
        arrays; NaN where a label has no counted pair in a resample.
    """
    per_label, macro, micro = _bootstrap(labels, logits, probs, n_bins, confidence, mask, ignore_index, n_resamples,
                                         seed, extra, True)
    return {"per_label": per_label, "macro": macro, "micro": micro}


def multilabel_bootstrap_ci(labels, *, logits=None, probs=None, n_bins: int = 15, confidence: str = "positive",
                            mask=None, ignore_index: int | None = None, n_resamples: int = 1000,
                            level: float = 0.95, seed: int = 0, extra=()) -> dict:
    """Percentile intervals ``(low, high)`` of :func:`multilabel_bootstrap_samples`: ``{"per_label": {metric: [L
    intervals]}, "macro": {metric: interval}, "micro": {...}}``; an interval is None where no replicate is
    defined. ``level``: the interval's confidence level (named so as not to clash with ``confidence=``)."""
    level = check_probability_level(level, "level")
    samples = multilabel_bootstrap_samples(labels, logits=logits, probs=probs, n_bins=n_bins, confidence=confidence,
                                           mask=mask, ignore_index=ignore_index, n_resamples=n_resamples, seed=seed,
                                           extra=extra)
    return {"per_label": {name: [percentile_interval(column, level) for column in values.T]
                          for name, values in samples["per_label"].items()},
            "macro": {name: percentile_interval(values, level) for name, values in samples["macro"].items()},
            "micro": {name: percentile_interval(values, level) for name, values in samples["micro"].items()}}


def binary_bootstrap_samples(labels, *, logits=None, probs=None, n_bins: int = 15, confidence: str = "positive",
                             mask=None, ignore_index: int | None = None, n_resamples: int = 1000, seed: int = 0,
                             extra=()) -> dict[str, np.ndarray]:
    """Bootstrap replicates of :func:`binary_calibration_metrics` (without ``n``): ``{metric: [n_resamples]}``,
    resamples as :func:`focal_calibration.bootstrap_samples`."""
    per_label, _, _ = _bootstrap(labels, logits, probs, n_bins, confidence, mask, ignore_index, n_resamples, seed,
                                 extra, False)
    return {name: values[:, 0] for name, values in per_label.items()}


def binary_bootstrap_ci(labels, *, logits=None, probs=None, n_bins: int = 15, confidence: str = "positive",
                        mask=None, ignore_index: int | None = None, n_resamples: int = 1000, level: float = 0.95,
                        seed: int = 0, extra=()) -> dict:
    """Percentile intervals of :func:`binary_bootstrap_samples` (None where no replicate is defined); ``level``:
    the interval's confidence level."""
    level = check_probability_level(level, "level")
    samples = binary_bootstrap_samples(labels, logits=logits, probs=probs, n_bins=n_bins, confidence=confidence,
                                       mask=mask, ignore_index=ignore_index, n_resamples=n_resamples, seed=seed,
                                       extra=extra)
    return {name: percentile_interval(values, level) for name, values in samples.items()}
