"""Experiment tooling shared by the reproduction suites (``classification``, ``treelstm``, ``fairseq_focal`` and
``scripts/``): not needed to use the losses or the metrics in your own code.

* :mod:`~focal_calibration.experiments.cli` — the one command-line dialect, run folders, resume checks.
* :mod:`~focal_calibration.experiments.checkpoint` — atomic, exactly resumable checkpoints.
* :mod:`~focal_calibration.experiments.records` — the pre / post-scaling evaluation of a run and its results file.
* :mod:`~focal_calibration.experiments.evidence` — seed summaries, verdicts from intervals, the §3 regime check.
* :mod:`~focal_calibration.experiments.tables` — the paper-style tables of many runs.
"""
