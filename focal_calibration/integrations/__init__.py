"""The frameworks people train with, each an optional extra (nothing here is imported by ``focal_calibration``):

* :mod:`~focal_calibration.integrations.torchmetrics` — ``torchmetrics.Metric`` classes over the streaming
  calibration accumulator (``pip install "focal-calibration[torchmetrics]"``).
* :mod:`~focal_calibration.integrations.lightning` — ``CalibrationLossCallback`` for Lightning
  (``pip install "focal-calibration[lightning]"``).
* :mod:`~focal_calibration.integrations.huggingface` — ``CalibrationLossCallback`` and ``CalibrationLossFunction``
  for the Hugging Face ``Trainer`` (``pip install "focal-calibration[hf]"``).

Import the module you need (``from focal_calibration.integrations.lightning import CalibrationLossCallback``); a
missing framework is one ``ImportError`` naming the extra to install.
"""

__all__ = []


def _missing_extra(module: str, package: str, extra: str) -> str:
    """The one error message of a missing optional framework."""
    return (f"focal_calibration.integrations.{module} needs {package}, which is not installed: "
            f'pip install "focal-calibration[{extra}]"')
