"""focal_calibration.experiments.cli: one error line and status 2, defaults printed once, the derived resume check,
checkpoint
format versions, the run-folder files, seeding."""

import argparse
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from focal_calibration.experiments import cli


def _run_python(code, *argv):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *argv], capture_output=True, text=True,
                          timeout=120)


TOOL = """
    import sys
    from focal_calibration.experiments import cli

    def main(args):
        if args.what == "value":
            raise ValueError("--lr must be > 0, got -1")
        if args.what == "data":
            raise cli.DataNotFoundError("no train-images-idx3-ubyte in /nowhere (install dataset-fashion-mnist)")
        if args.what == "bug":
            raise RuntimeError("a bug")
        print("ran", args.what)

    parser = cli.ArgumentParser(prog="tool")
    parser.add_argument("what")
    parser.add_argument("--n", type=cli.positive_int, default=3)
    sys.exit(cli.run_cli(parser, main))
"""


def test_a_user_error_is_one_line_and_status_2_and_a_bug_keeps_its_traceback():
    result = _run_python(TOOL, "value")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == ["tool: error: --lr must be > 0, got -1"]
    bug = _run_python(TOOL, "bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr


@pytest.mark.parametrize("argv, message", [
    (["data"], "tool: error: no train-images-idx3-ubyte in /nowhere (install dataset-fashion-mnist)"),
    (["ok", "--n", "0"], "tool: error: argument --n: must be an integer >= 1, got 0 (see tool --help)"),
    (["ok", "--bogus"], "tool: error: unrecognized arguments: --bogus (see tool --help)"),
])
def test_data_and_parse_errors_are_one_line_and_status_2(argv, message, capsys):
    namespace = {}
    exec(compile(textwrap.dedent(TOOL).replace("sys.exit(cli.run_cli(parser, main))", ""), "tool", "exec"), namespace)
    with pytest.raises(SystemExit) as info:
        cli.run_cli(namespace["parser"], namespace["main"], argv)
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    assert captured.err.splitlines() == [message]


def test_run_cli_leaves_the_process_group(tmp_path):
    store = tmp_path / "store"

    def main(args):
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        raise ValueError("bad")

    with pytest.raises(SystemExit) as info:
        cli.run_cli(cli.ArgumentParser(prog="t"), main, [])
    assert info.value.code == 2 and not torch.distributed.is_initialized()


def _option_help_lines(parser):
    """Each option's help text, joined over its wrapped lines."""
    text = parser.format_help()
    entries, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            current = stripped.split()[0].rstrip(",")
            entries[current] = stripped
        elif current and line.startswith(" " * 10) and stripped:
            entries[current] += " " + stripped
        else:
            current = None
    return entries


def test_help_prints_each_default_once():
    parser = cli.ArgumentParser(prog="t")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--epochs", type=int, default=None, help="default: 25 (treelstm) / 50 (gpcnn)")
    parser.add_argument("--bins", type=int, default=15)
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--ids", type=int, nargs="*", default=[], help="epochs")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="crop + flip")
    cli.add_run_arguments(parser)
    entries = _option_help_lines(parser)
    assert "learning rate (default: 0.1)" in entries["--lr"]
    assert entries["--bins"].endswith("default: 15")
    assert "crop + flip (default: True)" in entries["--augment"]
    for option in ("--flag", "--ids"):
        assert "default" not in entries[option]
    for option, help_text in entries.items():
        assert help_text.lower().count("default") <= 1, (option, help_text)
    # argparse's own formatter repeats a default the help already states: the bug this formatter exists for
    doubled = argparse.ArgumentParser(prog="t", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    doubled.add_argument("--epochs", type=int, default=5, help="default: 5")
    assert _option_help_lines(doubled)["--epochs"].count("default") == 2


def _parser():
    parser = cli.ArgumentParser(prog="train")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--print-freq", type=int, default=100)
    parser.add_argument("--milestones", type=int, nargs="+", default=[2])
    cli.add_run_arguments(parser)
    return parser


def test_run_defining_options_are_the_parser_minus_the_allow_list():
    parser = _parser()
    keys = cli.run_defining_keys(parser, extra=("world_size",))
    assert keys == ("limit_eval", "limit_train", "lr", "milestones", "seed", "split_seed", "world_size")
    # an option a trainer adds later is run-defining without anyone remembering to list it
    parser.add_argument("--dropout", type=float, default=0.5)
    assert "dropout" in cli.run_defining_keys(parser)
    assert cli.run_defining_keys(parser, allowed=cli.RESUME_ALLOWED | {"lr"}).count("lr") == 0


def test_resume_refusal_names_each_changed_flag():
    parser = _parser()
    saved = cli.stored_args(parser.parse_args(["--lr", "0.1", "--seed", "1", "--milestones", "2", "3"]))
    now = parser.parse_args(["--lr", "0.05", "--seed", "2", "--milestones", "2", "3", "--epochs", "9",
                             "--device", "cpu", "--threads", "1", "--no-progress", "--output-dir", "elsewhere"])
    with pytest.raises(ValueError) as info:
        cli.check_resume(saved, now, parser)
    assert str(info.value).startswith("cannot resume: --lr was 0.1, now 0.05; --seed was 1, now 2 (")
    now.lr, now.seed = 0.1, 1
    cli.check_resume(saved, now, parser)  # only allowed options changed: accepted
    with pytest.raises(ValueError, match="--world-size was 1, now 2"):
        cli.check_resume({**saved, "world_size": 1}, {**vars(now), "world_size": 2}, parser, extra=("world_size",))


def test_checkpoint_format_version_and_suite_are_checked(tmp_path):
    path = tmp_path / "checkpoint.pt"
    cli.save_run_checkpoint(path, {"args": {"lr": 0.1}, "epoch": 0}, suite="image")
    state = cli.load_run_checkpoint(path, suite="image")
    assert (state["format_version"], state["suite"], state["epoch"]) == (cli.CHECKPOINT_FORMAT_VERSION, "image", 0)
    with pytest.raises(ValueError, match="written by the 'image' trainer, not the 'text' one"):
        cli.load_run_checkpoint(path, suite="text")
    torch.save({**state, "format_version": 99}, path)
    with pytest.raises(ValueError, match=r"has format version 99; this code reads format version 1 only"):
        cli.load_run_checkpoint(path, suite="image")
    torch.save({"args": {}, "epoch": 0}, path)
    with pytest.raises(ValueError, match="has no format version"):
        cli.load_run_checkpoint(path, suite="image")


def test_state_lists_of_another_length_are_refused():
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizers = [torch.optim.SGD(params, lr=0.1), torch.optim.SGD(params, lr=0.2)]
    states = [optimizers[0].state_dict()]
    with pytest.raises(ValueError, match="holds 1 optimizer states, this run has 2 optimizers"):
        cli.load_state_dicts(optimizers, states, "optimizer")
    cli.load_state_dicts(optimizers[1:], states, "optimizer")
    assert optimizers[1].param_groups[0]["lr"] == 0.1


def test_load_resume_state(tmp_path):
    parser = _parser()
    folder = cli.RunFolder(tmp_path / "run")
    args = parser.parse_args(["--resume", "auto"])
    assert cli.load_resume_state(folder, args, parser, suite="image") is None  # nothing to resume: a fresh start
    cli.save_run_checkpoint(folder.checkpoint, {"args": cli.stored_args(args), "epoch": 1}, suite="image")
    assert cli.load_resume_state(folder, args, parser, suite="image")["epoch"] == 1
    args.lr = 0.2
    with pytest.raises(ValueError, match="--lr was 0.1, now 0.2"):
        cli.load_resume_state(folder, args, parser, suite="image")
    args.resume = None  # a fresh run would overwrite the finished one
    with pytest.raises(ValueError, match="already holds a run \\(checkpoint.pt\\): pass --resume auto"):
        cli.load_resume_state(folder, args, parser, suite="image")
    folder.checkpoint.unlink()
    folder.results.write_text("{}")
    args.resume = "auto"  # nothing to continue from, but a finished run's results would be overwritten
    with pytest.raises(ValueError, match="already holds a run \\(results.json\\)"):
        cli.load_resume_state(folder, args, parser, suite="image")


def test_run_folder_files(tmp_path):
    folder = cli.RunFolder(tmp_path / "run")
    folder.write_args(argparse.Namespace(out=tmp_path, milestones=(1, 2)))
    assert json.loads(folder.args.read_text()) == {"out": str(tmp_path), "milestones": [1, 2]}
    records = [{"epoch": e, "loss": 1.0 / e} for e in (1, 2, 3)]
    for record in records:
        folder.append_log(record)
    with pytest.raises(ValueError, match="1-based 'epoch' must be an integer >= 1, got 0"):
        folder.append_log({"epoch": 0})
    with open(folder.log, "a") as handle:  # a killed run's torn last line
        handle.write('{"epoch": 4, "lo')
    folder.restore_log(records[:2])  # resume from the epoch-2 checkpoint
    assert folder.read_log() == records[:2]
    assert [p.name for p in folder.path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    with pytest.raises(ValueError, match="needs 'suite' and 'evaluation'"):
        folder.write_results({"evaluation": {}})
    folder.write_results({"suite": "image", "evaluation": {"ece": float("nan")}})
    assert json.loads(folder.results.read_text()) == {"suite": "image", "evaluation": {"ece": None}}
    folder.save_logits(torch.ones(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(1, 3), torch.ones(1).long())
    assert torch.load(folder.logits, weights_only=True)["test_labels"].tolist() == [1]


def test_default_output_dir_is_one_folder_per_run():
    parser = _parser()
    keys = cli.run_defining_keys(parser)
    base = cli.default_output_dir("image", "mnist-mlp-ce-seed1", parser.parse_args([]), keys)
    assert base.parent.as_posix() == "results/image" and base.name.startswith("mnist-mlp-ce-seed1-")
    assert cli.default_output_dir("image", "mnist-mlp-ce-seed1", parser.parse_args(["--lr", "0.05"]), keys) != base
    more_epochs = parser.parse_args(["--epochs", "30", "--resume", "auto", "--device", "cpu"])
    assert cli.default_output_dir("image", "mnist-mlp-ce-seed1", more_epochs, keys) == base


def test_seed_everything_matches_freshly_seeded_generators():
    cli.seed_everything(3)
    drawn = (random.random(), float(np.random.rand()), torch.rand(2))
    assert drawn[0] == random.Random(3).random()
    assert drawn[1] == float(np.random.RandomState(3).rand())
    assert torch.equal(drawn[2], torch.rand(2, generator=torch.Generator().manual_seed(3)))
    for bad in (-1, 1.5, True, 2 ** 32):
        with pytest.raises(ValueError, match="seed must be an integer"):
            cli.seed_everything(bad)


def test_a_missing_extra_is_a_user_error_naming_the_extra(capsys):
    assert cli.require_extra("json", "vision", "x") is json
    with pytest.raises(cli.MissingExtraError) as info:
        cli.require_extra("no_such_module_xyz.sub", "vision", "--dataset cifar10")
    assert str(info.value) == ("--dataset cifar10 needs no_such_module_xyz, which is not installed: "
                               "pip install 'focal-calibration[vision]'")

    def main(args):
        cli.require_extra("no_such_module_xyz", "dgl", "--engine dgl")

    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(cli.ArgumentParser(prog="t"), main, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("t: error: --engine dgl needs no_such_module_xyz, which is not installed: "
                                       "pip install 'focal-calibration[dgl]'\n")
