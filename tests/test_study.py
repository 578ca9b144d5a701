"""The regime study: the recipe's schedule by hand, the study end-to-end on a tiny configuration (2 sizes x 2 losses
x 2 seeds), and a resumed study that skips finished runs, resumes an unfinished one and refuses another recipe."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
from processes import alive, processes_running, wait_for

from classification.datasets import FASHION_MNIST_SYSTEM_DIR
from classification.study import (REPO, Cell, Recipe, plot_study, run_cells, study_markdown, train_command,
                                  train_environment)
from focal_calibration.experiments.runner import JobFailedError, Launcher

needs_data = pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed")


def test_every_size_gets_the_same_number_of_updates():
    recipe = Recipe()
    assert recipe.updates == 8 * 430  # 8 passes over 55,000 images in batches of 128
    # 2,500 images: 20 steps per epoch -> 172 epochs, drops after epochs round(86) and round(143.3), eval every 5
    assert recipe.schedule(2500) == {"epochs": 172, "lr_milestones": [86, 143], "eval_every": 5, "updates": 3440}
    assert recipe.schedule(55000) == {"epochs": 8, "lr_milestones": [4, 7], "eval_every": 1, "updates": 3440}
    for size in (1000, 5000, 10000, 20000):
        schedule = recipe.schedule(size)
        assert abs(schedule["updates"] - recipe.updates) <= math.ceil(size / 128) / 2  # rounding to whole epochs
    assert Recipe.from_epochs(30).updates == 12900  # today's 30-epoch full-data configuration


@pytest.mark.parametrize("bad, match", [(dict(updates=0), "updates must be"), (dict(lr=-1.0), "--lr must be"),
                                        (dict(weight_decay=float("nan")), "--weight-decay must be")])
def test_recipe_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**bad)
    with pytest.raises(ValueError, match="size must be"):
        Recipe().schedule(60000)


TINY = Recipe(updates=6, batch_size=64, eval_points=2)
CELLS = [Cell(seed, size, loss) for seed in (1, 2) for size in (128, 256) for loss in ("ce", "flsd-53")]


@needs_data
def test_study_end_to_end_and_resume(tmp_path):
    out = tmp_path / "study"
    lines = []
    first = run_cells(CELLS[:2], TINY, out, launcher=Launcher(jobs=2), limit_eval=200, matrix_scaling="off",
                      log=lines.append)
    assert len(first["runs"]) == 2 and len(lines) == 2

    # A study killed in the middle of a run: that run has a checkpoint after its first epoch and no record.
    killed = CELLS[2]
    killed_dir = out / "runs" / killed.name
    killed_dir.mkdir(parents=True)
    command = train_command(killed, TINY, killed_dir, limit_eval=200, matrix_scaling="off")
    command[command.index("--epochs") + 1] = "1"
    subprocess.run(command, check=True, capture_output=True, cwd=REPO, env=train_environment())
    assert json.loads((killed_dir / "log.jsonl").read_text().splitlines()[-1])["epoch"] == 1

    lines.clear()
    final = run_cells(CELLS, TINY, out, launcher=Launcher(jobs=2), limit_eval=200, matrix_scaling="off",
                      log=lines.append)
    assert lines[0].startswith("2 runs already in")  # the two finished runs are skipped ...
    assert len(lines) == 1 + 6  # ... and the other six run, the killed one from its checkpoint
    assert "resumed from" in (killed_dir / "train.out").read_text()
    keys = sorted((r["size"], r["loss"], r["seed"]) for r in final["runs"])
    assert keys == sorted((c.size, c.loss, c.seed) for c in CELLS)
    assert json.loads((out / "study.json").read_text()) == final
    for record in final["runs"]:
        assert 0 <= record["train_error"] <= 1 and 0 <= record["ece_pre"] <= 1 and record["temperature"] > 0
        assert isinstance(record["nll_misclassified_rising"], bool)
        assert record["updates"] == TINY.schedule(record["size"])["updates"]

    # The resumed run is the run an uninterrupted study makes.
    reference = run_cells([killed], TINY, tmp_path / "reference", limit_eval=200, matrix_scaling="off",
                          log=lambda line: None)
    resumed = next(r for r in final["runs"] if (r["size"], r["loss"], r["seed"]) == (killed.size, killed.loss,
                                                                                       killed.seed))
    for key in ("train_error", "error", "ece_pre", "ece_post", "nll_pre", "temperature", "nll_misclassified_final"):
        assert resumed[key] == reference["runs"][0][key], key

    table = study_markdown(final)
    assert "| 128 |" in table and "| 256 |" in table and "(n=2)" in table
    assert [p.name for p in plot_study(final, tmp_path / "figures")] == [
        "study_ece_vs_size.png", "study_temperature_vs_size.png", "study_train_error_vs_size.png"]

    with pytest.raises(ValueError, match="updates was 6, now 7"):
        run_cells(CELLS, Recipe(updates=7, batch_size=64, eval_points=2), out)
    assert not (out / "launcher").exists()  # the local runner leaves nothing of its own in the study folder


@needs_data
def test_a_failed_run_stops_the_study_naming_it_and_its_log(tmp_path):
    with pytest.raises(JobFailedError, match=r"^n128-nonsense-seed1 failed with exit status 2; see "
                                             r".*runs/n128-nonsense-seed1/train.out:\n(.|\n)*nonsense"):
        run_cells([Cell(1, 128, "nonsense")], TINY, tmp_path, limit_eval=200, log=lambda line: None)
    assert not (tmp_path / "study.json").exists()  # no run finished: nothing recorded


@needs_data
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the runner's parent guard needs Linux's prctl")
def test_kill_9_of_the_study_leaves_no_trainer_running(tmp_path):
    # issue 17: a killed study left its trainer running, and a rerun started a second one in the same run folder
    out = tmp_path / "study"
    study = subprocess.Popen([sys.executable, str(REPO / "scripts" / "regime_study.py"), "--output-dir", str(out),
                              "--sizes", "128", "--losses", "ce", "--seeds", "1", "--epochs", "5", "--limit-eval",
                              "20", "--n-resamples", "0", "--jobs", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, MPLBACKEND="Agg"))
    try:
        trainers = wait_for(lambda: processes_running("classification/train.py", str(out)), 120, "the trainer")
        os.kill(study.pid, signal.SIGKILL)
        study.wait()
        wait_for(lambda: not any(alive(pid) for pid in trainers), 5, f"the killed study's trainer {trainers} to end")
    finally:
        study.kill()
        study.wait()
