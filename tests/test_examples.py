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


def test_segmentation():
    result = _load("segmentation").main(images=48, epochs=4)
    losses = result["epoch_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]  # FLSD-53 on [N, C, H, W] with ignore_index and weight trains
    assert result["val_pixels"] == 12 * 15 * 15  # the 12 validation images' labelled pixels (border ignored)
    assert result["val_ece_after"] <= result["val_ece_before"] + 1e-9  # T = 1 is on the grid the scaler minimises
    assert 0.1 <= result["temperature"] <= 10.0


def test_multilabel():
    pytest.importorskip("torchmetrics")
    result = _load("multilabel").main(samples=1000, epochs=3)
    losses = result["epoch_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert len(result["temperatures"]) == 5 and all(0.1 <= t <= 10.0 for t in result["temperatures"])
    for before, after in zip(result["val_per_label_ece_before"], result["val_per_label_ece_after"]):
        assert after <= before + 1e-9  # each label's T minimises its validation ECE over a grid holding T = 1
    assert result["val_macro_ece_after"] <= result["val_macro_ece_before"] + 1e-9
    assert result["test_macro_ece_streamed"] == pytest.approx(result["test_macro_ece"], rel=1e-6)
