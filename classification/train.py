"""Train an image classifier with a calibration loss (Mukhoti et al., NeurIPS 2020, §5.1 and Appendix D).

    python classification/train.py --dataset cifar10 --model resnet50 --loss flsd-53 --data-dir data
    torchrun --nproc_per_node 4 classification/train.py --dataset cifar100 --model densenet121 --loss ce --amp bf16
    python classification/train.py --dataset fashion-mnist --model small_cnn --loss flsd-53 --epochs 8

Recipes (Appendix D; every value can be overridden on the command line):
  CIFAR-10/100: SGD momentum 0.9, weight decay 5e-4, lr 0.1 -> 0.01 at epoch 150 -> 0.001 at 250, 350 epochs,
                batch 128, random crop (pad 4) + flip, seeded 45,000 / 5,000 / 10,000 split.
  Tiny-ImageNet: the same but 100 epochs, lr drops at 40 and 60, batch 64, 50 images per class held out.
  Fashion-MNIST (not in the paper; the CPU demo): 30 epochs, drops at 15 and 25, batch 128, 55,000 / 5,000 / 10,000.

Outputs in --output-dir (default results/image/<dataset>-<model>-<loss>-seed<seed>-<hash>, one folder per run):
args.json, checkpoint.pt (every epoch, atomic), log.jsonl (one line per epoch: the §3 dynamics), results.json +
reliability_{pre,post}.png + logits.pt (pre / post temperature scaling, T by validation ECE). `python -m
classification.train` is the same command; the flags shared with the text trainer come from focal_calibration.cli.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from classification.names import AMP_NAMES, DATASET_NAMES, MODEL_NAMES
from focal_calibration.experiments import cli

# torch, torchvision and the training modules are imported by the functions that use them (after the arguments are
# parsed): --help and argument errors answer at once instead of after seconds of imports.

SUITE = "image"

# Appendix D, per dataset. Keys are argparse dests; None in the parser means "take it from here".
RECIPES = {
    "cifar10": dict(model="resnet50", epochs=350, lr_milestones=[150, 250], batch_size=128),
    "cifar100": dict(model="resnet50", epochs=350, lr_milestones=[150, 250], batch_size=128),
    "tiny-imagenet": dict(model="resnet50_tiny", epochs=100, lr_milestones=[40, 60], batch_size=64),
    "fashion-mnist": dict(model="small_cnn", epochs=30, lr_milestones=[15, 25], batch_size=128),
    "imagefolder": dict(model="resnet50", epochs=100, lr_milestones=[40, 60], batch_size=64),
}

# Every option of the parser defines the run (a resume with another value is refused), except these: how long,
# where and how fast it runs, what it prints. The world size is derived, and defines the run too.
RESUME_ALLOWED = cli.RESUME_ALLOWED | {"download", "eval_batch_size", "save_every"}
RESUME_EXTRA = ("world_size",)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, add_help=add_help)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASET_NAMES)}")
    data.add_argument("--download", action="store_true", help="let torchvision download CIFAR / Fashion-MNIST")
    data.add_argument("--val-size", type=int, default=None,
                      help="validation images held out of train (per class for Tiny-ImageNet); default 5000 / 50")
    data.add_argument("--image-size", type=int, default=64, help="ImageFolder images are resized to this")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                      help="random crop (zero padding --crop-padding) + horizontal flip, as Appendix D")
    data.add_argument("--crop-padding", type=int, default=4)
    data.add_argument("--workers", type=int, default=4, help="DataLoader workers (on-disk datasets only)")

    model = parser.add_argument_group("model and loss")
    model.add_argument("--model", default=None, help=f"one of {', '.join(MODEL_NAMES)} (default per dataset)")
    model.add_argument("--loss", default="ce", help="a focal_calibration.build_loss spec: ce, ls-0.05, brier, "
                       "mmce-2, fl-1/2/3, flsc-531/532, flsd-53/532, flsd-prop2-0.2-0.25, ...")
    model.add_argument("--loss-reduction", choices=("mean", "sum"), default="mean",
                       help="'sum' is the released code's choice (Brier keeps its per-batch mean there)")
    model.add_argument("--mmce-variant", choices=("kumar", "official"), default="kumar")
    model.add_argument("--gamma-milestones", type=int, nargs="+", default=None,
                       help="FLSc epoch milestones (default: 100/350 and 250/350 of --epochs, Appendix E)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=None)
    optim.add_argument("--batch-size", type=int, default=None, help="per process (torchvision convention)")
    optim.add_argument("--lr", type=float, default=0.1)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--nesterov", action="store_true")
    optim.add_argument("--weight-decay", type=float, default=5e-4)
    optim.add_argument("--lr-milestones", type=int, nargs="+", default=None, help="epochs where lr *= --lr-gamma")
    optim.add_argument("--lr-gamma", type=float, default=0.1)
    optim.add_argument("--lr-step-at", choices=("epoch-end", "epoch-start"), default="epoch-end",
                       help="'epoch-start' is the released code's scheduler.step() before each epoch, which drops "
                            "the lr one epoch earlier than the milestones say")
    optim.add_argument("--clip-grad-norm", type=float, default=None, help="the released code clips at 2")
    optim.add_argument("--official-code", action="store_true",
                       help="shorthand for --loss-reduction sum --clip-grad-norm 2 --lr-step-at epoch-start")

    run = cli.add_run_arguments(parser, data_help="folder with the standard files (default: ./data, or "
                                "/usr/share/datasets/fashion-mnist for Fashion-MNIST)")
    run.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    run.add_argument("--amp", choices=AMP_NAMES, default="none", help="autocast dtype (bf16 / fp16 on CUDA)")
    run.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convs on CUDA)")
    run.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    run.add_argument("--eval-batch-size", type=int, default=512)
    run.add_argument("--n-bins", type=int, default=15)
    cli.add_matrix_scaling_argument(run)
    run.add_argument("--eval-every", type=int, default=1, help="test-set dynamics every N epochs (0: never)")
    run.add_argument("--save-every", type=int, default=1,
                     help="epochs between checkpoints (the last epoch is always saved; a resumed run replays the "
                          "epochs after its checkpoint exactly)")
    run.add_argument("--grad-norm-epochs", type=int, nargs="*", default=[],
                     help="1-based epochs at which to save last-layer gradient norms over the training set "
                          "(Fig. 4b-d uses 10 100 200)")
    run.add_argument("--print-freq", type=int, default=100, help="steps between log lines without a terminal")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill per-dataset defaults, apply --official-code, choose the run folder, and reject bad values with a message
    naming them."""
    from focal_calibration.losses import MMCELoss, build_loss

    if args.dataset not in RECIPES:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
    for key, value in RECIPES[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model not in MODEL_NAMES:
        raise ValueError(f"unknown model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if args.official_code:
        args.loss_reduction, args.clip_grad_norm, args.lr_step_at = "sum", 2.0, "epoch-start"
    for name in ("epochs", "batch_size", "eval_batch_size", "n_bins", "print_freq", "save_every"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("limit_train", "limit_eval", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0 or args.crop_padding < 0 or args.eval_every < 0:
        raise ValueError(f"--workers, --crop-padding and --eval-every must be >= 0, got {args.workers}, "
                         f"{args.crop_padding}, {args.eval_every}")
    for name in ("lr", "weight_decay", "momentum"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.clip_grad_norm is not None and not args.clip_grad_norm > 0:
        raise ValueError(f"--clip-grad-norm must be > 0, got {args.clip_grad_norm}")
    if list(args.lr_milestones) != sorted(set(args.lr_milestones)) or min(args.lr_milestones, default=1) < 1:
        raise ValueError(f"--lr-milestones must be strictly increasing epochs >= 1, got {args.lr_milestones}")
    cli.check_device(args.device)  # an unknown or absent device: one line now, not a traceback later
    criterion = build_loss(args.loss, **_loss_options(args))  # unknown / malformed spec -> ValueError now
    if args.grad_norm_epochs and isinstance(criterion, MMCELoss):
        raise ValueError(f"--grad-norm-epochs cannot be used with --loss {args.loss}: MMCE is a batch-level term "
                         f"that couples the samples of a batch, so its gradient has no per-sample norms")
    if args.output_dir is None:
        keys = cli.run_defining_keys(get_args_parser(), RESUME_ALLOWED)
        args.output_dir = str(cli.default_output_dir(SUITE, f"{args.dataset}-{args.model}-{args.loss}-seed{args.seed}",
                                                     args, keys))
    return args


def _loss_options(args, *, per_sample_sum: bool = False) -> dict:
    """``build_loss`` options of the training criterion, or (``per_sample_sum``) of the summed criterion whose
    gradient's row i is the gradient of sample i's own loss (the Fig. 4 gradient norms)."""
    reduction = "sum" if per_sample_sum else args.loss_reduction
    if args.official_code and not per_sample_sum and args.loss.strip().lower() == "brier" and reduction == "sum":
        reduction = "mean"  # the released code averages the Brier score over the batch even when it sums CE
    options = dict(reduction=reduction, mmce_variant=args.mmce_variant, epochs=args.epochs)
    if args.gamma_milestones is not None:
        options["milestones"] = tuple(args.gamma_milestones)
    return options


class Progress:
    """tqdm on a terminal, a plain line every ``print_freq`` steps otherwise; silent on ranks > 0."""

    def __init__(self, enabled: bool, use_tqdm: bool, total: int, desc: str, print_freq: int):
        self.enabled, self.total, self.desc, self.print_freq = enabled, total, desc, print_freq
        self.bar = None
        if enabled and use_tqdm:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def step(self, step: int, loss, lr: float):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % 20 == 0:
                self.bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:g}")  # host sync only when shown
        elif step % self.print_freq == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total} loss {float(loss.detach()):.4f} lr {lr:g}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _lr_scheduler(optimizer, args):
    """The lr schedule of a run: x ``--lr-gamma`` after each milestone (one epoch earlier with
    ``--lr-step-at epoch-start``, as the released code)."""
    import torch

    shift = 1 if args.lr_step_at == "epoch-start" else 0
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[max(m - shift, 1) for m in args.lr_milestones], gamma=args.lr_gamma)


def schedule(args: argparse.Namespace, epochs: int) -> list[dict]:
    """γ and lr of each of the first ``epochs`` epochs of the run ``args`` describes, from the training code's own
    loss and lr scheduler (what :func:`focal_calibration.experiments.cli.check_extension` compares)."""
    import torch

    from focal_calibration.losses import build_loss

    criterion = build_loss(args.loss, **_loss_options(args))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    scheduler = _lr_scheduler(optimizer, args)
    entries = []
    for epoch in range(epochs):
        criterion.set_epoch(epoch)
        entries.append({"gamma": getattr(getattr(criterion, "policy", None), "gamma", None),
                        "lr": optimizer.param_groups[0]["lr"]})
        optimizer.step()
        scheduler.step()
    return entries


def main(args: argparse.Namespace) -> dict | None:
    import torch

    from classification.datasets import load_dataset
    from classification.engine import collect_logits, format_summary, setup_distributed, write_final_report
    from classification.models import build_model
    from classification.batches import Normalize, epoch_generator, train_order
    from classification.dynamics import test_statistics
    from focal_calibration.experiments.checkpoint import capture_rng_state, restore_rng_state
    from focal_calibration.losses import build_loss

    args = resolve_args(args)
    ctx = setup_distributed(args.device)
    args.world_size = ctx.world_size
    folder = cli.RunFolder(args.output_dir)
    state = cli.load_resume_state(folder, args, get_args_parser(), suite=SUITE, allowed=RESUME_ALLOWED,
                                  extra=RESUME_EXTRA, schedule=schedule,
                                  owner=ctx.is_main)  # None: a fresh run; rank 0 owns the folder from now on
    device = ctx.device
    if args.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device, got {device}; use --amp bf16 or none")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = args.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cli.seed_everything(args.seed)
    cli.set_threads(args.threads)
    show = ctx.is_main

    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download and ctx.is_main,
                        val_size=args.val_size, split_seed=args.split_seed, image_size=args.image_size)
    train_split = data.train if args.limit_train is None else data.train.subset(
        torch.arange(min(args.limit_train, len(data.train))))
    normalize = Normalize(data.mean, data.std, device, channels_last=args.channels_last)

    model = build_model(args.model, data.num_classes, data.in_channels, data.image_size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.enabled and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    criterion = build_loss(args.loss, **_loss_options(args))
    criterion_sum = build_loss(args.loss, **_loss_options(args, per_sample_sum=True))  # Fig. 4 gradient norms
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    scheduler = _lr_scheduler(optimizer, args)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None

    start_epoch, log = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for loss in (criterion, criterion_sum):  # adaptive losses' state (AdaFocal's γ per bin)
            loss.load_state_dict(state.get("criterion", {}))
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        start_epoch, log = state["epoch"] + 1, list(state["log"])
        if ctx.is_main:
            print(f"resumed from {args.resume} after epoch {start_epoch} of {args.epochs}", flush=True)
    if ctx.is_main:
        folder.restore_log(log)  # the checkpoint's epochs exactly (a fresh run: an empty log)
        folder.write_args(args)
        n_val, n_test = (len(split) if args.limit_eval is None else min(args.limit_eval, len(split))
                         for split in (data.val, data.test))
        print(f"{args.dataset}: {len(train_split)} train / {n_val} val / {n_test} test images, "
              f"{data.num_classes} classes | {args.model} "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) | loss {args.loss} "
              f"({args.loss_reduction}) | {ctx.world_size} x {device} | amp {args.amp}", flush=True)

    use_tqdm = args.progress if args.progress is not None else sys.stderr.isatty()
    grad_norm_paths = {}
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        criterion.set_epoch(epoch)
        criterion_sum.set_epoch(epoch)
        net.train()
        rows = train_order(len(train_split), args.seed, epoch, ctx.rank, ctx.world_size)
        steps = (len(rows) + args.batch_size - 1) // args.batch_size
        generator = epoch_generator(args.seed, epoch, ctx.rank, device=device)
        progress = Progress(show, use_tqdm, steps, f"epoch {epoch + 1}/{args.epochs}", args.print_freq)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, stats = train_one_epoch(net, model, criterion, optimizer, scaler, train_split, rows, normalize,
                                          generator, args, device, progress)
        progress.close()
        scheduler.step()
        stats.all_reduce()
        if ctx.enabled:  # mean over ranks of each rank's mean batch loss
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= ctx.world_size
        record = {"epoch": epoch + 1, "lr": lr, "gamma": getattr(getattr(criterion, "policy", None), "gamma", None)}
        record["train_loss"] = float(loss_sum) / steps
        record.update(stats.compute())
        record["last_layer_weight_norm"] = float(model.fc.weight.detach().float().norm())
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            test_logits, test_labels = collect_logits(net, data.test, normalize, ctx, batch_size=args.eval_batch_size,
                                                      amp=args.amp, num_workers=args.workers, limit=args.limit_eval)
            record.update(test_statistics(test_logits, test_labels, n_bins=args.n_bins))
        if epoch + 1 in args.grad_norm_epochs:
            path = _save_gradient_norms(net, model, train_split, normalize, criterion_sum, ctx, args, epoch,
                                        folder.path)
            if path is not None:
                grad_norm_paths[f"grad_norms_epoch{epoch + 1}"] = path
                record["grad_norms_file"] = path.name  # in the run folder
        if criterion.uses_validation:  # AdaFocal: one update of γ per bin from the validation set, every rank alike
            val_logits, val_labels = collect_logits(net, data.val, normalize, ctx, batch_size=args.eval_batch_size,
                                                    amp=args.amp, num_workers=args.workers, limit=args.limit_eval)
            criterion.observe_validation(val_logits, val_labels)
            criterion_sum.load_state_dict(criterion.state_dict())
        record.update(criterion.describe_state())  # the γ per bin for the next epoch
        record["seconds"] = time.perf_counter() - epoch_start
        log.append(record)
        if ctx.is_main and ((epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs):
            # the checkpoint holds the log: a resume rewrites log.jsonl to the checkpoint's epochs and replays the rest
            cli.save_run_checkpoint(folder.checkpoint, {
                "epoch": epoch, "args": cli.stored_args(args), "log": log, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": capture_rng_state(),
                "criterion": criterion.state_dict()},
                suite=SUITE)
        if ctx.is_main:
            folder.append_log(record)
            print(_epoch_line(record, args.epochs), flush=True)
        ctx.barrier()

    # Final evaluation: T by validation ECE (the paper's grid), NLL-fit T too, one pass through the core.
    val_logits, val_labels = collect_logits(net, data.val, normalize, ctx, batch_size=args.eval_batch_size,
                                            amp=args.amp, num_workers=args.workers, limit=args.limit_eval)
    test_logits, test_labels = collect_logits(net, data.test, normalize, ctx, batch_size=args.eval_batch_size,
                                              amp=args.amp, num_workers=args.workers, limit=args.limit_eval)
    # The whole training set in eval mode, un-augmented: the final training error of the §3 regime criterion.
    train_logits, train_labels = collect_logits(net, train_split, normalize, ctx, batch_size=args.eval_batch_size,
                                                amp=args.amp, num_workers=args.workers)
    record = None
    if ctx.is_main:
        record = write_final_report(folder.path, val_logits=val_logits, val_labels=val_labels, test_logits=test_logits,
                                    test_labels=test_labels, train_logits=train_logits, train_labels=train_labels,
                                    dataset=args.dataset, model=args.model, loss=args.loss,
                                    seed=args.seed, args=cli.stored_args(args), n_bins=args.n_bins,
                                    matrix_scaling=args.matrix_scaling,
                                    extra_paths={"checkpoint": folder.checkpoint, "log": folder.log,
                                                 **grad_norm_paths},
                                    title=f"{args.dataset} {args.model} {args.loss}")
        print(f"final: {format_summary(record['evaluation'])} -> {folder.results}", flush=True)
    ctx.barrier()
    folder.unlock()
    return record


def train_one_epoch(net, model, criterion, optimizer, scaler, split, rows, normalize, generator, args, device,
                    progress=None):
    """One pass over ``rows`` of ``split``: augment on the device, forward (autocast), loss, backward, optional
    clipping, step. Returns (sum of the batch losses, RunningTrainStats) as device tensors: no host sync per step."""
    import torch

    from classification.batches import iterate_batches, random_crop_flip
    from classification.dynamics import RunningTrainStats
    from classification.engine import autocast

    stats = RunningTrainStats(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    lr = optimizer.param_groups[0]["lr"]
    for step, (images, labels) in enumerate(iterate_batches(split, rows, args.batch_size, device,
                                                            num_workers=args.workers), start=1):
        if args.augment:
            images = random_crop_flip(images, args.crop_padding, generator)
        with autocast(device, args.amp):
            logits, features = net(normalize(images), return_features=True)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
        else:
            loss.backward()
        if args.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        stats.update(logits, labels, features)
        loss_sum += loss.detach()
        if progress is not None:
            progress.step(step, loss, lr)
    return loss_sum, stats


def _save_gradient_norms(net, model, split, normalize, criterion_sum, ctx, args, epoch, out_dir):
    """Per-sample last-layer gradient norms over the (un-augmented) training set, eval-mode BN (Fig. 4b-d)."""
    import torch

    from classification.batches import iterate_batches
    from classification.dynamics import last_layer_gradient_norms
    from classification.engine import autocast
    from focal_calibration.files import atomic_write

    net.eval()
    pieces = []
    rows = torch.arange(ctx.rank, len(split), ctx.world_size)
    for images, labels in iterate_batches(split, rows, args.eval_batch_size, ctx.device, num_workers=args.workers):
        with torch.no_grad(), autocast(ctx.device, args.amp):
            logits, features = net(normalize(images), return_features=True)
        pieces.append(last_layer_gradient_norms(logits, features, labels, criterion_sum))
    norms = torch.cat(pieces)
    if ctx.enabled:
        import torch.distributed as dist
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, norms.cpu())
        norms = torch.cat(gathered)
    if not ctx.is_main:
        return None
    saved = {"epoch": epoch + 1, "loss": args.loss, "norms": norms.cpu()}
    return atomic_write(out_dir / f"grad_norms_epoch{epoch + 1}.pt", lambda handle: torch.save(saved, handle))


def _epoch_line(r: dict, epochs: int) -> str:
    def pct(key):
        return f"{100 * r[key]:.2f}%" if r.get(key) is not None else "-"
    line = (f"epoch {r['epoch']}/{epochs} | lr {r['lr']:g} | train loss {r['train_loss']:.4f} err {pct('train_error')}"
            f" | |W| {r['last_layer_weight_norm']:.2f} |h| {r['train_feature_norm']:.2f}")
    if "test_error" in r:
        line += f" | test err {pct('test_error')} ECE {pct('test_ece')} NLL {r['test_nll']:.4f}"
    return line + f" | {r['seconds']:.1f}s"


def run(argv=None) -> int:
    return cli.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(run())
