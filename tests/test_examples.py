"""Every example under examples/ runs (its main() with tiny sizes) and does what its docstring says."""

import ast
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_docstring_and_a_main():
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert scripts and not (EXAMPLES / "__init__.py").exists()  # scripts, not a package
    for script in scripts:
        tree = ast.parse(script.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), script.name
        assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body), script.name


def test_plain_pytorch(tmp_path):
    result = _load("plain_pytorch").main(samples=1000, epochs=2, output_dir=tmp_path)
    assert result["reloaded_equal"] and (tmp_path / "calibrated.pt").is_file()
    assert 0.1 <= result["temperature"] <= 10.0


def test_lightning_adafocal(tmp_path):
    pytest.importorskip("lightning")
    result = _load("lightning_adafocal").main(samples=400, epochs=2, output_dir=tmp_path)
    assert result["updates"] == 2  # one AdaFocal update per validation, the first restored from the checkpoint
    assert len(result["gammas"]) == 15 and (tmp_path / "last.ckpt").is_file()
    assert 0 <= result["val_ece"] <= 1


def test_huggingface_trainer(tmp_path):
    pytest.importorskip("transformers")
    result = _load("huggingface_trainer").main(samples=100, epochs=3, output_dir=tmp_path)
    assert result["gamma_per_epoch"] == [5.0, 3.0, 1.0]  # FLSc-531 over 3 epochs: milestones (1, 2)
    assert list(tmp_path.glob("checkpoint-*/calibration_loss.pt"))
    assert 0.1 <= result["temperature"] <= 10.0
