"""Internal helpers shared by the core modules: input validation, input preparation and the compute dtype.

Every check raises ``ValueError`` (or ``TypeError`` for wrong types) with a message that names the bad value, so a
user never gets a NaN, a silently wrong number or an index error from deep inside torch.

Shape and dtype checks cost nothing and always run. Checks that must read tensor *values* (label range, finite
logits) would force a host synchronisation on an accelerator, so inside the training losses they run on CPU tensors
only, unless ``FOCAL_CALIBRATION_CHECKS=1`` is set or :func:`set_value_checks` turns them on everywhere (the metrics
and temperature scaling always check: they run once per evaluation, not per step).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Mapping

import numpy as np
import torch

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
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


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


def ascending_order(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort each row of non-negative ``values [R, N]`` ascending (ties in any order).

    FAST PATH on CPU, measured 15x faster than ``values.sort(dim=-1)`` for one row of 100,000 float32 values (2 ms vs
    29 ms, 1 thread): non-negative floats order like their bit patterns and integer sorts are radix sorts; one 1-D
    sort per row also beats a batched sort (0.8 s vs 2.7 s for 100 x 100,000). Elsewhere the plain float sort.
    """
    if values.device.type != "cpu":
        return values.sort(dim=-1).indices
    keys = values.contiguous().view(torch.int64 if values.dtype == torch.float64 else torch.int32)
    return torch.stack([row.sort().indices for row in keys])


BACKENDS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the triton package can be imported (it ships with CUDA builds of torch); imports nothing."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """``"auto"``: the fused Triton kernel for CUDA float32 / float16 / bfloat16 logits when triton is importable,
    the PyTorch path otherwise. ``"torch"`` / ``"triton"``: that one (triton must be importable)."""
    if backend == "auto":
        use_triton = logits.is_cuda and logits.dtype in TRITON_DTYPES and triton_available()
        return "triton" if use_triton else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package (pip install triton), which is not installed")
    return backend


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
    if isinstance(gamma, torch.Tensor):
        if gamma.dim() > 0:
            if gamma.shape != target.shape:
                raise ValueError(f"a per-sample gamma must have the target's shape {tuple(target.shape)}, "
                                 f"got {tuple(gamma.shape)}")
            gamma = gamma.reshape(-1)
        if value_checks_enabled(gamma):
            bad = (gamma < 0) | ~torch.isfinite(gamma)
            if bool(bad.any()):
                raise ValueError(f"gamma must be >= 0, got {float(gamma[bad].reshape(-1)[0])}")
        return logits2d, target1d, gamma.detach()
    if callable(gamma):
        return logits2d, target1d, gamma
    return logits2d, target1d, check_nonnegative_number(gamma, "gamma")


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


def json_ready(value):
    """Paths -> str, tuples -> lists, tensors / numpy scalars -> Python numbers, non-finite floats -> None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor):
        return json_ready(value.tolist())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
