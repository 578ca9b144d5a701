"""Pieces shared by ``train.py`` and ``evaluate.py``: distributed setup, logits over a split, the final report."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from classification.batches import Normalize, iterate_batches, shard_for_eval
from classification.datasets import ImageSplit
from focal_calibration.experiments.cli import RunFolder
from focal_calibration.experiments.records import evaluate_calibration, make_run_record, save_reliability_diagrams
from focal_calibration.calibration.metrics import calibration_metrics

__all__ = ["DistributedContext", "setup_distributed", "autocast", "collect_logits", "write_final_report"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DistributedContext:
    def __init__(self, rank=0, world_size=1, local_rank=0, device=torch.device("cpu")):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()


def setup_distributed(device_arg: str | None) -> DistributedContext:
    """Initialise torch.distributed when launched by torchrun (RANK / WORLD_SIZE set): NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device_type = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_arg!r} asks for CUDA, but torch.cuda.is_available() is False")
        index = local_rank if world_size > 1 or device_arg in (None, "cuda") else torch.device(device_arg).index
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_arg or "cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def collect_logits(model, split: ImageSplit, normalize: Normalize, ctx: DistributedContext, *, batch_size: int,
                   amp: str = "none", num_workers: int = 0, limit: int | None = None):
    """Float32 logits and labels of ``split`` (first ``limit`` rows), in row order, on every rank.

    Each rank evaluates rows rank, rank + W, ...; the pieces are all-gathered and put back in order.
    """
    model.eval()
    n = len(split) if limit is None else min(limit, len(split))
    rows = shard_for_eval(n, ctx.rank, ctx.world_size)
    pieces, labels = [], []
    for images, targets in iterate_batches(split, rows, batch_size, ctx.device, num_workers=num_workers):
        with autocast(ctx.device, amp):
            pieces.append(model(normalize(images)).float())
        labels.append(targets)
    num_classes = model.module.fc.out_features if hasattr(model, "module") else model.fc.out_features
    logits = torch.cat(pieces) if pieces else torch.zeros(0, num_classes, device=ctx.device)
    targets = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=ctx.device)
    if ctx.enabled:
        longest = (n + ctx.world_size - 1) // ctx.world_size
        pad = longest - logits.shape[0]
        logits_all = [torch.zeros(longest, num_classes, device=ctx.device) for _ in range(ctx.world_size)]
        targets_all = [torch.zeros(longest, dtype=torch.long, device=ctx.device) for _ in range(ctx.world_size)]
        dist.all_gather(logits_all, torch.nn.functional.pad(logits, (0, 0, 0, pad)))
        dist.all_gather(targets_all, torch.nn.functional.pad(targets, (0, pad)))
        order = torch.cat([shard_for_eval(n, r, ctx.world_size) for r in range(ctx.world_size)]).to(ctx.device)
        counts = [len(shard_for_eval(n, r, ctx.world_size)) for r in range(ctx.world_size)]
        logits = torch.empty(n, num_classes, device=ctx.device)
        targets = torch.empty(n, dtype=torch.long, device=ctx.device)
        logits[order] = torch.cat([piece[:c] for piece, c in zip(logits_all, counts)])
        targets[order] = torch.cat([piece[:c] for piece, c in zip(targets_all, counts)])
    return logits.cpu(), targets.cpu()


def write_final_report(out_dir: Path, *, val_logits, val_labels, test_logits, test_labels, dataset: str,
                       model: str, loss: str, seed: int, args: dict, n_bins: int = 15, extra_paths=None,
                       title: str | None = None, train_logits=None, train_labels=None,
                       matrix_scaling: str = "auto") -> dict:
    """Pre / post temperature evaluation (one pass through the core), reliability diagrams, logits and the results
    JSON of one run. With ``train_logits`` the training-set metrics (eval mode) go to ``evaluation["train"]``.
    Returns the record written to ``out_dir / "results.json"``."""
    out_dir = Path(out_dir)
    # the trainer already owns its folder; evaluate.py owns its output folder while writing it
    with RunFolder(out_dir).lock() as folder:
        evaluation = evaluate_calibration(val_logits, val_labels, test_logits, test_labels, n_bins=n_bins,
                                          matrix_scaling=matrix_scaling)
        if train_logits is not None:
            evaluation["train"] = calibration_metrics(train_labels, logits=train_logits, n_bins=n_bins)
        diagrams = save_reliability_diagrams(test_logits, test_labels, evaluation["temperature"], out_dir,
                                             n_bins=n_bins, title=title)
        logits_path = folder.save_logits(val_logits, val_labels, test_logits, test_labels)
        paths = {"logits": logits_path, "reliability_pre": diagrams[0], "reliability_post": diagrams[1]}
        paths.update(extra_paths or {})
        record = make_run_record(suite="image", dataset=dataset, model=model, loss=loss, seed=seed, args=args,
                                 evaluation=evaluation, paths={k: str(v) for k, v in paths.items()})
        folder.write_results(record)
    return record


def format_summary(evaluation: dict) -> str:
    pre, post = evaluation["pre"], evaluation["post"]
    return (f"test error {100 * pre['error']:.2f}% | ECE {100 * pre['ece']:.2f}% -> {100 * post['ece']:.2f}% "
            f"(T = {evaluation['temperature']:g}; NLL-fit T = {evaluation['temperature_nll']:.3f}) | "
            f"AdaECE {100 * pre['adaece']:.2f}% -> {100 * post['adaece']:.2f}% | NLL {pre['nll']:.4f} -> "
            f"{post['nll']:.4f}")

