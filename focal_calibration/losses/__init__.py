"""Training losses: focal loss and its γ policies (the paper), the baselines it is compared with, and the losses
beyond the paper, as functions and as ``nn.Module`` s.

Layers, bottom up (each imports only the ones below it):

* :mod:`~focal_calibration.losses.math` — the pure math: per-row terms (loss, c), g(p, γ), γ*, eq. 5.
* :mod:`~focal_calibration.losses.gamma` — γ policies (fixed, epoch-scheduled, sample-dependent) and their specs.
* :mod:`~focal_calibration.losses.backend`, :mod:`~focal_calibration.losses.triton_kernels` — which implementation
  runs, and the fused Triton kernels (imported only when used).
* :mod:`~focal_calibration.losses.fused`, :mod:`~focal_calibration.losses.fused_smoothed` — the fused analytic
  forward / backward over classes-last logits (the path fairseq and language-model logits take).
* :mod:`~focal_calibration.losses.adafocal` — AdaFocal's per-bin γ update.
* :mod:`~focal_calibration.losses.modules` — the losses as modules; :mod:`~focal_calibration.losses.specs` —
  ``build_loss(spec)``.
* :mod:`~focal_calibration.losses.linear` — focal loss straight from the features and the output projection, in
  chunks (the ``[tokens × vocabulary]`` logits never exist).
"""

from focal_calibration.losses.fused import focal_loss, fused_row_loss
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss
from focal_calibration.losses.gamma import (EpochScheduledGamma, FixedGamma, GammaPolicy, SampleDependentGamma,
                                            flsc_milestones, parse_gamma_policy, prop2_gamma_policy)
from focal_calibration.losses.linear import LinearFocalLoss, LinearFocalStats, linear_focal_loss
from focal_calibration.losses.math import g, gamma_star, optimal_confidence
from focal_calibration.losses.modules import (AdaFocalLoss, BrierLoss, CalibrationLoss, CrossEntropyLoss, DualFocalLoss,
                                              FocalLoss, InverseFocalLoss, LabelSmoothingLoss, MarginLabelSmoothingLoss,
                                              MMCELoss, PolyLoss, mmce_weighted)
from focal_calibration.losses.specs import BEYOND_PAPER_LOSS_SPECS, PAPER_LOSS_SPECS, build_loss

__all__ = [
    "focal_loss", "fused_row_loss", "focal_label_smoothed_loss", "g", "gamma_star", "optimal_confidence",
    "GammaPolicy", "FixedGamma", "EpochScheduledGamma", "SampleDependentGamma", "prop2_gamma_policy",
    "parse_gamma_policy", "flsc_milestones",
    "CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss", "mmce_weighted",
    "AdaFocalLoss", "InverseFocalLoss", "DualFocalLoss", "PolyLoss", "MarginLabelSmoothingLoss",
    "build_loss", "PAPER_LOSS_SPECS", "BEYOND_PAPER_LOSS_SPECS",
    "linear_focal_loss", "LinearFocalLoss", "LinearFocalStats",
]
