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

from focal_calibration.calibration import (CalibrationAccumulator, ReliabilityBins, ScalingFit, TemperatureFit,
                                           bootstrap_ci, bootstrap_samples, calibration_metrics, fit_dirichlet,
                                           fit_matrix_scaling, fit_temperature, fit_vector_scaling, reliability_bins)
from focal_calibration.losses import (BEYOND_PAPER_LOSS_SPECS, PAPER_LOSS_SPECS, AdaFocalLoss, BrierLoss,
                                      CalibrationLoss, CrossEntropyLoss, DualFocalLoss, EpochScheduledGamma, FixedGamma,
                                      FocalLoss, GammaPolicy, InverseFocalLoss, LabelSmoothingLoss,
                                      MarginLabelSmoothingLoss, MMCELoss, PolyLoss, SampleDependentGamma, build_loss,
                                      flsc_milestones, focal_label_smoothed_loss, focal_loss, fused_row_loss, g,
                                      gamma_star, mmce_weighted, optimal_confidence, parse_gamma_policy,
                                      prop2_gamma_policy)
from focal_calibration.validation import set_value_checks

__version__ = "0.1.0"

__all__ = [
    "focal_loss", "fused_row_loss", "focal_label_smoothed_loss", "g", "gamma_star", "optimal_confidence",
    "GammaPolicy", "FixedGamma", "EpochScheduledGamma", "SampleDependentGamma", "prop2_gamma_policy",
    "parse_gamma_policy", "flsc_milestones",
    "CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss", "mmce_weighted",
    "AdaFocalLoss", "InverseFocalLoss", "DualFocalLoss", "PolyLoss", "MarginLabelSmoothingLoss",
    "build_loss", "PAPER_LOSS_SPECS", "BEYOND_PAPER_LOSS_SPECS",
    "calibration_metrics", "CalibrationAccumulator", "ReliabilityBins", "reliability_bins",
    "bootstrap_ci", "bootstrap_samples",
    "fit_temperature", "TemperatureFit",
    "fit_vector_scaling", "fit_matrix_scaling", "fit_dirichlet", "ScalingFit",
    "set_value_checks",
]
