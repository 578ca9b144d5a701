"""Training losses: focal loss and its γ policies (the paper), the baselines it is compared with, and the losses
beyond the paper, as functions and as ``nn.Module`` s.

Layers, bottom up (each imports only the ones below it):

* :mod:`~focal_calibration.losses.math` — the pure math: per-row terms (loss, c), g(p, γ), γ*, eq. 5.
* :mod:`~focal_calibration.losses.gamma` — γ policies (fixed, epoch-scheduled, sample-dependent) and their specs.
* :mod:`~focal_calibration.losses.backend`, :mod:`~focal_calibration.losses.triton_kernels` — which implementation
  runs, and the fused Triton kernels (imported only when used).
* :mod:`~focal_calibration.losses.fused`, :mod:`~focal_calibration.losses.fused_smoothed`,
  :mod:`~focal_calibration.losses.fused_soft` — the fused analytic forward / backward: class-index targets (classes
  on dim 1), the classes-last API of fairseq and language-model logits (``focal_loss_classes_last``,
  ``focal_label_smoothed_loss_classes_last``), and soft targets (probabilities, label smoothing).
* :mod:`~focal_calibration.losses.adafocal` — AdaFocal's per-bin γ update.
* :mod:`~focal_calibration.losses.functional` — every loss as a function with ``F.cross_entropy``'s contract
  (``focal_loss``, ...).
* :mod:`~focal_calibration.losses.modules` — the losses as modules with ``nn.CrossEntropyLoss``'s contract;
  :mod:`~focal_calibration.losses.specs` — ``build_loss(spec)``.
* :mod:`~focal_calibration.losses.sigmoid` — the sigmoid focal loss for binary and multi-label logits (every γ
  policy per element), ``build_sigmoid_loss(spec)``.
* :mod:`~focal_calibration.losses.linear` — focal loss straight from the features and the output projection, in
  chunks (the ``[tokens × vocabulary]`` logits never exist).
"""

from focal_calibration.losses.functional import focal_loss, mmce_weighted
from focal_calibration.losses.fused import focal_loss_classes_last, fused_row_loss
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss_classes_last
from focal_calibration.losses.gamma import (EpochScheduledGamma, FixedGamma, GammaPolicy, SampleDependentGamma,
                                            flsc_milestones, parse_gamma_policy, prop2_gamma_policy)
from focal_calibration.losses.linear import LinearFocalLoss, LinearFocalStats, linear_focal_loss
from focal_calibration.losses.math import g, gamma_star, optimal_confidence
from focal_calibration.losses.modules import (AdaFocalLoss, BrierLoss, CalibrationLoss, CrossEntropyLoss, DualFocalLoss,
                                              FocalLoss, InverseFocalLoss, LabelSmoothingLoss, MarginLabelSmoothingLoss,
                                              MMCELoss, PolyLoss)
from focal_calibration.losses.sigmoid import SigmoidFocalLoss, build_sigmoid_loss, sigmoid_focal_loss
from focal_calibration.losses.specs import BEYOND_PAPER_LOSS_SPECS, PAPER_LOSS_SPECS, build_loss

__all__ = [
    "focal_loss", "focal_loss_classes_last", "fused_row_loss", "focal_label_smoothed_loss_classes_last", "g",
    "gamma_star", "optimal_confidence",
    "GammaPolicy", "FixedGamma", "EpochScheduledGamma", "SampleDependentGamma", "prop2_gamma_policy",
    "parse_gamma_policy", "flsc_milestones",
    "CalibrationLoss", "CrossEntropyLoss", "FocalLoss", "LabelSmoothingLoss", "BrierLoss", "MMCELoss", "mmce_weighted",
    "AdaFocalLoss", "InverseFocalLoss", "DualFocalLoss", "PolyLoss", "MarginLabelSmoothingLoss",
    "build_loss", "PAPER_LOSS_SPECS", "BEYOND_PAPER_LOSS_SPECS",
    "sigmoid_focal_loss", "SigmoidFocalLoss", "build_sigmoid_loss",
    "linear_focal_loss", "LinearFocalLoss", "LinearFocalStats",
]
