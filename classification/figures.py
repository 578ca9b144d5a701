"""The paper's training-dynamics figures from the per-epoch logs (``log.jsonl``) of image runs, CE vs focal side by
side (``scripts/plot_training_dynamics.py`` is the command line):

  figure2_nll_error_ece.png      Fig. 2: train / test NLL, test error, test ECE per epoch
  figure3_calibration.png        Fig. 3a-e: test NLL overall / correct / incorrect, test entropy (incorrect),
                                 last-layer weight norm
  figure10_feature_norm.png      Fig. 10 (Appendix G): mean penultimate-feature norm over the training set
  figure4_grad_norms_epochN.png  Fig. 4b-d: histograms of per-sample last-layer gradient norms (runs trained with
                                 ``--grad-norm-epochs N ...``)

Runs are labelled by their loss (or folder name); curves are cut to the shortest run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from focal_calibration.plots import confidence_histogram, line_curves

__all__ = ["read_run", "plot_runs"]

FIGURE_2 = [("Train NLL", "NLL", "train_nll"), ("Test NLL", "NLL", "test_nll"),
            ("Test error", "error (%)", "test_error"), ("Test ECE", "ECE (%)", "test_ece")]
FIGURE_3 = [("Test NLL", "NLL", "test_nll"), ("Test NLL (correct)", "NLL", "test_nll_correct"),
            ("Test NLL (incorrect)", "NLL", "test_nll_incorrect"),
            ("Test entropy (incorrect)", "entropy (nats)", "test_entropy_incorrect"),
            ("Last-layer weight norm", "||W||", "last_layer_weight_norm")]
FIGURE_10 = [("Penultimate feature norm (train)", "mean ||h||", "train_feature_norm")]
PERCENT = {"test_error", "test_ece"}


def read_run(folder: Path) -> tuple[str, list[dict]]:
    log = folder / "log.jsonl" if folder.is_dir() else folder
    if not log.is_file():
        raise ValueError(f"no log.jsonl in {str(folder)!r} (train with classification/train.py first)")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{str(log)!r} is empty")
    args_file = log.parent / "args.json"
    label = json.loads(args_file.read_text()).get("loss", log.parent.name) if args_file.is_file() else log.parent.name
    return label, lines


def _panels(runs, spec, epochs):
    panels = []
    for title, ylabel, key in spec:
        series = {}
        for label, lines in runs:
            values = [line.get(key) for line in lines[:epochs]]
            if any(v is None for v in values):
                continue  # e.g. no test evaluation that epoch, or no misclassified sample
            series[label] = [100 * v if key in PERCENT else v for v in values]
        if series:
            panels.append((title, ylabel, series))
    return panels


def plot_runs(run_dirs, out_dir) -> list[Path]:
    runs = [read_run(Path(d)) for d in run_dirs]
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):  # same loss twice (e.g. two seeds): fall back to folder names
        runs = [(f"{label} ({Path(d).name})", lines) for (label, lines), d in zip(runs, run_dirs)]
    epochs = min(len(lines) for _, lines in runs)
    x = [line["epoch"] for line in runs[0][1][:epochs]]
    out_dir = Path(out_dir)
    written = []
    for name, spec in (("figure2_nll_error_ece.png", FIGURE_2), ("figure3_calibration.png", FIGURE_3),
                       ("figure10_feature_norm.png", FIGURE_10)):
        panels = _panels(runs, spec, epochs)
        if panels:
            line_curves(x, panels, xlabel="epoch", path=out_dir / name)
            written.append(out_dir / name)
    grad_files: dict[int, dict[str, list]] = {}
    for (label, lines), run_dir in zip(runs, run_dirs):
        for line in lines:
            if not line.get("grad_norms_file"):
                continue
            # a name in the run folder (older logs: a path, tried after the folder's own file)
            named = Path(line["grad_norms_file"])
            found = next((f for f in (Path(run_dir) / named.name, named) if f.is_file()), None)
            if found is not None:
                saved = torch.load(found, weights_only=True)
                grad_files.setdefault(line["epoch"], {})[label] = saved["norms"].tolist()
    for epoch, norms in sorted(grad_files.items()):
        top = max(max(v) for v in norms.values()) or 1.0
        path = out_dir / f"figure4_grad_norms_epoch{epoch}.png"
        confidence_histogram(norms, bins=40, range=(0.0, top), xlabel="per-sample last-layer gradient norm",
                             title=f"Last-layer gradient norms, epoch {epoch}", path=path)
        written.append(path)
    return written
