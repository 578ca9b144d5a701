"""What the grid runner (focal_calibration.experiments.runner, on submitit's local executor) costs per job, against a
plain process pool -- the scheduler the grids had before (``subprocess.Popen`` of each command, ``--jobs`` at a time,
polled) -- on the same jobs, interleaved, in this process.

    python benchmarks/grid_runner.py [--jobs-in-grid 8] [--parallel 2] [--repeats 3] [--job-cpu 0.2]

Each job burns ``--job-cpu`` seconds of CPU in a fresh Python. Reported: wall time per job and CPU time per job of
everything the grid started (``RUSAGE_CHILDREN``: the commands, and for the runner submitit's controller and task
processes and the parent guards), medians over the repeats, and the runner's excess over the pool. The excess is
fixed per job (process start-ups), so it matters for tiny jobs only: a training takes minutes.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from focal_calibration.experiments.runner import Job, Launcher, run_jobs

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {cpu}: pass\n"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_pool(jobs: list[Job], parallel: int) -> None:
    """The grids' former scheduler: Popen each command, ``parallel`` at a time, poll every 0.2 s."""
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            handle = open(job.log, "a")
            running.append((subprocess.Popen(job.command, stdout=handle, stderr=subprocess.STDOUT), handle))
        time.sleep(0.2)
        for item in [r for r in running if r[0].poll() is not None]:
            running.remove(item)
            item[1].close()
            if item[0].returncode != 0:
                raise RuntimeError(f"a job failed with exit status {item[0].returncode}")


def measure(kind: str, folder: Path, n: int, parallel: int, cpu: float) -> tuple[float, float]:
    jobs = [Job(f"job{i}", [sys.executable, "-c", BURN.format(cpu=cpu)], folder / f"job{i}.txt") for i in range(n)]
    cpu_before, start = children_cpu(), time.perf_counter()
    if kind == "pool":
        process_pool(jobs, parallel)
    else:
        run_jobs(jobs, Launcher(jobs=parallel), folder=folder / "launcher", log=None)
    return (time.perf_counter() - start) / n, (children_cpu() - cpu_before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-in-grid", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job-cpu", type=float, default=0.2, help="CPU seconds each job burns")
    args = parser.parse_args()
    results = {"pool": [], "runner": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for kind in ("pool", "runner") if repeat % 2 == 0 else ("runner", "pool"):
                results[kind].append(measure(kind, Path(tmp) / f"{kind}{repeat}", args.jobs_in_grid, args.parallel,
                                             args.job_cpu))
    print(f"{args.jobs_in_grid} jobs of {args.job_cpu:g} s CPU, {args.parallel} at a time, median of {args.repeats}")
    print("| scheduler | wall s / job | CPU s / job (all processes) |\n|---|---:|---:|")
    medians = {kind: (statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows))
               for kind, rows in results.items()}
    for kind, (wall, cpu) in medians.items():
        print(f"| {kind} | {wall:.2f} | {cpu:.2f} |")
    wall = medians["runner"][0] - medians["pool"][0]
    cpu = medians["runner"][1] - medians["pool"][1]
    print(f"runner excess per job: {wall:+.2f} s wall, {cpu:+.2f} s CPU "
          f"(ratio runner / pool: wall {medians['runner'][0] / medians['pool'][0]:.2f}, "
          f"CPU {medians['runner'][1] / medians['pool'][1]:.2f})")


if __name__ == "__main__":
    main()
