"""Command-line pieces shared by the benchmark scripts."""

import time

import torch


def add_device_and_threads(parser):
    """--device and --threads, the two knobs every benchmark takes."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's default; 1 gives load-independent "
                             "numbers on a shared machine, where every multi-threaded op waits for busy cores)")
    return parser


def apply_threads(args):
    if args.threads:
        torch.set_num_threads(args.threads)


def timed(fn, device):
    """(wall, CPU of all threads) seconds of one call of ``fn``, synchronising CUDA around it."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def high_water_rss():
    """This process's peak resident memory in bytes (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
