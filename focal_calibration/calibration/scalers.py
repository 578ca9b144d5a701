"""Post-hoc calibration as modules: a trained model wrapped with its fitted temperature (or vector / matrix /
Dirichlet map), fitted from a validation ``DataLoader``, saved with ``state_dict`` and exported like any module.

``TemperatureScaler(model).fit(val_loader)`` runs ``model`` in eval mode without gradients over the loader (on the
model's device), collects the logits batch by batch on the CPU (:func:`collect_logits`), fits T with
:func:`~focal_calibration.calibration.temperature.fit_temperature` (the paper's ECE grid by default) and keeps it in
a buffer, so ``state_dict()`` / ``load_state_dict()`` carry it. ``scaler(x)`` is ``model(x) / T``: a plain module
that works with ``torch.compile``, ``torch.export`` and ONNX export. :class:`VectorScaler`, :class:`MatrixScaler`
and :class:`DirichletScaler` do the same with the fits of :mod:`focal_calibration.calibration.scaling`.

An unfitted scaler refuses to run (``RuntimeError`` naming ``fit``): silently returning the uncalibrated logits
would look like a calibrated model. A scaler whose ``load_state_dict`` received a fitted state is fitted.

Batches: ``(input, target)`` pairs (``model(input)``), dicts (``model(**inputs)`` with the target under
``target_key``, or ``model(batch[input_key])``), or anything through ``batch_fn(batch) -> (logits, target)``. The
model's output may be a tensor or a mapping with ``"logits"`` (Hugging Face ``ModelOutput``). Classes are on
``class_dim``: default ``1``, the layout of ``nn.CrossEntropyLoss`` (``[N, C]``, segmentation's ``[N, C, H, W]``);
token-level Hugging Face logits ``[B, T, V]`` pass ``class_dim=-1``. (The fit functions, ``fit_logits`` and
:func:`collect_logits`'s result keep the calibration functions' classes-last layout.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from focal_calibration.calibration.scaling import (_features, _linear_map, fit_dirichlet, fit_matrix_scaling,
                                                   fit_vector_scaling)
from focal_calibration.calibration.temperature import fit_temperature
from focal_calibration.validation import as_tensor, check_int, compute_dtype, flatten_scores_and_labels

__all__ = ["collect_logits", "TemperatureScaler", "VectorScaler", "MatrixScaler", "DirichletScaler"]


# ----------------------------------------------------------------------------------------------------------------
# Collecting validation logits

def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _logits_of(output, where: str) -> torch.Tensor:
    """The logits of a model output: a tensor, or a mapping / ModelOutput holding ``"logits"``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    raise TypeError(f"{where} returned {type(output).__name__}; expected a logits tensor or a mapping with "
                    f"'logits' (pass batch_fn=lambda batch: (logits, target) for other outputs)")


def _run_batch(model, batch, device, input_key, target_key):
    """(logits, target) of one batch: ``(input, target)`` pairs or dicts."""
    if isinstance(batch, Mapping):
        key = "labels" if target_key is None else target_key
        if key not in batch:
            raise KeyError(f"the batch has no target under target_key={key!r} (its keys: {sorted(batch)}); pass "
                           f"target_key= or batch_fn=")
        target = batch[key]
        if input_key is not None:
            if input_key not in batch:
                raise KeyError(f"the batch has no input under input_key={input_key!r} (its keys: {sorted(batch)})")
            output = model(_to_device(batch[input_key], device))
        else:
            output = model(**_to_device({k: v for k, v in batch.items() if k != key}, device))
        return _logits_of(output, "the model"), target
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        if len(batch) != 2:
            raise ValueError(f"a batch must be an (input, target) pair or a dict, got a sequence of {len(batch)} "
                             f"items; pass batch_fn=lambda batch: (logits, target)")
        return _logits_of(model(_to_device(batch[0], device)), "the model"), batch[1]
    raise TypeError(f"a batch must be an (input, target) pair or a dict, got {type(batch).__name__}; pass "
                    f"batch_fn=lambda batch: (logits, target)")


@torch.no_grad()
def collect_logits(model: nn.Module, loader, *, batch_fn=None, input_key: str | None = None,
                   target_key: str | None = None, device=None, class_dim: int = 1,
                   ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode without gradients over ``loader``; return its logits ``[N, K]`` and targets ``[N]``
    on the CPU (each batch is moved there at once, so no graph and no device memory is kept).

    Every module's train / eval flag is restored afterwards, also when a batch raises.

    Args:
        model: the trained model.
        loader: an iterable of batches (a ``DataLoader``).
        batch_fn: ``batch -> (logits, target)``, for batches or outputs of any other form (it calls the model
            itself; it runs under ``no_grad`` with the model in eval mode).
        input_key: for dict batches, call ``model(batch[input_key])``; by default ``model(**batch_without_target)``
            (the Hugging Face convention).
        target_key: for dict batches, the target's key (default ``"labels"``).
        device: where the inputs go (default: the device of the model's first parameter or buffer; CPU if none).
        class_dim: the class dimension of the model's logits (``1``: ``[N, C]`` / ``[N, C, H, W]``; ``-1``:
            classes-last logits such as Hugging Face's ``[B, T, V]``).
        ignore_index: targets with this value are dropped as they are collected.

    Returns:
        ``(logits, targets)``: logits ``[N, K]`` in the model's output dtype, targets ``[N]`` int64, both on CPU.

    Raises:
        ValueError / TypeError / KeyError: a batch or output of an unexpected form (naming it), shapes that do not
            match, or an empty loader.
    """
    class_dim = check_int(class_dim, "class_dim", -64)
    device = _model_device(model) if device is None else torch.device(device)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    all_logits, all_targets = [], []
    try:
        for index, batch in enumerate(loader):
            if batch_fn is not None:
                result = batch_fn(batch)
                if not (isinstance(result, (tuple, list)) and len(result) == 2):
                    raise TypeError(f"batch_fn must return (logits, target), got {type(result).__name__}")
                logits, target = result
            else:
                logits, target = _run_batch(model, batch, device, input_key, target_key)
            logits, target = as_tensor(logits, "logits"), as_tensor(target, "target")
            if logits.dim() < 1 or not -logits.dim() <= class_dim < logits.dim():
                raise ValueError(f"class_dim={class_dim} is not a dimension of the logits of batch {index} "
                                 f"(shape {tuple(logits.shape)})")
            logits2d, target1d = flatten_scores_and_labels(logits.detach().to("cpu").movedim(class_dim, -1),
                                                           target.to("cpu"))
            if ignore_index is not None:
                keep = target1d != ignore_index
                logits2d, target1d = logits2d[keep], target1d[keep]
            all_logits.append(logits2d)
            all_targets.append(target1d.long())
    finally:
        for module, training in modes:
            module.training = training
    if not all_logits:
        raise ValueError("the loader gave no batches: nothing to fit on")
    classes = sorted({part.shape[1] for part in all_logits})
    if len(classes) > 1:
        raise ValueError(f"every batch must have the same number of classes, got {classes}")
    return torch.cat(all_logits), torch.cat(all_targets)


# ----------------------------------------------------------------------------------------------------------------
# The scalers

class _Scaler(nn.Module):
    """A model followed by a fitted map of its logits (``forward = map(model(...))``); the map lives in buffers."""

    def __init__(self, model: nn.Module, *, class_dim: int = 1):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.class_dim = check_int(class_dim, "class_dim", -64)
        self._fitted = False  # a Python flag (not a tensor), so compile / export see a constant

    @property
    def fitted(self) -> bool:
        """Whether the map was fitted (by :meth:`fit`, :meth:`fit_logits` or a fitted ``load_state_dict``)."""
        return self._fitted

    def fit(self, loader, *, batch_fn=None, input_key: str | None = None, target_key: str | None = None,
            device=None, ignore_index: int | None = None, **options):
        """Collect the model's validation logits from ``loader`` (:func:`collect_logits`, in eval mode, without
        gradients, modes restored afterwards) and fit the map on them (:meth:`fit_logits` with ``options``).
        Returns ``self``."""
        logits, targets = collect_logits(self.model, loader, batch_fn=batch_fn, input_key=input_key,
                                         target_key=target_key, device=device, class_dim=self.class_dim,
                                         ignore_index=ignore_index)
        return self.fit_logits(logits, targets, **options)

    def fit_logits(self, logits, labels, **options):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(val_loader) (or .fit_logits(logits, "
                               f"labels), or load a fitted state_dict) before using it")

    def forward(self, *args, **kwargs):
        """``model(*args, **kwargs)`` with its logits mapped (a tensor, or the ``"logits"`` of a mapping output)."""
        self._require_fitted()
        output = self.model(*args, **kwargs)
        if isinstance(output, torch.Tensor):
            return self.scale(output)
        if isinstance(output, Mapping) and "logits" in output:
            output["logits"] = self.scale(output["logits"])
            return output
        raise TypeError(f"the model returned {type(output).__name__}; a scaler maps a logits tensor or the 'logits' "
                        f"of a mapping (wrap the model, or call .scale(logits) yourself)")

    def scale(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


class TemperatureScaler(_Scaler):
    """``model`` followed by temperature scaling (Guo et al., 2017; §5.1 of the paper): ``forward(x) = model(x) / T``.

    Args:
        model: the trained classifier (its output: a logits tensor, or a mapping with ``"logits"``).
        class_dim: the class dimension of the model's logits when fitting (``1``: ``[N, C]`` / ``[N, C, H, W]``;
            ``-1``: classes last); dividing by T does not depend on it.

    ``temperature`` is a registered buffer (NaN until fitted), so ``state_dict()`` carries it. An unfitted scaler
    raises ``RuntimeError`` when called. ``fit_result`` holds the last fit's
    :class:`~focal_calibration.calibration.temperature.TemperatureFit` (the ECE / AdaECE / NLL curves over T).

    Example::

        scaler = TemperatureScaler(model).fit(val_loader)          # the paper's ECE grid, T in 0.1 ... 10.0
        torch.save(scaler.state_dict(), "calibrated.pt")
        probs = scaler(x).softmax(-1)
    """

    def __init__(self, model: nn.Module, *, class_dim: int = 1):
        super().__init__(model, class_dim=class_dim)
        self.register_buffer("temperature", torch.tensor(float("nan"), dtype=torch.float64))
        self.fit_result = None

    def fit(self, loader, objective: str = "ece", *, method: str = "grid", temperatures=None, n_bins: int = 15,
            batch_fn=None, input_key: str | None = None, target_key: str | None = None, device=None,
            ignore_index: int | None = None) -> "TemperatureScaler":
        """Fit T on the model's logits over a validation ``loader``; returns ``self``.

        Args:
            loader: validation batches (see :func:`collect_logits` for their forms and ``batch_fn`` / ``input_key`` /
                ``target_key`` / ``device`` / ``ignore_index``).
            objective, method, temperatures, n_bins: as
                :func:`~focal_calibration.calibration.temperature.fit_temperature`: ``"ece"`` on the grid
                T = 0.1, ..., 10.0 (the paper's choice) by default; ``"nll"`` with ``method="lbfgs"`` is Guo et al.'s
                continuous NLL fit.
        """
        return super().fit(loader, batch_fn=batch_fn, input_key=input_key, target_key=target_key, device=device,
                           ignore_index=ignore_index, objective=objective, method=method, temperatures=temperatures,
                           n_bins=n_bins)

    def fit_logits(self, logits, labels, objective: str = "ece", *, method: str = "grid", temperatures=None,
                   n_bins: int = 15, ignore_index: int | None = None) -> "TemperatureScaler":
        """Fit T on given validation ``logits [..., K]`` (classes last) and ``labels [...]``; returns ``self``."""
        result = fit_temperature(logits, labels, objective, method=method, temperatures=temperatures, n_bins=n_bins,
                                 ignore_index=ignore_index)
        self.temperature.fill_(result.temperature)
        self.fit_result = result
        self._fitted = True
        return self

    def scale(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / T`` in the logits' dtype."""
        self._require_fitted()
        return logits / self.temperature.to(logits.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fitted = bool(torch.isfinite(self.temperature))
        self.fit_result = None

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):g}" if self._fitted else "temperature=<not fitted>"


class _LinearMapScaler(_Scaler):
    """``model`` followed by ``s = a ⊙ x + b`` or ``s = W x + b`` on its logits (x = z) or log-probabilities."""

    _method = ""  # "vector", "matrix" or "dirichlet" (the features of scaling.py)
    _fit_function = None

    def __init__(self, model: nn.Module, *, class_dim: int = 1):
        super().__init__(model, class_dim=class_dim)
        # empty until fitted: the number of classes is known from the fit (or the loaded state)
        self.register_buffer("weight", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(0, dtype=torch.float64))
        self.fit_result = None

    def fit_logits(self, logits, labels, **options):
        """Fit the map on given validation ``logits [..., K]`` (classes last) and ``labels [...]`` (keyword options
        as the fit function of :mod:`focal_calibration.calibration.scaling`); returns ``self``."""
        result = type(self)._fit_function(logits, labels, **options)
        device = self.bias.device
        self.weight = torch.as_tensor(result.weight, dtype=torch.float64).to(device)
        self.bias = torch.as_tensor(result.bias, dtype=torch.float64).to(device)
        self.fit_result = result
        self._fitted = True
        return self

    @property
    def num_classes(self) -> int | None:
        """K of the fitted map (None before fitting)."""
        return int(self.bias.numel()) if self._fitted else None

    def scale(self, logits: torch.Tensor) -> torch.Tensor:
        """The mapped logits, classes on ``class_dim``; computed in float32 (float64 for float64 logits), as
        :meth:`~focal_calibration.calibration.scaling.ScalingFit.scale`."""
        self._require_fitted()
        z = logits.movedim(self.class_dim, -1)
        k = self.bias.shape[0]
        if z.shape[-1] != k:
            raise ValueError(f"logits have {z.shape[-1]} classes on class_dim={self.class_dim} (shape "
                             f"{tuple(logits.shape)}), but this {self._method} map was fitted on K = {k}")
        dtype = compute_dtype(z.dtype)
        x = _features(z.reshape(-1, k).to(dtype), self._method)
        out = _linear_map(x, self.weight.to(dtype), self.bias.to(dtype))
        return out.reshape(z.shape).movedim(-1, self.class_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight", "bias"):  # take the stored shapes (K is not known before)
            if prefix + name in state_dict:
                stored = state_dict[prefix + name]
                setattr(self, name, torch.zeros(stored.shape, dtype=torch.float64, device=self.bias.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fitted = self.bias.numel() > 0
        self.fit_result = None

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}" if self._fitted else "<not fitted>"


class VectorScaler(_LinearMapScaler):
    """``model`` followed by vector scaling (Guo et al., 2017): ``s = a ⊙ z + b`` (2K parameters, NLL fit).

    Same interface as :class:`TemperatureScaler`: ``fit(loader, **options)`` (options of
    :func:`~focal_calibration.calibration.scaling.fit_vector_scaling`: ``n_bins``, ``max_iter``), ``weight`` (a,
    ``[K]``) and ``bias`` (b) are buffers (empty until fitted), an unfitted scaler refuses to run.
    """

    _method = "vector"
    _fit_function = staticmethod(fit_vector_scaling)


class MatrixScaler(_LinearMapScaler):
    """``model`` followed by matrix scaling (Guo et al., 2017): ``s = W z + b`` (K² + K parameters, NLL fit;
    ``fit(loader, odir=(lambda, mu) | "cv")`` adds Kull et al.'s ODIR regulariser, see
    :func:`~focal_calibration.calibration.scaling.fit_matrix_scaling`). ``weight`` (W, ``[K, K]``) and ``bias`` are
    buffers."""

    _method = "matrix"
    _fit_function = staticmethod(fit_matrix_scaling)


class DirichletScaler(_LinearMapScaler):
    """``model`` followed by Dirichlet calibration (Kull et al., 2019): ``s = W log softmax(z) + b`` (options of
    :func:`~focal_calibration.calibration.scaling.fit_dirichlet`; Kull et al. recommend ``odir``). ``weight`` and
    ``bias`` are buffers."""

    _method = "dirichlet"
    _fit_function = staticmethod(fit_dirichlet)
