"""``torchmetrics.Metric`` classes for the paper's calibration errors, over the streaming
:class:`~focal_calibration.calibration.metrics.CalibrationAccumulator` (same numbers as
:func:`~focal_calibration.calibration.metrics.calibration_metrics` on all the samples at once).

The metric's state is the accumulator's: per-bin sums (count, Σ confidence, number correct; per class and bin for
the classwise ECE) and a few scalar sums, each registered with ``dist_reduce_fx="sum"``, so memory grows with the
bins, not with the samples, and a distributed ``compute()`` sums them over processes. Metrics defined by the global
order of the confidences cannot be streamed as sums: AdaECE (equal-mass bins), KS, ECE-sweep and the debiased L2-ECE
keep every sample's (confidence, correct) pair (5 bytes per fp32 sample) in ``dist_reduce_fx="cat"`` states.

=====================  ======================  =========================================================
``metric=``            state                   memory
=====================  ======================  =========================================================
``ece``, ``mce``       3 × ``n_bins`` sums     bins
``classwise_ece``      3 × ``K · n_bins`` sums bins (needs ``num_classes``)
``smece``              sums on a fixed grid    bins (grid)
``adaece``, ``ks``,    the samples             5 bytes per sample (``cat``)
``ece_sweep``,
``debiased_l2_ece``
=====================  ======================  =========================================================

Inputs follow torchmetrics: ``preds`` ``[N, C]`` or ``[N, C, ...]`` (classes on ``class_dim``, default 1) as logits
(``input="logits"``, the default) or probabilities (``input="probs"``), ``target`` ``[N]`` / ``[N, ...]`` class
indices. The bins are the paper's ``((i-1)/M, i/M]``; torchmetrics' own ``MulticlassCalibrationError`` bins
``[(i-1)/M, i/M)``, so the two agree except for confidences exactly on a bin edge.
"""

from __future__ import annotations

import torch

from focal_calibration.calibration.metrics import CalibrationAccumulator
from focal_calibration.integrations import _missing_extra
from focal_calibration.validation import as_tensor, check_choice, check_int

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as error:  # pragma: no cover - exercised by simulating the missing package
    raise ImportError(_missing_extra("torchmetrics", "torchmetrics", "torchmetrics")) from error

__all__ = ["MulticlassCalibrationError", "MulticlassCalibrationMetrics", "MULTICLASS_METRICS"]

# metric -> the accumulator settings that compute it and nothing more
_SETTINGS = {
    "ece": {}, "mce": {},
    "classwise_ece": {"classwise": True},
    "adaece": {"adaptive": True},
    **{name: {"extra": (name,)} for name in ("smece", "ks", "ece_sweep", "debiased_l2_ece")},
}
MULTICLASS_METRICS = tuple(_SETTINGS)
_INPUTS = ("logits", "probs")


class _AccumulatorMetric(Metric):
    """The accumulator's state as metric states: its sums (``sum``) and, where needed, its samples (``cat``)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, *, n_bins: int, num_classes: int | None, ignore_index: int | None, input: str,
                 class_dim: int, classwise: bool, adaptive: bool, extra: tuple, **kwargs):
        super().__init__(**kwargs)
        self.input = check_choice(input, _INPUTS, "input")
        self.class_dim = check_int(class_dim, "class_dim", -64)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        if classwise and self.num_classes is None:
            raise ValueError("the classwise ECE keeps sums per class and bin: give num_classes")
        self._settings = dict(n_bins=n_bins, ignore_index=ignore_index, classwise=classwise, adaptive=adaptive,
                              extra=extra)
        # the state's names, shapes and dtypes are the accumulator's after one batch (K only matters classwise)
        template = CalibrationAccumulator(**{**self._settings, "ignore_index": None})
        k = self.num_classes or 2
        template.update(torch.zeros(1, dtype=torch.long), logits=torch.zeros(1, k))
        self._summed = tuple(template.state)
        for name, value in template.state.items():
            self.add_state(name, default=torch.zeros_like(value), dist_reduce_fx="sum")
        self._keeps_samples = template.keep_samples
        if self._keeps_samples:
            self.add_state("confidences", default=[], dist_reduce_fx="cat")
            self.add_state("corrects", default=[], dist_reduce_fx="cat")  # uint8: gathers on every backend

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``preds`` ``[N, C, ...]`` (classes on ``class_dim``) and ``target`` ``[N, ...]``."""
        preds = as_tensor(preds, "preds")
        if preds.dim() < 1 or not -preds.dim() <= self.class_dim < preds.dim():
            raise ValueError(f"class_dim={self.class_dim} is not a dimension of preds (shape {tuple(preds.shape)})")
        scores = preds.movedim(self.class_dim, -1)
        if self.num_classes is not None and scores.shape[-1] != self.num_classes:
            raise ValueError(f"preds have {scores.shape[-1]} classes on class_dim={self.class_dim} (shape "
                             f"{tuple(preds.shape)}), but num_classes={self.num_classes}")
        batch = CalibrationAccumulator(**self._settings)
        batch.update(as_tensor(target, "target").to(scores.device), **{self.input: scores})
        if not batch.state:  # every target was ignore_index
            return
        for name in self._summed:
            setattr(self, name, getattr(self, name) + batch.state[name])
        if self._keeps_samples:
            self.confidences.append(batch.confidences[0])
            self.corrects.append(batch.corrects[0].to(torch.uint8))

    def _results(self) -> dict:
        """The accumulator's ``compute()`` on this metric's (synced) state."""
        if int(self.n) == 0:
            raise ValueError(f"{type(self).__name__}: no samples were accumulated (no update(), or every target was "
                             f"ignore_index={self._settings['ignore_index']})")
        accumulator = CalibrationAccumulator(**self._settings)
        accumulator.state = {name: getattr(self, name) for name in self._summed}
        accumulator.num_classes = self.num_classes or 0  # only decides whether top-5 error is reported
        if self._keeps_samples:
            accumulator.confidences = [dim_zero_cat(self.confidences)]
            accumulator.corrects = [dim_zero_cat(self.corrects).bool()]
        return accumulator.compute()


class MulticlassCalibrationError(_AccumulatorMetric):
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


class MulticlassCalibrationMetrics(_AccumulatorMetric):
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
