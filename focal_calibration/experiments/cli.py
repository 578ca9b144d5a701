"""The one command-line dialect of the image trainer, the text trainer and the scripts.

* :class:`ArgumentParser` + :func:`run_cli`: a user's mistake (a bad flag value, missing data, an incompatible
  resume) ends as ONE line ``prog: error: <message>`` on stderr with exit status 2, never a traceback; errors count
  as the user's when they are ``ValueError`` or derive from :class:`UserError` (e.g. :class:`DataNotFoundError`,
  or :class:`MissingExtraError` from :func:`require_extra` when an optional dependency is not installed).
* :class:`HelpFormatter`: each default printed once (argparse's ``ArgumentDefaultsHelpFormatter`` appends
  ``(default: X)`` even when the help text already states the default).
* :func:`add_run_arguments`: the flags with one meaning in every trainer (``--data-dir``, ``--output-dir``,
  ``--resume auto|PATH``, ``--limit-train`` / ``--limit-eval``, ``--split-seed``, ``--seed``, ``--device``,
  ``--threads``, ``--progress/--no-progress``); :func:`seed_everything`, :func:`set_threads`.
* Resume: :func:`run_defining_keys` derives the options that define a run from the parser minus a short explicit
  allow-list (:data:`RESUME_ALLOWED`); :func:`check_resume` refuses a resume naming each changed flag;
  :func:`save_run_checkpoint` / :func:`load_run_checkpoint` stamp and check a format version and the suite;
  :func:`load_state_dicts` refuses a list of optimiser / scheduler states of the wrong length.
* :class:`RunFolder`: the one layout of a run folder -- ``args.json``, ``log.jsonl`` (one line per epoch, epochs
  1-based), ``results.json`` (:func:`focal_calibration.experiments.records.make_run_record`, with its ``suite``;
  paths inside the folder stored relative to it), ``logits.pt``, ``checkpoint.pt`` -- every file written through
  :func:`focal_calibration.files.atomic_write`; and its owner: :meth:`RunFolder.lock` (``.lock``, an ``flock`` held
  for the run's life, released by the OS however the process ends) refuses a second process with
  :class:`RunFolderBusyError`, naming the folder and the owner's pid.
* Start-up: importing this module imports neither torch nor NumPy (``--help`` and argument errors answer at once);
  they are imported by the functions that need them.

A trainer in this dialect (``classification/train.py`` is the worked example)::

    def get_args_parser():
        parser = cli.ArgumentParser(description=...)
        ...                                           # the trainer's own flags
        cli.add_run_arguments(parser, data_help=...)
        return parser

    def main(args):
        parser = get_args_parser()
        ...                                           # validate: raise ValueError naming the bad value
        if args.output_dir is None:
            args.output_dir = cli.default_output_dir("text", name, args, cli.run_defining_keys(parser))
        folder = cli.RunFolder(args.output_dir)
        state = cli.load_resume_state(folder, args, parser, suite="text",   # None: a fresh run; the folder is
                                      schedule=...)                         # this process's from now on
        cli.seed_everything(args.seed); cli.set_threads(args.threads)
        ...
        folder.write_args(args)
        for epoch in ...:                              # log records: 1-based "epoch", kept in the checkpoint too
            folder.append_log(record)
            cli.save_run_checkpoint(folder.checkpoint, {"args": cli.stored_args(args), "log": log, ...},
                                    suite="text")
        folder.save_logits(...); folder.write_results(make_run_record(suite="text", ...))
        folder.unlock()                                # (or let the process end)

    if __name__ == "__main__":
        sys.exit(cli.run_cli(get_args_parser(), main))

On resume: ``cli.load_state_dicts(optimizers, state["optimizers"], "optimizer")`` and
``folder.restore_log(state["log"])``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import errno
import hashlib
import importlib
import json
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

# torch, NumPy and the checkpoint module are imported inside the functions that use them: a trainer's --help and its
# argument errors must not wait seconds for torch.
from focal_calibration import constants
from focal_calibration.files import atomic_write, json_ready, write_json_atomic

__all__ = ["UserError", "DataNotFoundError", "MissingExtraError", "RunFolderBusyError", "require_extra",
           "HelpFormatter", "ArgumentParser", "run_cli", "RUN_FLAGS", "add_run_arguments", "positive_int",
           "nonnegative_int", "check_device", "seed_everything", "set_threads", "RESUME_ALLOWED",
           "MATRIX_SCALING_MODES", "add_matrix_scaling_argument", "parse_temperatures", "run_defining_keys",
           "check_resume", "epochs_done", "check_extension", "stored_args", "CHECKPOINT_FORMAT_VERSION",
           "save_run_checkpoint", "load_run_checkpoint", "load_resume_state", "load_state_dicts",
           "default_output_dir", "RunFolder"]


# ----------------------------------------------------------------------------------------------------------------
# Errors and the CLI wrapper

class UserError(Exception):
    """An error the user caused and can fix (wrong input, missing files): reported as one ``error:`` line."""


class DataNotFoundError(UserError, FileNotFoundError):
    """Data files are not where they were looked for; the message says where, and how to get them."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class RunFolderBusyError(UserError):
    """Another live process owns the run folder (:meth:`RunFolder.lock`); the message names it and its pid."""


def require_extra(module: str, extra: str, what: str):
    """Import ``module``, or raise :class:`MissingExtraError` saying that ``what`` needs the project's ``extra``.

    Only the module's own absence is translated: an installed module that fails to import keeps its error.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is None or module.split(".")[0] != error.name.split(".")[0]:
            raise
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                                f"pip install 'focal-calibration[{extra}]'") from error


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (usage examples) and appends ``(default: X)`` once: not when the help
    already mentions its default, and not for defaults that say nothing (None, False flags, empty lists)."""

    def _format_action(self, action):
        if action.help is None and _states_default(action):  # an option without help still shows its default
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or not _states_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _states_default(action) -> bool:
    """Whether ``(default: X)`` tells the reader something: an option whose default is not None / False / []."""
    default = action.default
    return bool(action.option_strings) and not (default is None or default is argparse.SUPPRESS
                                                or default is False or default == [])


# argparse takes "-1" and "-.5" for values, but "-1,1" (a comma-separated list) for an unknown option
_NEGATIVE_NUMBERS = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*$")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` and one-line parse errors (status 2, no usage).

    Values that start with a minus sign and look like numbers or comma-separated lists of numbers (``-1``, ``-0.5``,
    ``-1,1``) are values, not options: ``--temperatures -1,1`` reaches the option's own check.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        if hasattr(self, "_negative_number_matcher"):  # argparse's own pattern accepts single numbers only
            self._negative_number_matcher = _NEGATIVE_NUMBERS

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(parser: argparse.ArgumentParser, main: Callable, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``main(args)`` and return 0.

    A ``ValueError`` or :class:`UserError` from ``main`` becomes one line ``prog: error: <message>`` on stderr and
    ``SystemExit(2)``; so does an ``OSError`` of the user's storage (no space, quota, read-only, permissions, a file
    where a folder should be, a missing file): ``prog: error: <file>: <the system's reason>``. Anything else is a
    bug and keeps its traceback. The run folders ``main`` took (:meth:`RunFolder.lock`) are given back and a
    torch.distributed process group that ``main`` created is destroyed (torchrun waits for it otherwise), however
    ``main`` ends.
    """
    args = parser.parse_args(argv)
    owned_before = set(_OWNED)
    try:
        main(args)
    except (ValueError, UserError) as error:
        message = str(error).strip() or type(error).__name__
        if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
            message = f"{message}: {error.filename}"
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    except OSError as error:
        if error.errno not in _STORAGE_ERRORS:
            raise
        reason = error.strerror or os.strerror(error.errno)
        message = f"{os.fsdecode(error.filename)}: {reason}" if error.filename is not None else reason
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    finally:
        for key in set(_OWNED) - owned_before:  # run folders main took (the process may go on: tests, notebooks)
            os.close(_OWNED.pop(key))
        torch = sys.modules.get("torch")  # a process group exists only if main imported torch
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


# OSError numbers that describe the user's storage, not a bug: reported as one error line
_STORAGE_ERRORS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EISDIR", "ENOTDIR", "EEXIST", "EFBIG", "EIO", "ENAMETOOLONG",
    "ENOENT", "ELOOP") if hasattr(errno, name))


# ----------------------------------------------------------------------------------------------------------------
# The common flags

def _bounded_int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:  # parsed before torch is imported: no focal_calibration.validation here
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
    return value


def parse_temperatures(temperatures) -> tuple[float, ...]:
    """'0.5,0.6,1' or a sequence of numbers -> a tuple of distinct finite temperatures > 0 (ValueError otherwise).

    The temperatures of a sweep (fairseq_focal's sweep generator, nmt_sweep.py, the NMT demo); here, torch-free, so
    that a bad value is refused before torch and fairseq load."""
    if temperatures is None:
        raise ValueError("temperatures must be given, got None")
    if isinstance(temperatures, str):
        parts = [t.strip() for t in temperatures.split(",") if t.strip()]
        try:
            values = [float(t) for t in parts]
        except ValueError:
            raise ValueError(f"temperatures must be comma-separated numbers, got {temperatures!r}") from None
    else:
        values = [float(t) for t in temperatures]
    if not values:
        raise ValueError(f"temperatures must hold at least one value, got {temperatures!r}")
    bad = [t for t in values if not (math.isfinite(t) and t > 0)]
    if bad:
        raise ValueError(f"every temperature must be a finite number > 0, got {bad[0]!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"temperatures must be distinct, got {values}")
    return tuple(values)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0)


RUN_FLAGS = ("data_dir", "output_dir", "resume", "limit_train", "limit_eval", "split_seed", "seed", "device",
             "threads", "progress")


def add_run_arguments(parser: argparse.ArgumentParser, *, data_help: str = "folder with the data files",
                      output_help: str = "run folder (default: results/<suite>/<name>-<hash of the run-defining "
                                         "options>, one folder per run)",
                      threads_help: str = "torch.set_num_threads (default: torch's choice)",
                      flags: Sequence[str] = RUN_FLAGS, title: str = "run") -> argparse._ArgumentGroup:
    """Add the flags that mean the same in every trainer (``flags``: a subset of :data:`RUN_FLAGS`, e.g. for an
    evaluator); returns their argument group.

    ``--output-dir`` defaults to None: the trainer resolves it with :func:`default_output_dir` (one folder per run).
    ``--progress`` defaults to None: progress bars only when stderr is a terminal.
    """
    unknown = sorted(set(flags) - set(RUN_FLAGS))
    if unknown:
        raise ValueError(f"unknown run flags {unknown}; choose from {list(RUN_FLAGS)}")
    definitions = {
        "data_dir": dict(default=None, help=data_help),
        "output_dir": dict(default=None, help=output_help),
        "resume": dict(default=None, metavar="auto|PATH",
                       help="continue from a checkpoint ('auto': OUTPUT_DIR/checkpoint.pt if it exists, else start); "
                            "refused if a run-defining option changed"),
        "limit_train": dict(type=positive_int, default=None, metavar="N",
                            help="train on the first N training examples only (quick runs)"),
        "limit_eval": dict(type=positive_int, default=None, metavar="N",
                           help="evaluate on the first N validation / test examples only"),
        "split_seed": dict(type=int, default=1, help="seed of the train / validation split (independent of --seed)"),
        "seed": dict(type=int, default=1, help="seed of initialisation, order and augmentation"),
        "device": dict(default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
        "threads": dict(type=positive_int, default=None, metavar="N", help=threads_help),
        "progress": dict(action=argparse.BooleanOptionalAction, default=None,
                         help="progress bars (default: only when stderr is a terminal)"),
    }
    group = parser.add_argument_group(title)
    for dest in RUN_FLAGS:
        if dest in flags:
            group.add_argument("--" + dest.replace("_", "-"), **definitions[dest])
    return group


def check_device(text: str | None, flag: str = "--device"):
    """``torch.device(text)`` if this machine can allocate on it, else ``ValueError`` naming ``text`` (an unknown
    device type such as ``tpu``, CUDA without a GPU, an index past the last GPU). None: ``cuda`` if available, else
    ``cpu``.

    Args:
        text: a device string (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...) or None.
        flag: the option named in the error.

    Returns:
        The ``torch.device``.

    Raises:
        ValueError: the device does not exist, or torch cannot allocate a tensor on it here.
    """
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {text!r} is not a torch device (cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":  # checked without allocating: no CUDA context on GPU 0 for every torchrun rank
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {text!r} asks for CUDA, but torch.cuda.is_available() is False")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:  # e.g. mps / xpu not built in, or no such device
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{flag} {text!r} is not usable here ({reason})") from None
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    import random

    import numpy as np
    import torch

    from focal_calibration.validation import check_int

    check_int(seed, "seed", 0, 2 ** 32 - 1)
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None keeps torch's choice."""
    if threads is None:
        return
    import torch

    from focal_calibration.validation import check_int

    check_int(threads, "--threads", 1)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Resume

# Options that may change between a run and its resumption: how long, where and how fast it runs, what it prints.
# Everything else a trainer's parser defines is run-defining (a resume with another value is refused).
RESUME_ALLOWED = frozenset({"epochs", "output_dir", "resume", "data_dir", "progress", "device", "threads",
                            "print_freq", "workers", "matrix_scaling"})
# --matrix-scaling: only the final evaluation reads it, so a resumed run may change it.
MATRIX_SCALING_MODES = constants.MATRIX_SCALING_MODES


def add_matrix_scaling_argument(parser) -> None:
    """``--matrix-scaling``, the same in both trainers."""
    parser.add_argument("--matrix-scaling", choices=MATRIX_SCALING_MODES, default="auto",
                        help="matrix scaling in the final evaluation (beyond the paper): auto = ODIR with "
                             "cross-validated lambdas where N*K^2 is small enough, plain, odir, or off (it costs "
                             "seconds of CPU for small validation sets)")


def run_defining_keys(parser: argparse.ArgumentParser, allowed: Iterable[str] = RESUME_ALLOWED,
                      extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The argparse dests of ``parser`` minus ``allowed`` (and help / version actions), plus ``extra`` (values a
    trainer derives after parsing, e.g. the world size), sorted."""
    allowed = set(allowed)
    keys = {action.dest for action in parser._actions if action.dest != argparse.SUPPRESS
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))}
    return tuple(sorted((keys - allowed) | set(extra)))


def check_resume(saved_args: Mapping, args: Mapping | argparse.Namespace, parser: argparse.ArgumentParser, *,
                 allowed: Iterable[str] = RESUME_ALLOWED, extra: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming every run-defining flag whose value differs from the checkpoint's."""
    from focal_calibration.experiments.checkpoint import check_resume_compatible

    check_resume_compatible(stored_args(saved_args), stored_args(args), run_defining_keys(parser, allowed, extra))


def epochs_done(state: Mapping) -> int:
    """Epochs a checkpoint has trained: the 1-based ``epoch`` of its last log record (0 for an empty log)."""
    log = state.get("log") or []
    return int(log[-1]["epoch"]) if log else 0


def check_extension(state: Mapping, args: argparse.Namespace,
                    schedule: Callable[[argparse.Namespace, int], Sequence[Mapping]] | None = None) -> None:
    """Refuse a resume whose ``--epochs`` would make the record lie about the run.

    * fewer epochs than the checkpoint has trained: the model cannot be un-trained (both numbers named);
    * a different ``--epochs`` when the schedule of the epochs already trained depends on it: ``schedule(args, n)``
      returns what the run does in each of its first ``n`` epochs (e.g. ``{"gamma": 5.0, "lr": 0.1}``, from the
      trainer's own loss and lr scheduler); if the checkpoint's arguments and the new ones give different values
      there, the extended run would not be the ``--epochs`` run its record says (FLSc places its γ changes at
      100/350 and 250/350 of the run), so it is refused, naming the first epoch and values that differ.

    An extension that keeps the past schedule (fixed milestones, a loss without a schedule) is the straight run of
    the new length: resume is exact, so it gives the same numbers.
    """
    done = epochs_done(state)
    epochs = getattr(args, "epochs", None)
    if epochs is None:
        return
    if epochs < done:
        raise ValueError(f"cannot resume: the checkpoint has trained {done} epochs, more than --epochs {epochs} "
                         f"(a run cannot be shortened: resume with --epochs {done} or more, or start a new output "
                         f"folder)")
    saved = dict(state.get("args") or {})
    if schedule is None or done == 0 or saved.get("epochs") == epochs:
        return
    before = [dict(entry) for entry in schedule(argparse.Namespace(**saved), done)]
    after = [dict(entry) for entry in schedule(args, done)]
    for epoch, (was, now) in enumerate(zip(before, after), start=1):
        changed = [key for key in was if was.get(key) != now.get(key)]
        if changed:
            values = "; ".join(f"{key} {was[key]!r} in the run so far, {now.get(key)!r} in a {epochs}-epoch run"
                               for key in changed)
            raise ValueError(f"cannot change --epochs from {saved.get('epochs')} to {epochs}: the schedule of the "
                             f"{done} epochs already trained depends on the run's length (epoch {epoch}: {values}), "
                             f"so the extended run would not be the {epochs}-epoch run its record says; start a new "
                             f"output folder, or fix the schedule explicitly (e.g. --gamma-milestones, "
                             f"--lr-milestones) when starting a run you may extend")


def stored_args(args: Mapping | argparse.Namespace) -> dict:
    """The arguments as ``args.json``, checkpoints and ``results.json`` store them (paths as text, lists)."""
    return json_ready(dict(vars(args) if isinstance(args, argparse.Namespace) else args))


CHECKPOINT_FORMAT_VERSION = 1


def save_run_checkpoint(path, state: Mapping, *, suite: str) -> None:
    """Save ``state`` atomically with ``format_version`` and ``suite`` stamped in."""
    from focal_calibration.experiments.checkpoint import save_checkpoint

    save_checkpoint(path, {**state, "format_version": CHECKPOINT_FORMAT_VERSION, "suite": suite})


def load_run_checkpoint(path, *, suite: str) -> dict:
    """Load a checkpoint of ``suite``'s trainer; refuse other suites, other format versions and missing args."""
    from focal_calibration.experiments.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    version = state.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        found = "no format version" if version is None else f"format version {version!r}"
        raise ValueError(f"checkpoint {str(path)!r} has {found}; this code reads format version "
                         f"{CHECKPOINT_FORMAT_VERSION} only (written by another version of focal-calibration?)")
    if state.get("suite") != suite:
        raise ValueError(f"checkpoint {str(path)!r} was written by the {state.get('suite')!r} trainer, "
                         f"not the {suite!r} one")
    if not isinstance(state.get("args"), dict):
        raise ValueError(f"checkpoint {str(path)!r} holds no run arguments ('args')")
    return state


def load_resume_state(folder: "RunFolder", args: argparse.Namespace, parser: argparse.ArgumentParser, *,
                      suite: str, allowed: Iterable[str] = RESUME_ALLOWED, extra: Iterable[str] = (),
                      schedule: Callable[[argparse.Namespace, int], Sequence[Mapping]] | None = None,
                      owner: bool = True) -> dict | None:
    """Take ownership of ``folder`` (:meth:`RunFolder.lock`; ``owner=False`` for the other ranks of a distributed
    run) and return the checkpoint ``args.resume`` asks for, checked (format, suite, run-defining options, epochs
    done and the past schedule: :func:`check_extension`), or None for a fresh run (refused when ``folder`` already
    holds a run)."""
    if owner:
        folder.lock()  # before looking at the folder: two processes can no longer both see it empty
    path = folder.resume_path(args.resume)
    if path is None:
        return None
    state = load_run_checkpoint(path, suite=suite)
    check_resume(state["args"], args, parser, allowed=allowed, extra=extra)
    check_extension(state, args, schedule)
    return state


def load_state_dicts(objects: Sequence, states: Sequence, what: str) -> None:
    """``obj.load_state_dict(state)`` pairwise; a different number of states is an error, never a silent drop."""
    if len(objects) != len(states):
        raise ValueError(f"the checkpoint holds {len(states)} {what} states, this run has {len(objects)} {what}s")
    for obj, state in zip(objects, states):
        obj.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------
# Run folders

def default_output_dir(suite: str, name: str, args: Mapping | argparse.Namespace, keys: Iterable[str],
                       root: str = "results") -> Path:
    """``root/suite/name-<8 hex digits>``: the digits hash the run-defining options, so two different runs never
    share a folder and the same command (``--resume auto``, or more ``--epochs``) finds its own again."""
    args = stored_args(args)
    values = {key: args.get(key) for key in keys}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / suite / f"{name}-{digest}"


# Folders this process owns: resolved path -> the open lock file's descriptor (the flock lives as long as it)
_OWNED: dict[str, int] = {}


class _Ownership:
    """What :meth:`RunFolder.lock` returns: usable as a context manager that gives the folder back on exit (only if
    this call took it: nested ``with`` blocks in one process keep the outer one's ownership)."""

    def __init__(self, folder: "RunFolder", acquired: bool):
        self.folder, self.acquired = folder, acquired

    def __enter__(self) -> "RunFolder":
        return self.folder

    def __exit__(self, *exc) -> None:
        if self.acquired:
            self.folder.unlock()


class RunFolder:
    """The files of one run: ``args.json``, ``log.jsonl``, ``results.json``, ``logits.pt``, ``checkpoint.pt``, and
    ``.lock`` (its owner)."""

    LOCK_NAME = ".lock"

    def __init__(self, path):
        self.path = Path(path)
        self.args = self.path / "args.json"
        self.log = self.path / "log.jsonl"
        self.results = self.path / "results.json"
        self.logits = self.path / "logits.pt"
        self.checkpoint = self.path / "checkpoint.pt"
        self.lock_file = self.path / self.LOCK_NAME

    # -- ownership ----------------------------------------------------------------------------------------------

    def create(self) -> Path:
        """Create the folder (and its parents); a file in the way, or a file system that refuses, is a
        :class:`UserError` naming the path and the reason."""
        for place in (self.path, *self.path.parents):
            if place.exists() or place.is_symlink():
                if not place.is_dir():
                    what = "a file" if place.exists() else "a broken symbolic link"
                    where = f"is {what}" if place == self.path else f"cannot be created: {str(place)!r} is {what}"
                    raise UserError(f"output folder {str(self.path)!r} {where}, not a folder (choose another "
                                    f"--output-dir)")
                break
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the output folder {str(self.path)!r}: "
                            f"{error.strerror or error}") from error
        return self.path

    def lock(self) -> _Ownership:
        """Make this process the folder's owner until it ends (or :meth:`unlock`).

        An exclusive ``flock`` on ``.lock`` in the folder, taken without waiting; the owner's pid, host, start time
        and command line are written into the file. The OS releases the lock however the process ends (``kill -9``
        included), so a stale ``.lock`` never blocks anyone; a second process meanwhile gets
        :class:`RunFolderBusyError` naming the folder and the owner's pid. Idempotent within a process. Returns an
        object that also works as a context manager (``with folder.lock(): ...``), giving the folder back on exit.
        POSIX only (``fcntl``): elsewhere the folder is not locked. On NFS, ``flock`` works when the server
        supports byte-range locks (Linux >= 2.6.12 clients emulate it with them).
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            return _Ownership(self, False)
        self.create()
        key = os.path.realpath(self.path)
        if key in _OWNED:
            return _Ownership(self, False)
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise UserError(f"cannot write in the output folder {str(self.path)!r} ({self.LOCK_NAME}): "
                            f"{error.strerror or error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock the output folder {str(self.path)!r}: "
                                f"{error.strerror or error}") from error
            raise RunFolderBusyError(f"output folder {str(self.path)!r} is in use by another run: "
                                     f"{self._owner_text()}; wait for it to end (its lock goes with it), or "
                                     f"choose another --output-dir") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "command": list(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        except OSError as error:
            os.close(fd)
            raise OSError(error.errno, error.strerror, str(self.lock_file)) from error
        _OWNED[key] = fd
        return _Ownership(self, True)

    def unlock(self) -> None:
        """Give up ownership (a no-op if this process does not own the folder). ``.lock`` stays: it is only a lock
        while a process holds it."""
        fd = _OWNED.pop(os.path.realpath(self.path), None)
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def owner(self) -> dict | None:
        """What the current or last owner wrote into ``.lock`` (pid, host, started, command), or None."""
        try:
            text = self.lock_file.read_text(encoding="utf-8").strip()
            return json.loads(text) if text else None
        except (OSError, ValueError):
            return None

    def _owner_text(self) -> str:
        owner = self.owner()
        if not owner:
            return f"a process that has not yet written its pid into {str(self.lock_file)!r}"
        return (f"process {owner.get('pid')} on {owner.get('host')} (started {owner.get('started')}: "
                f"{' '.join(map(str, owner.get('command') or []))[:200]})")

    # -- files --------------------------------------------------------------------------------------------------

    def resume_path(self, resume: str | None) -> Path | None:
        """The checkpoint ``--resume`` names ('auto': this folder's, if any). A fresh run (None, or 'auto' without a
        checkpoint) into a folder that holds a run is refused: nothing is overwritten silently."""
        if resume == "auto" and self.checkpoint.exists():
            return self.checkpoint
        if resume not in (None, "auto"):
            return Path(resume)
        existing = [p.name for p in (self.checkpoint, self.results) if p.exists()]
        if existing:
            raise ValueError(f"output folder {str(self.path)!r} already holds a run ({', '.join(existing)}): pass "
                             f"--resume auto to continue it, or choose another --output-dir")
        return None

    def write_args(self, args: Mapping | argparse.Namespace) -> Path:
        return write_json_atomic(self.args, stored_args(args))

    def append_log(self, record: Mapping) -> None:
        """Append one epoch's line (``record["epoch"]`` 1-based) and fsync it. Keep the records in the checkpoint
        too: :meth:`restore_log` rewrites the log from them on resume."""
        from focal_calibration.validation import check_int

        epoch = record.get("epoch")
        check_int(epoch, "a log record's 1-based 'epoch'", 1)
        line = json.dumps(json_ready(record), allow_nan=False) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:  # a full disk: name the file (a partial line is replaced on resume)
            if error.filename is not None or error.errno is None:
                raise
            raise OSError(error.errno, error.strerror, str(self.log)) from error

    def restore_log(self, records: Sequence[Mapping]) -> Path:
        """Atomically replace the log by ``records`` (the checkpoint's epochs): lines a killed run wrote after its
        last checkpoint disappear, and none the checkpoint has can be missing."""
        text = "".join(json.dumps(json_ready(r), allow_nan=False) + "\n" for r in records)
        return atomic_write(self.log, lambda handle: handle.write(text), binary=False)

    def read_log(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_results(self, record: Mapping) -> Path:
        """``results.json``: a :func:`~focal_calibration.experiments.records.make_run_record` record (it has
        ``suite``). Its ``paths`` inside this folder are stored relative to it (a copied or moved folder reads its
        own files), the others as absolute paths."""
        from focal_calibration.experiments.records import folder_relative_paths

        if "suite" not in record or "evaluation" not in record:
            raise ValueError(f"a results record needs 'suite' and 'evaluation' (make_run_record), got keys "
                             f"{sorted(record)}")
        record = dict(record)
        if record.get("paths"):
            record["paths"] = folder_relative_paths(record["paths"], self.path)
        return write_json_atomic(self.results, record)

    def save_logits(self, val_logits, val_labels, test_logits, test_labels) -> Path:
        import torch

        tensors = {"val_logits": val_logits, "val_labels": val_labels, "test_logits": test_logits,
                   "test_labels": test_labels}
        return atomic_write(self.logits, lambda handle: torch.save(tensors, handle))
