"""The paper's Table 1 / 2 layout of many runs' results (any suite): one row per (dataset, model), one column per
loss in the paper's order (CE, Brier, MMCE, LS-0.05, FL-1/2/3, FLSc, FLSD; other specs after them), cells
"pre / post (T)" in % with T chosen on validation ECE (§5.1). Runs that share dataset, model and loss (several seeds)
are summarised as mean ± std over the runs (sample std, ddof = 1) and the cell says how many (``n=3``). Metrics that
temperature scaling cannot change (error, top-5 error) get one number per cell. Records come from
:func:`focal_calibration.experiments.records.read_results`; the metrics beyond the paper (smECE, KS, ECE-sweep, debiased
L2-ECE), which the trainers do not compute, are added from each run's saved test logits by :func:`with_extra_metrics`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from focal_calibration.calibration.extra_metrics import EXTRA_METRICS
from focal_calibration.calibration.metrics import calibration_metrics
from focal_calibration.experiments.evidence import seed_summary
from focal_calibration.experiments.records import run_file

__all__ = ["PAPER_ORDER", "LOSS_TITLES", "METRICS", "build_table", "to_markdown", "to_latex", "with_extra_metrics"]

PAPER_ORDER = ("ce", "brier", "mmce-2", "ls-0.05", "fl-1", "fl-2", "fl-3", "flsc-531", "flsc-532", "flsd-532",
               "flsd-53")
LOSS_TITLES = {"ce": "Cross-Entropy", "brier": "Brier Loss", "mmce-2": "MMCE", "ls-0.05": "LS-0.05",
               "fl-1": "FL-1", "fl-2": "FL-2", "fl-3": "FL-3", "flsc-531": "FLSc-531", "flsc-532": "FLSc-532",
               "flsd-532": "FLSD-532", "flsd-53": "FLSD-53"}
METRICS = {  # name -> (title, scaled by temperature?)
    "ece": ("ECE (%)", True), "adaece": ("AdaECE (%)", True), "mce": ("MCE (%)", True),
    "classwise_ece": ("Classwise ECE (%)", True), "nll": ("NLL (x100)", True), "brier": ("Brier (x100)", True),
    "error": ("Error (%)", False), "top5_error": ("Top-5 error (%)", False), "s99": ("|S99| (%)", True),
    "s99_accuracy": ("S99 accuracy (%)", True),
    # beyond the paper: from the saved test logits (with_extra_metrics)
    "smece": ("smECE (%)", True), "ks": ("KS error (%)", True), "ece_sweep": ("ECE-sweep (%)", True),
    "debiased_l2_ece": ("Debiased L2-ECE (%)", True),
}


def with_extra_metrics(records: list[dict], metrics) -> list[dict]:
    """Add the requested metrics beyond the paper to each record's test ``pre`` / ``post`` (logits / T) metrics,
    computed from the run's ``logits.pt`` (beside its results file, as both trainers write it). A record that already
    has them keeps its values; one without saved logits (e.g. NMT sweeps, token-level) is left without them, so its
    cell shows "-"."""
    extra = tuple(m for m in metrics if m in EXTRA_METRICS)
    if not extra:
        return records
    for record in records:
        evaluation = record["evaluation"]
        if all(m in evaluation["pre"] and m in evaluation["post"] for m in extra):
            continue
        path = run_file(record, "logits") or Path(record["path"]).parent / "logits.pt"
        if not Path(path).is_file():
            continue
        saved = torch.load(path, map_location="cpu", weights_only=True)
        logits, labels = saved["test_logits"], saved["test_labels"]
        n_bins = evaluation.get("n_bins", 15)
        for key, scaled in (("pre", logits), ("post", logits / evaluation["temperature"])):
            values = calibration_metrics(labels, logits=scaled, n_bins=n_bins, extra=extra)
            evaluation[key].update({m: values[m] for m in extra})
    return records


def _summary(values, scale: float = 1.0):
    """(mean, std) of the defined values, scaled; None if none is defined."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    summary = seed_summary([scale * v for v in values])
    return summary["mean"], summary["std"]


def build_table(records: list[dict], metric: str) -> tuple[list[str], list[tuple[str, str]], dict]:
    """(loss columns, (dataset, model) rows, {(row, loss): (pre, post, T, n)}) with pre / post / T each None or a
    (mean, std) pair over the runs (pre / post in % or x100)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    groups = defaultdict(list)
    seen = set()
    for record in records:
        checkpoint = run_file(record, "checkpoint")
        run = str(Path(checkpoint).resolve()) if checkpoint is not None else record.get("path")
        if run is not None and run in seen:  # train.py's and evaluate.py's results of the same checkpoint
            continue
        seen.add(run)
        groups[(record["dataset"], record["model"]), record["loss"]].append(record["evaluation"])
    losses = sorted({loss for _, loss in groups},
                    key=lambda s: (PAPER_ORDER.index(s) if s in PAPER_ORDER else len(PAPER_ORDER), s))
    rows = sorted({row for row, _ in groups})
    cells = {}
    for (row, loss), evaluations in groups.items():
        cells[row, loss] = (_summary([e["pre"].get(metric) for e in evaluations], 100),
                            _summary([e["post"].get(metric) for e in evaluations], 100),
                            _summary([e["temperature"] for e in evaluations]), len(evaluations))
    return losses, rows, cells


def _number(summary, decimals: int = 2, plus_minus: str = " ± ", spread: bool = True) -> str:
    if summary is None:
        return "-"
    mean, std = summary
    return f"{mean:.{decimals}f}" + (f"{plus_minus}{std:.{decimals}f}" if spread else "")


def _cell(value, scaled: bool) -> str:
    if value is None:
        return "-"
    pre, post, temperature, n = value
    many = n > 1  # a single run has no spread to show
    text = (f"{_number(pre, spread=many)} / {_number(post, spread=many)} ({_number(temperature, 1, spread=many)})"
            if scaled else _number(pre, spread=many))
    return text + (f" n={n}" if many else "")


def to_markdown(records, metric: str) -> str:
    """A Markdown table of ``metric`` over runs: one row per (dataset, model), one column per loss; a cell is
    "pre T / post T (T)" for metrics that temperature scaling changes, else the value, each as mean ± std over the
    runs with ``n=`` when there is more than one."""
    losses, rows, cells = build_table(records, metric)
    title, scaled = METRICS[metric]
    head = ["Dataset", "Model"] + [LOSS_TITLES.get(loss, loss) for loss in losses]
    lines = [f"**{title}**" + (" — pre T / post T (T), T chosen by validation ECE" if scaled else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([*row, *(_cell(cells.get((row, loss)), scaled) for loss in losses)]) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(records, metric: str) -> str:
    """The same table as :func:`to_markdown`, as a LaTeX ``tabular`` in the layout of the paper's Tables 1 and 2."""
    losses, rows, cells = build_table(records, metric)
    title, scaled = METRICS[metric]
    per_loss = 2 if scaled else 1
    lines = [r"\begin{tabular}{ll" + "c" * (per_loss * len(losses)) + "}", r"\toprule"]
    lines.append("Dataset & Model & " + " & ".join(
        (rf"\multicolumn{{2}}{{c}}{{{_tex(LOSS_TITLES.get(loss, loss))}}}" if scaled else
         _tex(LOSS_TITLES.get(loss, loss))) for loss in losses) + r" \\")
    if scaled:
        lines.append(" & & " + " & ".join(["Pre T & Post T"] * len(losses)) + r" \\")
    lines.append(r"\midrule")
    for row in rows:
        parts = [_tex(row[0]), _tex(row[1])]
        for loss in losses:
            value = cells.get((row, loss))
            if value is None:
                parts += ["-"] * per_loss
            elif scaled:
                pre, post, temperature, _ = value
                many, pm = value[3] > 1, r"$\pm$"
                parts += [_number(pre, 2, pm, many),
                          f"{_number(post, 2, pm, many)}({_number(temperature, 1, pm, many)})"]
            else:
                parts.append(_number(value[0], 2, r"$\pm$", value[3] > 1))
        lines.append(" & ".join(parts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"% {title}"]
    return "\n".join(lines) + "\n"
