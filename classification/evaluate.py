"""Evaluate trained checkpoints before and after temperature scaling (§5.1, Tables 1-2, Appendix E-F).

    python classification/evaluate.py results/cifar10-resnet50-flsd-53-seed1/checkpoint.pt [more checkpoints ...]

For each checkpoint: the validation and test logits (the split, model and data of the run's saved arguments), T by
validation ECE on the paper's grid 0.1 ... 10 (and the NLL-fit T), and test error, top-5 error, NLL, Brier, ECE,
AdaECE, MCE, classwise ECE, S99 and its accuracy before and after scaling -> results.json, reliability diagrams
before / after and logits.pt in --output-dir (default: an ``evaluation`` folder next to the checkpoint).
Gather many runs into Table 1 / 2 with ``python scripts/results_table.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from classification.batches import Normalize
from classification.datasets import load_dataset
from classification.engine import collect_logits, format_summary, setup_distributed, write_final_report
from classification.models import build_model
from focal_calibration.experiments import cli


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, add_help=add_help)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint.pt files written by classification/train.py")
    parser.add_argument("--eval-batch-size", type=cli.positive_int, default=512)
    parser.add_argument("--n-bins", type=cli.positive_int, default=15)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None,
                        help="default: the training run's setting")
    parser.add_argument("--workers", type=cli.nonnegative_int, default=4)
    parser.add_argument("--matrix-scaling", choices=cli.MATRIX_SCALING_MODES, default=None,
                        help="matrix scaling in the evaluation (default: the training run's setting, else auto)")
    run = cli.add_run_arguments(parser, data_help="override the data folder saved in the checkpoint",
                                output_help="default: <checkpoint folder>/evaluation (one sub-folder per checkpoint "
                                            "when several share this option)",
                                flags=("data_dir", "output_dir", "limit_eval", "device", "threads"))
    run.description = "--limit-eval defaults to the training run's setting"
    return parser


def evaluate_checkpoint(path, args, ctx, out_dir: Path) -> dict:
    state = cli.load_run_checkpoint(path, suite="image")
    saved = state["args"]
    data = load_dataset(saved["dataset"], data_dir=args.data_dir or saved.get("data_dir"), download=False,
                        val_size=saved.get("val_size"), split_seed=saved.get("split_seed", 1),
                        image_size=saved.get("image_size", 64))
    model = build_model(saved["model"], data.num_classes, data.in_channels, data.image_size)
    model.load_state_dict(state["model"])
    model.to(ctx.device)
    normalize = Normalize(data.mean, data.std, ctx.device)
    amp = args.amp or saved.get("amp", "none")
    limit = args.limit_eval if args.limit_eval is not None else saved.get("limit_eval")
    kwargs = dict(batch_size=args.eval_batch_size, amp=amp, num_workers=args.workers, limit=limit)
    val_logits, val_labels = collect_logits(model, data.val, normalize, ctx, **kwargs)
    test_logits, test_labels = collect_logits(model, data.test, normalize, ctx, **kwargs)
    return write_final_report(out_dir, val_logits=val_logits, val_labels=val_labels, test_logits=test_logits,
                              test_labels=test_labels, dataset=saved["dataset"], model=saved["model"],
                              loss=saved["loss"], seed=saved.get("seed"), args=saved, n_bins=args.n_bins,
                              matrix_scaling=args.matrix_scaling or saved.get("matrix_scaling", "auto"),
                              extra_paths={"checkpoint": Path(path)},
                              title=f"{saved['dataset']} {saved['model']} {saved['loss']}")


def main(args) -> list[dict]:
    cli.check_device(args.device)  # an unknown or absent device: one error line
    cli.set_threads(args.threads)
    ctx = setup_distributed(args.device)
    records = []
    for i, path in enumerate(args.checkpoints):
        path = Path(path)
        if args.output_dir is None:
            out_dir = path.parent / "evaluation"
        else:
            out_dir = Path(args.output_dir) / (f"{i:02d}-{path.parent.name}" if len(args.checkpoints) > 1 else "")
        record = evaluate_checkpoint(path, args, ctx, out_dir)
        print(f"{path}: {record['dataset']} {record['model']} {record['loss']} | "
              f"{format_summary(record['evaluation'])} -> {out_dir / 'results.json'}", flush=True)
        records.append(record)
    return records


def run(argv=None) -> int:
    return cli.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(run())
