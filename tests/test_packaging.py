"""The built wheel: the framework integrations are optional extras (never core requirements), py.typed ships, and
examples/ is not installed as a package."""

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torchmetrics", "lightning", "transformers", "accelerate")


def test_extras_name_the_frameworks_and_the_core_needs_none():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    extras = {name: [line.split(";")[0].strip() for line in value.splitlines() if line.strip()]
              for name, value in config["options.extras_require"].items()}
    core = config["options"]["install_requires"]
    assert not [name for name in FRAMEWORKS if name in core]
    assert any(r.startswith("torchmetrics") for r in extras["torchmetrics"])
    assert any(r.startswith("lightning") for r in extras["lightning"])
    assert {r.split(">")[0] for r in extras["hf"]} == {"transformers", "accelerate"}
    assert {r.split(">")[0] for r in extras["integrations"]} >= set(FRAMEWORKS)


def test_wheel_ships_py_typed_and_the_integrations_but_not_the_examples(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("focal_calibration", "classification", "treelstm", "fairseq_focal", "examples"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta; build_meta.build_wheel('out')"],
                   cwd=source, check=True, capture_output=True)
    (wheel,) = (source / "out").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "focal_calibration/py.typed" in names
    assert {"focal_calibration/integrations/torchmetrics.py", "focal_calibration/integrations/lightning.py",
            "focal_calibration/integrations/huggingface.py", "focal_calibration/calibration/scalers.py"} <= set(names)
    assert not [name for name in names if name.startswith("examples/")]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:") and any(f" {name}" in line for name in FRAMEWORKS):
            assert "extra ==" in line, line  # a framework is only ever an extra's requirement
