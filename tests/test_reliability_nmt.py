"""Issue 17 for the fairseq side: the focal_loss criterion's bad options end as one ``error:`` line of fairseq's
parser (exit 2) before any data is read, and ``scripts/nmt_sweep.py`` names the file it cannot use (a truncated
checkpoint, one written by another trainer, a reference that is not UTF-8) and reads ``-1,1`` as a value."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fairseq", reason="the [fairseq] extra is not installed")

from focal_calibration.experiments import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
USER_DIR = ROOT / "fairseq_focal"


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip() and "Warning" not in line
             and not line.lstrip().startswith("warnings.warn")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ": error: " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("options, message", [
    (["--gamma", "-1"], "--gamma must be a finite number >= 0, got -1.0"),
    (["--gamma-policy", "nonsense"], "--gamma-policy must name a focal-loss policy"),
    (["--loss-spec", "dual-focal-x"], "unknown loss spec 'dual-focal-x'"),
    (["--label-smoothing", "2"], "--label-smoothing must lie in [0, 1), got 2.0"),
    (["--calibration-bins", "-3"], "--calibration-bins must be >= 0, got -3"),
    (["--loss-spec", "adafocal", "--loss-options", "lam"], "--loss-options must be comma-separated KEY=VALUE"),
    (["--loss-spec", "poly-1", "--loss-options", "lam=1"], "got unknown option(s) ['lam']"),
    (["--gamma-policy", "flsc-531"], "--gamma-policy flsc-531 needs the run length: set --max-epoch"),
])
def test_bad_criterion_options_are_one_parser_error_line(options, message, capsys):
    from fairseq import options as fairseq_options

    parser = fairseq_options.get_training_parser()
    with pytest.raises(SystemExit) as exit_:
        fairseq_options.parse_args_and_arch(parser, ["DATA", "--user-dir", str(USER_DIR), "--arch", "transformer",
                                                     "--criterion", "focal_loss", *options])
    assert exit_.value.code == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_good_criterion_options_parse(capsys):
    from fairseq import options as fairseq_options

    parser = fairseq_options.get_training_parser()
    args = fairseq_options.parse_args_and_arch(parser, ["DATA", "--user-dir", str(USER_DIR), "--arch", "transformer",
                                                        "--criterion", "focal_loss", "--gamma-policy", "flsc-531",
                                                        "--max-epoch", "30"])
    assert args.gamma_policy == "flsc-531" and args.max_epoch == 30


@pytest.fixture
def data_bin(tmp_path):
    folder = tmp_path / "data-bin"
    folder.mkdir()
    for side in ("src", "tgt"):
        (folder / f"dict.{side}.txt").write_text("a 1\n")
    return folder


def sweep(argv, capsys):
    from scripts import nmt_sweep

    with pytest.raises(SystemExit) as exit_:
        nmt_sweep.main([str(a) for a in argv])
    assert exit_.value.code == 2
    return one_error_line(capsys.readouterr().err)


def test_a_truncated_checkpoint_is_one_error_line_naming_it(data_bin, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {"w": torch.zeros(10_000)}, "cfg": {}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:20_000])
    line = sweep(["run", "--data", data_bin, "--checkpoints", f"A={checkpoint}", "--output-dir", tmp_path / "out"],
                 capsys)
    assert f"checkpoint {str(checkpoint)!r} is truncated or corrupted" in line


def test_an_image_trainer_checkpoint_is_one_error_line_naming_it(data_bin, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint.pt"
    cli.save_run_checkpoint(checkpoint, {"args": {"loss": "ce"}, "model": {"w": torch.zeros(3)}}, suite="image")
    line = sweep(["run", "--data", data_bin, "--checkpoints", f"A={checkpoint}", "--output-dir", tmp_path / "out"],
                 capsys)
    assert f"{str(checkpoint)!r} was written by this project's 'image' trainer, not by fairseq-train" in line


def test_a_reference_that_is_not_utf8_is_named(data_bin, tmp_path, capsys):
    reference = tmp_path / "test.de"
    reference.write_bytes("Grüße\n".encode("utf-8") + "Grüße\n".encode("latin-1"))
    line = sweep(["run", "--data", data_bin, "--checkpoints", "A=missing.pt", "--references", f"test={reference}",
                  "--output-dir", tmp_path / "out"], capsys)
    assert f"reference file {str(reference)!r} is not UTF-8 text (line 2" in line


def test_a_negative_temperature_list_reaches_the_temperature_check(data_bin, tmp_path, capsys):
    line = sweep(["run", "--data", data_bin, "--checkpoints", "A=missing.pt", "--temperatures", "-1,1",
                  "--output-dir", tmp_path / "out"], capsys)
    assert "every temperature must be a finite number > 0, got -1.0" in line
    assert not (tmp_path / "out").exists()


def test_the_sweep_script_is_importable_without_fairseq_side_effects():
    import subprocess

    code = "import sys; sys.path.insert(0, sys.argv[1]); from scripts import nmt_sweep; print('fairseq' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr
