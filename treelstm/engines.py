"""Tree-LSTM propagation engines: ``engine(cell, batch, leaf_inputs) -> h [n_nodes, mem]`` in batch node order.

* ``torch`` (default): level-synchronous. A :class:`~treelstm.trees.TreeBatch` holds the nodes of all trees sorted
  by height, so level k is a contiguous block whose children lie in lower levels: the leaves are computed in one
  call, then each level is one gather (``index_select``) + one composition + one slice write into a state buffer.
  The number of Python steps is the tallest tree's height, not the number of nodes.
* ``dgl``: the same cell through DGL message passing over the batched trees (edges child -> parent),
  ``dgl.prop_nodes_topo`` visiting topological frontiers, as DGL's own Tree-LSTM example. Left and right children
  are told apart by an edge feature, not by mailbox order. Needs the optional ``dgl`` extra; imported lazily through
  :mod:`treelstm.dgl_compat`.

Both return identical values and gradients for the same weights (tests/test_treelstm_engines.py);
benchmarks/treelstm_engines.py times them.
"""

from __future__ import annotations

import warnings

import torch

from treelstm.trees import TreeBatch

__all__ = ["ENGINES", "get_engine", "torch_engine", "dgl_engine"]


def torch_engine(cell, batch: TreeBatch, leaf_inputs: torch.Tensor) -> torch.Tensor:
    mem = cell.mem_dim
    n_leaves, offsets = batch.n_leaves, batch.level_offsets
    leaf_c, leaf_h = cell.leaf(leaf_inputs)
    # One buffer of [c | h] rows. Slice writes are recorded by autograd; index_select keeps only the indices for
    # its backward, so writing later levels after reading earlier ones is safe.
    state = leaf_inputs.new_zeros(batch.n_nodes, 2 * mem)
    state[:n_leaves] = torch.cat([leaf_c, leaf_h], dim=1)
    for start, stop in zip(offsets[1:-1], offsets[2:]):
        left = state.index_select(0, batch.left[start - n_leaves:stop - n_leaves])
        right = state.index_select(0, batch.right[start - n_leaves:stop - n_leaves])
        c, h = cell.compose(left[:, :mem], left[:, mem:], right[:, :mem], right[:, mem:])
        state[start:stop] = torch.cat([c, h], dim=1)
    return state[:, mem:]


def dgl_engine(cell, batch: TreeBatch, leaf_inputs: torch.Tensor) -> torch.Tensor:
    from treelstm.dgl_compat import import_dgl

    dgl = import_dgl()
    n_nodes, n_leaves, mem = batch.n_nodes, batch.n_leaves, cell.mem_dim
    parents = torch.arange(n_leaves, n_nodes)
    graph = dgl.graph((torch.cat([batch.left, batch.right]), torch.cat([parents, parents])), num_nodes=n_nodes)
    graph.edata["is_right"] = torch.cat([torch.zeros(len(parents)), torch.ones(len(parents))]).to(leaf_inputs)
    leaf_c, leaf_h = cell.leaf(leaf_inputs)
    inner_zeros = leaf_inputs.new_zeros(n_nodes - n_leaves, mem)
    graph.ndata["c"] = torch.cat([leaf_c, inner_zeros])
    graph.ndata["h"] = torch.cat([leaf_h, inner_zeros])

    def message(edges):
        return {"c": edges.src["c"], "h": edges.src["h"], "is_right": edges.data["is_right"]}

    def reduce(nodes):
        box = nodes.mailbox                                   # [n, 2, ...], arrival order unspecified
        swap = box["is_right"][:, :1] > 0.5                  # message 0 came from the right child
        c0, c1, h0, h1 = box["c"][:, 0], box["c"][:, 1], box["h"][:, 0], box["h"][:, 1]
        left_c, right_c = torch.where(swap, c1, c0), torch.where(swap, c0, c1)
        left_h, right_h = torch.where(swap, h1, h0), torch.where(swap, h0, h1)
        c, h = cell.compose(left_c, left_h, right_c, right_h)
        return {"c": c, "h": h}

    with warnings.catch_warnings():
        # the first topological frontier (the leaves) has no in-edges; DGL warns about it every time
        warnings.filterwarnings("ignore", message=".*does not contain valid edges")
        dgl.prop_nodes_topo(graph, message, reduce)
    return graph.ndata["h"]


ENGINES = {"torch": torch_engine, "dgl": dgl_engine}


def get_engine(name: str):
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    return ENGINES[name]
