"""Two small runtime fixes for fairseq 0.12 (fairseq-fixed 0.12.3.1) on torch >= 2.6, applied when the user-dir is
imported (fairseq imports ``--user-dir`` while parsing arguments, before it loads any checkpoint or builds a batch).

(a) ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, and fairseq's checkpoints hold an
    ``argparse.Namespace`` (the model config of ``--arch`` models) and a few other plain Python objects, so
    ``fairseq-generate`` and ``--restore-file`` / resume fail with ``UnpicklingError: Weights only load failed ...
    Unsupported global: GLOBAL argparse.Namespace``. Fix: allow exactly those classes in the weights-only unpickler
    (``torch.serialization.add_safe_globals``). Checkpoints are still loaded with ``weights_only=True``: no arbitrary
    code runs, and anything else unusual still fails with torch's own message.

(b) ``fairseq.data.data_utils.batch_by_size`` drops the last batch when it is smaller than
    ``required_batch_size_multiple`` (upstream commit d871f616), so ``fairseq-generate`` silently translated 96 of 100
    test sentences and validation used 96 too. A calibration tool must count every example: the wrapper keeps that
    last, partial batch. (The batchers cut the ordered indices into consecutive batches, so the dropped batch is
    exactly the indices after the kept ones.)

Both change fairseq for the whole process, training included (with (b) the last partial batch of an epoch is trained on
too). Importing the user-dir applies them and logs once which ones it applied. Turn them off with the environment
variable ``FAIRSEQ_FOCAL_COMPAT``: ``none`` applies neither, a comma-separated list (``torch_load_allowlist``,
``keep_last_partial_batch``) applies only those; unset or ``all`` applies both. Both are idempotent; ``apply()``
returns what it changed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import os

import numpy as np
import torch

logger = logging.getLogger(__name__)

ENV_VARIABLE = "FAIRSEQ_FOCAL_COMPAT"

# Types found in fairseq 0.12 checkpoints (config, optimizer / lr-scheduler state, meters, iterator state).
_CHECKPOINT_GLOBALS = [argparse.Namespace, collections.OrderedDict, collections.defaultdict]


def _allow_fairseq_checkpoint_globals() -> bool:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4: torch.load is not weights-only by default
        return False
    get_safe_globals = getattr(torch.serialization, "get_safe_globals", lambda: [])
    if all(cls in get_safe_globals() for cls in _CHECKPOINT_GLOBALS):
        return False
    add_safe_globals(_CHECKPOINT_GLOBALS)
    return True


def _keep_last_partial_batch() -> bool:
    from fairseq.data import data_utils

    original = data_utils.batch_by_size
    if getattr(original, "_keeps_last_batch", False):
        return False

    @functools.wraps(original)
    def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None, max_sentences=None,
                      required_batch_size_multiple=1, fixed_shapes=None):
        if not isinstance(indices, np.ndarray):  # the original may consume an iterator
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = original(indices, num_tokens_fn, num_tokens_vec=num_tokens_vec, max_tokens=max_tokens,
                           max_sentences=max_sentences, required_batch_size_multiple=required_batch_size_multiple,
                           fixed_shapes=fixed_shapes)
        if fixed_shapes is not None or required_batch_size_multiple <= 1:
            return batches
        kept = sum(len(b) for b in batches)
        if kept < len(indices):
            batches = list(batches) + [indices[kept:]]
        return batches

    batch_by_size._keeps_last_batch = True
    data_utils.batch_by_size = batch_by_size
    return True


# name -> (what it patches, for the log line; the function applying it, True if it changed something now)
FIXES = {
    "torch_load_allowlist": ("torch.serialization safe globals += argparse.Namespace, collections.OrderedDict, "
                             "collections.defaultdict", _allow_fairseq_checkpoint_globals),
    "keep_last_partial_batch": ("fairseq.data.data_utils.batch_by_size keeps the last partial batch",
                                _keep_last_partial_batch),
}


def selected_fixes(setting: str | None) -> tuple[str, ...]:
    """The fixes a value of ``FAIRSEQ_FOCAL_COMPAT`` selects (None / '' / 'all': all; 'none': none)."""
    text = (setting or "all").strip().lower()
    if text == "all":
        return tuple(FIXES)
    if text == "none":
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FIXES]
    if unknown or not names:
        raise ValueError(f"{ENV_VARIABLE} must be 'all', 'none' or a comma-separated list of {', '.join(FIXES)}; "
                         f"got {setting!r}")
    return names


def apply(names=None) -> dict:
    """Apply the fixes ``names`` (default: those ``FAIRSEQ_FOCAL_COMPAT`` selects) -> {name: changed now}; logs one
    line naming what it changed (nothing when everything was already in place)."""
    if names is None:
        names = selected_fixes(os.environ.get(ENV_VARIABLE))
    changed = {name: FIXES[name][1]() for name in names}
    done = [FIXES[name][0] for name, now in changed.items() if now]
    if done:
        logger.info(f"fairseq_focal patched fairseq for this process: {'; '.join(done)} "
                    f"(set {ENV_VARIABLE}=none to turn this off; see fairseq_focal/compat.py)")
    return changed
