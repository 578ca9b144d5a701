"""The names the image trainer's command line offers, importable without torch (``--help`` answers at once).

:mod:`classification.datasets`, :mod:`classification.models` and :mod:`classification.engine` define what each name
builds; ``tests/test_reliability.py`` checks that they define exactly these.
"""

__all__ = ["DATASET_NAMES", "MODEL_NAMES", "AMP_NAMES"]

DATASET_NAMES = ("cifar10", "cifar100", "tiny-imagenet", "fashion-mnist", "imagefolder")
MODEL_NAMES = ("resnet50", "resnet110", "wide_resnet26_10", "densenet121", "resnet50_tiny", "small_cnn", "mlp")
AMP_NAMES = ("none", "bf16", "fp16")
