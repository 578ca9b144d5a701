"""Train a text model with a calibration loss and report the paper's pre / post temperature-scaling metrics.

    python treelstm/train.py --model treelstm --loss flsd-53                        # offline Rotten Tomatoes trees
    python treelstm/train.py --model treelstm --dataset sst --data-dir trainDevTestTrees_PTB \
        --embeddings glove.840B.300d.txt
    python treelstm/train.py --model gpcnn --loss ce                                 # offline TREC questions
    python treelstm/train.py --model gpcnn --dataset 20newsgroups --data-dir 20news-bydate \
        --embeddings glove.6B.100d.txt
    python -m treelstm.train --model gpcnn --seed 2 --output-dir results/text/cnn-ce-2 --resume auto

Recipes (Appendix D): Tree-LSTM -- AdaGrad lr 0.05, weight decay 1e-4, 25 epochs, memory 150, batches of 25 trees,
GloVe fine-tuned (plain SGD, lr 0.1, as Tai et al.'s code), loss summed over a tree's labelled nodes and averaged
over trees, model with the best validation (root) accuracy. GP-CNN -- Adam lr 1e-3, betas (0.9, 0.999), 50 epochs,
best validation accuracy, frozen GloVe (as the official code), batches of 64 (not stated in the paper). Losses come
from ``focal_calibration.build_loss``; T is cross-validated on the validation split.

Run folder (``focal_calibration.experiments.cli.RunFolder``): ``args.json``, ``log.jsonl`` (one line per epoch,
1-based: training
loss and error, validation accuracy, and the §3 dynamics of the test set -- error, ECE, NLL of the correctly /
incorrectly classified samples -- with the temperature fitted on that epoch's validation logits), ``checkpoint.pt``
(every epoch, atomic, exact resume), ``results.json`` (suite ``text``), ``logits.pt``, reliability diagrams.

The two models differ only in a :class:`ModelSpec` (data, collation, forward, loss reduction, optimisers, threads);
one loop trains both.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from focal_calibration.experiments import cli
from focal_calibration.experiments.checkpoint import capture_rng_state, restore_rng_state
from focal_calibration.experiments.records import evaluate_calibration, make_run_record, save_reliability_diagrams
from focal_calibration.losses import build_loss
from focal_calibration.calibration.metrics import calibration_metrics
from focal_calibration.calibration.temperature import fit_temperature
from treelstm import data
from treelstm.engines import ENGINES, get_engine
from treelstm.glove import PACKAGE_SOURCE, Vocabulary, embedding_matrix
from treelstm.linkgrammar import DEFAULT_TIMEOUT
from treelstm.models import GlobalPoolingCNN, TreeLSTMClassifier
from treelstm.trees import TreeBatch

SUITE = "text"
DATASETS = {"treelstm": ("rt-offline", "sst"), "gpcnn": ("trec-offline", "20newsgroups")}
SELECTIONS = ("best-val", "last")
# Options that may change when a run is resumed, beyond the shared allow-list: where the parse cache is built and
# how many link-parser processes build it do not change the trees (the cache is keyed by sentence).
RESUME_ALLOWED = cli.RESUME_ALLOWED | {"parse_workers"}


# ----------------------------------------------------------------------------------------------------------------
# The per-model description

@dataclass(frozen=True)
class ModelSpec:
    """Everything the training loop needs to know about one text model."""

    recipe: dict                 # Appendix D defaults of the options left unset on the command line
    reduction: str               # the criterion's reduction (see ``batch_loss``)
    threads: int                 # default torch threads
    tokens: Callable             # example -> its tokens
    build: Callable              # (args, embeddings, num_classes) -> nn.Module
    optimizers: Callable         # (args, model) -> [torch.optim.Optimizer]
    collate: Callable            # (examples [(example, token ids)], pad_to) -> (inputs, node / document targets)
    forward: Callable            # (model, inputs, engine) -> logits of every trained unit
    batch_loss: Callable         # (criterion, logits, inputs, targets) -> the scalar to minimise
    evaluated: Callable          # (logits, inputs, targets) -> (logits, labels) of the evaluated units


def _collate_trees(chunk, pad_to):
    batch = TreeBatch.collate([tree for tree, _ in chunk], [ids for _, ids in chunk])
    return batch, batch.labels


def _collate_documents(chunk, pad_to):
    """Pad to ``pad_to`` (the longest document of the data, as Keras' ``pad_sequences``): one shape for every batch
    keeps oneDNN from re-planning its convolutions for each new length."""
    tokens = torch.zeros(len(chunk), max(pad_to, max(len(ids) for _, ids in chunk)), dtype=torch.long)
    for row, (_, ids) in enumerate(chunk):
        tokens[row, :len(ids)] = torch.from_numpy(ids)
    return tokens, torch.tensor([label for (_, label), _ in chunk])


def _treelstm_optimizers(args, model):
    body = [p for n, p in model.named_parameters() if not n.startswith("embedding.")]
    optimizers = [torch.optim.Adagrad(body, lr=args.lr, weight_decay=args.weight_decay)]
    if args.tune_embeddings:  # Tai et al.: the embeddings take plain SGD steps
        optimizers.append(torch.optim.SGD(model.embedding.parameters(), lr=args.emb_lr))
    return optimizers


MODELS = {
    "treelstm": ModelSpec(
        recipe=dict(epochs=25, lr=0.05, batch_size=25, dataset="rt-offline", tune_embeddings=True),
        reduction="sum",
        # per-level operations are too small to gain from a second thread; a busy machine makes them much slower
        threads=1,
        tokens=lambda tree: tree.tokens,
        build=lambda args, embeddings, k: TreeLSTMClassifier(embeddings, k, mem_dim=args.mem_dim,
                                                             dropout=args.dropout,
                                                             freeze_embeddings=not args.tune_embeddings),
        optimizers=_treelstm_optimizers,
        collate=_collate_trees,
        forward=lambda model, batch, engine: model(batch, engine),
        # summed over a tree's labelled nodes, averaged over the batch's trees (Tai et al.)
        batch_loss=lambda criterion, logits, batch, targets: criterion(logits, targets) / len(batch.roots),
        evaluated=lambda logits, batch, targets: (logits[batch.roots], batch.root_labels),
    ),
    "gpcnn": ModelSpec(
        recipe=dict(epochs=50, lr=1e-3, batch_size=64, dataset="trec-offline", tune_embeddings=False),
        reduction="mean",
        # one thread by default: more threads change the order of floating-point sums, hence the numbers
        threads=1,
        tokens=lambda example: example[0],
        build=lambda args, embeddings, k: GlobalPoolingCNN(embeddings, k, dropout=args.dropout,
                                                           freeze_embeddings=not args.tune_embeddings),
        optimizers=lambda args, model: [torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                                         lr=args.lr, betas=(0.9, 0.999))],
        collate=_collate_documents,
        forward=lambda model, tokens, engine: model(tokens),
        batch_loss=lambda criterion, logits, tokens, targets: criterion(logits, targets),
        evaluated=lambda logits, tokens, targets: (logits, targets),
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Arguments

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    model = parser.add_argument_group("model and loss")
    model.add_argument("--model", default="treelstm", choices=tuple(MODELS))
    model.add_argument("--engine", default="torch", choices=sorted(ENGINES), help="Tree-LSTM propagation engine")
    model.add_argument("--loss", default="ce", help="a focal_calibration.build_loss spec: ce, flsd-53, fl-3, brier, "
                                                    "ls-0.05, mmce-8, ...")
    model.add_argument("--mem-dim", type=cli.positive_int, default=150, help="Tree-LSTM memory size")
    model.add_argument("--dropout", type=float, default=0.5, help="dropout before the classifier")
    model.add_argument("--embeddings", default=PACKAGE_SOURCE,
                       help=f"a GloVe text file (glove.840B.300d.txt ...) or {PACKAGE_SOURCE!r}")
    model.add_argument("--tune-embeddings", action=argparse.BooleanOptionalAction, default=None,
                       help="default: tuned for treelstm, frozen for gpcnn")
    model.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                       help="lowercase tokens before the vocabulary lookup")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=cli.positive_int, default=None, help="default: 25 (treelstm) / 50 (gpcnn)")
    optim.add_argument("--lr", type=float, default=None, help="default: 0.05 AdaGrad (treelstm) / 1e-3 Adam (gpcnn)")
    optim.add_argument("--weight-decay", type=float, default=1e-4, help="Tree-LSTM AdaGrad weight decay")
    optim.add_argument("--emb-lr", type=float, default=0.1, help="Tree-LSTM: SGD lr of the tuned embeddings")
    optim.add_argument("--batch-size", type=cli.positive_int, default=None, help="default: 25 trees / 64 documents")
    optim.add_argument("--select", default="best-val", choices=SELECTIONS,
                       help="the reported model: the epoch of best validation accuracy (the paper) or the last one")

    data_group = parser.add_argument_group("data")
    data_group.add_argument("--dataset", default=None,
                            help="treelstm: rt-offline (default) or sst (--data-dir: trainDevTestTrees_PTB); gpcnn: "
                                 "trec-offline (default) or 20newsgroups (--data-dir: a folder holding "
                                 "20news-bydate-train/-test, or 'sklearn' for scikit-learn's fetcher)")
    data_group.add_argument("--max-length", type=cli.positive_int, default=1000,
                            help="20 Newsgroups: tokens kept per document")
    data_group.add_argument("--parse-timeout", type=cli.positive_int, default=DEFAULT_TIMEOUT,
                            help="rt-offline: link-parser's per-sentence time limit in seconds; a sentence that hits "
                                 "it is an error, never a silent fallback (see treelstm/linkgrammar.py)")
    data_group.add_argument("--parse-workers", type=cli.positive_int, default=2,
                            help="rt-offline: link-parser processes building the parse cache")

    run = cli.add_run_arguments(
        parser, data_help="sst / 20newsgroups: the dataset folder; rt-offline: where the link-grammar parse cache "
                          "is kept (default data/text)",
        threads_help="torch threads (default 1: more threads change the order of floating-point sums, so the "
                     "numbers would depend on the thread count)")
    run.add_argument("--eval-every", type=cli.nonnegative_int, default=1,
                     help="epochs between the per-epoch evaluations of log.jsonl (train error, test dynamics, "
                          "temperature; 0: never)")
    run.add_argument("--n-bins", type=cli.positive_int, default=15, help="calibration bins")
    cli.add_matrix_scaling_argument(run)
    run.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                     help="reliability diagrams before / after temperature scaling")
    for action in parser._actions:  # the text suite runs on the CPU unless told otherwise
        if action.dest == "device":
            action.default, action.help = "cpu", "cpu, cuda, cuda:1 ..."
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the model's Appendix-D defaults and reject bad values with a message naming them."""
    spec = MODELS[args.model]
    for key, value in spec.recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None:
        args.threads = spec.threads
    if args.dataset not in DATASETS[args.model]:
        raise ValueError(f"--dataset {args.dataset!r} is not a {args.model} dataset; choose one of "
                         f"{list(DATASETS[args.model])}")
    if args.dataset in ("sst", "20newsgroups") and args.data_dir is None:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (the dataset folder)")
    for name in ("lr", "emb_lr"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not args.weight_decay >= 0:
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must lie in [0, 1), got {args.dropout}")
    build_loss(args.loss, epochs=args.epochs)  # a bad spec fails here, before any data is loaded
    args.device = str(cli.check_device(args.device))
    return args


# ----------------------------------------------------------------------------------------------------------------
# Data

def load_data(args) -> data.Splits:
    limits = dict(limit_train=args.limit_train, limit_eval=args.limit_eval)
    if args.dataset == "rt-offline":
        cache = Path(args.data_dir or "data/text") / "link_grammar_parses.jsonl"
        return data.load_rotten_tomatoes_trees(cache, split_seed=args.split_seed, workers=args.parse_workers,
                                               timeout=args.parse_timeout, **limits)
    if args.dataset == "sst":
        return data.load_sst(args.data_dir, **limits)
    if args.dataset == "trec-offline":
        return data.load_trec(split_seed=args.split_seed, **limits)
    return data.load_20newsgroups(args.data_dir, split_seed=args.split_seed, max_length=args.max_length, **limits)


def encode(splits, args, spec: ModelSpec):
    """Vocabulary from the training split, the initial embedding matrix, and every split as (example, token ids)."""
    norm = (lambda ts: [t.lower() for t in ts]) if args.lowercase else list
    vocab = Vocabulary.build(norm(spec.tokens(ex)) for ex in splits.train)
    embeddings, stats = embedding_matrix(vocab, args.embeddings, seed=args.seed)
    encoded = {name: [(ex, vocab.encode(norm(spec.tokens(ex)))) for ex in getattr(splits, name)]
               for name in ("train", "val", "test")}
    return vocab, embeddings, stats, encoded


def batches(examples, batch_size, collate, device, generator=None):
    """(inputs, targets) on ``device``, in order or shuffled with ``generator``."""
    order = (torch.randperm(len(examples), generator=generator).tolist() if generator is not None
             else range(len(examples)))
    order = list(order)
    for start in range(0, len(order), batch_size):
        inputs, targets = collate([examples[i] for i in order[start:start + batch_size]])
        yield inputs.to(device), targets.to(device)


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation

def train_one_epoch(model, criterion, optimizers, examples, args, spec, engine, collate, generator):
    model.train()
    total, count = torch.zeros((), dtype=torch.float64, device=args.device), 0
    for inputs, targets in batches(examples, args.batch_size, collate, args.device, generator):
        loss = spec.batch_loss(criterion, spec.forward(model, inputs, engine), inputs, targets)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        total += loss.detach()
        count += 1
    return float(total) / max(count, 1)


@torch.no_grad()
def predict(model, examples, spec, engine, collate, device):
    """Logits and labels of the evaluated units (tree roots / documents) of a split, in eval mode, on the CPU."""
    model.eval()
    logits, labels = [], []
    for inputs, targets in batches(examples, 256, collate, device):
        out, target = spec.evaluated(spec.forward(model, inputs, engine), inputs, targets)
        logits.append(out.float().cpu())
        labels.append(target.cpu())
    return torch.cat(logits), torch.cat(labels)


def epoch_statistics(train, val, test, *, n_bins: int) -> dict:
    """One epoch's line of log.jsonl from the (logits, labels) of the three splits: training error / NLL (eval mode,
    whole training set), the §3 test dynamics (error, ECE, NLL overall and of the correctly / incorrectly classified
    samples, mean confidence) and the temperature this epoch's validation logits choose, with the test ECE after it."""
    train_metrics = calibration_metrics(train[1], logits=train[0], n_bins=n_bins)
    # the two temperatures evaluate_calibration fits (without its per-epoch-expensive vector / matrix scaling)
    temperature = float(fit_temperature(*val, objective="ece", n_bins=n_bins).temperature)
    temperature_nll = float(fit_temperature(*val, objective="nll", method="lbfgs", n_bins=n_bins).temperature)
    pre = calibration_metrics(test[1], logits=test[0], n_bins=n_bins)
    post = calibration_metrics(test[1], logits=test[0] / temperature, n_bins=n_bins)
    record = {"train_error": train_metrics["error"], "train_nll": train_metrics["nll"],
              "test_error": pre["error"], "test_ece": pre["ece"], "test_adaece": pre["adaece"],
              "test_nll": pre["nll"], "test_confidence": float(test[0].softmax(-1).amax(-1).mean()),
              "temperature": temperature, "temperature_nll": temperature_nll,
              "test_ece_post": post["ece"], "test_adaece_post": post["adaece"]}
    correct = test[0].argmax(-1) == test[1]
    for name, mask in (("correct", correct), ("incorrect", ~correct)):
        group = calibration_metrics(test[1][mask], logits=test[0][mask], n_bins=n_bins) if bool(mask.any()) else None
        record[f"test_nll_{name}"] = group["nll"] if group else None
        record[f"test_entropy_{name}"] = group["entropy"] if group else None
    return record


# Environment variables that choose the CPU kernels (see the README: the numbers depend on them).
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def numerics() -> dict:
    """What decides the floating-point results besides the seed: torch's version, the instruction set its CPU kernels
    use, the thread count and the variables that pin MKL / oneDNN kernels. Equal values: bitwise-equal runs."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "env": {name: os.environ.get(name) for name in NUMERICS_ENV}}


def schedule(args, epochs: int) -> list[dict]:
    """The γ of each of the first ``epochs`` epochs of the run ``args`` describes, from the training code's own loss
    (FLSc places its changes at fractions of ``--epochs``); what
    :func:`focal_calibration.experiments.cli.check_extension` compares. The text recipes have no lr schedule."""
    criterion = build_loss(args.loss, reduction=MODELS[args.model].reduction, epochs=args.epochs)
    entries = []
    for epoch in range(epochs):
        criterion.set_epoch(epoch)
        entries.append({"gamma": getattr(getattr(criterion, "policy", None), "gamma", None)})
    return entries


def main(args) -> dict:
    parser = get_args_parser()
    args = resolve_args(args)
    spec = MODELS[args.model]
    keys = cli.run_defining_keys(parser, RESUME_ALLOWED)
    if args.output_dir is None:
        args.output_dir = str(cli.default_output_dir(SUITE, f"{args.model}-{args.loss}-seed{args.seed}", args, keys))
    folder = cli.RunFolder(args.output_dir)
    state = cli.load_resume_state(folder, args, parser, suite=SUITE, allowed=RESUME_ALLOWED,
                                  schedule=schedule)  # the folder is this process's from now on
    cli.seed_everything(args.seed)
    cli.set_threads(args.threads)
    started = time.time()

    splits = load_data(args)
    vocab, embeddings, emb_stats, encoded = encode(splits, args, spec)
    pad_to = max((len(ids) for split in encoded.values() for _, ids in split), default=0)
    collate = partial(spec.collate, pad_to=pad_to)
    engine = get_engine(args.engine)
    model = spec.build(args, embeddings, splits.num_classes).to(args.device)
    optimizers = spec.optimizers(args, model)
    criterion = build_loss(args.loss, reduction=spec.reduction, epochs=args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"{splits.name}: {len(splits.train)}/{len(splits.val)}/{len(splits.test)} examples, "
          f"{splits.num_classes} classes, vocabulary {len(vocab)} ({emb_stats['in_glove']} in GloVe, "
          f"{emb_stats['random_init']} random), {splits.info or ''} -> {folder.path}", flush=True)

    log, best = [], {"accuracy": -1.0, "epoch": 0, "state": None}
    if state is not None:
        model.load_state_dict(state["model"])
        cli.load_state_dicts(optimizers, state["optimizers"], "optimizer")
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])
        criterion.load_state_dict(state["criterion"])  # adaptive losses' state (AdaFocal's γ per bin)
        log, best = state["log"], state["best"]
        folder.restore_log(log)
        print(f"resumed from {folder.resume_path(args.resume)} after epoch {len(log)}", flush=True)
    elif folder.log.exists():
        folder.log.unlink()  # a fresh run in an empty folder starts a fresh log
    folder.write_args(args)

    for epoch in range(len(log) + 1, args.epochs + 1):
        tick = time.time()
        criterion.set_epoch(epoch - 1)
        record = {"epoch": epoch, "train_loss": train_one_epoch(model, criterion, optimizers, encoded["train"], args,
                                                                spec, engine, collate, generator)}
        val = predict(model, encoded["val"], spec, engine, collate, args.device)
        record["val_accuracy"] = float((val[0].argmax(1) == val[1]).float().mean())
        criterion.observe_validation(*val)  # AdaFocal's per-epoch update (a no-op for the other losses)
        record.update(criterion.describe_state())
        if args.eval_every and (epoch % args.eval_every == 0 or epoch == args.epochs):
            train = predict(model, encoded["train"], spec, engine, collate, args.device)
            test = predict(model, encoded["test"], spec, engine, collate, args.device)
            record.update(epoch_statistics(train, val, test, n_bins=args.n_bins))
        if record["val_accuracy"] > best["accuracy"] or args.select == "last":
            best = {"accuracy": record["val_accuracy"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        record["seconds"] = time.time() - tick
        log.append(record)
        # checkpoint first: every log line has its checkpoint (a resume rewrites the log from it)
        cli.save_run_checkpoint(folder.checkpoint, {
            "args": cli.stored_args(args), "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers], "generator": generator.get_state(),
            "rng": capture_rng_state(), "best": best, "log": log,
            "criterion": criterion.state_dict()}, suite=SUITE)
        folder.append_log(record)
        print(_epoch_line(record, args.epochs), flush=True)

    model.load_state_dict(best["state"])
    val = predict(model, encoded["val"], spec, engine, collate, args.device)
    test = predict(model, encoded["test"], spec, engine, collate, args.device)
    train = predict(model, encoded["train"], spec, engine, collate, args.device)
    evaluation = evaluate_calibration(*val, *test, n_bins=args.n_bins, matrix_scaling=args.matrix_scaling)
    evaluation["train"] = calibration_metrics(train[1], logits=train[0], n_bins=args.n_bins)
    paths = {"checkpoint": folder.checkpoint, "log": folder.log, "logits": folder.save_logits(*val, *test)}
    if args.plots:
        diagrams = save_reliability_diagrams(test[0], test[1], evaluation["temperature"], folder.path,
                                             n_bins=args.n_bins, title=f"{args.model} {splits.name} {args.loss}")
        paths.update(reliability_pre=diagrams[0], reliability_post=diagrams[1])
    record = make_run_record(suite=SUITE, dataset=splits.name, model=args.model, loss=args.loss, seed=args.seed,
                             args=cli.stored_args(args), evaluation=evaluation, paths=paths,
                             selected_epoch=best["epoch"], data_info=splits.info, embeddings=emb_stats,
                             data_sizes={name: len(encoded[name]) for name in ("train", "val", "test")},
                             numerics=numerics(),
                             seconds=time.time() - started)
    folder.write_results(record)
    pre, post = evaluation["pre"], evaluation["post"]
    print(f"epoch {best['epoch']} ({args.select}): test error {100 * pre['error']:.2f}%  ECE {100 * pre['ece']:.2f} -> "
          f"{100 * post['ece']:.2f} (T={evaluation['temperature']:g})  AdaECE {100 * pre['adaece']:.2f} -> "
          f"{100 * post['adaece']:.2f}  NLL {pre['nll']:.4f} -> {post['nll']:.4f}  [{folder.results}]", flush=True)
    folder.unlock()
    return record


def _epoch_line(record: dict, epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  val acc "
            f"{100 * record['val_accuracy']:.2f}%")
    if "train_error" in record:
        line += (f"  train err {100 * record['train_error']:.2f}%  test err {100 * record['test_error']:.2f}%  "
                 f"ECE {100 * record['test_ece']:.2f}% (T={record['temperature']:g})  NLL misclassified "
                 f"{record['test_nll_incorrect'] or float('nan'):.3f}")
    return line + f"  ({record['seconds']:.1f}s)"


def cli_main(argv=None) -> int:
    return cli.run_cli(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli_main())
