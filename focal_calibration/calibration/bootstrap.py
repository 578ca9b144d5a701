"""Bootstrap uncertainty of the calibration metrics: resample the test set's rows with replacement.

Every metric of :func:`focal_calibration.calibration_metrics` (and its ``extra`` metrics) is computed on
``n_resamples`` resamples of the N test rows, vectorised over resamples. A resample is described by its multinomial
count weights ``w [N]`` (how often each row was drawn, summing to N; a chunk of C resamples is ``[N, C]``), and each
metric is written as a weighted sum over the original rows:

* accuracy, top-5, NLL, Brier, entropy, S99: ``w @ per-row value / N`` (one matrix product for all of them);
* ECE (eq. 1) / MCE (eq. 2): per-bin sums ``sum_i w_i 1[bin_i = b] x_i`` (``index_add`` over the rows' bins);
* classwise ECE: the label's (class, bin) counts and the listed ``p_k > 1/M`` as sparse scatters, the class totals
  ``w @ P`` (the first bin is total minus upper bins, as in :mod:`focal_calibration.calibration.metrics`);
* AdaECE (eq. 3): sort the confidences once. A row drawn ``w_i`` times is ``w_i`` consecutive ranks of the resample,
  so with tie groups (equal confidences, contiguous in sorted order) of weight ``W_g`` and gap
  ``G_g = sum_{i in g} w_i (correct_i - conf_i)``, the cumulative gap over the first ``x`` ranks is piecewise linear
  in ``x`` (each rank of group g adds ``G_g / W_g``: the tie convention of metrics.py, the group's mean correctness).
  Bin b holds ranks ``[ceil(bM/N)... )``, i.e. ranks r with ``floor(r M / N) = b``; its gap is the cumulative gap at its
  upper boundary minus that at its lower one (one batched ``searchsorted`` per chunk;
  :class:`focal_calibration.calibration.extra_metrics.SortedGroups`, shared with KS, ECE-sweep and the debiased L2
  error).

These equal :func:`calibration_metrics` on the explicitly resampled rows up to float64 rounding (tested).

**Resamples.** Replicate j uses row indices drawn by ``numpy.random.Generator(PCG64(seed)).integers(0, N, (n_resamples,
N))`` (int64), row j. They depend only on ``(seed, N)`` and j — not on the scores, the labels, K, ``n_bins`` or the
chunking — so two models evaluated on the same test set with the same seed get the same resamples: the paired
bootstrap distribution of a difference is the difference of the two :func:`bootstrap_samples` arrays. (A larger
``n_resamples`` extends the same sequence; ``scipy.stats.bootstrap`` with ``rng=numpy.random.default_rng(seed)`` and
no ``batch`` draws the same indices.)

**Undefined replicates.** ``s99_accuracy`` of a resample with no S99 sample is NaN in :func:`bootstrap_samples`;
:func:`bootstrap_ci` computes each interval over the defined (non-NaN) replicates and gives None when there are none.
An NLL replicate is +inf when a given probability ``p_y`` is exactly 0 in that resample.

**Memory.** Resamples are processed in chunks of ``C = max(1, 2**21 // max(N, E, K * M))`` (E = the number of
``p_k > 1/M``, fewer than ``N * M``; with ``smece`` also ``4 * 2048``), so each chunk-sized float64 array has at most
``2**21`` elements (16 MiB) plus one resample; about ten such arrays live at once (~160 MiB), besides the
probabilities themselves (``N x K`` in the compute dtype) and the per-row statistics.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from focal_calibration import constants
from focal_calibration.calibration.extra_metrics import (SMECE_GRID, SortedGroups, adaptive_ece_weighted, check_extra,
                                                         extra_metrics)
from focal_calibration.calibration.metrics import (S99_THRESHOLD, bin_index, ece_from_sums, probabilities,
                                                   sample_statistics)
from focal_calibration.validation import check_int, check_n_bins, check_probability_level, compute_dtype, prepare_scores

__all__ = ["bootstrap_ci", "bootstrap_samples"]



def resample_indices(rng: np.random.Generator, n_resamples: int, n_rows: int) -> np.ndarray:
    """The next ``n_resamples`` resamples' row indices ``[n_resamples, N]``. int64 draws consume the generator's
    stream in order, so drawing in chunks gives the same indices as one draw of all of them."""
    return rng.integers(0, n_rows, size=(n_resamples, n_rows), dtype=np.int64)


def count_weights(indices: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Multinomial count weights ``w [N, C]`` (float64; column c = resample c) of resample indices ``[C, N]``: how
    often each row was drawn."""
    chunk = indices.shape[0]
    flat = indices * chunk + torch.arange(chunk, device=indices.device)[:, None]
    return torch.bincount(flat.view(-1), minlength=n_rows * chunk).view(n_rows, chunk).to(torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# Weighted metrics: each takes count weights w [N, C] and returns float64 [C]
# ----------------------------------------------------------------------------------------------------------------

def weighted_bin_sums(weights: torch.Tensor, bins: torch.Tensor, values: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``out[b, c] = sum_i w[i, c] * values[i] * 1[bins[i] = b]`` (values None: counts), ``[n_bins, C]``."""
    weighted = weights if values is None else weights * values[:, None]
    return torch.zeros(n_bins, weights.shape[1], dtype=torch.float64, device=weights.device).index_add_(
        0, bins, weighted)


class _ClasswiseBins:
    """Weighted classwise ECE: sparse (class, bin) scatters for the labels and the listed ``p_k > 1/M``, dense ``w @ P``
    for the class totals."""

    def __init__(self, stats, labels: torch.Tensor, probs: torch.Tensor, n_bins: int):
        num_classes = probs.shape[1]
        self.n_bins, self.num_classes = n_bins, num_classes
        self.label_bin = stats.label_class_bin(labels, n_bins)
        self.upper_bin = stats.upper_class_bin(num_classes, n_bins)
        self.upper_row = stats.upper_row(num_classes)
        self.upper_value = stats.upper_value.to(torch.float64)
        self.probs = probs
        self.n = probs.shape[0]

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        K, M = self.num_classes, self.n_bins
        label_count = weighted_bin_sums(weights, self.label_bin, None, K * M).view(K, M, -1)
        prob_sum = weighted_bin_sums(weights.index_select(0, self.upper_row), self.upper_bin, self.upper_value,
                                     K * M).view(K, M, -1)
        rows_per_chunk = max(1, constants.BOOTSTRAP_PROB_CHUNK_ELEMENTS // K)
        total = sum(self.probs[start:start + rows_per_chunk].to(torch.float64).t()
                    @ weights[start:start + rows_per_chunk] for start in range(0, self.n, rows_per_chunk))
        prob_sum[:, 0] = total - prob_sum[:, 1:].sum(1)  # first bin = class total - upper bins
        return (label_count - prob_sum).abs().sum(1).mean(0) / self.n


def _probabilities_of(scores: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """The ``N x K`` probabilities as calibration_metrics computes them (compute dtype), in row chunks."""
    dtype = compute_dtype(scores.dtype)
    rows = max(1, constants.BOOTSTRAP_PROB_CHUNK_ELEMENTS // scores.shape[1])
    return torch.cat([probabilities(scores[start:start + rows].to(dtype), from_logits)[0]
                      for start in range(0, scores.shape[0], rows)])


# ----------------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def bootstrap_samples(labels, *, logits=None, probs=None, n_bins: int = 15, n_resamples: int = 1000,
                      seed: int = 0, extra=()) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every numeric metric of :func:`calibration_metrics` (its keys, without ``n``).

    Args:
        labels: integer class indices ``[N]`` (or any leading shape, flattened like the scores).
        logits: ``[..., K]`` scores (give exactly one of ``logits`` / ``probs``), as for
            :func:`calibration_metrics`.
        probs: ``[..., K]`` probabilities.
        n_bins: ``M`` for the equal-width and equal-mass bins.
        n_resamples: number of resamples (each N rows drawn with replacement).
        seed: seeds the resampling; the resamples depend only on ``(seed, N, n_resamples)`` (see the module docstring:
            the same seed on the same test set gives paired replicates for two models).
        extra: metrics beyond the paper, as for :func:`calibration_metrics` (``ks``, ``ece_sweep`` and
            ``debiased_l2_ece`` are weighted sums over the sorted samples; ``ece_sweep`` sweeps bin counts in blocks
            and ``smece`` bisects its width, each vectorised over the resamples of a chunk).

    Returns:
        ``{metric: float64 array [n_resamples]}``; ``s99_accuracy`` is NaN for a resample with no S99 sample.
    """
    M = check_n_bins(n_bins)
    extra = check_extra(extra)
    n_resamples = check_int(n_resamples, "n_resamples", 1)
    seed = check_int(seed, "seed", 0)
    scores, labels, from_logits = prepare_scores(labels, logits, probs, None)
    stats = sample_statistics(scores, labels, from_logits, M, classwise=True)  # validates the scores
    n, num_classes = scores.shape
    device = scores.device
    f64 = torch.float64

    # Per-row values whose weighted mean is a metric; NLL keeps its infinite rows (p_y = 0) apart, as 0 * inf = NaN.
    log_p_label = stats.log_p_label.to(f64)
    infinite = torch.isinf(log_p_label)
    s99 = stats.confidence >= S99_THRESHOLD
    columns = {
        "accuracy": stats.correct.to(f64),
        "top5": (stats.rank < 5).to(f64) if stats.rank is not None else None,
        "nll": torch.where(infinite, torch.zeros_like(log_p_label), -log_p_label),
        "nll_infinite": infinite.to(f64),
        "brier": stats.brier(),
        "entropy": -stats.neg_entropy.to(f64),
        "s99": s99.to(f64),
        "s99_correct": (s99 & stats.correct).to(f64),
    }
    columns = {name: value for name, value in columns.items() if value is not None}
    per_row = torch.stack(list(columns.values()), 1)
    column = {name: index for index, name in enumerate(columns)}
    confidence64 = stats.confidence.to(f64)
    correct64 = stats.correct.to(f64)
    equal_width_bin = bin_index(stats.confidence, M)
    groups = SortedGroups(stats.confidence, stats.correct)
    classwise = _ClasswiseBins(stats, labels, _probabilities_of(scores, from_logits), M)

    widest = max(n, stats.upper_value.numel(), num_classes * M, 4 * SMECE_GRID if "smece" in extra else 0)
    chunk = max(1, constants.BOOTSTRAP_CHUNK_ELEMENTS // widest)
    rng = np.random.Generator(np.random.PCG64(seed))
    parts = []
    for start in range(0, n_resamples, chunk):
        indices = torch.from_numpy(resample_indices(rng, min(chunk, n_resamples - start), n)).to(device)
        weights = count_weights(indices, n)
        del indices
        sums = (per_row.t() @ weights).t()  # [C, columns]
        cumulative = groups.cumulative(weights)
        count = weighted_bin_sums(weights, equal_width_bin, None, M).t()
        ece, mce = ece_from_sums(count, weighted_bin_sums(weights, equal_width_bin, confidence64, M).t(),
                                 weighted_bin_sums(weights, equal_width_bin, correct64, M).t())
        accuracy = sums[:, column["accuracy"]] / n
        s99_count = sums[:, column["s99"]]
        part = {
            "accuracy": accuracy,
            "error": 1 - accuracy,
            "top5_error": 1 - sums[:, column["top5"]] / n if "top5" in column else None,
            "nll": torch.where(sums[:, column["nll_infinite"]] > 0, math.inf, sums[:, column["nll"]] / n),
            "brier": sums[:, column["brier"]] / n,
            "ece": ece,
            "adaece": adaptive_ece_weighted(groups, weights, M, cumulative),
            "mce": mce,
            "classwise_ece": classwise(weights),
            "s99": s99_count / n,
            "s99_accuracy": torch.where(s99_count > 0, sums[:, column["s99_correct"]] / s99_count.clamp(min=1),
                                        math.nan),
            "entropy": sums[:, column["entropy"]] / n,
            **extra_metrics(extra, stats.confidence, stats.correct, M, weights, groups=groups, cumulative=cumulative),
        }
        parts.append({key: value for key, value in part.items() if value is not None})
    return {key: torch.cat([part[key] for part in parts]).cpu().numpy() for key in parts[0]}


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile interval ``(q_{(1-c)/2}, q_{(1+c)/2})`` of the defined (non-NaN) values, with the linear
    interpolation of ``numpy.quantile`` (as ``scipy.stats.bootstrap(method="percentile")``); None if none is defined.
    An end point that lies between two +inf replicates (NLL) is +inf (numpy would give NaN there: inf + 0 * nan)."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None
    with np.errstate(invalid="ignore"):  # inf - inf
        low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return (math.inf if math.isnan(low) else float(low)), (math.inf if math.isnan(high) else float(high))


def bootstrap_ci(labels, *, logits=None, probs=None, n_bins: int = 15, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, extra=()) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals for every numeric metric of :func:`calibration_metrics` (its keys without n).

    The interval of a metric is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (linear
    interpolation) of its :func:`bootstrap_samples` replicates with the same arguments, computed over the replicates
    where it is defined; None when it is defined in none (``s99_accuracy`` when no resample has an S99 sample).
    """
    confidence = check_probability_level(confidence)
    samples = bootstrap_samples(labels, logits=logits, probs=probs, n_bins=n_bins, n_resamples=n_resamples,
                                seed=seed, extra=extra)
    return {key: percentile_interval(values, confidence) for key, values in samples.items()}
