"""Measuring and fixing calibration: metrics (with their written-down bin conventions), bootstrap intervals,
temperature scaling and the other post-hoc maps (vector / matrix scaling, Dirichlet calibration).

* :mod:`~focal_calibration.calibration.metrics` — ECE, AdaECE, MCE, classwise ECE, NLL, Brier, top-k, S99, and the
  streaming :class:`~focal_calibration.calibration.metrics.CalibrationAccumulator`.
* :mod:`~focal_calibration.calibration.extra_metrics` — beyond the paper: smooth ECE, KS, ECE-sweep, debiased L2-ECE.
* :mod:`~focal_calibration.calibration.bootstrap` — percentile intervals of every metric.
* :mod:`~focal_calibration.calibration.temperature` — the paper's temperature fit (ECE grid) and NLL fits; for
  sigmoid outputs one temperature (binary) or one per label.
* :mod:`~focal_calibration.calibration.scaling` — vector / matrix scaling and Dirichlet calibration.
* :mod:`~focal_calibration.calibration.multilabel` — the same for binary and multi-label (sigmoid) predictions:
  per-label, macro and micro ECE / AdaECE / MCE and the extras, bootstrap intervals, a streaming accumulator.
* :mod:`~focal_calibration.calibration.scalers` — the fitted maps as modules around a model (``TemperatureScaler``
  & co.), fitted from a validation ``DataLoader``, saved with ``state_dict``, exportable.

Nothing here imports the losses: calibration is measured the same way whatever trained the model.
"""

from focal_calibration.calibration.bootstrap import bootstrap_ci, bootstrap_samples
from focal_calibration.calibration.metrics import (CalibrationAccumulator, ReliabilityBins, calibration_metrics,
                                                   reliability_bins)
from focal_calibration.calibration.multilabel import (BinaryCalibrationAccumulator, MultilabelCalibrationAccumulator,
                                                      binary_bootstrap_ci, binary_bootstrap_samples,
                                                      binary_calibration_metrics, multilabel_bootstrap_ci,
                                                      multilabel_bootstrap_samples, multilabel_calibration_metrics,
                                                      multilabel_reliability_bins)
from focal_calibration.calibration.scalers import (DirichletScaler, MatrixScaler, TemperatureScaler, VectorScaler,
                                                   collect_logits)
from focal_calibration.calibration.scaling import ScalingFit, fit_dirichlet, fit_matrix_scaling, fit_vector_scaling
from focal_calibration.calibration.temperature import (LabelTemperatureFit, TemperatureFit, TemperatureFitWarning,
                                                       fit_binary_temperature, fit_label_temperatures, fit_temperature)

__all__ = [
    "calibration_metrics", "CalibrationAccumulator", "ReliabilityBins", "reliability_bins",
    "bootstrap_ci", "bootstrap_samples",
    "fit_temperature", "TemperatureFit",
    "fit_vector_scaling", "fit_matrix_scaling", "fit_dirichlet", "ScalingFit",
    "binary_calibration_metrics", "multilabel_calibration_metrics", "BinaryCalibrationAccumulator",
    "MultilabelCalibrationAccumulator", "multilabel_reliability_bins", "binary_bootstrap_samples",
    "binary_bootstrap_ci", "multilabel_bootstrap_samples", "multilabel_bootstrap_ci",
    "fit_binary_temperature", "fit_label_temperatures", "LabelTemperatureFit", "TemperatureFitWarning",
    "TemperatureScaler", "VectorScaler", "MatrixScaler", "DirichletScaler", "collect_logits",
]
