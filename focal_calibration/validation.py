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
           "check_finite_logits", "compute_dtype", "prepare_focal_inputs", "prepare_scores",
           "prepare_gamma", "check_label_smoothing", "check_class_weight", "prepare_class_dim_inputs"]

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


def check_finite_logits(logits: torch.Tensor, row_values: torch.Tensor | None = None, name: str = "logits") -> None:
    """Raise if ``[N, K]`` logits (or ``[N, C, d1, ...]``, classes on dim 1, read as rows of C) hold a NaN or +inf,
    naming the first one by its row and class.

    A -inf logit is a class of probability 0 and passes, unless it makes ``row_values`` non-finite (a -inf logit at
    the target: p_y = 0, an infinite loss). ``row_values``: numbers per row computed from the logits that are finite
    exactly when the row is usable (a loss's log p_y); on good input only they are read, so the check costs nothing
    beyond them. Without them, one sum over the logits: NaN or +inf exactly when a logit is NaN or +inf (or when
    finite logits overflow it, which the exact search that follows lets pass).
    """
    logits = logits.detach()  # reads values only (no autograd warning for a tensor that requires grad)
    if logits.dim() > 2:  # rows of classes: a copy, made only once something is not finite
        if row_values is not None:
            if bool(torch.isfinite(row_values.detach()).all()):
                return
            row_values = row_values.detach().reshape(-1)
        elif math.isfinite(float(logits.sum())):
            return
        logits = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    given = row_values is not None
    if given:
        row_values = row_values.detach()
        bad_rows = ~torch.isfinite(row_values)
        if not bool(bad_rows.any()):
            return
        rows = bad_rows.nonzero()[:, 0]
    else:
        total = float(logits.sum())
        if not (math.isnan(total) or total == math.inf):
            return
        rows = torch.arange(logits.shape[0], device=logits.device)
    candidates = logits[rows]
    searches = [torch.isnan(candidates) | (candidates == math.inf)] + ([candidates == -math.inf] if given else [])
    for bad in searches:
        hits = bad.nonzero()
        if len(hits):
            index, column = hits[0].tolist()
            row = int(rows[index])
            raise ValueError(f"{name} must be finite, got {float(logits[row, column])} at row {row}, class {column}")
    if given:  # finite logits whose range the compute dtype cannot span
        row = int(rows[0])
        raise ValueError(f"{name} at row {row} range from {float(logits[row].min()):g} to "
                         f"{float(logits[row].max()):g}: too far apart for a finite log-probability "
                         f"({float(row_values[row])})")


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
    gamma = prepare_gamma(gamma, target.shape)
    if isinstance(gamma, torch.Tensor) and gamma.dim() > 0:
        gamma = gamma.reshape(-1)
    return logits2d, target1d, gamma


def prepare_gamma(gamma, sample_shape, *, signed: bool = False):
    """A focal loss's γ, checked: a number (>= 0; any finite number when ``signed``, AdaFocal's signed γ), as a
    float; a detached tensor of one γ per sample (shape ``sample_shape``, the target's shape for class indices) or a
    0-d tensor; or a callable of the detached probabilities (a sample-dependent policy), returned as is."""
    if isinstance(gamma, torch.Tensor):
        if gamma.dim() > 0 and gamma.shape != sample_shape:
            raise ValueError(f"a per-sample gamma must have the target's shape {tuple(sample_shape)}, "
                             f"got {tuple(gamma.shape)}")
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


# ----------------------------------------------------------------------------------------------------------------
# The loss contract of nn.CrossEntropyLoss: classes on dim 1, class-index or class-probability targets, weight,
# label_smoothing

def check_label_smoothing(value) -> float:
    """``label_smoothing`` as ``nn.CrossEntropyLoss`` takes it: a number in [0, 1]."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {value!r}")
    return alpha


def check_class_weight(weight, num_classes: int | None = None, caller: str = "the loss"):
    """``weight`` as ``nn.CrossEntropyLoss`` takes it: None, or a 1-D floating tensor of one weight per class
    (``num_classes`` of them when given), finite and >= 0 (read only where value checks are on)."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        hint = " (gamma and the other options are keyword arguments)" if isinstance(weight, (int, float)) else ""
        raise TypeError(f"weight of {caller} must be a 1-D tensor of per-class weights or None, got {weight!r}{hint}")
    if not weight.is_floating_point() or weight.dim() != 1:
        raise ValueError(f"weight of {caller} must be a 1-D floating-point tensor of per-class weights, got dtype "
                         f"{weight.dtype} and shape {tuple(weight.shape)}")
    if num_classes is not None and weight.numel() != num_classes:
        raise ValueError(f"weight of {caller} must hold one weight per class ({num_classes} classes), got "
                         f"{weight.numel()} weights")
    if value_checks_enabled(weight):
        bad = ~torch.isfinite(weight) | (weight < 0)
        if bool(bad.any()):
            raise ValueError(f"weight of {caller} must be finite and >= 0, got {float(weight[bad][0])}")
    return weight


def prepare_class_dim_inputs(logits: torch.Tensor, target: torch.Tensor, caller: str):
    """Check a loss's ``input`` / ``target`` against ``nn.CrossEntropyLoss``'s contract and tell the target kind.

    ``logits``: ``[N, C]`` or ``[N, C, d1, ..., dk]`` (classes on dim 1), or ``[C]`` (one unbatched sample).
    ``target``: integer class indices of shape ``[N]`` / ``[N, d1, ..., dk]`` (``[]`` unbatched), or floating
    class probabilities of the logits' shape. Returns ``(logits, target, probabilities, unbatched)`` with an unbatched
    sample given a batch dimension of 1. Raises naming the shapes and dtypes that do not fit.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"{caller} takes tensors, got input {type(logits).__name__} and target "
                        f"{type(target).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    ndim = logits.dim()
    if ndim == 0:
        raise ValueError("logits must have a class dimension (shape [N, C, d1, ...] or [C]), got a 0-d tensor")
    unbatched = ndim == 1
    if unbatched:
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
        ndim = 2
    shape, target_shape = logits.shape, target.shape
    # the common cases first, at a few attribute reads (this runs every step): class indices of [N, d1, ...] ...
    if target.dim() == ndim - 1 and target_shape[0] == shape[0] and (ndim == 2 or target_shape[1:] == shape[2:]):
        probabilities = False
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target of shape {tuple(target_shape)} must hold integer class indices (class "
                            f"probabilities are a floating tensor of the logits' shape {tuple(shape)}), got dtype "
                            f"{target.dtype}")
    elif target_shape == shape:  # ... or class probabilities of the logits' shape
        probabilities = True
        if not target.is_floating_point():
            raise ValueError(f"shape mismatch: target of the logits' shape {tuple(shape)} holds class probabilities, "
                             f"so it must be floating-point, got dtype {target.dtype}")
    else:
        raise ValueError(f"shape mismatch: logits have shape {tuple(shape)} (classes on dim 1), so target must have "
                         f"shape {tuple(shape[:1] + shape[2:])} (class indices) or {tuple(shape)} (class "
                         f"probabilities), got {tuple(target_shape)}")
    if shape[1] < 1:
        raise ValueError(f"logits must have at least one class, got shape {tuple(shape)}")
    if logits.numel() == 0:
        raise ValueError(f"{caller} got an empty batch (logits shape {tuple(shape)})")
    return logits, target, probabilities, unbatched
