"""The one job runner of the reproduction grids -- the regime study, the image and text demos, the NMT demo -- built
on submitit: its local executor by default (processes on this machine, ``--jobs`` at a time) and its SLURM executor
with ``--launcher slurm`` (one job array on a cluster, ``--jobs`` at a time).

A grid is a list of :class:`Job` -- a name, a command line, a log file, environment overrides, a working folder.
:func:`run_jobs` runs them and returns each job's wall and CPU seconds. The grid decides what to run, which is where
resume lives: a finished run is not a job; an unfinished one is a job whose command resumes its checkpoint. Each
finished job is handed to the grid's ``on_done`` callback in the driver (this process) as soon as it ends, so the
grid records it at once (e.g. ``study.json``) and a killed grid loses no finished run.

* **Failure**: the first job whose command fails stops the grid -- the jobs still running are stopped, no other is
  started -- with :class:`JobFailedError` naming the job, its exit status and its log, followed by the log's end.
* **Children die with their parent** (local executor, Linux): submitit's controller, its task and the command each
  run under :mod:`~focal_calibration.experiments.parent_guard`, so a driver killed even by ``kill -9`` leaves no
  trainer running. A driver that stops otherwise (a failed job, Ctrl-C, SIGTERM where the script handles it) stops
  its jobs first (SLURM: ``scancel``); a SLURM job array killed with its driver keeps running on the cluster.
* **Environment**: the command gets the driver's environment (local) or the compute node's (SLURM), without
  submitit's ``SUBMITIT_*`` variables, plus the job's overrides; it runs in the job's folder (default: the
  driver's working folder). Its stdout and stderr are appended to the job's log.
* **Files**: submitit keeps its pickles and logs under the launcher folder (``--launcher-dir``, default
  ``OUTPUT/launcher``): ``%j/`` per SLURM job (``<array id>_<index>``); locally a per-invocation
  ``local-<pid>-<time>/`` whose job folders are removed as each job's result is read (a later job may get the same
  process id), and the folder itself when the grid succeeds: a successful local grid leaves no file beside its
  outputs; a failed one leaves the failed job's submitit log.

The submitted function pickles *by value* (cloudpickle): a job's process imports submitit and the standard library,
not this package (torch), so a job costs ~0.5 s of start-up, not ~3 s.

Command-line flags (one dialect for every grid script): :func:`add_launcher_arguments` and
:func:`launcher_from_args`; :func:`run_cli` is :func:`~focal_calibration.experiments.cli.run_cli` with a failed job
reported as one ``error:`` paragraph and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from focal_calibration.experiments import cli
from focal_calibration.validation import check_choice, check_int

__all__ = ["LAUNCHERS", "Job", "Launcher", "JobFailedError", "SubmissionError", "run_jobs", "add_launcher_arguments",
           "launcher_from_args", "run_cli", "GUARD_SCRIPT"]

LAUNCHERS = ("local", "slurm")
GUARD_SCRIPT = Path(__file__).resolve().parent / "parent_guard.py"
LOG_TAIL_CHARS = 2000  # the end of a failed job's log, quoted in the error
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs are killed after 2 min by default: a local run has no limit
STOP_GRACE_S = 10.0  # a stopped local job gets this long to end before its controller is killed
_SLURM_MEM = re.compile(r"[1-9][0-9]*[KMGT]?")  # sbatch --mem: an integer, optionally with a unit suffix
_SLURM_ONLY = ("partition", "time_min", "gpus_per_node", "cpus_per_task", "mem", "account", "qos", "constraint",
               "setup")


class JobFailedError(RuntimeError):
    """A job of the grid failed: its command exited with a non-zero status, or its process died."""


class SubmissionError(cli.UserError):
    """The grid could not be submitted (no SLURM on this machine, or ``sbatch`` refused the job array)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One command of a grid.

    Args:
        name: unique within the grid; names the job in progress lines and errors.
        command: the command line (``sys.executable``, a script and its flags; or a console script).
        log: the file its stdout and stderr are appended to (its folder is created).
        env: environment variables set for the command on top of the driver's (local) or the node's (SLURM).
        cwd: its working folder (default: the driver's).
    """
    name: str
    command: tuple[str, ...]
    log: Path
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None

    def __post_init__(self):
        if not self.name:
            raise ValueError("a job needs a name")
        if not self.command:
            raise ValueError(f"job {self.name!r} has an empty command")
        object.__setattr__(self, "command", tuple(str(c) for c in self.command))
        object.__setattr__(self, "log", Path(self.log))
        object.__setattr__(self, "env", {str(k): str(v) for k, v in self.env.items()})


@dataclasses.dataclass(frozen=True)
class Launcher:
    """Where and how many jobs of a grid run at once.

    Args:
        kind: ``"local"`` (processes on this machine) or ``"slurm"`` (a job array on a SLURM cluster).
        jobs: jobs running at once (local: processes; SLURM: the array's parallelism, ``--array=0-N%jobs``).
        folder: submitit's folder (pickles, logs); None: the grid's default (``OUTPUT/launcher``).
        partition, time_min, gpus_per_node, cpus_per_task, mem, account, qos, constraint: ``sbatch`` options of
            every job (SLURM only; ``time_min`` in minutes is required there, ``mem`` as sbatch writes it: ``16G``).
        setup: shell lines run in each SLURM job before the command (``module load ...``).
        poll_s: seconds between two looks at the running jobs (default: 0.2 local, 10 SLURM).
    """
    kind: str = "local"
    jobs: int = 1
    folder: Path | None = None
    partition: str | None = None
    time_min: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    poll_s: float | None = None

    def __post_init__(self):
        check_choice(self.kind, LAUNCHERS, "--launcher")
        check_int(self.jobs, "--jobs", 1)
        object.__setattr__(self, "setup", tuple(self.setup))
        if self.folder is not None:
            object.__setattr__(self, "folder", Path(self.folder))
        if self.kind == "local":
            given = [name for name in _SLURM_ONLY if getattr(self, name) not in (None, ())]
            if given:
                raise ValueError(f"{_flag(given[0])} is an option of --launcher slurm (the launcher is local)")
        else:
            if self.time_min is None:
                raise ValueError("--launcher slurm needs --slurm-time (minutes per job; submitit's default is 5)")
            check_int(self.time_min, "--slurm-time", 1)
            for name in ("gpus_per_node", "cpus_per_task"):
                if getattr(self, name) is not None:
                    check_int(getattr(self, name), _flag(name), 0 if name == "gpus_per_node" else 1)
            if self.mem is not None and not _SLURM_MEM.fullmatch(self.mem):
                raise ValueError(f"--slurm-mem must be an integer with an optional unit K, M, G or T (e.g. 16G), got "
                                 f"{self.mem!r}")
        if self.poll_s is not None and not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {self.poll_s!r}")

    def slurm_parameters(self, name: str) -> dict:
        """The parameters of submitit's ``SlurmExecutor.update_parameters`` for a grid called ``name``."""
        parameters = {"job_name": name, "time": self.time_min, "array_parallelism": self.jobs,
                      "stderr_to_stdout": True, "partition": self.partition, "gpus_per_node": self.gpus_per_node,
                      "cpus_per_task": self.cpus_per_task, "mem": self.mem, "account": self.account, "qos": self.qos,
                      "constraint": self.constraint, "setup": list(self.setup) or None}
        return {key: value for key, value in parameters.items() if value is not None}


def _flag(name: str) -> str:
    return "--slurm-" + {"time_min": "time"}.get(name, name).replace("_", "-")


# ----------------------------------------------------------------------------------------------------------------
# Command-line flags

def add_launcher_arguments(parser: argparse.ArgumentParser, *, jobs_default: int,
                           jobs_help: str = "jobs running at once") -> argparse._ArgumentGroup:
    """Add ``--jobs``, ``--launcher``, ``--launcher-dir`` and the ``--slurm-*`` options; returns their group."""
    group = parser.add_argument_group("launcher", "where the grid's jobs run (docs/guide/running-grids.md)")
    group.add_argument("--jobs", type=cli.positive_int, default=jobs_default,
                       help=f"{jobs_help}; on SLURM, the job array's parallelism")
    group.add_argument("--launcher", default="local", choices=LAUNCHERS,
                       help="local: processes on this machine; slurm: one job array on a SLURM cluster (submitit)")
    group.add_argument("--launcher-dir", default=None, metavar="DIR",
                       help="submitit's pickles and logs (default: OUTPUT_DIR/launcher; on SLURM a folder the "
                            "compute nodes share)")
    group.add_argument("--slurm-partition", default=None, help="sbatch --partition")
    group.add_argument("--slurm-time", type=cli.positive_int, default=None, metavar="MINUTES",
                       help="sbatch --time of every job, in minutes (required with --launcher slurm)")
    group.add_argument("--slurm-gpus-per-node", type=cli.nonnegative_int, default=None, metavar="N",
                       help="sbatch --gpus-per-node")
    group.add_argument("--slurm-cpus-per-task", type=cli.positive_int, default=None, metavar="N",
                       help="sbatch --cpus-per-task (default: the threads each job uses)")
    group.add_argument("--slurm-mem", default=None, metavar="SIZE", help="sbatch --mem, e.g. 16G")
    group.add_argument("--slurm-account", default=None, help="sbatch --account")
    group.add_argument("--slurm-qos", default=None, help="sbatch --qos")
    group.add_argument("--slurm-constraint", default=None, help="sbatch --constraint")
    group.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                       help="a shell line run in each job before its command, e.g. 'module load cuda' (repeatable)")
    return group


def launcher_from_args(args: argparse.Namespace, *, cpus_per_task: int = 1) -> Launcher:
    """The :class:`Launcher` of :func:`add_launcher_arguments`' flags; ``cpus_per_task``: the SLURM default, the
    threads each job of the grid uses."""
    slurm = args.launcher == "slurm"
    return Launcher(kind=args.launcher, jobs=args.jobs, folder=args.launcher_dir, partition=args.slurm_partition,
                    time_min=args.slurm_time, gpus_per_node=args.slurm_gpus_per_node,
                    cpus_per_task=args.slurm_cpus_per_task if args.slurm_cpus_per_task is not None or not slurm
                    else cpus_per_task, mem=args.slurm_mem, account=args.slurm_account, qos=args.slurm_qos,
                    constraint=args.slurm_constraint, setup=tuple(args.slurm_setup))


def run_cli(parser: argparse.ArgumentParser, main: Callable, argv: Sequence[str] | None = None) -> int:
    """:func:`~focal_calibration.experiments.cli.run_cli` for a grid script: a :class:`JobFailedError` ends the
    script with ``prog: error: <job, status, log and its end>`` on stderr and exit status 1 (the finished runs are
    kept; rerunning the script resumes the grid)."""
    try:
        return cli.run_cli(parser, main, argv)
    except JobFailedError as error:
        raise SystemExit(f"{parser.prog}: error: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# Running a grid

def run_jobs(jobs: Sequence[Job], launcher: Launcher, *, folder, name: str = "grid",
             on_done: Callable[[Job, dict], None] | None = None,
             log: Callable[[str], None] | None = print) -> dict[str, dict]:
    """Run ``jobs`` with ``launcher``; return ``{job name: {"wall_s", "cpu_s"}}`` (the command's own CPU time, from
    ``wait4``: robust to other load on the machine, unlike wall time).

    Args:
        jobs: the grid's jobs, in the order they should start.
        launcher: where and how many at once.
        folder: submitit's folder when ``launcher.folder`` is None.
        name: the grid's name (the SLURM job name).
        on_done: called in this process with each finished job and its times, in the order they finish (the first
            finished first); an exception in it stops the grid.
        log: progress lines (``start`` / ``done``), or None for none.

    Raises:
        JobFailedError: a job failed (the message names it, its exit status and log, and quotes the log's end); the
            other jobs were stopped.
        SubmissionError: SLURM is not available, or sbatch refused the array.
    """
    jobs = list(jobs)
    seen = set()
    for job in jobs:
        if job.name in seen:
            raise ValueError(f"two jobs of the grid are called {job.name!r}")
        seen.add(job.name)
    if not jobs:
        return {}
    say = log or (lambda line: None)
    base = Path(launcher.folder if launcher.folder is not None else folder).absolute()
    local = launcher.kind == "local"
    if local:
        base_is_new = not base.exists()
        root = base / f"local-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}"
        executor = _local_executor_class()(root / "%j", python=_guarded_python("SUBMITIT_LOCAL_JOB_ID"))
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, stderr_to_stdout=True)
    else:
        executor = _slurm_executor(base / "%j", launcher.slurm_parameters(name))
    poll_s = launcher.poll_s or (0.2 if local else 10.0)
    pending, running, times = list(jobs), {}, {}  # running: submitit job -> our Job, in submission order
    try:
        if not local:  # one job array; SLURM runs launcher.jobs of them at once
            from submitit.core.utils import FailedSubmissionError, UncompletedJobError

            try:
                with _submitting(), executor.batch():
                    handles = [executor.submit(_run_command, _spec(job)) for job in pending]
            except (UncompletedJobError, FailedSubmissionError) as error:  # sbatch's exit status, or its output
                raise SubmissionError(f"sbatch refused the grid's job array: {str(error).strip()}") from None
            running.update(zip(handles, pending))
            pending = []
            say(f"  submitted {len(handles)} jobs to SLURM (job array {handles[0].job_id.split('_')[0]}, "
                f"{launcher.jobs} at a time); logs under {base}")
        while pending or running:
            while pending and len(running) < launcher.jobs:
                job = pending.pop(0)
                with _submitting():
                    running[executor.submit(_run_command, _spec(job))] = job
                say(f"  start {job.name}")
            finished = [handle for handle in running if handle.done()]
            if not finished:
                time.sleep(poll_s)
            for handle in finished:
                job = running.pop(handle)
                times[job.name] = _outcome(handle, job)
                if local:
                    shutil.rmtree(handle.paths.folder, ignore_errors=True)
                say(f"  done  {job.name}: {_duration(times[job.name]['wall_s'])} wall, "
                    f"{_duration(times[job.name]['cpu_s'])} CPU")
                if on_done is not None:
                    on_done(job, times[job.name])
    finally:
        _stop(running, local=local)
    if local:  # every job's folder is gone; what is left is submitit's empty template folder
        shutil.rmtree(root, ignore_errors=True)
        if base_is_new:
            with contextlib.suppress(OSError):
                base.rmdir()
    return times


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _spec(job: Job) -> dict:
    """What a job's process needs, as plain data (it is pickled)."""
    return {"command": list(job.command), "log": str(job.log.absolute()), "env": dict(job.env),
            "cwd": str(job.cwd if job.cwd is not None else Path.cwd()), "guard": str(GUARD_SCRIPT)}


def _run_command(spec: dict) -> dict:
    """Runs in the job's process (pickled by value: only the standard library here). The command runs guarded
    (it dies with this process), its output appended to the log; returns its exit status and times."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SUBMITIT_")}
    env.update(spec["env"])
    os.makedirs(os.path.dirname(spec["log"]), exist_ok=True)
    command = [sys.executable, "-I", "-S", spec["guard"], "--parent", str(os.getpid()), "--", *spec["command"]]
    with open(spec["log"], "a", encoding="utf-8") as handle:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=spec["cwd"])
        try:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:  # interrupted (the grid is stopping): stop the command
                process.kill()
                process.wait()
    return {"returncode": process.returncode, "wall_s": time.perf_counter() - start,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def _outcome(handle, job: Job) -> dict:
    """The times of a finished job, or :class:`JobFailedError` naming it."""
    from submitit.core.utils import UncompletedJobError

    try:
        result = handle.result()
    except UncompletedJobError as error:
        raise JobFailedError(f"{job.name} ended without finishing its command (see {job.log} and submitit's log "
                             f"{handle.paths.stdout}):\n{str(error)[-LOG_TAIL_CHARS:]}") from None
    if result["returncode"] != 0:
        tail = job.log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if job.log.exists() else ""
        raise JobFailedError(f"{job.name} failed with exit status {result['returncode']}; see {job.log}:\n{tail}")
    return {"wall_s": result["wall_s"], "cpu_s": result["cpu_s"]}


def _stop(running: Mapping, *, local: bool) -> None:
    """Stop the jobs still running (a failure, an interrupt): local ones through their controller (SIGINT: it stops
    its task, which stops the command), waiting for them; SLURM ones with scancel."""
    handles = [handle for handle in running if not handle.done()]
    for handle in handles:
        with contextlib.suppress(Exception):
            handle.cancel(check=False)
    if not local:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while any(not handle.done() for handle in handles):
        if time.monotonic() > deadline:
            for handle in handles:
                if not handle.done():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(handle.job_id), signal.SIGKILL)  # its task and command die with it (guards)
            deadline = float("inf")
        time.sleep(0.05)
    for handle in handles:
        shutil.rmtree(handle.paths.folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# submitit

def _submitit():
    return cli.require_extra("submitit", "grids", "running a grid of jobs")


@contextlib.contextmanager
def _submitting():
    """Pickle this module's functions by value while submitting: the job's process then needs only the standard
    library to unpickle :func:`_run_command`, not this package (whose import takes seconds)."""
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def _guarded(parent_option: Sequence[str], command: Sequence[str]) -> list[str]:
    return [sys.executable, "-I", "-S", str(GUARD_SCRIPT), *parent_option, "--", *command]


def _guarded_python(parent_env: str) -> str:
    """submitit's ``python`` (the interpreter command of a job's process) under the guard, the parent's pid read from
    ``$parent_env``."""
    return shlex.join(_guarded(["--parent-env", parent_env], [sys.executable]))


class _GuardedControllerSubprocess:
    """Stands for the ``subprocess`` module inside submitit's ``start_controller`` while it starts a job's controller:
    the controller runs under the guard (it dies with this process) and keeps the driver's CUDA_VISIBLE_DEVICES."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, **kwargs):  # noqa: N802 (subprocess's name)
        if not isinstance(args, list):
            raise RuntimeError("submitit started its local controller through a shell: the grid runner cannot guard "
                               "it (a submitit version this runner does not know?)")
        env = dict(kwargs.pop("env", None) or os.environ)
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            env.pop("CUDA_VISIBLE_DEVICES", None)
        return subprocess.Popen(_guarded(["--parent", str(os.getpid())], args), env=env, **kwargs)


@functools.cache
def _local_executor_class():
    """submitit's ``LocalExecutor`` whose job controllers die with this process (see the module's docstring)."""
    submitit = _submitit()
    from submitit.local import local as submitit_local

    class GuardedLocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command):
            if submitit_local.subprocess is not subprocess:
                raise RuntimeError("submitit.local.local no longer starts its controller with subprocess.Popen: the "
                                   "grid runner cannot guard it (a submitit version this runner does not know?)")
            submitit_local.subprocess = _GuardedControllerSubprocess()
            try:
                return super()._submit_command(command)
            finally:
                submitit_local.subprocess = subprocess

    return GuardedLocalExecutor


def _slurm_executor(folder: Path, parameters: dict):
    submitit = _submitit()
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as error:
        raise SubmissionError(f"--launcher slurm needs SLURM on this machine (srun and sbatch on PATH: run the grid on "
                              f"a cluster's login node): {error}") from None
    executor.update_parameters(**parameters)
    return executor
