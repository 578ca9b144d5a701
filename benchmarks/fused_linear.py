"""Focal loss from the features (linear_focal_loss) vs the materialised logits: time and peak-memory ratios, the
chunk-size trade-off, and (--fairseq) a training step of the NMT demo's model with and without --fused-linear.

    python benchmarks/fused_linear.py [--shape 8192x1024x32000] [--runs 3] [--threads 2] [--chunk-rows 64,...]
                                      [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--json OUT.json]
    python benchmarks/fused_linear.py --fairseq [--threads 2] [--runs 5]

Features h [N × d] and an output projection W [V × d] (both leaves that need a gradient), targets y [N]. Every
variant runs forward + backward; the baseline is F.cross_entropy(h @ W.T, y), and "focal_loss(h @ W.T)" is our focal
loss on materialised logits. Time: the variants take turns in each of --runs rounds, in a fresh random order every
round; a round's ratios are taken against the baseline of the same round, and the table gives their mean ± std.
--clock cpu (the default on the CPU) counts the process's CPU time, which a machine shared with other jobs disturbs
far less than wall time; on CUDA, synchronised wall time. Peak memory: on CPU each variant runs in a fresh subprocess,
the resident high-water mark (VmHWM) after one forward+backward minus the mark once the inputs exist; on CUDA
torch.cuda.max_memory_allocated() minus the memory the inputs hold. The gradients of h and W are part of every
variant's peak.

The issue's goals (issue 18) at [8192 × 1024] × [32000 × 1024]: linear_focal_loss (γ = 3, default chunks) takes
<= 0.25x the extra peak memory and <= 1.1x the time of F.cross_entropy(h @ W.T); printed as "goal ..." lines.

--fairseq: the focal_loss criterion on a Transformer with the NMT demo's model (fairseq_focal/demo.py's Config:
2+2 layers, embedding 128, FFN 512, 4 heads, dropout 0.1, pre-norm, shared embeddings, 4096 tokens per batch; --dim,
--layers, --max-tokens override them) and a joined dictionary of about --vocab symbols (fairseq_focal/toy_corpus.py),
one batch; a training step is forward + backward + an Adam step. Updates/s (interleaved rounds, as above) and the
step's extra peak memory (a fresh subprocess per variant), with and without --fused-linear, for the demo's three
models (CE, FL γ=1, LS α=0.1).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from common import add_device_and_threads, apply_threads, high_water_rss
from focal_calibration import constants, focal_loss, linear_focal_loss, parse_gamma_policy
from focal_calibration.files import write_json_atomic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE = "F.cross_entropy(h @ W.T)"
OURS = "linear_focal_loss γ=3"
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
GOALS = ((OURS, "seconds", 1.1), (OURS, "peak_bytes", 0.25))  # issue 18


def chunk_name(rows, classes=None):
    return f"linear γ=3, {rows} rows" + (f" × {classes} classes" if classes else "") + " per chunk"


def variants(chunk_rows, vocab):
    flsd = parse_gamma_policy("flsd-53")
    out = {
        BASE: lambda h, w, y: F.cross_entropy(h @ w.T, y),
        "focal_loss(h @ W.T) γ=3": lambda h, w, y: focal_loss(h @ w.T, y, gamma=3.0),
        OURS: lambda h, w, y: linear_focal_loss(h, w, y, gamma=3.0),
        "linear_focal_loss FLSD-53": lambda h, w, y: linear_focal_loss(h, w, y, gamma=flsd),
        "linear_focal_loss γ=3, recompute=True": lambda h, w, y: linear_focal_loss(h, w, y, gamma=3.0,
                                                                                  recompute=True),
    }
    for rows in chunk_rows:
        out[chunk_name(rows)] = lambda h, w, y, rows=rows: linear_focal_loss(h, w, y, gamma=3.0, chunk_rows=rows)
    if chunk_rows:  # the vocabulary in 4 blocks: each block's logits computed twice
        rows, classes = 256, -(-vocab // 4)
        out[chunk_name(rows, classes)] = lambda h, w, y: linear_focal_loss(h, w, y, gamma=3.0, chunk_rows=rows,
                                                                           chunk_classes=classes)
    return out


def parse_shape(text):
    try:
        rows, dim, vocab = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --shape wants ROWSxDIMxVOCAB, got {text!r}") from None
    if min(rows, dim, vocab) < 1:
        raise SystemExit(f"error: --shape needs positive sizes, got {text!r}")
    return rows, dim, vocab


def make_inputs(rows, dim, vocab, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.empty(rows, dim).normal_(generator=gen)
    weight = torch.empty(vocab, dim).normal_(generator=gen).mul_(3.0 / dim ** 0.5)  # logits of std 3
    target = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    return (hidden.to(device=device, dtype=dtype).requires_grad_(), weight.to(device=device, dtype=dtype)
            .requires_grad_(), target)


def step(fn, hidden, weight, target):
    hidden.grad = weight.grad = None
    fn(hidden, weight, target).backward()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_rounds(fns, inputs, device, rounds, clock):
    """Seconds of each variant in each round (a list of dicts); the variants in a fresh random order per round."""
    now = CLOCKS[clock]
    hidden, weight, target = inputs
    small = make_inputs(min(256, hidden.shape[0]), hidden.shape[1], weight.shape[0], device, hidden.dtype)
    for fn in fns.values():  # warm-up (thread pool, CUDA kernels) on 256 rows: a full step can take half a minute
        step(fn, *small)
    del small
    order = random.Random(0)
    results = []
    for _ in range(rounds):
        seconds = {}
        for name in order.sample(list(fns), len(fns)):
            sync(device)
            start = now()
            step(fns[name], *inputs)
            sync(device)
            seconds[name] = now() - start
        results.append(seconds)
        print("  round: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()), flush=True)
    return results


def peak_here(fn, shape, device, dtype):
    inputs = make_inputs(*shape, device, dtype)
    if device == "cuda":
        step(fn, *inputs)  # its workspace and kernels first
        inputs[0].grad = inputs[1].grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, *inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = high_water_rss()
    step(fn, *inputs)
    return high_water_rss() - base


def peaks(names, args, fns):
    if args.device == "cuda":
        return {name: peak_here(fns[name], args.shape_tuple, "cuda", DTYPES[args.dtype]) for name in names}
    out = {}
    for name in names:  # CPU: a fresh process per variant, so one variant's high-water mark is not another's
        cmd = [sys.executable, __file__, "--shape", args.shape, "--dtype", args.dtype, "--chunk-rows",
               args.chunk_rows, "--memory-variant", name]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  peak {name}: {out[name] / 2**20:.0f} MiB", flush=True)
    return out


def ratio_text(values):
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{spread}×"


def tables(result):
    rounds, peak = result["seconds_per_round"], result["peak_bytes"]
    names = result["names"]
    base_peak = peak.get(BASE)
    lines = ["| variant | time (s) | × F.cross_entropy | × focal_loss(h @ W.T) | extra peak (MiB) | "
             "peak × F.cross_entropy |", "|---|---|---|---|---|---|"]
    chunk_lines = ["| rows × classes per chunk | one chunk's logits (MiB) | time (s) | × F.cross_entropy | "
                   "extra peak (MiB) | peak × F.cross_entropy |", "|---|---|---|---|---|---|"]
    for name in names:
        seconds = statistics.fmean(r[name] for r in rounds)
        to_ce = ratio_text([r[name] / r[BASE] for r in rounds])
        to_focal = ratio_text([r[name] / r["focal_loss(h @ W.T) γ=3"] for r in rounds])
        memory = f"{peak[name] / 2**20:.0f} | {peak[name] / base_peak:.2f}×" if name in peak else "— | —"
        if name in result["chunks"]:
            rows, classes = result["chunks"][name]
            chunk_mib = rows * classes * 4 / 2**20
            chunk_lines.append(f"| {rows} × {classes} | {chunk_mib:.1f} | {seconds:.2f} | {to_ce} | {memory} |")
        else:
            lines.append(f"| {name} | {seconds:.2f} | {to_ce} | {to_focal} | {memory} |")
    return "\n".join(lines), "\n".join(chunk_lines)


def verdicts(result):
    lines = []
    for name, kind, bound in GOALS:
        if kind == "seconds":
            ratios = [r[name] / r[BASE] for r in result["seconds_per_round"]]
        elif name in result["peak_bytes"]:
            ratios = [result["peak_bytes"][name] / result["peak_bytes"][BASE]]
        else:
            continue
        mean = statistics.fmean(ratios)
        what = "time" if kind == "seconds" else "extra peak memory"
        lines.append(f"goal [{result['shape']}] {name} {what} <= {bound}x {BASE}: "
                     f"{'MET' if mean <= bound else 'MISSED'} ({mean:.2f}x, max over rounds {max(ratios):.2f}x)")
    return lines


def report(result):
    main_table, chunk_table = tables(result)
    print(f"\n[{result['shape']}] {result['header']}\n")
    print(main_table)
    if result["chunks"]:
        print(f"\nChunk-size trade-off (γ = 3; the default is {result['default_rows']} rows of every class, "
              f"LINEAR_CHUNK_ELEMENTS = 2^{result['chunk_elements_log2']}):\n")
        print(chunk_table)
    print()
    print("\n".join(verdicts(result)))


def run_linear(args):
    rows, dim, vocab = args.shape_tuple
    chunk_rows = [int(v) for v in args.chunk_rows.split(",") if v.strip()]
    fns = variants(chunk_rows, vocab)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"forward+backward, {args.dtype}, {device}, torch {torch.__version__}, {args.clock} time, "
              f"{args.runs} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    inputs = make_inputs(rows, dim, vocab, args.device, DTYPES[args.dtype])
    rounds = time_rounds(fns, inputs, args.device, args.runs, args.clock)
    del inputs
    from focal_calibration.losses.linear import chunk_plan  # the plan the defaults take, for the table
    chunks = {name: chunk_plan(rows, vocab, r, None) for name, r in
              ((chunk_name(r), r) for r in chunk_rows)}
    if chunk_rows:
        chunks[chunk_name(256, -(-vocab // 4))] = (256, -(-vocab // 4))
    default_rows = chunk_plan(rows, vocab, None, None)[0]
    result = {"shape": f"{rows}x{dim}x{vocab}", "header": header, "names": list(fns), "seconds_per_round": rounds,
              "chunks": chunks,
              "peak_bytes": peaks(list(fns), args, fns), "default_rows": default_rows,
              "chunk_elements_log2": constants.LINEAR_CHUNK_ELEMENTS.bit_length() - 1}
    report(result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# --fairseq: a training step of the NMT demo's model

FAIRSEQ_MODELS = {"CE": dict(gamma=0.0), "FL γ=1": dict(gamma=1.0), "LS α=0.1": dict(gamma=0.0, label_smoothing=0.1)}


def fairseq_setup(args):
    """(task, model, batch) of the NMT demo's model configuration on a toy corpus with about --vocab symbols."""
    import tempfile

    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_focal  # noqa: F401  (registers the criterion)
    from fairseq_focal.toy_corpus import write_corpus

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_corpus(tmp, n_words=args.vocab // 2, sizes=(("train", 3000),), min_len=10, max_len=30)
        parser = options.get_training_parser()
        cli = [str(data), "--arch", "transformer", "--share-all-embeddings", "--encoder-normalize-before",
               "--decoder-normalize-before", "--dropout", str(args.dropout)]
        for side in ("encoder", "decoder"):
            cli += [f"--{side}-layers", str(args.layers), f"--{side}-embed-dim", str(args.dim),
                    f"--{side}-ffn-embed-dim", str(args.ffn), f"--{side}-attention-heads", str(args.heads)]
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, cli))
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
        task.load_dataset("train")
        batch = next(iter(task.get_batch_iterator(task.dataset("train"), max_tokens=args.max_tokens)
                          .next_epoch_itr(shuffle=False)))
    model.train()
    return task, model, batch


def fairseq_steps(task, model):
    from fairseq_focal.criterions.focal_loss import FocalLossCriterion

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    out = {}
    for name, options in FAIRSEQ_MODELS.items():
        for fused in (False, True):
            criterion = FocalLossCriterion(task, False, fused_linear=fused, **options)

            def train_step(batch, criterion=criterion):
                optimizer.zero_grad(set_to_none=True)
                loss, _, _ = criterion(model, batch)
                loss.backward()
                optimizer.step()

            out[f"{name}{', --fused-linear' if fused else ''}"] = train_step
    return out


def demo_model(args):
    """The NMT demo's model dimensions (fairseq_focal/demo.py's Config), where the command line gives none."""
    from fairseq_focal.demo import Config

    demo = Config(train_pairs=None, train_eval_pairs=None)
    args.ffn = demo.ffn_dim if args.dim is None else 4 * args.dim
    args.dim = demo.embed_dim if args.dim is None else args.dim
    args.layers = demo.layers if args.layers is None else args.layers
    args.max_tokens = demo.max_tokens if args.max_tokens is None else args.max_tokens
    args.heads, args.dropout = demo.heads, demo.dropout


def run_fairseq(args):
    demo_model(args)
    task, model, batch = fairseq_setup(args)
    steps = fairseq_steps(task, model)
    if args.memory_variant:
        base = high_water_rss()
        steps[args.memory_variant](batch)
        print(json.dumps(high_water_rss() - base))
        return None
    tokens = int(batch["ntokens"])
    header = (f"training step (forward + backward + Adam), vocabulary {len(task.target_dictionary)}, d={args.dim}, "
              f"FFN {args.ffn}, {args.layers}+{args.layers} layers, {tokens} target tokens, CPU, "
              f"{torch.get_num_threads()} threads, {args.clock} time, {args.runs} interleaved rounds, "
              f"load average {os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    now = CLOCKS[args.clock]
    for fn in steps.values():
        fn(batch)
    order = random.Random(0)
    rounds = []
    for _ in range(args.runs):
        seconds = {}
        for name in order.sample(list(steps), len(steps)):
            start = now()
            steps[name](batch)
            seconds[name] = now() - start
        rounds.append(seconds)
    peak = {}
    for name in steps:
        cmd = [sys.executable, __file__, "--fairseq", "--memory-variant", name, "--vocab", str(args.vocab), "--dim",
               str(args.dim), "--layers", str(args.layers), "--max-tokens", str(args.max_tokens)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        peak[name] = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n{header}\n")
    print("| criterion | updates/s | × materialised | step's extra peak (MiB) | × materialised |")
    print("|---|---|---|---|---|")
    for name in steps:
        base = name.replace(", --fused-linear", "")
        rate = 1 / statistics.fmean(r[name] for r in rounds)
        speed = ratio_text([r[base] / r[name] for r in rounds])
        print(f"| {name} | {rate:.2f} | {speed} | {peak[name] / 2**20:.0f} | {peak[name] / peak[base]:.2f}× |")
    return {"header": header, "seconds_per_round": rounds, "peak_bytes": peak}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_and_threads(parser)
    parser.add_argument("--shape", default="8192x1024x32000", help="ROWSxDIMxVOCAB (default %(default)s)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--chunk-rows", default="64,128,256,512,1024,2048",
                        help="rows per chunk of the trade-off table, comma-separated ('' to skip it)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default=None,
                        help="what a round's time counts (default: cpu on the CPU, wall on CUDA)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--report", default=None, metavar="JSON", help="print the tables of a --json file")
    parser.add_argument("--fairseq", action="store_true", help="the NMT demo's training step instead")
    parser.add_argument("--vocab", type=int, default=4000, help="--fairseq: dictionary size (the demo's 4000)")
    parser.add_argument("--dim", type=int, default=None, help="--fairseq: model dimension, FFN 4x (default: the "
                        "demo's 128, FFN 512)")
    parser.add_argument("--layers", type=int, default=None, help="--fairseq: encoder and decoder layers (the demo's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="--fairseq: tokens per batch (the demo's)")
    parser.add_argument("--memory-variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if args.runs < 1:
        raise SystemExit(f"error: --runs must be >= 1, got {args.runs}")
    apply_threads(args)
    if args.clock is None:
        args.clock = "wall" if args.device == "cuda" else "cpu"
    if args.report:
        report(json.loads(open(args.report, encoding="utf-8").read())["result"])
        return
    if args.fairseq:
        result = run_fairseq(args)
    else:
        args.shape_tuple = parse_shape(args.shape)
        if args.memory_variant:
            fns = variants([int(v) for v in args.chunk_rows.split(",") if v.strip()], args.shape_tuple[2])
            print(json.dumps(peak_here(fns[args.memory_variant], args.shape_tuple, "cpu", DTYPES[args.dtype])))
            return
        result = run_linear(args)
    if args.json and result is not None:
        write_json_atomic(args.json, {"device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
                                      "clock": args.clock, "fairseq": args.fairseq, "result": result})


if __name__ == "__main__":
    main()
