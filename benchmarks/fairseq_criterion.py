"""Benchmark: training-step time of the focal_loss criterion vs fairseq's label_smoothed_cross_entropy (issue 5 asks
for <= 1.0x), same model, same batch, same process.

Two measurements, best (min) of --repeats, criteria interleaved so drift in machine load hits all of them alike:
  step:  model forward + criterion + backward (what a training step costs, the optimizer step aside)
  loss:  criterion forward + backward on fixed logits (the part the criteria differ in)

Model: a fairseq Transformer (--layers, --dim) with a --vocab-sized joint dictionary, built on the synthetic corpus
of fairseq_focal/toy_corpus.py; one batch of --max-tokens target tokens.

    python benchmarks/fairseq_criterion.py [--vocab 8000 --dim 256 --layers 2 --max-tokens 4096]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

import fairseq_focal  # noqa: E402,F401
from fairseq_focal.toy_corpus import write_corpus  # noqa: E402
from fairseq_focal.criterions.focal_loss import FocalLossCriterion  # noqa: E402



def build(data, dim, layers, max_tokens, device):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", str(layers),
        "--decoder-layers", str(layers), "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-ffn-embed-dim", str(4 * dim), "--decoder-ffn-embed-dim", str(4 * dim), "--dropout", "0.1"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model).to(device)
    task.load_dataset("train")
    batch = next(iter(task.get_batch_iterator(task.dataset("train"), max_tokens=max_tokens).next_epoch_itr(
        shuffle=False)))
    if device == "cuda":
        from fairseq import utils
        batch = utils.move_to_cuda(batch)
    return task, model, batch


class _FixedLogits(torch.nn.Module):
    """Stands in for the model in the 'loss' measurement: returns stored logits (a leaf that needs grad)."""

    def __init__(self, model, logits):
        super().__init__()
        self.decoder, self.logits, self.model = model.decoder, logits, model

    def forward(self, **_):
        return self.logits, None

    def get_targets(self, sample, net_output):
        return sample["target"]

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return torch.log_softmax(net_output[0].float(), dim=-1) if log_probs else torch.softmax(net_output[0], -1)


def main():
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        data = write_corpus(tmp, n_words=args.vocab // 2, sizes=(("train", 3000),), min_len=10, max_len=30)
        task, model, batch = build(data, args.dim, args.layers, args.max_tokens, device)
    model.train()
    criteria = {
        "label_smoothed_cross_entropy eps=0.1": LabelSmoothedCrossEntropyCriterion(task, False, 0.1),
        "label_smoothed_cross_entropy eps=0": LabelSmoothedCrossEntropyCriterion(task, False, 0.0),
        "focal_loss gamma=1": FocalLossCriterion(task, False, gamma=1.0),
        "focal_loss gamma=0": FocalLossCriterion(task, False, gamma=0.0),
        "focal_loss gamma=1 flsd-53": FocalLossCriterion(task, False, gamma_policy="flsd-53"),
        "focal_loss gamma=1 label-smoothing=0.1": FocalLossCriterion(task, False, gamma=1.0, label_smoothing=0.1),
    }
    with torch.no_grad():
        logits = model(**batch["net_input"])[0].detach()
    fixed = _FixedLogits(model, logits.requires_grad_())

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    times = {name: {"step": [], "loss": []} for name in criteria}
    for _ in range(args.repeats):
        for name, criterion in criteria.items():
            def step():
                model.zero_grad(set_to_none=True)
                loss, _, _ = criterion(model, batch)
                loss.backward()

            def loss_only():
                fixed.logits.grad = None
                loss, _, _ = criterion(fixed, batch)
                loss.backward()

            times[name]["step"].append(timed(step))
            times[name]["loss"].append(timed(loss_only))
    best = {name: {k: min(v) for k, v in t.items()} for name, t in times.items()}  # min: least disturbed run
    base = best["label_smoothed_cross_entropy eps=0.1"]
    print(f"device {device}, torch threads {torch.get_num_threads()}, vocab {len(task.target_dictionary)}, "
          f"dim {args.dim}, layers {args.layers}, {int(batch['ntokens'])} target tokens; best of {args.repeats}")
    print(f"{'criterion':42s} {'step ms':>9s} {'ratio':>6s} {'loss ms':>9s} {'ratio':>6s}   (ratio vs LS eps=0.1)")
    for name, m in best.items():
        print(f"{name:42s} {1e3 * m['step']:9.1f} {m['step'] / base['step']:6.2f} {1e3 * m['loss']:9.1f} "
              f"{m['loss'] / base['loss']:6.2f}")


if __name__ == "__main__":
    main()
