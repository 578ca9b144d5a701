"""Command-line pieces shared by the benchmark scripts."""

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
