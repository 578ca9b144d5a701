"""Atomic, exactly-resumable training checkpoints, shared by the image and text trainers.

* :func:`save_checkpoint` writes to a temporary file in the target's folder, flushes and fsyncs it, then
  ``os.replace``-s it over the target: a reader (or a resumed run after SIGKILL) sees the old checkpoint or the new
  one, never half of one.
* :func:`load_checkpoint` loads with ``weights_only=True`` (no arbitrary pickles) and turns every failure into a
  ``ValueError`` that names the path.
* :func:`capture_rng_state` / :func:`restore_rng_state` cover Python ``random``, NumPy's global generator and torch's
  CPU (+ CUDA) generators, stored as plain lists / tensors so ``weights_only`` loading accepts them.
* :func:`check_resume_compatible` refuses a resume whose run-defining arguments changed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from focal_calibration.files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng_state", "restore_rng_state",
           "check_resume_compatible"]


def save_checkpoint(path, state: Mapping) -> None:
    """``torch.save(state)`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(dict(state), handle))


def load_checkpoint(path, *, map_location="cpu", weights_only: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises ``ValueError`` naming ``path`` when the file is missing, empty, truncated or not a checkpoint.
    ``weights_only=True`` (default) refuses arbitrary pickled objects; pass False only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): it is corrupted")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:  # torch raises RuntimeError / UnpicklingError / EOFError / zipfile errors
        raise ValueError(f"checkpoint {str(path)!r} is truncated or corrupted and cannot be loaded "
                         f"({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a dict of training state "
                         f"(got {type(state).__name__})")
    return state


# ----------------------------------------------------------------------------------------------------------------
# Random number generators

def capture_rng_state() -> dict:
    """The state of every global generator a training loop draws from, in a ``weights_only``-loadable form."""
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of :func:`capture_rng_state`; the CUDA part is restored when both the state and CUDA are present."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing {sorted(missing)}; got keys {sorted(state)}")
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(f"RNG state holds {len(cuda_states)} CUDA generators, this machine has "
                             f"{torch.cuda.device_count()} GPUs")
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ----------------------------------------------------------------------------------------------------------------
# Resume

def check_resume_compatible(saved_args: Mapping, args: Mapping, keys: Iterable[str]) -> None:
    """Raise ``ValueError`` listing every key in ``keys`` whose value differs between the saved and current args.

    A key missing on one side counts as a difference. Message: ``cannot resume: --loss was 'ce', now 'flsd-53'``.
    """
    problems = []
    sentinel = object()
    for key in keys:
        before, now = saved_args.get(key, sentinel), args.get(key, sentinel)
        if isinstance(before, tuple):
            before = list(before)
        if isinstance(now, tuple):
            now = list(now)
        if before != now:
            flag = "--" + key.replace("_", "-")
            before_text = "(not set)" if before is sentinel else repr(before)
            now_text = "(not set)" if now is sentinel else repr(now)
            problems.append(f"{flag} was {before_text}, now {now_text}")
    if problems:
        raise ValueError("cannot resume: " + "; ".join(problems)
                         + " (start a new output folder, or resume with the original values)")
