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

Both are idempotent; ``apply()`` returns what it changed.
"""

from __future__ import annotations

import argparse
import collections
import functools

import numpy as np
import torch

# Types found in fairseq 0.12 checkpoints (config, optimizer / lr-scheduler state, meters, iterator state).
_CHECKPOINT_GLOBALS = [argparse.Namespace, collections.OrderedDict, collections.defaultdict]


def _allow_fairseq_checkpoint_globals() -> bool:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4: torch.load is not weights-only by default
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


def apply() -> dict:
    return {"torch_load_allowlist": _allow_fairseq_checkpoint_globals(),
            "keep_last_partial_batch": _keep_last_partial_batch()}
