"""focal-calibration: "Calibrating Deep Neural Networks using Focal Loss" (Mukhoti et al., NeurIPS 2020).

The user's API: losses with ``nn.CrossEntropyLoss``'s contract (focal loss with fixed / epoch-scheduled /
sample-dependent γ and an analytic backward, cross-entropy, label smoothing, Brier, MMCE; beyond the paper AdaFocal,
inverse focal, dual focal, Poly-1 and MbLS), the sigmoid focal loss for binary / multi-label outputs, focal loss
straight from features (``linear_focal_loss``), calibration metrics (ECE, AdaECE, MCE, classwise ECE, NLL, Brier,
top-k, S99 and more; multi-class, binary and multi-label) with bootstrap intervals, temperature scaling (also per
label, and as ``TemperatureScaler`` modules), vector / matrix scaling and Dirichlet calibration. The framework
integrations (torchmetrics, Lightning, Hugging Face) are in :mod:`focal_calibration.integrations`, optional extras.

The package is layered: :mod:`focal_calibration.losses` and :mod:`focal_calibration.calibration` build on
:mod:`focal_calibration.validation` (the one place for input checks), :mod:`focal_calibration.constants` and
:mod:`focal_calibration.files` (atomic writes); :mod:`focal_calibration.plots` draws both;
:mod:`focal_calibration.experiments` is the reproduction suites' tooling, above everything else.
"""

import importlib

__version__ = "0.1.0"

# The API is the subpackages' __all__, imported on first use (PEP 562): ``import focal_calibration.experiments.cli``
# (a trainer's --help) does not pay for torch. ``from focal_calibration import *``, attribute access and ``dir()``
# behave as with eager imports.
_API_PACKAGES = ("losses", "calibration")
_SUBMODULES = ("losses", "calibration", "experiments", "plots", "validation", "files", "constants")


def _api_names() -> list[str]:
    names = []
    for package in _API_PACKAGES:
        names += importlib.import_module(f"focal_calibration.{package}").__all__
    return [*names, "set_value_checks"]


def __getattr__(name: str):
    if name == "__all__":
        value = _api_names()
    elif name == "set_value_checks":
        from focal_calibration.validation import set_value_checks as value
    elif name in _SUBMODULES:  # ``focal_calibration.losses`` without importing it first, as before
        value = importlib.import_module(f"focal_calibration.{name}")
    else:
        for package in _API_PACKAGES:
            module = importlib.import_module(f"focal_calibration.{package}")
            if name in module.__all__:
                value = getattr(module, name)
                break
        else:
            raise AttributeError(f"module 'focal_calibration' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_api_names()))
