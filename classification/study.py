"""The regime study behind ``make study`` and ``make demo``: how Fashion-MNIST training-set size decides whether
focal loss calibrates better than cross-entropy (Mukhoti et al., NeurIPS 2020, §3).

§3 of the paper locates the miscalibration focal loss cures in one regime: the network drives its training error to
~0 and keeps lowering the NLL, and the test NLL of the misclassified samples rises. How far a network over-fits
depends, for a fixed model and optimiser, on how much data it sees per update, so the study varies only the
training-set size and keeps one recipe for every cell:

* the paper's SGD (momentum 0.9, weight decay 5e-4, lr 0.1 with 10x drops at 1/2 and 5/6 of training, i.e. the
  Fashion-MNIST recipe's epochs 15 and 25 of 30), batch 128, no augmentation, model ``mlp`` by default;
* the **same number of updates** for every size: ``epochs`` passes over the full 55,000-image training set, i.e.
  ``epochs * ceil(55000 / 128)`` SGD steps, spread over ``round(updates / ceil(size / 128))`` epochs of the smaller
  set. Same compute and the same lr schedule (in updates) for every cell, so the only difference between cells is how
  often each training image is revisited — the knob §3 is about;
* training subsets are the first ``size`` images of one seeded 55,000 / 5,000 train / validation split
  (``--split-seed``, independent of the training seed), so the subsets are nested and every run of a size sees the
  same images; validation (5,000, chooses T) and test (the official 10,000) are the same for every cell;
* test metrics ~30 times per run for the §3 dynamics (``test_nll_incorrect``), and once more at the end, with the
  final training error measured in eval mode on the whole training subset.

Each finished run becomes one record of ``OUT/study.json`` (written atomically by this process only); a restarted
study skips finished runs and resumes unfinished ones from their checkpoints, and refuses to mix recipes or settings:
everything that reaches a run's command line besides its cell is the :class:`Recipe` or a keyword-only parameter of
:func:`train_command` (:func:`study_settings`), and both are recorded in ``study.json`` and checked on a restart. The
runs go through :mod:`focal_calibration.experiments.runner` (local processes, or a SLURM job array).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from focal_calibration.files import write_json_atomic
from focal_calibration.experiments.evidence import regime_check, seed_summary
from focal_calibration.experiments.runner import Job, Launcher, run_jobs
from focal_calibration.validation import check_int

__all__ = ["Recipe", "Cell", "FULL_TRAIN_SIZE", "run_cells", "read_study", "study_settings", "run_record", "summarise",
           "study_markdown", "plot_study", "STUDY_FORMAT_VERSION", "train_command", "train_environment",
           "TRAIN_ENVIRONMENT"]

REPO = Path(__file__).resolve().parent.parent
FULL_TRAIN_SIZE = 55_000  # Fashion-MNIST training images after the 5,000-image validation hold-out
MILESTONE_FRACTIONS = (1 / 2, 5 / 6)  # the 30-epoch recipe's drops after epochs 15 and 25
STUDY_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """Everything a cell's training shares with every other cell (the size is the only variable)."""
    model: str = "mlp"
    updates: int = 8 * math.ceil(FULL_TRAIN_SIZE / 128)  # SGD steps of every run: 8 passes over 55,000 images
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False
    split_seed: int = 1
    eval_points: int = 30  # test evaluations per run (for the §3 dynamics)

    def __post_init__(self):
        for name in ("updates", "batch_size", "eval_points"):
            check_int(getattr(self, name), name.replace('_', ' '), 1)
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_epochs(cls, epochs: int, **options) -> "Recipe":
        """The recipe whose every run takes as many updates as ``epochs`` passes over all 55,000 images."""
        check_int(epochs, "--epochs", 1)
        batch_size = options.get("batch_size", cls.batch_size)
        return cls(updates=epochs * math.ceil(FULL_TRAIN_SIZE / batch_size), **options)

    def schedule(self, size: int) -> dict:
        """Epochs, lr milestones (1-based epochs after which lr drops) and test-evaluation interval for ``size``."""
        check_int(size, "training-set size", 1, FULL_TRAIN_SIZE)
        steps = math.ceil(size / self.batch_size)
        epochs = max(1, round(self.updates / steps))
        milestones = sorted({min(max(1, round(epochs * f)), epochs) for f in MILESTONE_FRACTIONS})
        return {"epochs": epochs, "lr_milestones": milestones, "eval_every": max(1, epochs // self.eval_points),
                "updates": epochs * steps}


@dataclass(frozen=True, order=True)
class Cell:
    seed: int
    size: int
    loss: str

    @property
    def name(self) -> str:
        return f"n{self.size}-{self.loss}-seed{self.seed}"


def train_command(cell: Cell, recipe: Recipe, run_dir: Path, *, data_dir=None, limit_eval=None,
                  matrix_scaling=None) -> list[str]:
    """The image-trainer command line of one cell (resuming its checkpoint when one exists)."""
    schedule = recipe.schedule(cell.size)
    command = [sys.executable, str(REPO / "classification" / "train.py"), "--dataset", "fashion-mnist",
               "--model", recipe.model, "--loss", cell.loss, "--seed", str(cell.seed),
               "--split-seed", str(recipe.split_seed), "--limit-train", str(cell.size),
               "--epochs", str(schedule["epochs"]), "--lr-milestones", *map(str, schedule["lr_milestones"]),
               "--lr", repr(recipe.lr), "--momentum", repr(recipe.momentum),
               "--weight-decay", repr(recipe.weight_decay), "--batch-size", str(recipe.batch_size),
               "--eval-every", str(schedule["eval_every"]), "--save-every", str(schedule["eval_every"]),
               "--augment" if recipe.augment else "--no-augment",
               "--workers", "0", "--no-progress", "--print-freq", "1000000000", "--device", "cpu",
               "--output-dir", str(run_dir)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if limit_eval is not None:
        command += ["--limit-eval", str(limit_eval)]
    if matrix_scaling is not None:
        command += ["--matrix-scaling", matrix_scaling]
    if (run_dir / "checkpoint.pt").exists():
        command += ["--resume", "auto"]
    return command


# One CPU thread per run (the runs themselves go in parallel; a thread count also changes float summation order, so
# it is part of what makes a run reproducible) and no display.
TRAIN_ENVIRONMENT = {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_environment() -> dict:
    """This process's environment with :data:`TRAIN_ENVIRONMENT`: the environment a cell trains in."""
    return dict(os.environ, **TRAIN_ENVIRONMENT)


def run_record(cell: Cell, recipe: Recipe, run_dir: Path) -> dict:
    """One study record from a finished run's ``results.json`` and ``log.jsonl``."""
    results = json.loads((run_dir / "results.json").read_text())
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    evaluation = results["evaluation"]
    pre, post, train = evaluation["pre"], evaluation["post"], evaluation["train"]
    regime = regime_check(log, train_error_final=train["error"])
    schedule = recipe.schedule(cell.size)
    return {
        "size": cell.size, "loss": cell.loss, "seed": cell.seed, "model": recipe.model,
        "epochs": schedule["epochs"], "updates": schedule["updates"],
        "train_error": train["error"], "train_nll": train["nll"],
        "error": pre["error"], "ece_pre": pre["ece"], "ece_post": post["ece"],
        "adaece_pre": pre["adaece"], "adaece_post": post["adaece"],
        "classwise_ece_pre": pre["classwise_ece"], "nll_pre": pre["nll"], "nll_post": post["nll"],
        "temperature": evaluation["temperature"], "temperature_nll": evaluation["temperature_nll"],
        "nll_misclassified_min": regime["nll_misclassified_min"],
        "nll_misclassified_final": regime["nll_misclassified_final"],
        "nll_misclassified_rising": regime["nll_misclassified_rising"],
        "regime_criterion_met": regime["meets"],
        "seconds": sum(line.get("seconds", 0.0) for line in log), "run_dir": str(run_dir),
    }


# ----------------------------------------------------------------------------------------------------------------
# The study file

def study_settings(**options) -> dict:
    """The study-wide options that reach every run's command line besides the :class:`Recipe` and the cell: exactly
    the keyword-only parameters of :func:`train_command` (``data_dir``, ``limit_eval``, ...; derived from its
    signature, so a new one is recorded and checked without a list to update). Paths are made absolute.
    ``read_study`` refuses to continue a study with other values, since they change the records."""
    names = [p.name for p in inspect.signature(train_command).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"study_settings got {unknown}; train_command takes {names}")
    settings = {}
    for name in names:
        value = options.get(name)
        if isinstance(value, (str, os.PathLike)) and name.endswith("_dir"):
            value = str(Path(value).expanduser().resolve())
        settings[name] = value
    return settings


_REBUILD = ("remove it to rebuild it from the runs' checkpoints (each finished run is re-evaluated from its "
            "checkpoint, seconds a run, and nothing is retrained)")


def read_study(path: Path, recipe: Recipe, settings: dict | None = None) -> dict:
    """The study at ``path`` (a fresh one if absent). Refuses a file made with another recipe or other
    :func:`study_settings` (``settings``; default: all None), naming each field that differs."""
    settings = study_settings() if settings is None else dict(settings)
    fresh = {"format_version": STUDY_FORMAT_VERSION, "recipe": asdict(recipe), "settings": settings, "runs": []}
    if not path.exists():
        return fresh
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the study file {str(path)!r} ({error}): {_REBUILD}") from error
    if not isinstance(study, dict) or study.get("format_version") != STUDY_FORMAT_VERSION \
            or not isinstance(study.get("runs"), list):
        version = study.get("format_version") if isinstance(study, dict) else None
        raise ValueError(f"{str(path)!r} is not a study file of this version (format_version {version!r}, expected "
                         f"{STUDY_FORMAT_VERSION}): {_REBUILD}")
    if not isinstance(study.get("settings"), dict):
        raise ValueError(f"{str(path)!r} does not record the settings its runs were made with ({', '.join(settings)}; "
                         f"written by an older version), so a restart cannot check them: {_REBUILD}")
    saved = study.get("recipe", {})
    changed = [f"{f.name} was {saved.get(f.name)!r}, now {getattr(recipe, f.name)!r}"
               for f in fields(Recipe) if saved.get(f.name) != getattr(recipe, f.name)]
    changed += [f"{name} was {study['settings'].get(name)!r}, now {value!r}" for name, value in settings.items()
                if study["settings"].get(name) != value]
    if changed:
        raise ValueError(f"cannot continue the study in {str(path.parent)!r}: " + "; ".join(changed)
                         + " (use another output folder, or the original values)")
    return study


def run_cells(cells: Iterable[Cell], recipe: Recipe, out: Path, *, launcher: Launcher = Launcher(), data_dir=None,
              limit_eval=None, matrix_scaling=None, log: Callable[[str], None] = print) -> dict:
    """Train every cell not yet in ``out/study.json`` with ``launcher`` (local: ``launcher.jobs`` processes at a time,
    one CPU thread each; SLURM: a job array), adding each finished run's record to the study file as soon as it
    ends; an unfinished run resumes from its checkpoint. Returns the study; the first failed run stops the study with
    :class:`~focal_calibration.experiments.runner.JobFailedError` naming it and its ``train.out`` (the finished runs
    stay recorded)."""
    from focal_calibration.experiments.cli import RunFolder

    out = Path(out)
    RunFolder(out).lock()  # one study writes study.json at a time (each run's trainer locks its own folder)
    study_path = out / "study.json"
    settings = dict(data_dir=data_dir, limit_eval=limit_eval, matrix_scaling=matrix_scaling)
    study = read_study(study_path, recipe, study_settings(**settings))
    done = {(r["size"], r["loss"], r["seed"]) for r in study["runs"]}
    pending = sorted({c for c in cells if (c.size, c.loss, c.seed) not in done})
    if done:
        log(f"{len(done)} runs already in {study_path}; {len(pending)} to go")
    jobs, cell_of = [], {}
    for cell in pending:
        run_dir = out / "runs" / cell.name
        jobs.append(Job(cell.name, train_command(cell, recipe, run_dir, **settings),
                        run_dir / "train.out", env=TRAIN_ENVIRONMENT, cwd=REPO))
        cell_of[cell.name] = (cell, run_dir)
    start = time.perf_counter()

    def record(job: Job, times: dict) -> None:
        cell, run_dir = cell_of[job.name]
        record = run_record(cell, recipe, run_dir)
        study["runs"].append(record)
        write_json_atomic(study_path, study)
        log(f"[{len(study['runs']) - len(done)}/{len(pending)} {time.perf_counter() - start:5.0f}s] {cell.name}: "
            f"{times['wall_s']:.0f}s, train error {100 * record['train_error']:.2f}%, test error "
            f"{100 * record['error']:.2f}%, ECE {100 * record['ece_pre']:.2f}% -> {100 * record['ece_post']:.2f}% "
            f"(T = {record['temperature']:g}), misclassified NLL "
            f"{'rising' if record['nll_misclassified_rising'] else 'not rising'}")

    run_jobs(jobs, launcher, folder=out / "launcher", name="regime-study", on_done=record, log=None)
    return study


# ----------------------------------------------------------------------------------------------------------------
# Summaries, the table, the figures

def summarise(records: Sequence[dict], keys: Sequence[str]) -> dict:
    """``{(size, loss): {key: seed_summary(...)}}`` over the seeds of each cell."""
    groups: dict = {}
    for record in records:
        groups.setdefault((record["size"], record["loss"]), []).append(record)
    return {cell: {key: seed_summary([r[key] for r in runs]) for key in keys} for cell, runs in groups.items()}


# (key, title, scale, decimals)
TABLE_METRICS = (
    ("train_error", "Final training error (%, eval mode, whole training subset)", 100, 2),
    ("ece_pre", "Test ECE before temperature scaling (%)", 100, 2),
    ("ece_post", "Test ECE after temperature scaling (%)", 100, 2),
    ("adaece_pre", "Test AdaECE before temperature scaling (%)", 100, 2),
    ("temperature", "Optimal temperature (validation ECE, grid 0.1-10)", 1, 2),
    ("error", "Test error (%)", 100, 2),
    ("nll_pre", "Test NLL before temperature scaling", 1, 3),
)


def _loss_order(losses: Iterable[str]) -> list[str]:
    preferred = ("ce", "brier", "mmce-2", "ls-0.05", "fl-1", "fl-2", "fl-3", "flsc-531", "flsd-532", "flsd-53")
    return sorted(set(losses), key=lambda s: (preferred.index(s) if s in preferred else len(preferred), s))


def study_markdown(study: dict) -> str:
    """``study.md``: per metric, mean ± std over seeds for every (size, loss) cell; and the regime per size."""
    records = study["runs"]
    if not records:
        return "No finished runs yet.\n"
    recipe = study["recipe"]
    losses = _loss_order(r["loss"] for r in records)
    sizes = sorted({r["size"] for r in records})
    summary = summarise(records, [key for key, *_ in TABLE_METRICS])
    lines = [f"Recipe: model `{recipe['model']}`, {recipe['updates']:,} updates per run "
             f"({recipe['updates'] / math.ceil(FULL_TRAIN_SIZE / recipe['batch_size']):g} passes over 55,000 images), "
             f"batch {recipe['batch_size']}, SGD lr {recipe['lr']} "
             f"(x0.1 at 1/2 and 5/6 of training), momentum {recipe['momentum']}, weight decay "
             f"{recipe['weight_decay']}, augmentation {'on' if recipe['augment'] else 'off'}. Cells: mean ± std over "
             f"seeds (n = number of seeds).", ""]
    for key, title, scale, decimals in TABLE_METRICS:
        lines += [f"**{title}**", "", "| training images | " + " | ".join(losses) + " |",
                  "|---:|" + "---|" * len(losses)]
        for size in sizes:
            cells = []
            for loss in losses:
                s = summary.get((size, loss), {}).get(key)
                cells.append("-" if s is None else
                             f"{scale * s['mean']:.{decimals}f} ± {scale * s['std']:.{decimals}f} (n={s['n']})")
            lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**The §3 regime** (final training error <= 0.5% and test NLL on misclassified samples ending >= 5% "
              "above its minimum): runs meeting it / runs", "",
              "| training images | " + " | ".join(losses) + " |", "|---:|" + "---|" * len(losses)]
    for size in sizes:
        cells = []
        for loss in losses:
            runs = [r for r in records if r["size"] == size and r["loss"] == loss]
            cells.append(f"{sum(r['regime_criterion_met'] for r in runs)}/{len(runs)}" if runs else "-")
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_study(study: dict, out_dir: Path) -> list[Path]:
    """Pre-T ECE, optimal T and final training error against training-set size: one line per loss (mean over seeds),
    the band spans the seeds' minimum to maximum."""
    from focal_calibration.plots import spread_curves

    records = study["runs"]
    if not records:
        return []
    losses = _loss_order(r["loss"] for r in records)
    figures = (("study_ece_vs_size.png", "Test ECE before temperature scaling", "ECE (%)", "ece_pre", 100, False),
               ("study_temperature_vs_size.png", "Optimal temperature (validation ECE)", "T", "temperature", 1, False),
               ("study_train_error_vs_size.png", "Final training error", "training error (%)", "train_error", 100,
                True))
    written = []
    for name, title, ylabel, key, scale, symlog in figures:
        series = {}
        for loss in losses:
            sizes = sorted({r["size"] for r in records if r["loss"] == loss})
            values = [np.array([scale * r[key] for r in records if r["loss"] == loss and r["size"] == s])
                      for s in sizes]
            series[loss] = (sizes, [v.mean() for v in values], [v.min() for v in values], [v.max() for v in values])
        path = Path(out_dir) / name
        spread_curves(series, title=title, xlabel="training images", ylabel=ylabel, logx=True, symlog_y=symlog,
                      hline=1.0 if key == "temperature" else None, path=path)
        written.append(path)
    return written
