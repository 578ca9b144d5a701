"""scripts/gpu_check.sh without a GPU: shell syntax, its errors, and one check end to end through the shell wrapper in
--dry-run mode (the full dry run takes minutes; it is run by hand, see README)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shell_syntax():
    assert shutil.which("bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_unknown_check_is_an_error(driver, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        driver.main(["--dry-run", "--only", "metrics,bench", "--output-dir", str(tmp_path)])
    assert stop.value.code == 2
    assert "error: unknown check(s) bench; choose from cuda-tests" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_without_cuda_it_asks_for_dry_run(driver, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        driver.main(["--output-dir", str(tmp_path)])
    assert stop.value.code == 2 and "sees no CUDA device; use --dry-run" in capsys.readouterr().err


def test_dry_run_of_one_check_through_the_wrapper(tmp_path):
    env = dict(os.environ, PY=sys.executable)
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "metrics", "--output-dir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"gpu_check: python {sys.executable} (PY)" in result.stdout
    assert "| metrics | PASS |" in result.stdout and "all checks passed" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["status"] for row in summary["rows"]] == ["PASS"]


def test_dry_run_of_the_backend_self_check(driver, tmp_path, capsys, monkeypatch):
    """The self-check part a GPU session runs, here with the kernels in Triton's interpreter: every kernel's check
    passes per dtype, and the results are recorded in backend-self-check.json."""
    pytest.importorskip("triton")
    monkeypatch.setenv("FOCAL_CALIBRATION_BACKEND", "torch")  # the driver runs the part with "auto" whatever is set
    assert driver.main(["--dry-run", "--only", "backend-self-check", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| backend-self-check | PASS |" in out and "float32 8/8 passed" in out and "bfloat16 8/8 passed" in out
    record = json.loads((tmp_path / "backend-self-check.json").read_text())
    assert len(record["results"]) == 16 and all(r["passed"] for r in record["results"]) and not record["warnings"]
    assert {r["dtype"] for r in record["results"]} == {"torch.float32", "torch.bfloat16"}


def test_dry_run_of_the_fused_linear_check(driver, tmp_path, capsys):
    """The features benchmark on a tiny shape (float32; bfloat16 too on a GPU); its goal verdicts become rows of the
    summary."""
    assert driver.main(["--dry-run", "--only", "fused-linear", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| fused-linear | PASS |" in out and "linear_focal_loss γ=3:" in out
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    goals = [row for row in rows if row["check"].startswith("goal [256x64x1000]")]
    assert len(goals) == 2 and all(row["status"] in ("MET", "MISSED") for row in goals)  # time, memory
