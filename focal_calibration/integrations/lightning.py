"""Lightning: :class:`CalibrationLossCallback` drives a loss's epoch schedule (FLSc) and validation feedback
(AdaFocal) the way the package's own trainers do, and keeps the loss's state in Lightning's checkpoints.

Without it, an epoch-scheduled γ stays at its first value and AdaFocal's γ never moves: Lightning calls neither
``set_epoch`` nor ``observe_validation``. With it::

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = ...
            self.criterion = build_loss("adafocal")          # found by the callback (or name it: loss="criterion")

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.criterion(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            return {"logits": self.net(x), "labels": y}    # what the callback collects

    L.Trainer(callbacks=[CalibrationLossCallback()]).fit(Model(), train_loader, val_loader)

What the callback does, and when:

* ``on_train_epoch_start``: ``loss.set_epoch(trainer.current_epoch)`` (0-based; also on a resumed run, whose
  ``current_epoch`` Lightning restores).
* validation: when the loss ``uses_validation`` (AdaFocal), every ``validation_step`` of the first validation
  dataloader must return the batch's logits and labels (a dict with ``logits_key`` / ``labels_key``, or a pair). They
  are detached and kept on the CPU; at ``on_validation_epoch_end`` they are gathered over processes and passed to
  ``loss.observe_validation``. The sanity check and ``trainer.validate()`` runs outside ``fit`` do not update the loss.
* checkpoints: the loss's ``state_dict()`` is the callback's state (``checkpoint["callbacks"][state_key]``), restored
  on ``fit(ckpt_path=...)`` (also when the loss is not a submodule of the LightningModule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from focal_calibration.integrations import _missing_extra
from focal_calibration.losses import CalibrationLoss
from focal_calibration.validation import as_tensor, check_int

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised by simulating the missing package
    raise ImportError(_missing_extra("lightning", "Lightning (the 'lightning' package)", "lightning")) from error

__all__ = ["CalibrationLossCallback"]


def _find_calibration_loss(module: torch.nn.Module, name: str | None = None) -> tuple[str, CalibrationLoss]:
    """The ``(name, loss)`` of the :class:`~focal_calibration.losses.CalibrationLoss` of ``module``.

    Args:
        module: the model (a LightningModule, a Hugging Face model, any ``nn.Module``).
        name: the loss's attribute path (``"criterion"``, ``"head.loss"``); by default the one CalibrationLoss among
            the module's submodules and attributes.

    Raises:
        ValueError: no CalibrationLoss, several (naming them), or ``name`` is not one.
    """
    if name is not None:
        target = module
        for part in name.split("."):
            if not hasattr(target, part):
                raise ValueError(f"{type(module).__name__} has no attribute {name!r} (the loss to drive)")
            target = getattr(target, part)
        if not isinstance(target, CalibrationLoss):
            raise ValueError(f"{type(module).__name__}.{name} is a {type(target).__name__}, not a CalibrationLoss")
        return name, target
    found = {}
    for path, sub in module.named_modules():
        if isinstance(sub, CalibrationLoss) and all(sub is not seen for seen in found.values()):
            found[path] = sub
    for attribute, value in vars(module).items():  # a loss kept as a plain attribute (not a submodule)
        if isinstance(value, CalibrationLoss) and all(value is not seen for seen in found.values()):
            found[attribute] = value
    if len(found) != 1:
        what = "no CalibrationLoss" if not found else f"{len(found)} CalibrationLosses ({', '.join(sorted(found))})"
        raise ValueError(f"{type(module).__name__} has {what}; pass the loss (or its attribute name) to the callback")
    return next(iter(found.items()))


def _outputs_pair(outputs, logits_key: str, labels_key: str):
    if isinstance(outputs, Mapping) and logits_key in outputs and labels_key in outputs:
        return outputs[logits_key], outputs[labels_key]
    if isinstance(outputs, Sequence) and not isinstance(outputs, (str, bytes)) and len(outputs) == 2:
        return outputs[0], outputs[1]
    return None


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """All processes' rows (in rank order) on every process; shards may differ in length."""
    from torchmetrics.utilities.distributed import gather_all_tensors  # a dependency of lightning

    device_tensor = tensor.to(_distributed_device())
    return torch.cat([part.cpu() for part in gather_all_tensors(device_tensor)])


def _distributed_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class CalibrationLossCallback(pl.Callback):
    """Calls the loss's ``set_epoch`` at each training epoch and ``observe_validation`` after each validation, and
    saves / restores its state with Lightning's checkpoints (see the module docstring).

    Args:
        loss: the :class:`~focal_calibration.losses.CalibrationLoss` itself, its attribute path on the
            LightningModule (``"criterion"``), or ``None`` to find the one CalibrationLoss of the module.
        logits_key, labels_key: the keys of ``validation_step``'s returned dict (a returned pair also works).
        class_dim: the class dimension of those logits (1: ``[N, C]`` / ``[N, C, H, W]``; -1: classes last).
    """

    def __init__(self, loss: CalibrationLoss | str | None = None, *, logits_key: str = "logits",
                 labels_key: str = "labels", class_dim: int = 1):
        if loss is not None and not isinstance(loss, (str, CalibrationLoss)):
            raise TypeError(f"loss must be a CalibrationLoss, an attribute name or None, got {type(loss).__name__}")
        self._given = loss
        self.loss: CalibrationLoss | None = loss if isinstance(loss, CalibrationLoss) else None
        self.logits_key, self.labels_key = logits_key, labels_key
        self.class_dim = check_int(class_dim, "class_dim", -64)
        self._pending_state = None  # a checkpoint's state that arrived before the loss was found
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @property
    def state_key(self) -> str:
        name = "auto" if self._given is None else self._given if isinstance(self._given, str) else \
            type(self._given).__name__
        return self._generate_state_key(loss=name)

    # -- finding the loss ------------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.loss is None:
            self.loss = _find_calibration_loss(pl_module, self._given)[1]
        if self._pending_state is not None:
            self._restore(self._pending_state)

    # -- epochs ----------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.loss.set_epoch(trainer.current_epoch)

    # -- validation ------------------------------------------------------------------------------------------------
    def _collecting(self, trainer) -> bool:
        return (self.loss is not None and self.loss.uses_validation and not trainer.sanity_checking
                and trainer.state.fn == "fit")

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._logits, self._labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._collecting(trainer) or dataloader_idx != 0:
            return
        pair = _outputs_pair(outputs, self.logits_key, self.labels_key)
        if pair is None:
            raise ValueError(
                f"{type(self.loss).__name__} learns from the validation set, so validation_step must return the "
                f"batch's logits and labels, e.g. {{{self.logits_key!r}: logits, {self.labels_key!r}: labels}}; "
                f"got {type(outputs).__name__}")
        logits, labels = (as_tensor(value, name).detach() for value, name in zip(pair, ("logits", "labels")))
        if logits.dim() < 2 or not -logits.dim() <= self.class_dim < logits.dim():
            raise ValueError(f"class_dim={self.class_dim} does not fit validation logits of shape "
                             f"{tuple(logits.shape)}")
        logits = logits.movedim(self.class_dim, -1)
        self._logits.append(logits.reshape(-1, logits.shape[-1]).cpu())
        self._labels.append(labels.reshape(-1).cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._collecting(trainer):
            return
        if not self._logits:
            raise ValueError(f"{type(self.loss).__name__} learns from the validation set, but no validation batch "
                             f"returned logits and labels")
        logits, labels = torch.cat(self._logits), torch.cat(self._labels)
        self._logits, self._labels = [], []
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            logits, labels = _gather_rows(logits), _gather_rows(labels)
        self.loss.observe_validation(logits, labels)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.loss is None:
            return {}
        return {"loss_class": type(self.loss).__name__,
                "loss_state": {name: value.detach().cpu().clone() for name, value in self.loss.state_dict().items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.loss is None:
            self._pending_state = state_dict
        else:
            self._restore(state_dict)

    def _restore(self, state: dict) -> None:
        self._pending_state = None
        if state["loss_class"] != type(self.loss).__name__:
            raise ValueError(f"the checkpoint holds the state of a {state['loss_class']}, but this run's loss is a "
                             f"{type(self.loss).__name__}")
        self.loss.load_state_dict(state["loss_state"])
