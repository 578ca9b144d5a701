"""The two Tree-LSTM engines against an independent per-node reference, and against each other (values and
gradients from the same weights). DGL is part of `make install` (the [dgl] extra), so the DGL test runs in CI."""

import importlib.util

import numpy as np
import pytest
import torch

from treelstm.engines import dgl_engine, get_engine, torch_engine
from treelstm.models import TreeLSTMClassifier
from treelstm.trees import TreeBatch, balanced_tree, parse_sst_line, tree_from_nested

requires_dgl = pytest.mark.skipif(importlib.util.find_spec("dgl") is None, reason="the [dgl] extra is not installed")

SST_LINES = [
    "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))) (3 (2 with) (4 (4 lovely) (2 performances)))))"
    " (2 .)))",
    "(1 (2 bad) (1 film))",
    "(4 good)",
    "(0 (0 (1 (2 not) (3 good)) (2 (2 at) (2 all))) (2 !))",
]


def _batch(seed=0):
    trees = [parse_sst_line(line) for line in SST_LINES]
    rng = np.random.default_rng(seed)
    trees += [tree_from_nested(balanced_tree([f"w{i}" for i in range(n)])) for n in (5, 9, 2)]
    ids = [rng.integers(0, 30, len(t.tokens)) for t in trees]
    return trees, ids, TreeBatch.collate(trees, ids)


def _reference(model, trees, ids):
    """Tai et al.'s equations node by node, in each tree's own post-order (no batching, no levels)."""
    cell, emb = model.cell, model.embedding.weight
    w, b = cell.gates.weight, cell.gates.bias
    mem = cell.mem_dim
    hidden = []
    for tree, tokens in zip(trees, ids):
        c, h = [None] * tree.n_nodes, [None] * tree.n_nodes
        for i in range(tree.n_nodes):
            if tree.left[i] < 0:
                x = emb[int(tokens[tree.word[i]])]
                c[i] = cell.leaf_cell.weight @ x + cell.leaf_cell.bias
                h[i] = torch.sigmoid(cell.leaf_output.weight @ x + cell.leaf_output.bias) * torch.tanh(c[i])
            else:
                left, right = tree.left[i], tree.right[i]
                z = w @ torch.cat([h[left], h[right]]) + b
                gi, gl, gr, gu = z[:mem], z[mem:2 * mem], z[2 * mem:3 * mem], z[3 * mem:]
                c[i] = torch.sigmoid(gi) * torch.tanh(gu) + torch.sigmoid(gl) * c[left] + torch.sigmoid(gr) * c[right]
                h[i] = torch.tanh(c[i])
        hidden.append(torch.stack(h))
    return hidden


def _model():
    torch.manual_seed(0)
    return TreeLSTMClassifier(torch.randn(30, 7), 2, mem_dim=6, dropout=0.0).double()


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {"embedding.weight", "cell.leaf_cell.weight", "cell.leaf_cell.bias",
                          "cell.leaf_output.weight", "cell.leaf_output.bias", "cell.gates.weight", "cell.gates.bias"}
    return grads


def _run(model, batch, engine, weights):
    model.zero_grad()
    hidden = engine(model.cell, batch, model.embedding(batch.leaf_words))
    (hidden * weights).sum().backward()
    return hidden.detach(), _grads(model)


def test_torch_engine_matches_per_node_reference():
    trees, ids, batch = _batch()
    model = _model()
    weights = torch.randn(batch.n_nodes, 6, dtype=torch.float64)
    hidden, grads = _run(model, batch, torch_engine, weights)

    # batch position of every (tree, node): invert the collate permutation via the per-tree node order
    sizes = [t.n_nodes for t in trees]
    heights = np.concatenate([t.height for t in trees])
    order = np.argsort(heights, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    model.zero_grad()
    reference = torch.cat(_reference(model, trees, ids))  # in concatenated per-tree order
    (reference * weights[torch.from_numpy(position)]).sum().backward()
    torch.testing.assert_close(hidden[torch.from_numpy(position)], reference.detach(), rtol=1e-12, atol=1e-12)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert sum(sizes) == batch.n_nodes


@requires_dgl
def test_dgl_engine_matches_torch_engine_values_and_gradients():
    _, _, batch = _batch(seed=1)
    model = _model()
    weights = torch.randn(batch.n_nodes, 6, dtype=torch.float64)
    hidden_t, grads_t = _run(model, batch, torch_engine, weights)
    hidden_d, grads_d = _run(model, batch, dgl_engine, weights)
    torch.testing.assert_close(hidden_d, hidden_t, rtol=1e-12, atol=1e-12)
    assert set(grads_d) == set(grads_t)
    for name in grads_t:
        torch.testing.assert_close(grads_d[name], grads_t[name], rtol=1e-10, atol=1e-12, msg=name)


@requires_dgl
def test_dgl_import_keeps_graphbolt_use_loud():
    from treelstm.dgl_compat import graphbolt_library_path, import_dgl

    dgl = import_dgl()
    assert hasattr(dgl, "prop_nodes_topo")
    import os
    import sys
    if not os.path.exists(graphbolt_library_path()):
        with pytest.raises(AttributeError, match="GraphBolt"):
            sys.modules["dgl.graphbolt"].ItemSampler


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown engine 'tensorflow'"):
        get_engine("tensorflow")
