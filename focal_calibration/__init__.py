"""focal-calibration: "Calibrating Deep Neural Networks using Focal Loss" (Mukhoti et al., NeurIPS 2020).

The user's API: losses (focal loss with fixed / epoch-scheduled / sample-dependent γ and an analytic backward,
cross-entropy, label smoothing, Brier, MMCE; beyond the paper AdaFocal, inverse focal, dual focal, Poly-1 and MbLS),
calibration metrics (ECE, AdaECE, MCE, classwise ECE, NLL, Brier, top-k, S99) with bootstrap intervals, temperature
scaling, vector / matrix scaling and Dirichlet calibration.

The package is layered: :mod:`focal_calibration.losses` and :mod:`focal_calibration.calibration` build on
:mod:`focal_calibration.validation` (the one place for input checks), :mod:`focal_calibration.constants` and
:mod:`focal_calibration.files` (atomic writes); :mod:`focal_calibration.plots` draws both;
:mod:`focal_calibration.experiments` is the reproduction suites' tooling, above everything else.
"""

from focal_calibration import calibration as _calibration
from focal_calibration import losses as _losses
from focal_calibration.calibration import *  # noqa: F401,F403  (the user's API is the subpackages' __all__)
from focal_calibration.losses import *  # noqa: F401,F403
from focal_calibration.validation import set_value_checks

__version__ = "0.1.0"

__all__ = [*_losses.__all__, *_calibration.__all__, "set_value_checks"]
