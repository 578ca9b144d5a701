"""Tree-LSTM engines (pure-PyTorch level-synchronous vs DGL prop_nodes_topo) and GP-CNN training throughput.

    python benchmarks/treelstm_engines.py [--repeats 20] [--threads 2]

Tree-LSTM: forward + backward of the same batch (25 random binary trees of 15-25 leaves, GloVe-300 inputs, memory
150, a loss on every node) with the same weights through both engines, interleaved, median of ``--repeats``; prints
the DGL / torch time ratio (> 1: the torch engine is faster). GP-CNN: training steps (forward, backward, Adam) on
batches of 64 random documents, sentences (documents) per second, for TREC-length questions (34 tokens, 50-d) and
20-Newsgroups-length documents (1,000 tokens, 100-d as the paper's code).

Measured on the 2-core development machine (torch 2.14.1 CPU, dgl 2.1.0; shared with other jobs, load average ~12,
so absolute times are noisy -- the ratio is what matters):

    --threads 1:  torch engine 27-33 ms, dgl engine 50-56 ms  -> dgl/torch = 1.69x, 1.82x (two runs)
    --threads 2:  torch engine 85 ms,    dgl engine 237 ms    -> dgl/torch = 2.78x
    GP-CNN, 1 thread: ~1,430 sentences/s (TREC-like), ~36 documents/s (20NG-like); 2 threads: 229 / 21
    (on the busy machine a second thread costs more in synchronisation than it gains)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from treelstm.engines import dgl_engine, torch_engine  # noqa: E402
from treelstm.models import GlobalPoolingCNN, TreeLSTMClassifier  # noqa: E402
from treelstm.trees import TreeBatch, tree_from_nested  # noqa: E402


def random_tree(tokens, rng):
    if len(tokens) == 1:
        return tokens[0]
    cut = int(rng.integers(1, len(tokens)))
    return (random_tree(tokens[:cut], rng), random_tree(tokens[cut:], rng))


def tree_batch(n_trees, vocab, rng):
    trees = [tree_from_nested(random_tree([f"w{i}" for i in range(int(rng.integers(15, 26)))], rng))
             for _ in range(n_trees)]
    labels = [rng.integers(0, 2, t.n_nodes) for t in trees]
    trees = [t.with_labels(lab) for t, lab in zip(trees, labels)]
    return TreeBatch.collate(trees, [rng.integers(0, vocab, len(t.tokens)) for t in trees])


def time_step(step, repeats):
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_treelstm(repeats):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    batch = tree_batch(25, 5000, rng)
    model = TreeLSTMClassifier(torch.randn(5000, 300) * 0.1, 2, mem_dim=150, dropout=0.0)

    def step(engine):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch, engine), batch.labels, reduction="sum").backward()

    for engine in (torch_engine, dgl_engine):  # warm-up (DGL import, allocator)
        step(engine)
    times = {"torch": [], "dgl": []}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        times["torch"].append(time_step(lambda: step(torch_engine), 1))
        times["dgl"].append(time_step(lambda: step(dgl_engine), 1))
    t_torch, t_dgl = statistics.median(times["torch"]), statistics.median(times["dgl"])
    levels = len(batch.level_offsets) - 1
    print(f"Tree-LSTM fwd+bwd, 25 trees / {batch.n_nodes} nodes / {levels} levels, h=150, in=300:")
    print(f"  torch engine {1000 * t_torch:8.2f} ms   dgl engine {1000 * t_dgl:8.2f} ms   "
          f"dgl/torch = {t_dgl / t_torch:.2f}x")


def bench_gpcnn(repeats):
    torch.manual_seed(0)
    for name, length, dim, classes in (("TREC-like (34 tokens, 50-d)", 34, 50, 6),
                                       ("20NG-like (1000 tokens, 100-d)", 1000, 100, 20)):
        model = GlobalPoolingCNN(torch.randn(20000, dim), classes)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        tokens = torch.randint(1, 20000, (64, length))
        labels = torch.randint(0, classes, (64,))

        def step():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(tokens), labels).backward()
            optimizer.step()

        step()
        seconds = time_step(step, repeats if length < 100 else max(3, repeats // 4))
        print(f"GP-CNN training, {name}, batch 64: {64 / seconds:10.1f} sentences/s ({1000 * seconds:.1f} ms/step)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_treelstm(args.repeats)
    bench_gpcnn(args.repeats)


if __name__ == "__main__":
    main()
