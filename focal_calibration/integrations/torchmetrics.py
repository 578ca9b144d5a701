"""``torchmetrics.Metric`` classes for the paper's calibration errors, over the streaming accumulators (same numbers
as the functions on all the samples at once):

* multi-class (softmax): :class:`MulticlassCalibrationError`, :class:`MulticlassCalibrationMetrics` over
  :class:`~focal_calibration.calibration.metrics.CalibrationAccumulator`
  (:func:`~focal_calibration.calibration.metrics.calibration_metrics`);
* binary and multi-label (sigmoid): :class:`BinaryCalibrationError`, :class:`MultilabelCalibrationError` over
  :class:`~focal_calibration.calibration.multilabel.BinaryCalibrationAccumulator` /
  :class:`~focal_calibration.calibration.multilabel.MultilabelCalibrationAccumulator`
  (:func:`~focal_calibration.calibration.multilabel.binary_calibration_metrics`,
  :func:`~focal_calibration.calibration.multilabel.multilabel_calibration_metrics`).

The metric's state is the accumulator's: per-bin sums (count, Σ confidence, number correct; per class and bin for
the classwise ECE, per label and bin for multi-label) and a few sums, each registered with ``dist_reduce_fx="sum"``,
so memory grows with the bins, not with the samples, and a distributed ``compute()`` sums them over processes.
Metrics defined by the global order of the confidences cannot be streamed as sums: AdaECE (equal-mass bins), KS,
ECE-sweep and the debiased L2-ECE keep every sample's (confidence, correct) pair -- and for the sigmoid metrics
whether the pair counts -- in ``dist_reduce_fx="cat"`` states (5 bytes per fp32 sample; 6 per (sample, label)).

=====================  ========================================  ==========================================
``metric=``            state                                     memory
=====================  ========================================  ==========================================
``ece``, ``mce``       3 × ``n_bins`` sums (× ``L`` labels)       bins
``classwise_ece``      3 × ``K · n_bins`` sums                    bins (multi-class; needs ``num_classes``)
``smece``              sums on a fixed grid (× ``L``)             bins (grid)
``adaece``, ``ks``,    the samples                               5-6 bytes per sample (``cat``)
``ece_sweep``,
``debiased_l2_ece``
=====================  ========================================  ==========================================

Inputs follow torchmetrics: multi-class ``preds`` ``[N, C]`` or ``[N, C, ...]`` (classes on ``class_dim``, default
1), ``target`` ``[N]`` / ``[N, ...]`` class indices; binary ``preds`` and 0 / 1 ``target`` of one shape; multi-label
``[N, L]`` / ``[N, L, ...]`` (labels on ``label_dim``, default 1). Scores are logits (``input="logits"``, the
default) or probabilities (``input="probs"``): nothing is guessed from the values. The bins are the paper's
``((i-1)/M, i/M]``; torchmetrics' own ``MulticlassCalibrationError`` / ``BinaryCalibrationError`` bin
``[(i-1)/M, i/M)``, so the two agree except for confidences exactly on a bin edge (see
``docs/guide/binary-multilabel.md``).
"""

from __future__ import annotations

import math

import torch

from focal_calibration.calibration.metrics import CalibrationAccumulator
from focal_calibration.calibration.multilabel import (CONFIDENCES, BinaryCalibrationAccumulator,
                                                      MultilabelCalibrationAccumulator)
from focal_calibration.integrations import _missing_extra
from focal_calibration.validation import as_tensor, check_choice, check_int

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as error:  # pragma: no cover - exercised by simulating the missing package
    raise ImportError(_missing_extra("torchmetrics", "torchmetrics", "torchmetrics")) from error

__all__ = ["MulticlassCalibrationError", "MulticlassCalibrationMetrics", "BinaryCalibrationError",
           "MultilabelCalibrationError", "MULTICLASS_METRICS", "LABEL_METRICS", "LABEL_AVERAGES"]

# metric -> the accumulator settings that compute it and nothing more
_SETTINGS = {
    "ece": {}, "mce": {},
    "classwise_ece": {"classwise": True},
    "adaece": {"adaptive": True},
    **{name: {"extra": (name,)} for name in ("smece", "ks", "ece_sweep", "debiased_l2_ece")},
}
MULTICLASS_METRICS = tuple(_SETTINGS)
LABEL_METRICS = tuple(name for name in _SETTINGS if name != "classwise_ece")
LABEL_AVERAGES = ("macro", "micro", "none")
_INPUTS = ("logits", "probs")


def _move_dim(preds, dim: int, name: str) -> torch.Tensor:
    """``preds`` as a tensor with dimension ``dim`` (the option ``name``) moved last."""
    preds = as_tensor(preds, "preds")
    if preds.dim() < 1 or not -preds.dim() <= dim < preds.dim():
        raise ValueError(f"{name}={dim} is not a dimension of preds (shape {tuple(preds.shape)})")
    return preds.movedim(dim, -1)


class _AccumulatorMetric(Metric):
    """A streaming accumulator's state as metric states: its sums (``dist_reduce_fx="sum"``) and, where it keeps
    them, its samples (``"cat"``). A subclass gives :meth:`_accumulator` and registers the states of an accumulator
    that has seen one batch (:meth:`_register_states`); ``update`` adds a one-batch accumulator (:meth:`_add`) and
    ``compute`` reads :meth:`_synced_accumulator`."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    _SAMPLE_LISTS = ("confidences", "corrects")  # the accumulator's kept samples, one tensor per batch

    def _accumulator(self, **overrides):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _register_states(self, template) -> None:
        """The states of ``template`` (an accumulator after one batch: the state's names, shapes and dtypes)."""
        self._summed = tuple(template.state)
        for name, value in template.state.items():
            self.add_state(name, default=torch.zeros_like(value), dist_reduce_fx="sum")
        self._samples = self._SAMPLE_LISTS if template.keep_samples else ()
        # bool samples travel as uint8 (all_gather takes it on every backend) and come back as bool
        self._bool_samples = {name for name in self._samples if getattr(template, name)[0].dtype == torch.bool}
        for name in self._samples:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _add(self, batch) -> None:
        """Add a one-batch accumulator's state to the metric's."""
        if not batch.state:  # every target was ignore_index
            return
        for name in self._summed:
            setattr(self, name, getattr(self, name) + batch.state[name])
        for name in self._samples:
            value = getattr(batch, name)[0]
            getattr(self, name).append(value.to(torch.uint8) if name in self._bool_samples else value)

    def _synced_accumulator(self):
        """An accumulator holding this metric's (synced) state, ready for its ``compute()``."""
        if float(self.n.sum()) == 0:
            raise ValueError(f"{type(self).__name__}: no samples were accumulated (no update(), or every target was "
                             f"ignore_index={self.ignore_index})")
        accumulator = self._accumulator()
        accumulator.state = {name: getattr(self, name) for name in self._summed}
        for name in self._samples:
            values = dim_zero_cat(getattr(self, name))
            setattr(accumulator, name, [values.bool() if name in self._bool_samples else values])
        return accumulator


class _MulticlassMetric(_AccumulatorMetric):
    """Over :class:`~focal_calibration.calibration.metrics.CalibrationAccumulator`: ``preds`` ``[N, C, ...]``."""

    def __init__(self, *, n_bins: int, num_classes: int | None, ignore_index: int | None, input: str,
                 class_dim: int, classwise: bool, adaptive: bool, extra: tuple, **kwargs):
        super().__init__(**kwargs)
        self.input = check_choice(input, _INPUTS, "input")
        self.class_dim = check_int(class_dim, "class_dim", -64)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        if classwise and self.num_classes is None:
            raise ValueError("the classwise ECE keeps sums per class and bin: give num_classes")
        self.ignore_index = ignore_index
        self._settings = dict(n_bins=n_bins, ignore_index=ignore_index, classwise=classwise, adaptive=adaptive,
                              extra=extra)
        template = self._accumulator(ignore_index=None)  # K only matters classwise
        template.update(torch.zeros(1, dtype=torch.long), logits=torch.zeros(1, self.num_classes or 2))
        self._register_states(template)

    def _accumulator(self, **overrides) -> CalibrationAccumulator:
        return CalibrationAccumulator(**{**self._settings, **overrides})

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``preds`` ``[N, C, ...]`` (classes on ``class_dim``) and ``target`` ``[N, ...]``."""
        scores = _move_dim(preds, self.class_dim, "class_dim")
        if self.num_classes is not None and scores.shape[-1] != self.num_classes:
            raise ValueError(f"preds have {scores.shape[-1]} classes on class_dim={self.class_dim} (shape "
                             f"{tuple(preds.shape)}), but num_classes={self.num_classes}")
        batch = self._accumulator()
        batch.update(as_tensor(target, "target").to(scores.device), **{self.input: scores})
        self._add(batch)

    def _results(self) -> dict:
        """The accumulator's ``compute()`` on this metric's (synced) state."""
        accumulator = self._synced_accumulator()
        accumulator.num_classes = self.num_classes or 0  # only decides whether top-5 error is reported
        return accumulator.compute()


class MulticlassCalibrationError(_MulticlassMetric):
    """One calibration error of multi-class predictions as a ``torchmetrics.Metric`` (a float tensor from
    ``compute()``, so Lightning's ``self.log("val_ece", metric)`` works).

    Args:
        metric: ``"ece"`` (eq. 1; torchmetrics' ``norm="l1"``), ``"mce"`` (eq. 2; ``norm="max"``), ``"adaece"``
            (eq. 3), ``"classwise_ece"``, or one of the extras ``"smece"``, ``"ks"``, ``"ece_sweep"``,
            ``"debiased_l2_ece"`` (see :mod:`focal_calibration.calibration.extra_metrics`). The module docstring says
            which keep bins and which keep samples.
        n_bins: ``M`` (equal-width bins ``((i-1)/M, i/M]``; equal-mass bins for AdaECE).
        num_classes: checked against every batch when given; required for ``"classwise_ece"``.
        ignore_index: targets with this value are skipped.
        input: ``"logits"`` (softmax in log space) or ``"probs"`` (rows summing to 1).
        class_dim: the class dimension of ``preds`` (1, as torchmetrics and ``nn.CrossEntropyLoss``).
        **kwargs: torchmetrics' ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Raises:
        ValueError: from ``compute()`` when no sample was accumulated; from ``update()`` for invalid scores or labels
            (naming the value).
    """

    def __init__(self, metric: str = "ece", n_bins: int = 15, *, num_classes: int | None = None,
                 ignore_index: int | None = None, input: str = "logits", class_dim: int = 1, **kwargs):
        self.metric = check_choice(metric, MULTICLASS_METRICS, "metric")
        settings = {"classwise": False, "adaptive": False, "extra": (), **_SETTINGS[metric]}
        super().__init__(n_bins=n_bins, num_classes=num_classes, ignore_index=ignore_index, input=input,
                         class_dim=class_dim, **settings, **kwargs)

    def compute(self) -> torch.Tensor:
        """The metric over every batch since the last ``reset()`` (synced over processes by torchmetrics)."""
        return torch.tensor(self._results()[self.metric], dtype=torch.get_default_dtype(), device=self.n.device)


class MulticlassCalibrationMetrics(_MulticlassMetric):
    """Every metric of :func:`~focal_calibration.calibration.metrics.calibration_metrics` (accuracy, NLL, Brier, ECE,
    AdaECE, MCE, classwise ECE, S99, entropy, and any ``extra``) as one ``torchmetrics.Metric`` whose ``compute()``
    is a dict of float tensors (log it with ``self.log_dict(metric.compute())``).

    Args:
        n_bins, num_classes, ignore_index, input, class_dim, **kwargs: as :class:`MulticlassCalibrationError`.
        adaptive: include AdaECE (keeps the samples; ``False`` keeps bins only).
        classwise: include the classwise ECE (default: when ``num_classes`` is given).
        extra: names of the metrics beyond the paper to add.

    ``s99_accuracy`` is NaN when no prediction reaches 0.99 (``calibration_metrics`` gives None there).
    """

    def __init__(self, n_bins: int = 15, *, num_classes: int | None = None, ignore_index: int | None = None,
                 input: str = "logits", class_dim: int = 1, adaptive: bool = True, classwise: bool | None = None,
                 extra=(), **kwargs):
        classwise = num_classes is not None if classwise is None else bool(classwise)
        super().__init__(n_bins=n_bins, num_classes=num_classes, ignore_index=ignore_index, input=input,
                         class_dim=class_dim, classwise=classwise, adaptive=bool(adaptive), extra=tuple(extra),
                         **kwargs)

    def compute(self) -> dict:
        """``{name: tensor}`` of the metrics over every batch since the last ``reset()``."""
        dtype, device = torch.get_default_dtype(), self.n.device
        return {name: torch.tensor(float("nan") if value is None else value, dtype=dtype, device=device)
                for name, value in self._results().items()}


class _LabelMetric(_AccumulatorMetric):
    """One calibration error over the sigmoid accumulators of :mod:`focal_calibration.calibration.multilabel`."""

    _SAMPLE_LISTS = ("confidences", "corrects", "valids")
    _ACCUMULATOR = MultilabelCalibrationAccumulator

    def __init__(self, metric: str, n_bins: int, *, input: str, confidence: str, ignore_index: int | None,
                 num_labels: int, **kwargs):
        super().__init__(**kwargs)
        self.metric = check_choice(metric, LABEL_METRICS, "metric")
        self.input = check_choice(input, _INPUTS, "input")
        self.ignore_index = ignore_index
        settings = _SETTINGS[metric]
        self._settings = dict(n_bins=n_bins, confidence=check_choice(confidence, CONFIDENCES, "confidence"),
                              ignore_index=ignore_index, adaptive=settings.get("adaptive", False),
                              extra=settings.get("extra", ()))
        template = self._accumulator(ignore_index=None)
        template.update(torch.zeros(1, num_labels), logits=torch.zeros(1, num_labels))
        self._register_states(template)

    def _accumulator(self, **overrides):
        return self._ACCUMULATOR(**{**self._settings, **overrides})

    def _add_scores(self, scores: torch.Tensor, target, mask) -> None:
        batch = self._accumulator()
        batch.update(as_tensor(target, "target").to(scores.device), mask=mask, **{self.input: scores})
        self._add(batch)


class BinaryCalibrationError(_LabelMetric):
    """One calibration error of binary predictions (one score per sample) as a ``torchmetrics.Metric``: the value
    of :func:`~focal_calibration.calibration.multilabel.binary_calibration_metrics` on every sample since the last
    ``reset()``, as a float tensor (so Lightning's ``self.log("val_ece", metric)`` works).

    Args:
        metric: ``"ece"`` (eq. 1; torchmetrics' ``BinaryCalibrationError(norm="l1")``), ``"mce"`` (eq. 2;
            ``norm="max"``), ``"adaece"`` (eq. 3), or one of the extras ``"smece"``, ``"ks"``, ``"ece_sweep"``,
            ``"debiased_l2_ece"``. ECE, MCE and smECE keep bins (memory independent of the samples); AdaECE (equal-mass
            bins), KS, ECE-sweep and the debiased L2-ECE need the order of all confidences and keep every sample's
            (confidence, correct, counted): 6 bytes per fp32 sample, gathered across processes.
        n_bins: ``M`` (equal-width bins ``((i-1)/M, i/M]``; equal-mass bins for AdaECE).
        input: ``"logits"`` (``p = σ(z)``, in log space; the default) or ``"probs"`` (positive-class probabilities).
            Unlike torchmetrics, which applies a sigmoid when any value lies outside [0, 1], nothing is guessed.
        confidence: ``"positive"`` (``p`` against the target, torchmetrics' convention) or ``"top_label"``
            (``max(p, 1 - p)`` against ``(p > 0.5) == target``); see :mod:`focal_calibration.calibration.multilabel`.
        ignore_index: targets with this value are skipped.
        **kwargs: torchmetrics' ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    ``update(preds, target, mask=None)``: ``preds`` and 0 / 1 ``target`` of the same shape (any; flattened), ``mask``
    (bool, that shape) drops samples.

    Raises:
        ValueError: from ``compute()`` when no sample was accumulated; from ``update()`` for a target other than 0 / 1,
            a non-finite logit or a probability outside [0, 1] (naming the value), or mismatched shapes.
    """

    _ACCUMULATOR = BinaryCalibrationAccumulator

    def __init__(self, metric: str = "ece", n_bins: int = 15, *, input: str = "logits", confidence: str = "positive",
                 ignore_index: int | None = None, **kwargs):
        super().__init__(metric, n_bins, input=input, confidence=confidence, ignore_index=ignore_index,
                         num_labels=1, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add one batch: ``preds`` (logits or probabilities) and 0 / 1 ``target`` of the same shape."""
        self._add_scores(as_tensor(preds, "preds"), target, mask)

    def compute(self) -> torch.Tensor:
        """The metric over every sample since the last ``reset()`` (synced over processes by torchmetrics)."""
        value = self._synced_accumulator().compute()[self.metric]
        return torch.tensor(value, dtype=torch.get_default_dtype(), device=self.n.device)


class MultilabelCalibrationError(_LabelMetric):
    """One calibration error of multi-label predictions (``num_labels`` sigmoid outputs per sample, multi-hot
    targets) as a ``torchmetrics.Metric``: the value of
    :func:`~focal_calibration.calibration.multilabel.multilabel_calibration_metrics` on every sample since the last
    ``reset()``.

    Args:
        num_labels: ``L``; every batch must have it on ``label_dim``.
        metric, n_bins, input, confidence, ignore_index, **kwargs: as :class:`BinaryCalibrationError` (the same
            metrics keep bins -- per label, ``[L, M]`` sums -- or samples).
        average: ``"macro"`` (the default: the mean of the per-label values over the labels with a counted sample),
            ``"micro"`` (every counted (sample, label) pair pooled into one binary problem) or ``"none"`` (a ``[L]``
            tensor of per-label values, NaN for a label without counted samples; log it with ``self.log_dict`` of
            its items, since ``self.log`` takes scalars).
        label_dim: the label dimension of ``preds`` and ``target`` (1: ``[N, L]`` / ``[N, L, ...]``, as torchmetrics'
            multi-label metrics); the other dimensions are samples.

    ``update(preds, target, mask=None)``: ``preds`` and 0 / 1 ``target`` of the same shape, ``mask`` (bool, that
    shape) drops single (sample, label) pairs.

    Raises:
        ValueError: as :class:`BinaryCalibrationError`, and for a batch without ``num_labels`` labels on
            ``label_dim``.
    """

    def __init__(self, num_labels: int, metric: str = "ece", n_bins: int = 15, *, average: str = "macro",
                 input: str = "logits", confidence: str = "positive", ignore_index: int | None = None,
                 label_dim: int = 1, **kwargs):
        self.num_labels = check_int(num_labels, "num_labels", 1)
        self.average = check_choice(average, LABEL_AVERAGES, "average")
        self.label_dim = check_int(label_dim, "label_dim", -64)
        super().__init__(metric, n_bins, input=input, confidence=confidence, ignore_index=ignore_index,
                         num_labels=self.num_labels, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add one batch: ``preds`` ``[N, L, ...]`` (labels on ``label_dim``) and 0 / 1 ``target`` of that shape."""
        scores = _move_dim(preds, self.label_dim, "label_dim")
        if scores.shape[-1] != self.num_labels:
            raise ValueError(f"preds have {scores.shape[-1]} labels on label_dim={self.label_dim} (shape "
                             f"{tuple(preds.shape)}), but num_labels={self.num_labels}")
        target = as_tensor(target, "target")
        if target.shape != preds.shape:
            raise ValueError(f"shape mismatch: preds have shape {tuple(preds.shape)}, target {tuple(target.shape)}")
        if mask is not None:
            mask = as_tensor(mask, "mask")
            if mask.shape != preds.shape:
                raise ValueError(f"mask must have the preds' shape {tuple(preds.shape)}, got {tuple(mask.shape)}")
            mask = mask.movedim(self.label_dim, -1)
        self._add_scores(scores, target.movedim(self.label_dim, -1), mask)

    def compute(self) -> torch.Tensor:
        """The metric (a scalar; ``[L]`` with ``average="none"``) over every sample since the last ``reset()``."""
        results = self._synced_accumulator().compute()
        value = results["per_label" if self.average == "none" else self.average][self.metric]
        value = [math.nan if v is None else v for v in value] if self.average == "none" else (
            math.nan if value is None else value)
        return torch.tensor(value, dtype=torch.get_default_dtype(), device=self.n.device)
