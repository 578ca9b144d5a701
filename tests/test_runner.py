"""The grid runner (focal_calibration.experiments.runner, on submitit) with tiny jobs: local jobs run at most --jobs at
a time, with the driver's environment, their overrides, folder and log; a failed job stops the grid naming it and its
log; kill -9 of a driver leaves none of its processes running; the parent guard on its own; the launcher's flags; and
the SLURM path end to end against stub sbatch / srun / sacct / scancel commands (the sbatch script submitit would
send, the job array, the pickled jobs, the results coming back) -- everything but a real scheduler."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from focal_calibration.experiments import cli, runner
from focal_calibration.experiments.runner import GUARD_SCRIPT, Job, JobFailedError, Launcher, run_jobs
from processes import alive, parent, wait_for

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent guard needs Linux's prctl")


JOB = textwrap.dedent("""\
    import json, os, sys, time
    name, partner, folder = sys.argv[1:4]
    start = time.time()
    open(os.path.join(folder, name + ".started"), "w").close()
    deadline = time.time() + 60
    while partner != "-" and not os.path.exists(os.path.join(folder, partner + ".started")):
        if time.time() > deadline:
            sys.exit(9)
        time.sleep(0.01)
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    print(json.dumps({"start": start, "end": time.time(), "cwd": os.getcwd(), "X": os.environ.get("X"),
                      "FROM_DRIVER": os.environ.get("FROM_DRIVER"), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "submitit": sorted(k for k in os.environ if k.startswith("SUBMITIT_"))}))
""")


def test_local_jobs_run_jobs_at_a_time_with_their_environment_folder_and_log(tmp_path, monkeypatch):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("FROM_DRIVER", "yes")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # submitit's controller would set "" (no GPU asked for)
    # a and b each wait for the other to have started: they finish only if both run at once
    jobs = [Job("a", [sys.executable, script, "a", "b", tmp_path], tmp_path / "logs" / "a.txt", env={"X": "1"}),
            Job("b", [sys.executable, script, "b", "a", tmp_path], tmp_path / "logs" / "b.txt", env={"X": "2"}),
            Job("c", [sys.executable, script, "c", "-", tmp_path], tmp_path / "logs" / "c.txt", cwd=work)]
    finished = []
    times = run_jobs(jobs, Launcher(jobs=2), folder=tmp_path / "launcher",
                     on_done=lambda job, t: finished.append((job.name, t)), log=None)
    runs = {job.name: json.loads(job.log.read_text()) for job in jobs}
    assert runs["c"]["start"] >= min(runs["a"]["end"], runs["b"]["end"])  # c waited for a free slot
    assert sorted(name for name, _ in finished) == ["a", "b", "c"] and finished[-1][0] == "c"
    assert set(times) == {"a", "b", "c"} and dict(finished) == times
    for name, run in runs.items():
        assert times[name]["cpu_s"] >= 0.15 and times[name]["wall_s"] >= 0.5 * times[name]["cpu_s"]  # its own CPU
        assert run["FROM_DRIVER"] == "yes" and run["cuda"] == "7" and run["submitit"] == []
    assert (runs["a"]["X"], runs["b"]["X"], runs["c"]["X"]) == ("1", "2", None)
    assert runs["a"]["cwd"] == os.getcwd() and runs["c"]["cwd"] == str(work)
    assert not (tmp_path / "launcher").exists()  # a successful local grid leaves none of submitit's files


@linux_only
def test_a_failed_job_stops_the_grid_with_one_error_naming_it_and_its_log(tmp_path):
    sleeper = [sys.executable, "-c", f"import os, time; open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()));"
                                     f" time.sleep(60)"]
    failing = [sys.executable, "-c", f"import os, sys, time\nwhile not os.path.exists({str(tmp_path / 'pid')!r}): "
                                     f"time.sleep(0.01)\nprint('bad input'); sys.exit(3)"]
    started = []
    start = time.perf_counter()
    with pytest.raises(JobFailedError, match=r"^fail failed with exit status 3; see .*fail.txt:\nbad input\n$"):
        run_jobs([Job("sleep", sleeper, tmp_path / "sleep.txt"), Job("fail", failing, tmp_path / "fail.txt"),
                  Job("never", [sys.executable, "-c", "pass"], tmp_path / "never.txt")],
                 Launcher(jobs=2), folder=tmp_path / "launcher", log=started.append)
    assert time.perf_counter() - start < 30  # the sleeper was stopped, not waited for
    assert started == ["  start sleep", "  start fail"]  # nothing starts after a failure
    pid = int((tmp_path / "pid").read_text())
    wait_for(lambda: not alive(pid), 5, f"the stopped job's process {pid} to end")


def test_the_grid_scripts_report_a_failed_job_as_one_error_with_status_1(tmp_path, capsys):
    parser = cli.ArgumentParser(prog="grid.py")

    def main(args):
        run_jobs([Job("bad", [sys.executable, "-c", "raise SystemExit(4)"], tmp_path / "bad.txt")], Launcher(),
                 folder=tmp_path, log=None)

    with pytest.raises(SystemExit) as info:
        runner.run_cli(parser, main, [])
    assert info.value.code == f"grid.py: error: bad failed with exit status 4; see {tmp_path / 'bad.txt'}:\n"


DRIVER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from focal_calibration.experiments.runner import Job, Launcher, run_jobs
    out = Path(sys.argv[1])
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    run_jobs([Job(f"trainer{i}", [sys.executable, "-c", code, str(out / f"trainer{i}.pid")], out / f"trainer{i}.txt")
              for i in range(2)], Launcher(jobs=2), folder=out / "launcher")
""")


@linux_only
def test_kill_9_of_the_driver_leaves_none_of_its_jobs_running(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        pid_files = [tmp_path / f"trainer{i}.pid" for i in range(2)]
        wait_for(lambda: all(p.exists() and p.read_text() for p in pid_files), 60, "both trainers to start")
        processes = []  # each trainer, and above it submitit's task and controller, up to the driver
        for path in pid_files:
            pid = int(path.read_text())
            while pid != driver.pid:
                processes.append(pid)
                pid = parent(pid)
        assert len(processes) == 6  # trainer -> task -> controller -> driver, twice
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        wait_for(lambda: not any(alive(pid) for pid in processes), 5,
                  f"the processes {processes} of the killed driver to end")
    finally:
        driver.kill()
        driver.wait()


@linux_only
def test_the_guard_runs_a_command_only_while_its_parent_lives(tmp_path):
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w'); raise SystemExit(5)"]
    guard = [sys.executable, "-I", "-S", str(GUARD_SCRIPT)]
    ours = subprocess.run([*guard, "--parent", str(os.getpid()), "--", *command], capture_output=True)
    assert ours.returncode == 5 and marker.exists()  # the command's own status (it replaced the guard)
    marker.unlink()
    # a parent that is not the guard's any more (it died before the guard started): the command never runs
    gone = subprocess.run([*guard, "--parent", str(os.getppid()), "--", *command], capture_output=True)
    assert gone.returncode == 128 + signal.SIGKILL and not marker.exists()
    env = dict(os.environ, PARENT_PID=str(os.getpid()))
    assert subprocess.run([*guard, "--parent-env", "PARENT_PID", "--", *command], env=env).returncode == 5
    usage = subprocess.run([*guard, "--", *command], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: parent_guard.py" in usage.stderr
    missing = subprocess.run([*guard, "--parent", str(os.getpid()), "--", str(tmp_path / "absent")],
                             capture_output=True, text=True)
    assert missing.returncode == 127 and "cannot run" in missing.stderr and "absent" in missing.stderr


def _launcher_parser():
    parser = cli.ArgumentParser(prog="grid.py")
    runner.add_launcher_arguments(parser, jobs_default=3)
    return parser


def test_the_launcher_flags(tmp_path):
    local = runner.launcher_from_args(_launcher_parser().parse_args([]))
    assert local == Launcher(kind="local", jobs=3)
    args = _launcher_parser().parse_args(
        ["--launcher", "slurm", "--jobs", "8", "--launcher-dir", str(tmp_path), "--slurm-partition", "gpu",
         "--slurm-time", "240", "--slurm-gpus-per-node", "1", "--slurm-mem", "32G", "--slurm-account", "proj",
         "--slurm-qos", "high", "--slurm-constraint", "a100", "--slurm-setup", "module load cuda",
         "--slurm-setup", "echo ready"])
    slurm = runner.launcher_from_args(args, cpus_per_task=4)  # the grid's threads per job: the default cpus
    assert slurm.slurm_parameters("study") == {
        "job_name": "study", "time": 240, "array_parallelism": 8, "stderr_to_stdout": True, "partition": "gpu",
        "gpus_per_node": 1, "cpus_per_task": 4, "mem": "32G", "account": "proj", "qos": "high",
        "constraint": "a100", "setup": ["module load cuda", "echo ready"]}
    assert slurm.folder == tmp_path
    explicit = runner.launcher_from_args(_launcher_parser().parse_args(
        ["--launcher", "slurm", "--slurm-time", "5", "--slurm-cpus-per-task", "2"]), cpus_per_task=4)
    assert explicit.cpus_per_task == 2


@pytest.mark.parametrize("argv, message", [
    (["--slurm-partition", "gpu"], "--slurm-partition is an option of --launcher slurm (the launcher is local)"),
    (["--launcher", "slurm"], "--launcher slurm needs --slurm-time (minutes per job"),
    (["--launcher", "slurm", "--slurm-time", "5", "--slurm-mem", "16GB"], "--slurm-mem must be an integer with an "
                                                                           "optional unit K, M, G or T (e.g. 16G), "
                                                                           "got '16GB'"),
    (["--jobs", "0"], "argument --jobs: must be an integer >= 1, got 0"),
    (["--launcher", "pbs"], "argument --launcher: invalid choice: 'pbs'"),
])
def test_bad_launcher_flags_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run_cli(_launcher_parser(), runner.launcher_from_args, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("grid.py: error: ") and message in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------------
# SLURM without a cluster: stub commands that behave as SLURM's do for submitit (sbatch runs the array's tasks one
# after another on this machine, with the variables SLURM sets; srun redirects to the --output file)

SBATCH = """\
import os, pathlib, re, subprocess, sys
state = pathlib.Path(os.environ["FAKE_SLURM"])
if os.environ.get("FAKE_SBATCH_ERROR"):
    sys.exit("sbatch: error: " + os.environ["FAKE_SBATCH_ERROR"])
job_id = 4242 + len(list(state.glob("sbatch-*.sh")))
script = state / f"sbatch-{job_id}.sh"
script.write_text(pathlib.Path(sys.argv[-1]).read_text())
(state / f"sbatch-{job_id}.argv").write_text(" ".join(sys.argv[1:]))
array = re.search(r"^#SBATCH --array=0-([0-9]+)%[0-9]+$", script.read_text(), re.M)
tasks = []
for index in range(int(array.group(1)) + 1 if array else 1):
    env = {"SLURM_JOB_ID": f"{job_id}{index:03d}" if array else str(job_id), "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_JOB_NODELIST": "node1"}
    if array:
        env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(index))
    tasks.append(env)
code = ("import json, os, subprocess, sys\\n"
        "for env in json.loads(sys.argv[2]):\\n"
        "    subprocess.run(['bash', sys.argv[1]], env=dict(os.environ, **env), stdout=subprocess.DEVNULL)\\n")
import json
subprocess.Popen([sys.executable, "-c", code, str(script), json.dumps(tasks)], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job_id}")
"""

SRUN = """\
import os, sys
args, output = sys.argv[1:], None
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        value = args.pop(0)
        output = value if flag == "--output" else output
for key, value in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
    output = output.replace(key, os.environ.get(value, ""))
fd = os.open(output.replace("%t", "0"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
os.dup2(fd, 1)
os.dup2(fd, 2)
os.execvp(args[0], args)
"""

SACCT = 'print("JobID|State|NodeList")\n'  # no state known: submitit waits for the result files
SCANCEL = """\
import os, pathlib, sys
with open(pathlib.Path(os.environ["FAKE_SLURM"]) / "scancel.txt", "a") as handle:
    handle.write(" ".join(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, code in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT), ("scancel", SCANCEL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{code}")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


SLURM = Launcher(kind="slurm", jobs=2, time_min=90, partition="gpu", gpus_per_node=1, cpus_per_task=4, mem="16G",
                 account="proj", qos="high", constraint="a100", setup=("module load cuda",), poll_s=0.2)


def test_slurm_grid_is_one_job_array_with_the_options_asked_for(tmp_path, fake_slurm):
    code = "import os; print('ran', os.environ['X'], os.environ['SLURM_ARRAY_TASK_ID'], os.getcwd())"
    jobs = [Job(f"run{i}", [sys.executable, "-c", code], tmp_path / "runs" / f"run{i}.txt", env={"X": str(i)},
                cwd=tmp_path) for i in range(3)]
    lines, finished = [], []
    times = run_jobs(jobs, SLURM, folder=tmp_path / "launcher", name="regime-study", log=lines.append,
                     on_done=lambda job, t: finished.append(job.name))

    # what submitit gave sbatch: one script for the whole grid
    [script] = fake_slurm.glob("sbatch-*.sh")
    text = script.read_text()
    folder = tmp_path / "launcher"
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --time=90", "#SBATCH --partition=gpu",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
                 "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --job-name=regime-study", "#SBATCH --nodes=1",
                 f"#SBATCH --output={folder}/%A_%a/%A_%a_0_log.out"):
        assert line in text.splitlines(), line
    assert "#SBATCH --error" not in text  # stderr goes to the same log
    assert text.index("module load cuda") < text.index("\nsrun ")
    assert text.rstrip().endswith(f"srun --unbuffered --output {folder}/%A_%a/%A_%a_%t_log.out "
                                  f"{sys.executable} -u -m submitit.core._submit {folder}/%j")

    # the jobs came back: each ran its own command as array task i, with its environment and folder
    assert lines[0] == f"  submitted 3 jobs to SLURM (job array 4242, 2 at a time); logs under {folder}"
    assert set(times) == set(finished) == {"run0", "run1", "run2"}
    for i, job in enumerate(jobs):
        assert job.log.read_text() == f"ran {i} {i} {tmp_path}\n"

    # each pickled job holds its command as plain data; unpickling it imports neither torch nor this package
    inspect = ("import json, pickle, sys\n"
               "delayed = pickle.load(open(sys.argv[1], 'rb'))\n"
               "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'focal_calibration'))\n"
               "print(json.dumps({'function': delayed.function.__name__, 'spec': delayed.args[0], 'heavy': heavy}))")
    pickled = subprocess.run([sys.executable, "-c", inspect, str(folder / "4242_1" / "4242_1_submitted.pkl")],
                             capture_output=True, text=True, check=True)
    submitted = json.loads(pickled.stdout)
    assert submitted["function"] == "_run_command" and submitted["heavy"] == []
    assert submitted["spec"]["command"] == list(jobs[1].command) and submitted["spec"]["env"] == {"X": "1"}
    assert not (fake_slurm / "scancel.txt").exists()


def test_sbatch_refusing_the_array_is_one_clear_error(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "invalid partition specified: gpu")
    with pytest.raises(runner.SubmissionError, match="sbatch refused the grid's job array: .*invalid partition "
                                                     "specified: gpu"):
        run_jobs([Job("run", [sys.executable, "-c", "pass"], tmp_path / "run.txt")], SLURM, folder=tmp_path)


def test_slurm_launcher_without_slurm_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    with pytest.raises(runner.SubmissionError, match="--launcher slurm needs SLURM on this machine"):
        run_jobs([Job("run", [sys.executable, "-c", "pass"], tmp_path / "run.txt")], SLURM, folder=tmp_path)
