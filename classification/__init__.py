"""Image-classification suite of focal-calibration: ``python classification/train.py`` / ``evaluate.py``.

Modules: ``models`` (the paper's CIFAR / Tiny-ImageNet networks + small demo nets), ``datasets`` (standard on-disk
formats, Appendix-D splits), ``batches`` (seeded order, rank sharding, batched augmentation), ``dynamics`` (§3
per-epoch statistics), ``engine`` (distributed setup, logits, final report).
"""
