"""Issue 17: nothing lost, nothing silently wrong. Each test reproduces one case of the issue (two runs in one folder,
a shortened or re-scheduled resume, moved run folders, a study rerun with other settings, full disks, read-only
folders, bad devices and data files, start-up imports) against the behaviour the user is promised."""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from classification import train as train_script
from classification.datasets import load_dataset, read_idx
from focal_calibration import files
from focal_calibration.experiments import cli
from focal_calibration.experiments.checkpoint import save_checkpoint
from focal_calibration.calibration.metrics import calibration_metrics
from test_classification_data import make_fashion_mnist, write_idx

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
           MPLBACKEND="Agg")
TINY = ["--dataset", "fashion-mnist", "--val-size", "40", "--batch-size", "32", "--limit-train", "64",
        "--limit-eval", "20", "--model", "mlp", "--workers", "0", "--no-progress", "--print-freq", "1000",
        "--eval-batch-size", "64", "--matrix-scaling", "off"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=200, n_test=40)


def trainer_argv(fmnist, out, *extra):
    return [*TINY, "--data-dir", str(fmnist), "--output-dir", str(out), *extra]


def run_trainer(argv, capsys):
    """The image trainer's CLI in this process: (exit status, stdout, stderr)."""
    try:
        status = train_script.run(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str, prog: str | None = None) -> str:
    """The single ``prog: error: ...`` line a user mistake must produce (no traceback)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: ") if prog else ": error: " in lines[0], lines[0]
    return lines[0]


class Stop(Exception):
    """Ends a trainer run from a hook (a run killed mid-way, without the cost of finishing it)."""


def stop_after_epoch(monkeypatch, last: int, during=None):
    """Make the trainer stop right after epoch ``last`` has been checkpointed and logged; ``during(record)`` runs at
    every log line first (while the trainer owns its folder)."""
    append = cli.RunFolder.append_log

    def append_then_stop(self, record):
        append(self, record)
        if during is not None:
            during(record)
        if record["epoch"] >= last:
            raise Stop

    monkeypatch.setattr(cli.RunFolder, "append_log", append_then_stop)


HOLDER = textwrap.dedent("""
    import sys
    from focal_calibration.experiments.cli import RunFolder
    RunFolder(sys.argv[1]).lock()
    print("locked", flush=True)
    sys.stdin.read()  # hold the folder until the test closes stdin or kills us
""")


def hold_folder(folder):
    """Another process that owns ``folder`` (as a running trainer would) until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


# ----------------------------------------------------------------------------------------------------------------
# §1: a run folder has one owner

def test_a_second_trainer_in_a_folder_that_another_process_owns_is_refused_naming_it(fmnist, tmp_path):
    out = tmp_path / "run"
    holder = hold_folder(out)
    try:
        second = subprocess.run([sys.executable, "-m", "classification.train",
                                 *trainer_argv(fmnist, out, "--epochs", "1")],
                                capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
        assert second.returncode == 2
        line = one_error_line(second.stderr, "train.py")
        assert str(out) in line and f"process {holder.pid}" in line and "in use by another run" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the second trainer wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_a_training_run_owns_its_folder_until_it_ends(fmnist, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    refused = []
    write_args = cli.RunFolder.write_args

    def second_trainer_starts_too(self, args):  # the race of the issue: both start before either has a checkpoint
        write_args(self, args)
        refused.append(subprocess.run([sys.executable, "-m", "classification.train",
                                       *trainer_argv(fmnist, out, "--epochs", "1", "--seed", "2")],
                                      capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600))

    monkeypatch.setattr(cli.RunFolder, "write_args", second_trainer_starts_too)
    stop_after_epoch(monkeypatch, 1)
    with pytest.raises(Stop):
        train_script.run(trainer_argv(fmnist, out, "--epochs", "2"))
    assert refused[0].returncode == 2
    assert f"process {os.getpid()}" in one_error_line(refused[0].stderr, "train.py")
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]
    assert json.loads((out / "args.json").read_text())["seed"] == 1  # the first run's files, not a mix
    assert not (out / "results.json").exists()


def test_the_text_trainer_is_refused_too(tmp_path, capsys):
    from treelstm import train as text_train

    out = tmp_path / "text"
    holder = hold_folder(out)
    try:
        with pytest.raises(SystemExit) as exit_:
            text_train.cli_main(["--model", "gpcnn", "--epochs", "1", "--output-dir", str(out)])
        assert exit_.value.code == 2
        assert f"process {holder.pid}" in one_error_line(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait()


def test_a_study_rerun_cannot_start_a_second_trainer_in_a_run_folder(fmnist, tmp_path):
    from classification.study import Cell, Recipe, run_cells
    from focal_calibration.experiments.runner import JobFailedError, Launcher

    cell, out = Cell(1, 64, "ce"), tmp_path / "study"
    recipe = Recipe(updates=2, batch_size=32, eval_points=1)
    orphan = hold_folder(out / "runs" / cell.name)  # a trainer still running in the run folder (e.g. a killed study's)
    try:
        with pytest.raises(JobFailedError, match=f"{cell.name} failed with exit status 2"):
            run_cells([cell], recipe, out, launcher=Launcher(jobs=1), data_dir=fmnist, limit_eval=20,
                      matrix_scaling="off", log=lambda line: None)
        train_out = (out / "runs" / cell.name / "train.out").read_text()
        assert f"is in use by another run: process {orphan.pid}" in train_out
        assert not (out / "runs" / cell.name / "log.jsonl").exists()
        second_study = hold_folder(tmp_path / "busy")  # and two studies cannot share an output folder
        with pytest.raises(cli.RunFolderBusyError, match=f"process {second_study.pid}"):
            run_cells([cell], recipe, tmp_path / "busy", data_dir=fmnist, log=lambda line: None)
        second_study.kill()
        second_study.wait()
    finally:
        orphan.kill()
        orphan.wait()


# ----------------------------------------------------------------------------------------------------------------
# §1: a resumed or extended run is the run its record says, or it is refused

def killed_after_two_of_three(fmnist, folder: Path, loss: str):
    """A --epochs 3 run killed after its second epoch (checkpoint and log of 2 epochs), and the output of its start."""
    monkeypatch = pytest.MonkeyPatch()
    stop_after_epoch(monkeypatch, 2)
    stdout = io.StringIO()
    try:
        with pytest.raises(Stop), contextlib.redirect_stdout(stdout):
            train_script.run(trainer_argv(fmnist, folder, "--loss", loss, "--epochs", "3"))
    finally:
        monkeypatch.undo()
    return folder, stdout.getvalue()


@pytest.fixture(scope="module")
def flsc_two_of_three(fmnist, tmp_path_factory):
    return killed_after_two_of_three(fmnist, tmp_path_factory.mktemp("flsc") / "run", "flsc-531")


def test_the_run_header_counts_the_evaluated_images(flsc_two_of_three):
    _, output = flsc_two_of_three
    assert "fashion-mnist: 64 train / 20 val / 20 test images" in output  # --limit-eval 20 of 40 and 40


def test_resume_with_fewer_epochs_than_trained_is_refused_naming_both(fmnist, tmp_path, capsys):
    out, _ = killed_after_two_of_three(fmnist, tmp_path / "run", "ce")
    before = (out / "args.json").read_text()
    status, _, err = run_trainer(trainer_argv(fmnist, out, "--epochs", "1", "--resume", "auto"), capsys)
    assert status == 2
    line = one_error_line(err)
    assert "trained 2 epochs" in line and "--epochs 1" in line
    assert (out / "args.json").read_text() == before and not (out / "results.json").exists()


def test_extending_a_run_whose_past_schedule_depends_on_its_length_is_refused(fmnist, flsc_two_of_three, capsys):
    out, _ = flsc_two_of_three
    logged = [json.loads(line)["gamma"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == [5.0, 3.0]  # 3 epochs: milestones (1, 2)
    status, _, err = run_trainer(trainer_argv(fmnist, out, "--loss", "flsc-531", "--epochs", "9", "--resume",
                                              "auto"), capsys)
    assert status == 2
    line = one_error_line(err)  # a 9-epoch run has γ 5, 5, 5, 3, 3, 3, 1, 1, 1: epoch 2 differs
    assert "cannot change --epochs from 3 to 9" in line and "epoch 2: gamma 3.0 in the run so far, 5.0" in line


def _resolved(argv):
    return train_script.resolve_args(train_script.get_args_parser().parse_args(argv))


@pytest.mark.parametrize("extra, refused", [
    (["--loss", "flsc-531"], True),                                   # milestones at fractions of --epochs
    (["--loss", "flsc-531", "--gamma-milestones", "1", "2"], False),  # fixed milestones: the same past
    (["--loss", "ce"], False),
    (["--loss", "flsd-53"], False),
])
def test_which_extensions_keep_the_past_schedule(tmp_path, extra, refused):
    """An extension is accepted exactly when the trainer's own loss and lr scheduler give the epochs already
    trained the same γ and lr under both lengths; the log of such a run is the straight run's (exact resume)."""
    saved = _resolved(["--dataset", "fashion-mnist", "--epochs", "3", "--output-dir", str(tmp_path), *extra])
    state = {"args": cli.stored_args(saved), "log": [{"epoch": 1}, {"epoch": 2}]}
    longer = _resolved(["--dataset", "fashion-mnist", "--epochs", "9", "--output-dir", str(tmp_path), *extra])
    if refused:
        with pytest.raises(ValueError, match="cannot change --epochs from 3 to 9"):
            cli.check_extension(state, longer, train_script.schedule)
    else:
        cli.check_extension(state, longer, train_script.schedule)
        assert train_script.schedule(saved, 2) == train_script.schedule(longer, 2)


def test_the_text_trainer_refuses_a_reschedule_too(tmp_path):
    from treelstm import train as text_train

    parser = text_train.get_args_parser()
    saved = text_train.resolve_args(parser.parse_args(["--model", "gpcnn", "--loss", "flsc-531", "--epochs", "4"]))
    longer = text_train.resolve_args(parser.parse_args(["--model", "gpcnn", "--loss", "flsc-531", "--epochs", "8"]))
    state = {"args": cli.stored_args(saved), "log": [{"epoch": 1}, {"epoch": 2}]}
    with pytest.raises(ValueError, match="cannot change --epochs from 4 to 8"):
        cli.check_extension(state, longer, text_train.schedule)
    with pytest.raises(ValueError, match="trained 2 epochs, more than --epochs 1"):
        cli.check_extension(state, text_train.resolve_args(parser.parse_args(["--model", "gpcnn", "--epochs", "1"])))


# ----------------------------------------------------------------------------------------------------------------
# §1: results read their own files

def _fake_run(folder: Path, seed: int, logits: torch.Tensor, labels: torch.Tensor, *, absolute=False):
    """A finished run folder as the trainers leave it (results.json + logits.pt); ``absolute``: the record as
    written before paths were relative (absolute paths, output_dir in args)."""
    run = cli.RunFolder(folder)
    run.save_logits(logits, labels, logits, labels)
    record = {"format_version": 1, "suite": "image", "dataset": "toy", "model": "m", "loss": "ce", "seed": seed,
              "args": {"output_dir": str(folder.resolve())}, "evaluation": {"n_bins": 15, "temperature": 1.0,
                                                                            "pre": {}, "post": {}},
              "paths": {"logits": str(run.logits.resolve()), "checkpoint": str(run.checkpoint.resolve())}}
    if absolute:
        files.write_json_atomic(run.results, record)
    else:
        run.write_results(record)
    return record


def _smece_cells(*paths):
    from scripts import results_table

    text = results_table.main(results_table.get_args_parser().parse_args([*map(str, paths), "--metric", "smece"]))
    return text.strip().splitlines()[-1]


def test_results_table_reads_a_copied_or_moved_folders_own_logits(tmp_path, capsys):
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (60,))
    logits_a, logits_c = torch.randn(60, 3) * 4, torch.randn(60, 3)
    _fake_run(tmp_path / "runs" / "a", 1, logits_a, labels)
    assert json.loads((tmp_path / "runs" / "a" / "results.json").read_text())["paths"]["logits"] == "logits.pt"
    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "copy" / "c")
    cli.RunFolder(tmp_path / "copy" / "c").save_logits(logits_c, labels, logits_c, labels)  # the copy's own logits
    expected = 100 * calibration_metrics(labels, logits=logits_c, extra=("smece",))["smece"]
    assert f"{expected:.2f}" in _smece_cells(tmp_path / "copy")

    # a record written before paths were relative: absolute paths into the folder it was written in
    _fake_run(tmp_path / "old" / "b", 2, logits_a, labels, absolute=True)
    shutil.move(tmp_path / "old" / "b", tmp_path / "moved")
    expected = 100 * calibration_metrics(labels, logits=logits_a, extra=("smece",))["smece"]
    assert f"{expected:.2f}" in _smece_cells(tmp_path / "moved")
    capsys.readouterr()


def test_runs_with_folder_relative_checkpoints_are_not_merged(tmp_path):
    from focal_calibration.experiments.records import read_results
    from focal_calibration.experiments.tables import build_table

    labels = torch.zeros(10, dtype=torch.long)
    for seed in (1, 2):
        record = _fake_run(tmp_path / f"s{seed}", seed, torch.randn(10, 3), labels)
        record["evaluation"]["pre"] = record["evaluation"]["post"] = {"ece": 0.1 * seed}
        cli.RunFolder(tmp_path / f"s{seed}").write_results(record)
    _, _, cells = build_table(read_results([tmp_path]), "ece")
    assert [value[3] for value in cells.values()] == [2]  # two seeds, not one run seen twice


# ----------------------------------------------------------------------------------------------------------------
# §1: a study rerun with other settings is refused

def test_a_study_rerun_with_other_settings_is_refused(tmp_path, fmnist):
    import inspect

    from classification.study import Recipe, read_study, run_cells, study_settings, train_command

    recipe, out = Recipe(updates=2, batch_size=32, eval_points=1), tmp_path / "study"
    files.write_json_atomic(out / "study.json", read_study(out / "study.json", recipe,
                                                           study_settings(data_dir=fmnist, limit_eval=256)))
    with pytest.raises(ValueError, match="limit_eval was 256, now 128"):
        run_cells([], recipe, out, data_dir=fmnist, limit_eval=128, log=lambda line: None)
    with pytest.raises(ValueError, match="data_dir was .*, now .*other"):
        run_cells([], recipe, out, data_dir=tmp_path / "other", limit_eval=256, log=lambda line: None)
    # every option that reaches a run's command line besides the recipe and the cell is covered, by derivation
    settings = {p.name for p in inspect.signature(train_command).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert settings and set(study_settings()) == settings
    saved = read_study(out / "study.json", recipe, study_settings(data_dir=fmnist, limit_eval=256))
    for name in settings:
        changed = dict(study_settings(data_dir=fmnist, limit_eval=256), **{name: 7})
        with pytest.raises(ValueError, match=f"{name} was"):
            read_study(out / "study.json", recipe, changed)
    assert saved["settings"]["limit_eval"] == 256


def test_a_corrupt_study_file_says_how_to_rebuild_it(tmp_path):
    from classification.study import Recipe, run_cells

    (tmp_path / "study.json").write_text('{"format_version": 1, "runs": [')
    with pytest.raises(ValueError, match="remove it to rebuild it from the runs' checkpoints"):
        run_cells([], Recipe(), tmp_path, log=lambda line: None)


# ----------------------------------------------------------------------------------------------------------------
# §1 / §3: files are whole or absent, and readable by the group and others as the umask says

def test_a_figure_on_a_full_disk_leaves_the_old_figure(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from focal_calibration.calibration.metrics import reliability_bins
    from focal_calibration.plots import reliability_diagram

    path = tmp_path / "reliability_post.png"
    bins = reliability_bins(torch.tensor([0, 1, 1]), logits=torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]]))
    reliability_diagram(bins, path=path)
    old = path.read_bytes()
    original = FigureCanvasAgg.print_png

    def disk_full(self, target, *args, **kwargs):  # half the PNG reaches the file, then the disk is full
        buffer = io.BytesIO()
        original(self, buffer)
        if isinstance(target, io.BytesIO):  # matplotlib's own dry run (bbox_inches="tight")
            target.write(buffer.getvalue())
            return
        handle = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target
        handle.write(buffer.getvalue()[:100])
        handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FigureCanvasAgg, "print_png", disk_full)
    with pytest.raises(OSError) as info:
        reliability_diagram(bins, title="new", path=path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_figures_are_saved_only_through_the_atomic_writer():
    calls = []
    for root in ("focal_calibration", "classification", "treelstm", "scripts", "fairseq_focal"):
        for path in (REPO / root).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if ".savefig(" in line and "handle" not in line:  # atomic_write(path, lambda handle: savefig(...))
                    calls.append(f"{path.relative_to(REPO)}:{number}")
    assert calls == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_result_files_respect_the_umask(tmp_path, umask):
    from focal_calibration.plots import g_curves

    previous = os.umask(umask)
    try:
        assert files.current_umask() == umask and files.current_umask() == umask  # read without changing it
        files.write_json_atomic(tmp_path / "results.json", {"a": 1})
        files.write_text_atomic(tmp_path / "table.md", "x")
        save_checkpoint(tmp_path / "checkpoint.pt", {"w": torch.zeros(2)})
        g_curves((1, 2), path=tmp_path / "figure.png")
    finally:
        os.umask(previous)
    for name in ("results.json", "table.md", "checkpoint.pt", "figure.png"):  # as open(path, "w") would make them
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ----------------------------------------------------------------------------------------------------------------
# §2: the user's storage: one error line naming the file and the system's reason

def _read_only(monkeypatch, folder: Path):
    """Writes under ``folder`` fail as on a read-only mount (EROFS). The tests run as root, which ignores
    permission bits, so the file system's refusal is simulated at the system calls Python writes through."""
    folder = str(folder)

    def under(path):
        return os.path.abspath(os.fsdecode(path)).startswith(folder)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir = open, os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    monkeypatch.setattr(os, "open", lambda path, flags, *a, **k: refuse(path) if under(path) and flags & writing
                        else real_os_open(path, flags, *a, **k))
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: refuse(path) if under(path) else real_mkdir(path, *a, **k))
    monkeypatch.setattr("builtins.open", lambda path, mode="r", *a, **k: refuse(path) if isinstance(
        path, (str, os.PathLike)) and under(path) and set(mode) & set("wax+") else real_open(path, mode, *a, **k))


def test_a_read_only_output_folder_is_one_error_line(fmnist, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(monkeypatch, out)
    status, _, err = run_trainer(trainer_argv(fmnist, out / "run", "--epochs", "1"), capsys)
    assert status == 2 and "Read-only file system" in one_error_line(err) and str(out / "run") in err


def test_a_full_disk_is_reported_as_such_and_leaves_no_half_checkpoint(fmnist, tmp_path, monkeypatch, capsys):
    real_fdopen = os.fdopen

    def full_disk_for_binary_files(fd, mode="r", *args, **kwargs):  # the kernel's own ENOSPC, from /dev/full
        if "b" not in mode:
            return real_fdopen(fd, mode, *args, **kwargs)
        os.close(fd)
        return open("/dev/full", mode)

    monkeypatch.setattr(files.os, "fdopen", full_disk_for_binary_files)
    with pytest.raises(OSError) as info:  # torch.save's own error is an inline_container RuntimeError
        save_checkpoint(tmp_path / "checkpoint.pt", {"w": torch.zeros(100_000)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []
    status, _, err = run_trainer(trainer_argv(fmnist, tmp_path / "run", "--epochs", "1"), capsys)
    line = one_error_line(err)
    assert status == 2 and line.endswith(f"{tmp_path / 'run' / 'checkpoint.pt'}: No space left on device")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_dir_that_is_a_file_is_one_error_line(fmnist, tmp_path, capsys, where):
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "run"
    status, _, err = run_trainer(trainer_argv(fmnist, out, "--epochs", "1"), capsys)
    assert status == 2 and f"{str(tmp_path / 'taken')!r}" in one_error_line(err) and "is a file" in err


def test_results_table_output_that_is_a_folder_is_one_error_line(tmp_path, capsys):
    from scripts import results_table

    _fake_run(tmp_path / "run", 1, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(SystemExit) as exit_:
        cli.run_cli(results_table.get_args_parser(), results_table.main, [str(tmp_path), "--output", str(tmp_path)])
    assert exit_.value.code == 2 and "is a folder" in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------------------------
# §2 / §3: devices and data files

def test_an_unknown_device_is_one_error_line(fmnist, tmp_path, capsys):
    status, _, err = run_trainer(trainer_argv(fmnist, tmp_path / "run", "--device", "tpu"), capsys)
    assert status == 2 and "--device 'tpu' is not a torch device" in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_download_without_a_network_is_one_error_line(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    status, _, err = run_trainer(["--dataset", "fashion-mnist", "--download", "--data-dir", str(tmp_path / "data"),
                                  "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--model", "mlp"], capsys)
    line = one_error_line(err)
    assert status == 2 and "downloading Fashion-MNIST" in line and "Network is unreachable" in line


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "corrupt stream"])
def test_a_damaged_gzip_data_file_is_an_error_naming_it(fmnist, tmp_path, capsys, damage):
    data = tmp_path / "data"
    shutil.copytree(fmnist, data)
    path = data / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])                        # EOFError
    elif damage == "random bytes":
        path.write_bytes(os.urandom(2000))                               # BadGzipFile
    else:
        path.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:200]) + good[200:])  # zlib.error
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(path)
    status, _, err = run_trainer(trainer_argv(data, tmp_path / "run", "--epochs", "1"), capsys)
    assert status == 2 and str(path) in one_error_line(err)


def test_a_label_out_of_range_is_an_error_naming_the_labels_file(fmnist, tmp_path):
    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(fmnist, data)
    labels = read_idx(data / "train-labels-idx1-ubyte.gz").copy()
    labels[17] = 200
    write_idx(data / "train-labels-idx1-ubyte", np.asarray(labels))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz' holds the label 200"):
        load_dataset("fashion-mnist", data_dir=data, val_size=40)


# ----------------------------------------------------------------------------------------------------------------
# §3: start-up: --help and argument errors import neither torch nor fairseq

PROBE = textwrap.dedent("""
    import runpy, sys
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__") if sys.argv[0].endswith(".py") else \\
            runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    heavy = sorted(name for name in ("torch", "torchvision", "numpy", "fairseq", "matplotlib") if name in sys.modules)
    print("HEAVY", heavy, file=sys.stderr)
""")


@pytest.mark.parametrize("command", [
    ["classification.train", "--help"],
    ["classification.train", "--epochs", "x"],
    [str(REPO / "scripts" / "nmt_sweep.py"), "--help"],
    [str(REPO / "scripts" / "nmt_sweep.py"), "run", "--help"],
    [str(REPO / "scripts" / "nmt_sweep.py"), "run", "--beam", "x"],
    # bad values, not only bad types: checked before torch and fairseq are imported
    [str(REPO / "scripts" / "nmt_sweep.py"), "run", "--data", "d", "--checkpoints", "a=c.pt", "--output-dir", "o",
     "--beam", "0"],
    [str(REPO / "scripts" / "nmt_sweep.py"), "run", "--data", "d", "--checkpoints", "a=c.pt", "--output-dir", "o",
     "--temperatures", "0.5,2"],
])
def test_help_and_argument_errors_import_no_heavy_module(command):
    result = subprocess.run([sys.executable, "-c", PROBE, *command], capture_output=True, text=True, env=ENV,
                            cwd=REPO, timeout=300)
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]
    assert "Warning" not in result.stderr and "INFO" not in result.stderr + result.stdout


def test_the_names_the_parser_offers_are_those_the_trainer_builds():
    from classification import datasets, engine, models, names

    assert names.DATASET_NAMES == datasets.DATASET_NAMES == tuple(train_script.RECIPES)
    assert names.MODEL_NAMES == models.MODEL_NAMES
    assert names.AMP_NAMES == tuple(engine.AMP_DTYPES)


def test_negative_numbers_in_lists_are_values_not_options():
    parser = cli.ArgumentParser(prog="p")
    parser.add_argument("--temperatures")
    parser.add_argument("--shift", type=float)
    args = parser.parse_args(["--temperatures", "-1,1", "--shift", "-0.5"])
    assert args.temperatures == "-1,1" and args.shift == -0.5


def test_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold_folder(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / ".lock").exists()  # the file stays; the lock went with the process
    with cli.RunFolder(tmp_path / "run").lock() as folder:
        assert folder.owner()["pid"] == os.getpid()
