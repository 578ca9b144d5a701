"""focal_calibration.experiments.tables + scripts/results_table.py (Table 1 / 2 layout) and classification.figures
(the dynamics
figures) on hand-written run files."""

import json

import pytest
import torch

from classification.figures import plot_runs
from focal_calibration.files import write_json_atomic
from focal_calibration.experiments.tables import to_latex, to_markdown
from focal_calibration.experiments import cli
from scripts.results_table import get_args_parser, main


def table_main(argv):
    """scripts/results_table.py as its command line runs it (one-line errors, exit status 2)."""
    text = []
    cli.run_cli(get_args_parser(), lambda args: text.append(main(args)), argv)
    return text[0]


def _metrics(ece, adaece, error):
    return {"ece": ece, "adaece": adaece, "error": error, "nll": 0.3}


def _record(loss, pre_ece, post_ece, t, error, dataset="cifar10", model="resnet50", seed=1):
    # Table 1's CIFAR-10 ResNet-50 cells: CE 4.35 / 1.35 (2.5), FLSD-53 1.55 / 0.95 (1.1)
    return {"suite": "image", "dataset": dataset, "model": model, "loss": loss, "seed": seed, "args": {},
            "paths": {"checkpoint": f"{loss}-{seed}/checkpoint.pt"},
            "evaluation": {"temperature": t, "pre": _metrics(pre_ece, pre_ece, error),
                           "post": _metrics(post_ece, post_ece, error)}}


@pytest.fixture
def two_runs(tmp_path):
    write_json_atomic(tmp_path / "a" / "results.json", _record("flsd-53", 0.0155, 0.0095, 1.1, 0.0498))
    write_json_atomic(tmp_path / "b" / "results.json", _record("ce", 0.0435, 0.0135, 2.5, 0.0495))
    return tmp_path


def test_markdown_table_has_the_papers_layout(two_runs, capsys):
    text = table_main([str(two_runs), "--metric", "ece", "error"])
    lines = text.splitlines()
    assert lines[2] == "| Dataset | Model | Cross-Entropy | FLSD-53 |"  # paper's column order, CE first
    assert lines[4] == "| cifar10 | resnet50 | 4.35 / 1.35 (2.5) | 1.55 / 0.95 (1.1) |"
    assert "| cifar10 | resnet50 | 4.95 | 4.98 |" in text  # error: one number (T does not change it)
    assert capsys.readouterr().out == text


def test_latex_table_and_seed_averaging(two_runs):
    write_json_atomic(two_runs / "c" / "results.json", _record("ce", 0.0465, 0.0115, 2.3, 0.0505, seed=2))
    from focal_calibration.experiments.records import read_results
    records = read_results([two_runs])
    # mean ± sample std of two seeds, by hand: ECE 4.35, 4.65 -> 4.50 ± 0.21; post 1.35, 1.15 -> 1.25 ± 0.14;
    # T 2.5, 2.3 -> 2.4 ± 0.1
    assert ("| cifar10 | resnet50 | 4.50 ± 0.21 / 1.25 ± 0.14 (2.4 ± 0.1) n=2 | 1.55 / 0.95 (1.1) |"
            in to_markdown(records, "ece"))
    assert "| cifar10 | resnet50 | 5.00 ± 0.07 n=2 | 4.98 |" in to_markdown(records, "error")
    latex = to_latex(records, "ece")
    assert r"\multicolumn{2}{c}{Cross-Entropy} & \multicolumn{2}{c}{FLSD-53} \\" in latex
    assert r"cifar10 & resnet50 & 4.50$\pm$0.21 & 1.25$\pm$0.14(2.4$\pm$0.1) & 1.55 & 0.95(1.1) \\" in latex
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        to_markdown(records, "acc")


def test_table_tool_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        table_main([str(tmp_path)])
    assert info.value.code == 2 and "no results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        table_main([str(tmp_path)])
    assert "lacks suite" in capsys.readouterr().err


def test_dynamics_figures_from_two_logs(tmp_path):
    for loss, scale in (("ce", 1.0), ("flsd-53", 0.5)):
        run = tmp_path / loss
        run.mkdir()
        (run / "args.json").write_text(json.dumps({"loss": loss}))
        torch.save({"norms": torch.rand(50) * scale}, run / "grad.pt")
        lines = [{"epoch": e, "train_nll": 1 / e, "test_nll": 0.5, "test_error": 0.1, "test_ece": 0.02 * scale,
                  "test_nll_correct": 0.1, "test_nll_incorrect": 2.0 + e * scale, "test_entropy_incorrect": 0.5,
                  "last_layer_weight_norm": 3 + e * scale, "train_feature_norm": 5.0,
                  # the trainer logs the file's name in the run folder; older logs hold a path
                  **({"grad_norms_file": "grad.pt" if loss == "ce" else str(run / "grad.pt")} if e == 2 else {})}
                 for e in (1, 2, 3)]
        (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    written = plot_runs([tmp_path / "ce", tmp_path / "flsd-53"], tmp_path / "figures")
    assert sorted(p.name for p in written) == ["figure10_feature_norm.png", "figure2_nll_error_ece.png",
                                               "figure3_calibration.png", "figure4_grad_norms_epoch2.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    with pytest.raises(ValueError, match="no log.jsonl"):
        plot_runs([tmp_path / "figures"], tmp_path / "x")


def test_one_table_reads_image_text_and_nmt_runs(tmp_path):
    # the three suites write one result layout; a suite is a field, not a format
    for name, suite, dataset, model, loss, ece in (("img", "image", "fashion-mnist", "mlp", "ce", 0.0838),
                                                   ("txt", "text", "trec-offline", "gpcnn", "flsd-53", 0.1664),
                                                   ("nmt", "nmt", "libreoffice-en-de", "transformer", "fl1", 0.0312)):
        record = _record(loss, ece, ece / 2, 1.5, 0.1, dataset=dataset, model=model)
        write_json_atomic(tmp_path / name / "results.json", dict(record, suite=suite))
    text = table_main([str(tmp_path), "--metric", "ece"])
    assert "| fashion-mnist | mlp | 8.38 / 4.19 (1.5) | - | - |" in text
    assert "| trec-offline | gpcnn | - | 16.64 / 8.32 (1.5) | - |" in text
    assert "| libreoffice-en-de | transformer | - | - | 3.12 / 1.56 (1.5) |" in text


def _ks_by_hand(logits, labels):
    # Gupta et al. (ICLR 2021): sort by top-1 confidence; KS = max_i |(1/N) sum_{j<=i} (conf_j - correct_j)|
    import numpy as np
    probs = torch.softmax(logits.double(), -1).numpy()
    conf, pred = probs.max(1), probs.argmax(1)
    order = np.argsort(conf, kind="stable")
    gaps = np.cumsum(conf[order] - (pred[order] == labels.numpy()[order])) / len(conf)
    return float(np.abs(gaps).max())


def test_metrics_beyond_the_paper_come_from_the_saved_logits(tmp_path):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (400,), generator=generator)
    run = tmp_path / "run"
    torch.save({"test_logits": logits, "test_labels": labels}, run.mkdir() or run / "logits.pt")
    write_json_atomic(run / "results.json", _record("ce", 0.1, 0.05, 2.0, 0.8))
    nmt = _record("fl1", 0.1, 0.05, 1.5, 0.5, dataset="libreoffice-en-de", model="transformer")
    write_json_atomic(tmp_path / "nmt" / "results.json", dict(nmt, suite="nmt"))  # no logits.pt: no KS
    text = table_main([str(tmp_path), "--metric", "ks"])
    pre, post = 100 * _ks_by_hand(logits, labels), 100 * _ks_by_hand(logits / 2.0, labels)
    assert f"| cifar10 | resnet50 | {pre:.2f} / {post:.2f} (2.0) | - |" in text
    assert "| libreoffice-en-de | transformer | - | - / - (1.5) |" in text
