"""The pre / post temperature-scaling evaluation every suite reports (§5.1, Tables 1-2 and Appendix E-F).

One entry point, :func:`evaluate_calibration`, turns validation and test logits into the paper's numbers:

* T is chosen on the **validation** set by a grid search minimising ECE over T = 0.1, 0.2, ..., 10 (§5.1, approach
  (b), "which we find to produce stronger baselines"); the NLL-fitted T (approach (a), Guo et al.) is reported too.
* Test metrics (error, top-5 error, NLL, Brier, ECE, AdaECE, MCE, classwise ECE, S99 and its accuracy, entropy) come
  from :func:`focal_calibration.calibration.metrics.calibration_metrics` before scaling, at T_ece and at T_nll.
* Beyond the paper, the same test metrics after vector scaling and matrix scaling (Guo et al. 2017) fitted on the
  validation split (:mod:`focal_calibration.calibration.scaling`), with the policy of :func:`matrix_scaling_plan`.

A results JSON per run (:func:`make_run_record`, :func:`write_json_atomic`) holds
``{"suite", "dataset", "model", "loss", "seed", "args", "evaluation", "paths"}``; ``scripts/results_table.py`` reads
any number of them (:func:`read_results`) into the paper's "pre / post (T)" tables. ``paths`` inside the run folder
are relative to it (:func:`folder_relative_paths`), so a copied or moved folder reads its own files
(:func:`run_file`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import torch

from focal_calibration.calibration.metrics import calibration_metrics, reliability_bins
from focal_calibration.calibration.scaling import fit_matrix_scaling, fit_vector_scaling
from focal_calibration.calibration.temperature import fit_temperature
from focal_calibration.constants import MATRIX_SCALING_MODES
from focal_calibration.validation import as_tensor, check_choice, check_n_bins

__all__ = ["evaluate_calibration", "matrix_scaling_plan", "save_reliability_diagrams", "read_results",
           "make_run_record", "folder_relative_paths", "run_file", "RESULTS_FORMAT_VERSION",
           "MATRIX_SCALING_COST_LIMIT"]

RESULTS_FORMAT_VERSION = 1
# N_val * K^2: multiply-adds of one pass of matrix scaling over the validation set. ODIR's cross-validation makes
# ~2,000 passes (x 2 matmuls): 5,000 x 100 (CIFAR-100 sized, N K^2 = 5e7) took 5.5-12 s of CPU time here, so the
# limit 2^27 (1.3e8) bounds "auto" near half a minute of CPU; larger problems (Tiny-ImageNet's 10,000 x 200, ImageNet)
# are skipped with the reason recorded, and matrix_scaling="odir" or "plain" forces them.
MATRIX_SCALING_COST_LIMIT = 2 ** 27


def matrix_scaling_plan(n: int, k: int, mode: str = "auto", *, labels_cover_classes: bool = True) -> tuple:
    """How :func:`evaluate_calibration` fits matrix scaling on ``n`` validation samples of ``k`` classes:
    ``("plain", None)``, ``("odir", None)`` or ``("skip", reason)``.

    ``"auto"``: Guo et al.'s unregularised fit when it has at least 10 validation samples per parameter
    (K² + K <= N / 10) and every class occurs among the validation labels; otherwise ODIR with λ = μ chosen by 3-fold
    cross-validation (Kull et al.); skipped when N · K² > ``MATRIX_SCALING_COST_LIMIT``. ``"plain"`` / ``"odir"``
    force one fit, ``"off"`` skips.
    """
    check_choice(mode, MATRIX_SCALING_MODES, "matrix_scaling")
    if mode == "off":
        return "skip", "matrix_scaling='off'"
    if mode != "auto":
        return mode, None
    if n * k * k > MATRIX_SCALING_COST_LIMIT:
        return "skip", (f"N_val * K^2 = {n} * {k}^2 = {n * k * k:,} exceeds MATRIX_SCALING_COST_LIMIT = "
                        f"{MATRIX_SCALING_COST_LIMIT:,} (pass matrix_scaling='odir' to fit it anyway)")
    if k * k + k <= n / 10 and labels_cover_classes:
        return "plain", None
    return "odir", None


def _as_logits(logits, name: str) -> torch.Tensor:
    tensor = as_tensor(logits, name)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be floating-point logits, got dtype {tensor.dtype}")
    if tensor.dim() < 2:
        raise ValueError(f"{name} must have shape [N, K] (classes last), got {tuple(tensor.shape)}")
    return tensor.detach()


def evaluate_calibration(val_logits, val_labels, test_logits, test_labels, *, n_bins: int = 15,
                         matrix_scaling: str = "auto") -> dict:
    """Pre / post temperature-scaling metrics of one model (§5.1, Tables 1-2, Appendix E-F), JSON-ready.

    Args:
        val_logits: the held-out validation split's logits ``[N_val, K]``, which choose T.
        val_labels: its labels ``[N_val]``.
        test_logits: the test split's logits ``[N_test, K]``, which are reported.
        test_labels: its labels ``[N_test]``.
        n_bins: bins of ECE / AdaECE / MCE / classwise ECE (the paper uses 15).
        matrix_scaling: ``"auto"`` (see :func:`matrix_scaling_plan`), ``"plain"``, ``"odir"`` or ``"off"``.

    Returns:
        ``{"n_bins", "temperature" (T minimising validation ECE on the paper's grid), "temperature_nll" (T
        minimising validation NLL, L-BFGS on log T), "pre", "post", "post_nll" (test metrics before scaling, at
        T and at T_nll), "val_pre", "val_post" (validation metrics before scaling and at T), "post_vs", "post_ms"
        (test metrics after vector / matrix scaling fitted on the validation split, or None when skipped),
        "vector_scaling", "matrix_scaling" (the fits'
        :meth:`~focal_calibration.calibration.scaling.ScalingFit.summary`, or
        ``{"skipped": reason}``)}``; every metric dict is
        :func:`~focal_calibration.calibration.metrics.calibration_metrics`'s
        (fractions, not %).
    """
    n_bins = check_n_bins(n_bins)
    val_logits, test_logits = _as_logits(val_logits, "val_logits"), _as_logits(test_logits, "test_logits")
    if val_logits.shape[-1] != test_logits.shape[-1]:
        raise ValueError(f"val_logits and test_logits must have the same number of classes, got "
                         f"{val_logits.shape[-1]} and {test_logits.shape[-1]}")
    val_labels, test_labels = as_tensor(val_labels, "val_labels"), as_tensor(test_labels, "test_labels")
    check_choice(matrix_scaling, MATRIX_SCALING_MODES, "matrix_scaling")

    fit_ece = fit_temperature(val_logits, val_labels, objective="ece", n_bins=n_bins)
    fit_nll = fit_temperature(val_logits, val_labels, objective="nll", method="lbfgs", n_bins=n_bins)
    t_ece, t_nll = float(fit_ece.temperature), float(fit_nll.temperature)

    def metrics(logits, labels, temperature=1.0):
        # Scale in float32 at least, so a half-precision run's logits are not rounded a second time.
        scaled = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        return calibration_metrics(labels, logits=scaled / temperature if temperature != 1.0 else scaled,
                                   n_bins=n_bins)

    vector, matrix = _post_hoc_maps(val_logits, val_labels, n_bins, matrix_scaling)
    return {
        "n_bins": n_bins,
        "temperature": t_ece,
        "temperature_nll": t_nll,
        "pre": metrics(test_logits, test_labels),
        "post": metrics(test_logits, test_labels, t_ece),
        "post_nll": metrics(test_logits, test_labels, t_nll),
        "val_pre": metrics(val_logits, val_labels),
        "val_post": metrics(val_logits, val_labels, t_ece),
        "post_vs": _scaled_metrics(vector, test_logits, test_labels, n_bins),
        "post_ms": _scaled_metrics(matrix, test_logits, test_labels, n_bins),
        "vector_scaling": vector if isinstance(vector, dict) else vector.summary(),
        "matrix_scaling": matrix if isinstance(matrix, dict) else matrix.summary(),
    }


def _post_hoc_maps(val_logits, val_labels, n_bins: int, matrix_scaling: str):
    """Vector and matrix scaling fitted on the validation split, each a ScalingFit or ``{"skipped": reason}``."""
    labels = val_labels.reshape(-1).long()
    n, k = labels.numel(), val_logits.shape[-1]
    covered = bool(torch.bincount(labels.clamp(0, k - 1), minlength=k).all()) if n else False
    if k < 2:
        return ({"skipped": f"K = {k}: no map to fit"},) * 2
    if 2 * k > n or not covered:
        vector = {"skipped": f"unregularised vector scaling needs 2K <= N_val and every class among the validation "
                             f"labels (K = {k}, N_val = {n}, all classes present: {covered})"}
    else:
        vector = fit_vector_scaling(val_logits, val_labels, n_bins=n_bins)
    plan, reason = matrix_scaling_plan(n, k, matrix_scaling, labels_cover_classes=covered)
    if plan == "skip":
        matrix = {"skipped": reason}
    else:
        matrix = fit_matrix_scaling(val_logits, val_labels, odir="cv" if plan == "odir" else None, n_bins=n_bins)
    return vector, matrix


def _scaled_metrics(fit, logits, labels, n_bins: int):
    return None if isinstance(fit, dict) else calibration_metrics(labels, logits=fit.scale(logits), n_bins=n_bins)


def save_reliability_diagrams(test_logits, test_labels, temperature: float, out_dir, *, n_bins: int = 15,
                              prefix: str = "", title: str | None = None) -> list[Path]:
    """Reliability diagrams (Fig. 1 style) of the test set before and after temperature scaling.

    Writes ``{prefix}reliability_pre.png`` and ``{prefix}reliability_post.png`` in ``out_dir`` and returns the paths.
    """
    from focal_calibration.plots import reliability_diagram  # matplotlib only when plotting

    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logits = _as_logits(test_logits, "test_logits").float()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, scaled, label in (("pre", logits, "before temperature scaling"),
                                ("post", logits / temperature, f"after temperature scaling (T = {temperature:g})")):
        bins = reliability_bins(test_labels, logits=scaled, n_bins=n_bins)
        path = out_dir / f"{prefix}reliability_{name}.png"
        reliability_diagram(bins, title=f"{title}: {label}" if title else label, path=path)
        paths.append(path)
    return paths


def make_run_record(*, suite: str, dataset: str, model: str, loss: str, seed, args: Mapping, evaluation: Mapping,
                    paths: Mapping | None = None, **extra) -> dict:
    """The results JSON of one run (the layout ``scripts/results_table.py`` reads)."""
    record = {"format_version": RESULTS_FORMAT_VERSION, "suite": suite, "dataset": dataset, "model": model,
              "loss": loss, "seed": seed, "args": dict(args), "evaluation": dict(evaluation),
              "paths": dict(paths or {})}
    record.update(extra)
    return record


_REQUIRED_KEYS = ("suite", "dataset", "model", "loss", "evaluation")
_REQUIRED_EVALUATION_KEYS = ("temperature", "pre", "post")


def read_results(paths: Iterable) -> list[dict]:
    """Read results JSON files (files, or folders searched recursively for ``results.json``).

    Every record gains ``"path"`` (where it was read). Raises ``ValueError`` naming the file for unreadable JSON or a
    record without the keys the tables need.
    """
    files: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            files.extend(sorted(item.rglob("results.json")))
        elif item.is_file():
            files.append(item)
        else:
            raise ValueError(f"results path {str(item)!r} does not exist")
    records = []
    for file in files:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read results file {str(file)!r}: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"results file {str(file)!r} must hold a JSON object, got {type(record).__name__}")
        missing = [key for key in _REQUIRED_KEYS if key not in record]
        if not missing:
            missing = [f"evaluation.{key}" for key in _REQUIRED_EVALUATION_KEYS if key not in record["evaluation"]]
        if missing:
            raise ValueError(f"results file {str(file)!r} lacks {', '.join(missing)}")
        record["path"] = str(file)
        records.append(record)
    return records


def folder_relative_paths(paths: Mapping, folder) -> dict:
    """``paths`` (name -> path) as a results file stores them: a path inside ``folder`` relative to it (POSIX
    separators), any other path absolute."""
    folder = Path(folder).resolve()
    stored = {}
    for name, path in paths.items():
        if path is None:
            stored[name] = None
            continue
        absolute = Path(path).resolve()
        try:
            stored[name] = absolute.relative_to(folder).as_posix()
        except ValueError:
            stored[name] = str(absolute)
    return stored


def run_file(record: Mapping, key: str) -> Path | None:
    """The file ``record["paths"][key]`` names, for a record read by :func:`read_results` (which sets
    ``record["path"]``): a relative path is relative to the record's folder; an absolute one (results files written
    before paths were relative) is tried in the record's folder first, at its place relative to the folder the run
    was written in (``args.output_dir``) or else by its name, so a copied or moved run reads its own file, not the
    original's. None when the record names no such file."""
    value = (record.get("paths") or {}).get(key)
    if not value:
        return None
    path = Path(value)
    if "path" not in record:
        return path
    folder = Path(record["path"]).parent
    if not path.is_absolute():
        return folder / path
    candidates = []
    written_in = (record.get("args") or {}).get("output_dir")
    if written_in:
        try:
            candidates.append(folder / path.relative_to(Path(written_in).resolve()))
        except ValueError:
            pass
    candidates.append(folder / path.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return path
