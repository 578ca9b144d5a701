"""The one validation module: every check of the package's inputs, the input preparation built on them, and the
compute dtype.

Every check raises ``ValueError`` (or ``TypeError`` for wrong types) with a message that names the bad value, so a
user never gets a NaN, a silently wrong number or an index error from deep inside torch.

Shape and dtype checks cost nothing and always run. Checks that must read tensor *values* (label range, finite
logits) would force a host synchronisation on an accelerator, so inside the training losses they run on CPU tensors
only, unless ``FOCAL_CALIBRATION_CHECKS=1`` is set or :func:`set_value_checks` turns them on everywhere (the metrics
and temperature scaling always check: they run once per evaluation, not per step).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

__all__ = ["set_value_checks", "value_checks_enabled", "as_tensor", "check_int", "check_number",
           "check_nonnegative_number", "check_probability_level", "check_grid", "parse_finite_number", "check_choice",
           "check_reduction", "check_n_bins", "flatten_scores_and_labels", "check_labels_in_range", "check_finite",
           "compute_dtype", "prepare_focal_inputs", "prepare_gamma", "prepare_scores"]

__all__ = ["set_value_checks", "value_checks_enabled", "as_tensor", "check_int", "check_number",
           "check_nonnegative_number", "check_probability_level", "check_grid", "parse_finite_number", "check_choice",
           "check_reduction", "check_n_bins", "flatten_scores_and_labels", "check_labels_in_range", "check_finite",
           "compute_dtype", "prepare_focal_inputs", "prepare_gamma", "prepare_scores"]

_VALUE_CHECKS_ON_ACCELERATORS = os.environ.get("FOCAL_CALIBRATION_CHECKS", "0") not in ("", "0", "false", "False")


def set_value_checks(on_accelerators: bool) -> None:
    """Turn value checks (label range, finite logits) in the losses on or off for CUDA/MPS tensors."""
    global _VALUE_CHECKS_ON_ACCELERATORS
    _VALUE_CHECKS_ON_ACCELERATORS = bool(on_accelerators)


def value_checks_enabled(t: torch.Tensor) -> bool:
    """Whether a loss may read ``t``'s values for validation without a costly host sync."""
    return t.is_cpu or _VALUE_CHECKS_ON_ACCELERATORS


def as_tensor(x, name: str) -> torch.Tensor:
    """Accept a torch tensor or anything numpy understands; never copy a tensor that is already one."""
    if isinstance(x, torch.Tensor):
        return x
    if x is None:
        raise ValueError(f"{name} must be given, got None")
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be numeric, got an object array")
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_int(value, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer (Python or NumPy, not bool) >= ``minimum`` (and <= ``maximum``); else a ValueError naming ``name``
    and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


def check_number(value, name: str) -> float:
    """A finite real number (TypeError for a non-number, ValueError for NaN / inf), as a float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def check_probability_level(value, name: str = "confidence") -> float:
    """A level strictly between 0 and 1 (an interval's confidence, a probability threshold)."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0 < level < 1:  # also rejects NaN
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return level


def check_grid(values, name: str, *, default: np.ndarray, allow_zero: bool = False) -> np.ndarray:
    """A non-empty grid of finite numbers > 0 (>= 0 with ``allow_zero``), sorted ascending without repeats;
    ``default`` (copied) when ``values`` is None."""
    if values is None:
        return np.array(default, dtype=np.float64)
    grid = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ValueError(f"{name} must not be empty")
    ok = np.isfinite(grid) & ((grid >= 0) if allow_zero else (grid > 0))
    if not ok.all():
        raise ValueError(f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {float(grid[~ok][0])}")
    return np.unique(grid)


def check_nonnegative_number(value, name: str) -> float:
    """A Python/NumPy real number >= 0 (e.g. gamma, alpha, lambda)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def parse_finite_number(text: str) -> float:
    """A number written in a loss spec (``"0.05"``, ``"1e-3"``); a ``ValueError`` saying why not (the caller adds
    the spec)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def check_choice(value, choices, name: str):
    """``value`` if it is one of ``choices``; else a ValueError naming the option, the choices and the value."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_reduction(reduction: str) -> str:
    """``"mean"``, ``"sum"`` or ``"none"``, as ``nn.CrossEntropyLoss``'s ``reduction``."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_n_bins(n_bins) -> int:
    """The number of bins of a calibration metric: an integer >= 1."""
    return check_int(n_bins, "n_bins", 1)


def flatten_scores_and_labels(scores: torch.Tensor, labels: torch.Tensor, *, scores_name: str = "logits",
                              labels_name: str = "target") -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and flatten ``scores[..., K]`` / ``labels[...]`` to ``[N, K]`` / ``[N]``.

    Classes are on the last dimension (fairseq's layout), so any leading batch shape works.
    """
    if not scores.is_floating_point():
        raise TypeError(f"{scores_name} must be a floating-point tensor, got dtype {scores.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{labels_name} must hold integer class indices, got dtype {labels.dtype}")
    if scores.dim() < 1:
        raise ValueError(f"{scores_name} must have a class dimension (shape [..., K]), got a 0-d tensor")
    if scores.shape[:-1] != labels.shape:
        raise ValueError(
            f"shape mismatch: {scores_name} has shape {tuple(scores.shape)} (classes last), so {labels_name} must have "
            f"shape {tuple(scores.shape[:-1])}, got {tuple(labels.shape)}")
    num_classes = scores.shape[-1]
    if num_classes < 1:
        raise ValueError(f"{scores_name} must have at least one class, got shape {tuple(scores.shape)}")
    if scores.dim() == 2:  # already flat: a reshape would still add a view (and a backward node) per call
        return scores, labels
    return scores.reshape(-1, num_classes), labels.reshape(-1)


def check_labels_in_range(labels: torch.Tensor, num_classes: int, ignore_index: int | None, name: str = "target"):
    """Raise naming the first offending label (one host sync; callers decide when it is affordable)."""
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    bad = (valid < 0) | (valid >= num_classes)
    if bool(bad.any()):
        first = int(valid[bad][0])
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(f"{name} holds class index {first}, outside [0, {num_classes - 1}]{extra}")


def check_finite(values: torch.Tensor, name: str):
    """Raise if any value is NaN or +-inf, naming the first one."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = values[~finite][0]
        raise ValueError(f"{name} must be finite, got {float(bad)}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the core computes in: float64 stays float64; float32, float16 and bfloat16 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare_focal_inputs(logits, target, gamma, ignore_index, caller: str, *, check_labels: bool = True):
    """Validate and flatten the inputs of a focal loss: ``logits [N, K]``, ``target [N]`` and γ (a checked number,
    a flattened detached per-sample tensor, or a policy callable). ``check_labels=False``: the caller checks the
    label range itself (the small-batch path lets F.cross_entropy's own bounds check find a bad label)."""
    logits2d, target1d = flatten_scores_and_labels(logits, target)
    if logits2d.shape[0] == 0:
        raise ValueError(f"{caller} got an empty batch (logits shape {tuple(logits.shape)})")
    if check_labels and value_checks_enabled(target1d):
        check_labels_in_range(target1d, logits2d.shape[1], ignore_index)
    return logits2d, target1d, prepare_gamma(gamma, target.shape)


def prepare_gamma(gamma, target_shape, *, signed: bool = False):
    """The γ of a focal loss, checked: a number (>= 0; any finite number when ``signed``, AdaFocal's signed γ), a
    per-sample tensor shaped like the target (returned flattened and detached), or a policy callable (returned as
    is: it is called with the detached p_y)."""
    if isinstance(gamma, torch.Tensor):
        if gamma.dim() > 0:
            if gamma.shape != target_shape:
                raise ValueError(f"a per-sample gamma must have the target's shape {tuple(target_shape)}, "
                                 f"got {tuple(gamma.shape)}")
            gamma = gamma.reshape(-1)
        if value_checks_enabled(gamma):
            bad = ~torch.isfinite(gamma) if signed else (gamma < 0) | ~torch.isfinite(gamma)
            if bool(bad.any()):
                raise ValueError(f"gamma must be {'finite' if signed else '>= 0'}, got "
                                 f"{float(gamma[bad].reshape(-1)[0])}")
        return gamma.detach()
    if callable(gamma):
        return gamma
    return check_number(gamma, "gamma") if signed else check_nonnegative_number(gamma, "gamma")


def prepare_scores(labels, logits, probs, ignore_index):
    """Validate and flatten one batch -> (scores [N, K], labels [N] int64 on the scores' device, from_logits)."""
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits= or probs=, got "
                         + ("both" if logits is not None else "neither"))
    name = "logits" if logits is not None else "probs"
    scores = as_tensor(logits if logits is not None else probs, name)
    labels = as_tensor(labels, "labels")
    scores, labels = flatten_scores_and_labels(scores, labels, scores_name=name, labels_name="labels")
    if scores.shape[0] == 0:
        raise ValueError(f"empty input: {name} has no rows (shape {tuple(scores.shape)})")
    labels = labels.to(scores.device)
    check_labels_in_range(labels, scores.shape[1], ignore_index, "labels")
    if ignore_index is not None:
        keep = labels != ignore_index
        if not bool(keep.all()):
            scores, labels = scores[keep], labels[keep]
    return scores, labels.long(), logits is not None


