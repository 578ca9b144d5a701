"""Many runs of ``treelstm/train.py`` and their numbers: the machinery of ``scripts/text_demo.py`` and
``scripts/text_treelstm_study.py``.

* :func:`run_all` trains every run whose ``results.json`` is missing through the grid runner
  (:mod:`focal_calibration.experiments.runner`: a few single-threaded processes at a time, or a SLURM job array),
  each with ``--resume auto`` (a killed script resumes where it stopped; a finished run is never trained twice).
* :func:`epoch_view` reads one run's numbers *as if* it had stopped after a given epoch and reported the model a
  selection rule picks among those epochs: every epoch of ``log.jsonl`` holds the test metrics and the temperature
  fitted on that epoch's validation logits, i.e. what the final evaluation would report for that model. This is how
  one 25-epoch run also answers "what would 10 epochs have given?" (nothing in the recipes depends on the number of
  epochs) and "best validation accuracy or last epoch?".
* :func:`regime_of` judges the §3 regime of a run at a reported epoch
(:func:`focal_calibration.experiments.evidence.regime_check`
  on the log up to that epoch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from focal_calibration.experiments.evidence import regime_check, seed_summary
from focal_calibration.experiments.runner import Job, Launcher, run_jobs

__all__ = ["TRAIN_SCRIPT", "run_all", "read_log", "epoch_view", "regime_of", "summary_cell",
           "focal_optimum_temperature"]

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"


def run_all(commands: dict[Path, Sequence[str]], launcher: Launcher, *, folder) -> dict[str, dict]:
    """Run ``treelstm/train.py`` with ``commands[run_dir]`` (its own flags) for every run folder lacking
    ``results.json``, with ``--resume auto`` and one thread, through ``launcher`` (local: ``launcher.jobs`` processes
    at a time; submitit's files under ``folder``); output in ``RUN_DIR/train.out``. Returns each trained run's times
    (``run_dir.name`` -> ``{"wall_s", "cpu_s"}``); the first failed run stops the others
    (:class:`~focal_calibration.experiments.runner.JobFailedError`)."""
    todo = [Path(run_dir) for run_dir in commands if not (Path(run_dir) / "results.json").exists()]
    print(f"{len(commands) - len(todo)} of {len(commands)} runs already finished; training {len(todo)}", flush=True)
    jobs = [Job(run_dir.name, [sys.executable, str(TRAIN_SCRIPT), *commands[run_dir], "--threads", "1",
                               "--no-progress", "--output-dir", str(run_dir), "--resume", "auto"],
                run_dir / "train.out") for run_dir in todo]
    return run_jobs(jobs, launcher, folder=folder, name="text", log=lambda line: print(line, flush=True))


def read_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]


def regime_of(log: Sequence[dict], epoch: int) -> dict:
    """The §3 regime criterion on the evaluated epochs up to ``epoch`` (1-based)."""
    evaluated = [r for r in log if r["epoch"] <= epoch and r.get("train_error") is not None]
    if not evaluated:
        raise ValueError(f"no evaluated epoch up to epoch {epoch}: train with --eval-every 1")
    return regime_check(evaluated)


def epoch_view(log: Sequence[dict], *, epochs: int, select: str) -> dict:
    """The run as if trained for ``epochs`` epochs and reported with ``select`` (``best-val``: the first epoch of
    highest validation accuracy, as the trainer; ``last``): that epoch's log record plus its regime."""
    if select not in ("best-val", "last"):
        raise ValueError(f"select must be 'best-val' or 'last', got {select!r}")
    window = [r for r in log if r["epoch"] <= epochs]
    if len(window) < epochs:
        raise ValueError(f"the log has {len(window)} epochs, fewer than the {epochs} asked for")
    if any(r.get("temperature") is None for r in window):
        raise ValueError("epoch_view needs a per-epoch evaluation in every epoch (train with --eval-every 1)")
    record = window[-1] if select == "last" else max(window, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    regime = regime_of(log, record["epoch"])
    return {**record, "regime_met": regime["meets"], "nll_misclassified_rising": regime["nll_misclassified_rising"]}


def focal_optimum_temperature(q: float, gamma_of) -> tuple[float, float]:
    """Where focal loss puts a binary prediction when the label is noisy: for P(y = 1 | x) = q in (0.5, 1), the
    prediction p* minimising the expected loss q FL(p) + (1 - q) FL(1 - p), FL(p) = -(1 - p)^gamma(p) log p
    (``gamma_of`` maps p to γ: constant for FL-γ, ``np.where(p < 0.2, 5, 3)`` for FLSD-53), and the temperature
    T* = logit(p*) / logit(q) that maps p* back to q. Cross-entropy (γ = 0) gives p* = q, T* = 1; T* < 1 means the
    minimiser is under-confident. Grid search over p with resolution 1e-6."""
    if not 0.5 < q < 1:
        raise ValueError(f"q must lie in (0.5, 1), got {q!r}")
    p = np.linspace(1e-6, 1 - 1e-6, 999_999)

    def focal(x):
        return -(1 - x) ** gamma_of(x) * np.log(x)

    best = float(p[np.argmin(q * focal(p) + (1 - q) * focal(1 - p))])
    return best, float(np.log(best / (1 - best)) / np.log(q / (1 - q)))


def summary_cell(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std [lo, hi]`` over seeds (Student-t 95 % interval), scaled (100 for percentages)."""
    summary = seed_summary([scale * v for v in values])
    text = f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
    if summary["ci"] is not None:
        text += f" [{summary['ci'][0]:.{digits}f}, {summary['ci'][1]:.{digits}f}]"
    return text
