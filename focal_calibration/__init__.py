"""focal-calibration: "Calibrating Deep Neural Networks using Focal Loss" (Mukhoti et al., NeurIPS 2020).

The shared core of the image, text and fairseq trainers: losses (focal loss with fixed / epoch-scheduled /
sample-dependent γ and an analytic backward, cross-entropy, label smoothing, Brier, MMCE; beyond the paper AdaFocal,
inverse focal, dual focal, Poly-1 and MbLS), calibration metrics (ECE, AdaECE, MCE, classwise ECE, NLL, Brier, top-k,
S99) with bootstrap intervals, temperature scaling, vector / matrix scaling and Dirichlet calibration, and plots.
"""

from focal_calibration._internal import set_value_checks
from focal_calibration.bootstrap import bootstrap_ci, bootstrap_samples
from focal_calibration.evidence import claim_result, regime_check, seed_summary, verdict
from focal_calibration.focal import focal_loss, fused_row_loss, g, gamma_star, optimal_confidence
from focal_calibration.gamma import (EpochScheduledGamma, FixedGamma, GammaPolicy, SampleDependentGamma,
                                     flsc_milestones, parse_gamma_policy, prop2_gamma_policy)
from focal_calibration.losses import (PAPER_LOSS_SPECS, BrierLoss, CalibrationLoss, CrossEntropyLoss, FocalLoss,
                                      LabelSmoothingLoss, MMCELoss, build_loss, mmce_weighted)
from focal_calibration.losses import (BEYOND_PAPER_LOSS_SPECS, AdaFocalLoss, DualFocalLoss, InverseFocalLoss,
                                      MarginLabelSmoothingLoss, PolyLoss)
from focal_calibration.metrics import CalibrationAccumulator, ReliabilityBins, calibration_metrics, reliability_bins
from focal_calibration.scaling import ScalingFit, fit_dirichlet, fit_matrix_scaling, fit_vector_scaling
from focal_calibration.temperature import TemperatureFit, fit_temperature

__version__ = "0.1.0"

__all__ = [
    "focal_loss", "g", "gamma_star", "optimal_confidence",
    "GammaPolicy", "FixedGamma", "EpochScheduledGamma", "SampleDependentGamma", "prop2_gamma_policy",
    "CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss",
    "mmce_weighted", "build_loss", "PAPER_LOSS_SPECS",
    "parse_gamma_policy", "flsc_milestones", "fused_row_loss",
    "AdaFocalLoss", "InverseFocalLoss", "DualFocalLoss", "PolyLoss", "MarginLabelSmoothingLoss",
    "BEYOND_PAPER_LOSS_SPECS",
    "calibration_metrics", "CalibrationAccumulator", "ReliabilityBins", "reliability_bins",
    "bootstrap_ci", "bootstrap_samples",
    "fit_temperature", "TemperatureFit", "set_value_checks",
    "fit_vector_scaling", "fit_matrix_scaling", "fit_dirichlet", "ScalingFit",
    "seed_summary", "verdict", "claim_result", "regime_check",
]
