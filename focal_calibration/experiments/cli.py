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
  1-based), ``results.json`` (:func:`focal_calibration.experiments.records.make_run_record`, with its ``suite``),
  ``logits.pt``, ``checkpoint.pt`` -- every file written through :func:`focal_calibration.files.atomic_write`.

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
        state = cli.load_resume_state(folder, args, parser, suite="text")   # None: a fresh run
        cli.seed_everything(args.seed); cli.set_threads(args.threads)
        ...
        folder.write_args(args)
        for epoch in ...:                              # log records: 1-based "epoch", kept in the checkpoint too
            folder.append_log(record)
            cli.save_run_checkpoint(folder.checkpoint, {"args": cli.stored_args(args), "log": log, ...},
                                    suite="text")
        folder.save_logits(...); folder.write_results(make_run_record(suite="text", ...))

    if __name__ == "__main__":
        sys.exit(cli.run_cli(get_args_parser(), main))

On resume: ``cli.load_state_dicts(optimizers, state["optimizers"], "optimizer")`` and
``folder.restore_log(state["log"])``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import os
import random
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from focal_calibration.experiments.checkpoint import check_resume_compatible, load_checkpoint, save_checkpoint
from focal_calibration.files import atomic_write, json_ready, write_json_atomic
from focal_calibration.validation import check_int

__all__ = ["UserError", "DataNotFoundError", "MissingExtraError", "require_extra", "HelpFormatter", "ArgumentParser",
           "run_cli", "RUN_FLAGS", "add_run_arguments", "positive_int", "nonnegative_int", "seed_everything",
           "set_threads", "RESUME_ALLOWED", "run_defining_keys", "check_resume", "stored_args",
           "CHECKPOINT_FORMAT_VERSION", "save_run_checkpoint", "load_run_checkpoint", "load_resume_state",
           "load_state_dicts", "default_output_dir", "RunFolder"]


# ----------------------------------------------------------------------------------------------------------------
# Errors and the CLI wrapper

class UserError(Exception):
    """An error the user caused and can fix (wrong input, missing files): reported as one ``error:`` line."""


class DataNotFoundError(UserError, FileNotFoundError):
    """Data files are not where they were looked for; the message says where, and how to get them."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


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


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` and one-line parse errors (status 2, no usage)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(parser: argparse.ArgumentParser, main: Callable, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``main(args)`` and return 0.

    A ``ValueError`` or :class:`UserError` from ``main`` becomes one line ``prog: error: <message>`` on stderr and
    ``SystemExit(2)``; anything else is a bug and keeps its traceback. A torch.distributed process group that
    ``main`` created is always destroyed (torchrun waits for it otherwise).
    """
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ValueError, UserError) as error:
        message = str(error).strip() or type(error).__name__
        if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
            message = f"{message}: {error.filename}"
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The common flags

def _bounded_int(text: str, minimum: int) -> int:
    try:
        return check_int(int(text), "value", minimum)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}") from None


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


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    check_int(seed, "seed", 0, 2 ** 32 - 1)
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None keeps torch's choice."""
    if threads is None:
        return
    check_int(threads, "--threads", 1)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Resume

# Options that may change between a run and its resumption: how long, where and how fast it runs, what it prints.
# Everything else a trainer's parser defines is run-defining (a resume with another value is refused).
RESUME_ALLOWED = frozenset({"epochs", "output_dir", "resume", "data_dir", "progress", "device", "threads",
                            "print_freq", "workers"})


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
    check_resume_compatible(stored_args(saved_args), stored_args(args), run_defining_keys(parser, allowed, extra))


def stored_args(args: Mapping | argparse.Namespace) -> dict:
    """The arguments as ``args.json``, checkpoints and ``results.json`` store them (paths as text, lists)."""
    return json_ready(dict(vars(args) if isinstance(args, argparse.Namespace) else args))


CHECKPOINT_FORMAT_VERSION = 1


def save_run_checkpoint(path, state: Mapping, *, suite: str) -> None:
    """Save ``state`` atomically with ``format_version`` and ``suite`` stamped in."""
    save_checkpoint(path, {**state, "format_version": CHECKPOINT_FORMAT_VERSION, "suite": suite})


def load_run_checkpoint(path, *, suite: str) -> dict:
    """Load a checkpoint of ``suite``'s trainer; refuse other suites, other format versions and missing args."""
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
                      suite: str, allowed: Iterable[str] = RESUME_ALLOWED, extra: Iterable[str] = ()) -> dict | None:
    """The checkpoint ``args.resume`` asks for, checked (format, suite, run-defining options), or None for a fresh
    run (refused when ``folder`` already holds a run)."""
    path = folder.resume_path(args.resume)
    if path is None:
        return None
    state = load_run_checkpoint(path, suite=suite)
    check_resume(state["args"], args, parser, allowed=allowed, extra=extra)
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


class RunFolder:
    """The files of one run: ``args.json``, ``log.jsonl``, ``results.json``, ``logits.pt``, ``checkpoint.pt``."""

    def __init__(self, path):
        self.path = Path(path)
        self.args = self.path / "args.json"
        self.log = self.path / "log.jsonl"
        self.results = self.path / "results.json"
        self.logits = self.path / "logits.pt"
        self.checkpoint = self.path / "checkpoint.pt"

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
        epoch = record.get("epoch")
        check_int(epoch, "a log record's 1-based 'epoch'", 1)
        line = json.dumps(json_ready(record), allow_nan=False) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

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
        ``suite``)."""
        if "suite" not in record or "evaluation" not in record:
            raise ValueError(f"a results record needs 'suite' and 'evaluation' (make_run_record), got keys "
                             f"{sorted(record)}")
        return write_json_atomic(self.results, record)

    def save_logits(self, val_logits, val_labels, test_logits, test_labels) -> Path:
        tensors = {"val_logits": val_logits, "val_labels": val_labels, "test_logits": test_logits,
                   "test_labels": test_labels}
        return atomic_write(self.logits, lambda handle: torch.save(tensors, handle))

