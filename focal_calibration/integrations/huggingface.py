"""Hugging Face ``Trainer``: a calibration loss as ``compute_loss_func`` (:class:`CalibrationLossFunction`) and
:class:`CalibrationLossCallback`, which drives its epoch schedule (FLSc) and validation feedback (AdaFocal) and
saves its state with the Trainer's checkpoints.

Without the callback an epoch-scheduled γ stays at its first value and AdaFocal's γ never moves: the Trainer calls
neither ``set_epoch`` nor ``observe_validation``. With it::

    loss_fn = CalibrationLossFunction("adafocal")  # a spec or a CalibrationLoss: build_loss("flsc-531", epochs=30)
    callback = CalibrationLossCallback(loss_fn)
    trainer = Trainer(model=model, args=TrainingArguments(..., eval_strategy="epoch", save_strategy="epoch"),
                      train_dataset=train, eval_dataset=val, compute_loss_func=loss_fn,
                      compute_metrics=callback.compute_metrics(my_compute_metrics),   # the eval logits reach the loss
                      callbacks=[callback])
    trainer.train()                                          # trainer.train(resume_from_checkpoint=True) resumes

What the callback does, and when:

* ``on_epoch_begin``: ``loss.set_epoch(epoch)`` with the 0-based epoch being started (``floor(state.epoch)``, also
  when a run resumes in the middle of an epoch).
* ``on_evaluate`` during ``train()``: ``loss.observe_validation(eval_logits, eval_labels)``, for losses that
  ``uses_validation`` (AdaFocal). The Trainer hands the evaluation's logits and labels (already gathered over
  processes) only to ``compute_metrics``, so the callback's :meth:`CalibrationLossCallback.compute_metrics` wraps
  yours (or none) and keeps them for ``on_evaluate``. Evaluations outside ``train()`` do not update the loss.
  ``preprocess_logits_for_metrics`` must leave the logits (not argmax ids) and ``prediction_loss_only`` must be off.
* ``on_save``: the loss's ``state_dict()`` is written (atomically) to ``calibration_loss.pt`` in the checkpoint
  folder ``output_dir/checkpoint-<global_step>``. ``on_train_begin`` of a resumed run (``global_step > 0``) reads it
  back from ``output_dir/checkpoint-<global_step>`` (the folder ``resume_from_checkpoint=True`` picks), or from
  ``resume_from=`` when the checkpoint lies elsewhere; a resumed run without that file is refused (it would not
  continue with the loss's state).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from focal_calibration.files import atomic_write
from focal_calibration.integrations import _missing_extra
from focal_calibration.losses import CalibrationLoss, build_loss
from focal_calibration.validation import as_tensor, check_int

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised by simulating the missing package
    raise ImportError(_missing_extra("huggingface", "transformers (with accelerate)", "hf")) from error

__all__ = ["CalibrationLossFunction", "CalibrationLossCallback", "STATE_FILE"]

STATE_FILE = "calibration_loss.pt"


def _flat_pairs(logits: torch.Tensor, labels: torch.Tensor, class_dim: int, shift_labels: bool):
    """``[M, K]`` logits and ``[M]`` labels; with ``shift_labels`` position t predicts label t + 1 (causal LM)."""
    if logits.dim() < 2 or not -logits.dim() <= class_dim < logits.dim():
        raise ValueError(f"class_dim={class_dim} does not fit logits of shape {tuple(logits.shape)}")
    logits = logits.movedim(class_dim, -1)
    if shift_labels:
        if logits.dim() < 3:
            raise ValueError(f"shift_labels needs [batch, positions, classes] logits, got {tuple(logits.shape)}")
        logits, labels = logits[:, :-1], labels[:, 1:]
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} (classes last) need labels of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def _logits_of(outputs, logits_index: int):
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(f"the model's outputs have no 'logits' (keys: {sorted(outputs)})")
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[logits_index]
    raise TypeError(f"cannot find the logits in a model output of type {type(outputs).__name__}")


class CalibrationLossFunction:
    """A calibration loss for ``Trainer(compute_loss_func=...)``: ``fn(outputs, labels, num_items_in_batch=None)``.

    Args:
        loss: a loss spec for :func:`~focal_calibration.losses.build_loss` (``"flsd-53"``, ``"adafocal"``, ...; built
            with ``reduction="sum"``, ``ignore_index=-100`` and ``**options``) or a
            :class:`~focal_calibration.losses.CalibrationLoss` with reduction ``"sum"`` or ``"mean"``.
        class_dim: the class dimension of the model's logits (``-1``: Hugging Face's ``[B, C]`` / ``[B, T, V]``).
        shift_labels: position t predicts label t + 1 (causal language models, as the Trainer's own loss does).
        logits_index: which element of a tuple output holds the logits.
        **options: ``build_loss`` options for a spec (``epochs=``, ``milestones=``, AdaFocal's ``lam=``, ...).

    The logits are flattened to ``[M, K]`` and the labels to ``[M]`` (``-100`` ignored). When the Trainer passes
    ``num_items_in_batch`` (the non-ignored labels of the whole accumulated batch), the result is the loss's sum over
    this batch divided by that number, so gradient accumulation gives the mean over the accumulated batch (the
    contract of ``compute_loss_func``); a ``"mean"`` loss is turned into that sum by multiplying with the batch's
    count (exact for unweighted losses; a per-class ``weight`` needs ``reduction="sum"``). Without it (evaluation),
    the mean over this batch's non-ignored labels.
    """

    def __init__(self, loss: CalibrationLoss | str, *, class_dim: int = -1, shift_labels: bool = False,
                 logits_index: int = 0, **options):
        if isinstance(loss, str):
            loss = build_loss(loss, reduction="sum", **options)
        elif options:
            raise ValueError(f"options {sorted(options)} apply to a loss spec, not to a built {type(loss).__name__}")
        if not isinstance(loss, CalibrationLoss):
            raise TypeError(f"loss must be a loss spec or a CalibrationLoss, got {type(loss).__name__}")
        if loss.reduction not in ("sum", "mean"):
            raise ValueError(f"compute_loss_func needs a loss with reduction 'sum' or 'mean', got {loss.reduction!r}")
        self.loss = loss
        self.class_dim = check_int(class_dim, "class_dim", -64)
        self.shift_labels = bool(shift_labels)
        self.logits_index = check_int(logits_index, "logits_index", 0)

    def __call__(self, outputs, labels, num_items_in_batch=None):
        if labels is None:
            raise ValueError("CalibrationLossFunction needs the batch's labels (the dataset has no 'labels' column)")
        logits2d, labels1d = _flat_pairs(_logits_of(outputs, self.logits_index), labels, self.class_dim,
                                         self.shift_labels)
        labels1d = labels1d.to(logits2d.device)
        value = self.loss(logits2d, labels1d)
        counted = (labels1d != self.loss.ignore_index).sum()
        if num_items_in_batch is None:  # this batch's mean (e.g. evaluation)
            return value if self.loss.reduction == "mean" else value / counted.clamp(min=1)
        if self.loss.reduction == "mean":
            if getattr(self.loss, "weight", None) is not None:
                raise ValueError("a class-weighted loss with reduction='mean' cannot be rescaled to the accumulated "
                                 "batch: build it with reduction='sum'")
            value = value * counted
        return value / num_items_in_batch

    def __repr__(self):
        return f"CalibrationLossFunction({self.loss!r}, class_dim={self.class_dim}, shift_labels={self.shift_labels})"


class CalibrationLossCallback(TrainerCallback):
    """Calls the loss's ``set_epoch`` at each epoch and ``observe_validation`` after each evaluation of ``train()``,
    and saves / restores its state with the Trainer's checkpoints (see the module docstring).

    Args:
        loss: the :class:`CalibrationLossFunction` given to the Trainer, or its
            :class:`~focal_calibration.losses.CalibrationLoss`.
        class_dim, shift_labels, logits_index: how to read the evaluation's logits (default: those of ``loss`` when
            it is a :class:`CalibrationLossFunction`, else ``-1``, ``False``, ``0``).
        resume_from: the checkpoint folder a resumed run reads the loss's state from, when it is not
            ``output_dir/checkpoint-<global_step>``.
    """

    def __init__(self, loss: CalibrationLossFunction | CalibrationLoss, *, class_dim: int | None = None,
                 shift_labels: bool | None = None, logits_index: int | None = None, resume_from=None):
        function = loss if isinstance(loss, CalibrationLossFunction) else None
        self.loss = function.loss if function is not None else loss
        if not isinstance(self.loss, CalibrationLoss):
            raise TypeError(f"loss must be a CalibrationLossFunction or a CalibrationLoss, got {type(loss).__name__}")

        def default(value, name, fallback):
            return value if value is not None else getattr(function, name) if function is not None else fallback

        self.class_dim = check_int(default(class_dim, "class_dim", -1), "class_dim", -64)
        self.shift_labels = bool(default(shift_labels, "shift_labels", False))
        self.logits_index = check_int(default(logits_index, "logits_index", 0), "logits_index", 0)
        self.resume_from = resume_from
        self._training = False
        self._eval_logits: list[torch.Tensor] = []
        self._eval_labels: list[torch.Tensor] = []

    # -- the evaluation's logits -----------------------------------------------------------------------------------
    def compute_metrics(self, inner=None):
        """A ``compute_metrics`` for the Trainer that keeps the evaluation's logits and labels for the loss, then
        returns ``inner(eval_prediction)`` (``{}`` without ``inner``). Works with ``batch_eval_metrics`` too."""

        def compute_metrics(eval_prediction, compute_result=None):
            self._keep(eval_prediction.predictions, eval_prediction.label_ids)
            if inner is None:
                return {}
            return inner(eval_prediction) if compute_result is None else inner(eval_prediction, compute_result)

        return compute_metrics

    def _keep(self, predictions, label_ids) -> None:
        if isinstance(predictions, list):  # eval_do_concat_batches=False: one entry per batch
            for batch_predictions, batch_labels in zip(predictions, label_ids):
                self._keep(batch_predictions, batch_labels)
            return
        if isinstance(predictions, tuple):
            predictions = predictions[self.logits_index]
        logits, labels = as_tensor(predictions, "eval logits"), as_tensor(label_ids, "eval labels")
        if not logits.is_floating_point():
            raise TypeError(f"the evaluation's predictions are {logits.dtype}, not logits: "
                            f"preprocess_logits_for_metrics must keep the logits for {type(self.loss).__name__}")
        logits2d, labels1d = _flat_pairs(logits.detach(), labels, self.class_dim, self.shift_labels)
        self._eval_logits.append(logits2d.cpu())
        self._eval_labels.append(labels1d.cpu())

    # -- events ----------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self._eval_logits, self._eval_labels = [], []
        if state.global_step > 0:  # a resumed run
            folder = self.resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self.load(folder)

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.loss.set_epoch(int(math.floor((state.epoch or 0) + 1e-6)))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        logits, labels = self._eval_logits, self._eval_labels
        self._eval_logits, self._eval_labels = [], []
        if not (self._training and self.loss.uses_validation):
            return
        if not logits:
            raise RuntimeError(
                f"{type(self.loss).__name__} learns from the evaluation set, but no evaluation logits reached the "
                f"callback: pass Trainer(compute_metrics=callback.compute_metrics(your_compute_metrics_or_None)) "
                f"and keep prediction_loss_only=False")
        self.loss.observe_validation(torch.cat(logits), torch.cat(labels))

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        payload = {"loss_class": type(self.loss).__name__, "global_step": state.global_step,
                   "loss_state": {name: value.detach().cpu().clone()
                                  for name, value in self.loss.state_dict().items()}}
        atomic_write(os.path.join(folder, STATE_FILE), lambda handle: torch.save(payload, handle))

    # -- state -----------------------------------------------------------------------------------------------------
    def load(self, checkpoint_folder) -> None:
        """Restore the loss's state from ``checkpoint_folder/calibration_loss.pt`` (written by ``on_save``).

        Raises:
            FileNotFoundError: the folder has no such file (a checkpoint written without this callback).
            ValueError: the file holds another loss class's state.
        """
        path = os.path.join(os.fspath(checkpoint_folder), STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resuming needs the loss's state, but {path} does not exist (was the checkpoint saved with "
                f"CalibrationLossCallback? if it lies elsewhere, pass CalibrationLossCallback(..., "
                f"resume_from=folder))")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["loss_class"] != type(self.loss).__name__:
            raise ValueError(f"{path} holds the state of a {payload['loss_class']}, but this run's loss is a "
                             f"{type(self.loss).__name__}")
        self.loss.load_state_dict(payload["loss_state"])
