"""Train a text model with a calibration loss and report the paper's pre / post temperature-scaling metrics.

    python treelstm/train.py --model treelstm --loss flsd-53                       # offline Rotten Tomatoes trees
    python treelstm/train.py --model treelstm --data path/to/trainDevTestTrees_PTB --embeddings glove.840B.300d.txt
    python treelstm/train.py --model gpcnn --loss ce                                # offline TREC questions
    python treelstm/train.py --model gpcnn --data path/to/20news --embeddings glove.6B.100d.txt

Recipes (Appendix D): Tree-LSTM -- AdaGrad lr 0.05, weight decay 1e-4, 25 epochs, memory 150, batches of 25 trees,
GloVe fine-tuned (plain SGD, lr 0.1, as Tai et al.'s code), loss summed over a tree's labelled nodes and averaged
over trees, model with the best validation (root) accuracy. GP-CNN -- Adam lr 1e-3, betas (0.9, 0.999), 50 epochs,
best validation accuracy, frozen GloVe (as the official code), batches of 64 (not stated in the paper). Losses come
from ``focal_calibration.build_loss`` (``--loss ce``, ``flsd-53``, ``fl-3``, ``brier``, ``ls-0.05``, ``mmce-8``
...); T is cross-validated on the validation split and everything is written by ``focal_calibration.evaluation``
(``results.json``, reliability diagrams).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from focal_calibration.checkpoint import (capture_rng_state, check_resume_compatible, load_checkpoint,
                                          restore_rng_state, save_checkpoint)
from focal_calibration.evaluation import (evaluate_calibration, make_run_record, save_reliability_diagrams,
                                          write_json_atomic)
from focal_calibration.losses import build_loss
from treelstm.engines import ENGINES, get_engine
from treelstm.glove import PACKAGE_SOURCE, Vocabulary, embedding_matrix
from treelstm.models import GlobalPoolingCNN, TreeLSTMClassifier
from treelstm.trees import TreeBatch

MODELS = ("treelstm", "gpcnn")
RECIPES = {  # Appendix D
    "treelstm": dict(epochs=25, lr=0.05, batch_size=25, data="rt-offline", tune_embeddings=True),
    "gpcnn": dict(epochs=50, lr=1e-3, batch_size=64, data="trec-offline", tune_embeddings=False),
}
RESUME_KEYS = ("model", "data", "loss", "seed", "embeddings", "lr", "batch_size", "mem_dim", "limit", "lowercase")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Text suite: Tree-LSTM (SST) / GP-CNN (20 Newsgroups) with "
                                                 "calibration losses", add_help=add_help)
    parser.add_argument("--model", default="treelstm", help=f"one of {MODELS}")
    parser.add_argument("--engine", default="torch", help=f"Tree-LSTM engine, one of {sorted(ENGINES)}")
    parser.add_argument("--data", default=None, help="treelstm: 'rt-offline' or an SST trainDevTestTrees_PTB "
                        "folder; gpcnn: 'trec-offline', a 20 Newsgroups folder or 'sklearn' (default: offline)")
    parser.add_argument("--embeddings", default=PACKAGE_SOURCE,
                        help=f"a GloVe text file (glove.840B.300d.txt ...) or {PACKAGE_SOURCE!r}")
    parser.add_argument("--loss", default="ce", help="focal_calibration.build_loss spec: ce, flsd-53, fl-3, ...")
    parser.add_argument("--epochs", type=int, default=None, help="default: 25 (treelstm) / 50 (gpcnn)")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.05 AdaGrad / 1e-3 Adam")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="Tree-LSTM AdaGrad weight decay")
    parser.add_argument("--emb-lr", type=float, default=0.1, help="Tree-LSTM: SGD lr of the tuned embeddings")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 25 trees / 64 documents")
    parser.add_argument("--mem-dim", type=int, default=150, help="Tree-LSTM memory size")
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--tune-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="default: tuned for treelstm, frozen for gpcnn")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-length", type=int, default=1000, help="GP-CNN: tokens kept per document")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples (quick runs)")
    parser.add_argument("--parse-cache", default="data/text/link_grammar_parses.jsonl",
                        help="rt-offline: link-grammar parse cache (built on first use)")
    parser.add_argument("--parse-workers", type=int, default=2)
    parser.add_argument("--n-bins", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: 1 for the Tree-LSTM, whose per-level operations are "
                             "too small to gain from threads and lose badly to thread synchronisation on a busy "
                             "machine; torch's default for the GP-CNN)")
    parser.add_argument("--out", default="results/text", help="output folder (results.json, diagrams, checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--no-plots", action="store_true")
    return parser


def _positive(value, name):
    if value is not None and (not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")


def resolve_args(args) -> argparse.Namespace:
    """Validate the arguments and fill the model-dependent defaults (Appendix D recipes)."""
    if args.model not in MODELS:
        raise ValueError(f"unknown model {args.model!r}; choose one of {list(MODELS)}")
    get_engine(args.engine)
    recipe = RECIPES[args.model]
    for key in ("epochs", "lr", "batch_size", "data", "tune_embeddings"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])
    for name in ("epochs", "lr", "batch_size", "mem_dim", "limit", "max_length", "n_bins"):
        _positive(getattr(args, name), "--" + name.replace("_", "-"))
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must lie in [0, 1), got {args.dropout}")
    build_loss(args.loss, epochs=args.epochs)  # a bad spec fails here, before any data is loaded
    return args


# ----------------------------------------------------------------------------------------------------------------
# Data

def load_data(args):
    from treelstm import data

    if args.model == "treelstm":
        if args.data == "rt-offline":
            return data.load_rotten_tomatoes_trees(args.parse_cache, seed=args.seed, limit=args.limit,
                                                   workers=args.parse_workers)
        if args.data in ("trec-offline", "sklearn"):
            raise ValueError(f"--data {args.data!r} is a document dataset; the Tree-LSTM needs 'rt-offline' or "
                             f"an SST folder")
        splits = data.load_sst(args.data)
        if args.limit:
            splits.train, splits.val, splits.test = (s[:args.limit] for s in (splits.train, splits.val, splits.test))
        return splits
    if args.data == "trec-offline":
        return data.load_trec(seed=args.seed, limit=args.limit)
    if args.data == "rt-offline":
        raise ValueError("--data 'rt-offline' holds trees for the Tree-LSTM; the GP-CNN needs 'trec-offline', a "
                         "20 Newsgroups folder or 'sklearn'")
    return data.load_20newsgroups(args.data, seed=args.seed, max_length=args.max_length, limit=args.limit)


def _tokens(example, model):
    return example.tokens if model == "treelstm" else example[0]


def encode(splits, args):
    """Vocabulary from the training split, embedding matrix, and every split as model inputs."""
    norm = (lambda ts: [t.lower() for t in ts]) if args.lowercase else list
    vocab = Vocabulary.build(norm(_tokens(ex, args.model)) for ex in splits.train)
    embeddings, stats = embedding_matrix(vocab, args.embeddings, seed=args.seed)

    def inputs(split):
        return [(ex, vocab.encode(norm(_tokens(ex, args.model)))) for ex in split]

    return vocab, embeddings, stats, {name: inputs(getattr(splits, name)) for name in ("train", "val", "test")}


def batches(examples, batch_size, model, generator=None, pad_to=0):
    """Yield (model input, per-batch targets) in order, or shuffled with ``generator``. GP-CNN batches are padded
    to ``pad_to`` (the longest document of the data, as Keras' ``pad_sequences``): one shape for every batch keeps
    oneDNN from re-planning its convolutions for each new length."""
    order = (torch.randperm(len(examples), generator=generator).tolist() if generator is not None
             else range(len(examples)))
    order = list(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        if model == "treelstm":
            batch = TreeBatch.collate([tree for tree, _ in chunk], [ids for _, ids in chunk])
            yield batch, batch.labels
        else:
            length = max(pad_to, max(len(ids) for _, ids in chunk))
            tokens = torch.zeros(len(chunk), length, dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                tokens[row, :len(ids)] = torch.from_numpy(ids)
            yield tokens, torch.tensor([label for (_, label), _ in chunk])


# ----------------------------------------------------------------------------------------------------------------
# Model, optimisation, evaluation

def build_model(args, embeddings, num_classes):
    if args.model == "treelstm":
        return TreeLSTMClassifier(embeddings, num_classes, mem_dim=args.mem_dim, dropout=args.dropout,
                                  freeze_embeddings=not args.tune_embeddings)
    return GlobalPoolingCNN(embeddings, num_classes, dropout=args.dropout, freeze_embeddings=not args.tune_embeddings)


def build_optimizers(args, model):
    if args.model == "treelstm":
        body = [p for n, p in model.named_parameters() if not n.startswith("embedding.")]
        optimizers = [torch.optim.Adagrad(body, lr=args.lr, weight_decay=args.weight_decay)]
        if args.tune_embeddings:  # Tai et al.: the embeddings take plain SGD steps
            optimizers.append(torch.optim.SGD(model.embedding.parameters(), lr=args.emb_lr))
        return optimizers
    return [torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr, betas=(0.9, 0.999))]


def forward(model, inputs, engine):
    return model(inputs, engine) if isinstance(model, TreeLSTMClassifier) else model(inputs)


@torch.no_grad()
def predict(model, examples, args, engine):
    """Root (Tree-LSTM) / document (GP-CNN) logits and labels of a split, in eval mode."""
    model.eval()
    logits, labels = [], []
    for inputs, targets in batches(examples, 256, args.model, pad_to=args.pad_to):
        out = forward(model, inputs, engine)
        if args.model == "treelstm":
            out, targets = out[inputs.roots], inputs.root_labels
        logits.append(out)
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def train_one_epoch(model, criterion, optimizers, examples, args, engine, generator):
    model.train()
    total, count = torch.zeros(()), 0
    for inputs, targets in batches(examples, args.batch_size, args.model, generator, pad_to=args.pad_to):
        logits = forward(model, inputs, engine)
        if args.model == "treelstm":  # sum over a tree's labelled nodes, mean over the batch's trees
            loss = criterion(logits, targets) / len(inputs.roots)
        else:
            loss = criterion(logits, targets)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        total += loss.detach()
        count += 1
    return float(total) / max(count, 1)


def main(args) -> dict:
    args = resolve_args(args)
    threads = args.threads or (1 if args.model == "treelstm" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    splits = load_data(args)
    vocab, embeddings, emb_stats, encoded = encode(splits, args)
    args.pad_to = 0 if args.model == "treelstm" else max(len(ids) for split in encoded.values() for _, ids in split)
    engine = get_engine(args.engine)
    model = build_model(args, embeddings, splits.num_classes)
    optimizers = build_optimizers(args, model)
    reduction = "sum" if args.model == "treelstm" else "mean"
    criterion = build_loss(args.loss, reduction=reduction, epochs=args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"{splits.name}: {len(splits.train)}/{len(splits.val)}/{len(splits.test)} examples, "
          f"{splits.num_classes} classes, vocabulary {len(vocab)} ({emb_stats['in_glove']} in GloVe, "
          f"{emb_stats['random_init']} random), {splits.info or ''}", flush=True)

    checkpoint_path = out / "checkpoint.pt"
    start_epoch, best, history = 0, {"accuracy": -1.0, "epoch": -1, "state": None}, []
    run_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        check_resume_compatible(state["args"], run_args, RESUME_KEYS)
        model.load_state_dict(state["model"])
        for optimizer, saved in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        generator.set_state(state["generator"])
        criterion.load_state_dict(state.get("criterion", {}))  # adaptive losses' state (AdaFocal's γ per bin)
        restore_rng_state(state["rng"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        print(f"resumed from {checkpoint_path} after epoch {state['epoch']}", flush=True)

    for epoch in range(start_epoch, args.epochs):
        criterion.set_epoch(epoch)
        tick = time.time()
        train_loss = train_one_epoch(model, criterion, optimizers, encoded["train"], args, engine, generator)
        val_logits, val_labels = predict(model, encoded["val"], args, engine)
        accuracy = float((val_logits.argmax(1) == val_labels).float().mean())
        criterion.observe_validation(val_logits, val_labels)  # AdaFocal's per-epoch update (a no-op otherwise)
        if accuracy > best["accuracy"]:
            best = {"accuracy": accuracy, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": accuracy,
                        "seconds": time.time() - tick, **criterion.describe_state()})
        print(f"epoch {epoch + 1}/{args.epochs}  loss {train_loss:.4f}  val acc {accuracy:.4f}  "
              f"({time.time() - tick:.1f}s)", flush=True)
        save_checkpoint(checkpoint_path, {"args": run_args, "epoch": epoch, "model": model.state_dict(),
                                          "optimizers": [o.state_dict() for o in optimizers],
                                          "generator": generator.get_state(), "rng": capture_rng_state(),
                                          "best": best, "history": history, "criterion": criterion.state_dict()})

    model.load_state_dict(best["state"])
    val_logits, val_labels = predict(model, encoded["val"], args, engine)
    test_logits, test_labels = predict(model, encoded["test"], args, engine)
    evaluation = evaluate_calibration(val_logits, val_labels, test_logits, test_labels, n_bins=args.n_bins)
    paths = {"checkpoint": str(checkpoint_path)}
    if not args.no_plots:
        diagrams = save_reliability_diagrams(test_logits, test_labels, evaluation["temperature"], out,
                                             n_bins=args.n_bins, title=f"{args.model} {splits.name} {args.loss}")
        paths.update({f"reliability_{p.stem.split('_')[-1]}": str(p) for p in diagrams})
    record = make_run_record(suite="text", dataset=splits.name, model=args.model, loss=args.loss, seed=args.seed,
                             args=run_args, evaluation=evaluation, paths=paths,
                             best_epoch=best["epoch"], history=history, data_info=splits.info,
                             embeddings=emb_stats, seconds=time.time() - started)
    write_json_atomic(out / "results.json", record)
    pre, post = evaluation["pre"], evaluation["post"]
    print(f"test error {100 * pre['error']:.2f}%  ECE {100 * pre['ece']:.2f} -> {100 * post['ece']:.2f} "
          f"(T={evaluation['temperature']:g})  AdaECE {100 * pre['adaece']:.2f} -> {100 * post['adaece']:.2f}  "
          f"NLL {pre['nll']:.4f} -> {post['nll']:.4f}  [{out / 'results.json'}]", flush=True)
    return record


if __name__ == "__main__":
    main(get_args_parser().parse_args())
