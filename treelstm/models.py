"""The two text models of §5.1 / Appendix D.

* :class:`TreeLSTMClassifier`: the binary (constituency) Tree-LSTM of Tai et al. (2015), §3.2 and their released
  code: a leaf reads its word, c = W_c x + b_c, h = sigmoid(W_o x + b_o) * tanh(c); an inner node reads its
  children, [i, f_l, f_r, u] = W [h_l; h_r] + b, c = σ(i) ⊙ tanh(u) + σ(f_l) ⊙ c_l + σ(f_r) ⊙ c_r, h = tanh(c);
  every node is classified by softmax(W_s dropout(h)). Memory 150, GloVe inputs fine-tuned (Appendix D).
  How the tree is traversed is the engine's business (``treelstm.engines``); the cell is shared.
* :class:`GlobalPoolingCNN`: convolutions over word embeddings with a global max-pool (Lin et al. 2014 style), the
  paper's 20 Newsgroups model: three Conv1d(128, k=5) + ReLU, max-pool(5, stride 1) after the first two, global
  max over time, Linear(128) + ReLU + dropout, Linear(K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from treelstm.trees import TreeBatch

__all__ = ["TreeLSTMCell", "TreeLSTMClassifier", "GlobalPoolingCNN"]


class TreeLSTMCell(nn.Module):
    """Leaf and composition functions of the binary Tree-LSTM (Tai et al. 2015, constituency variant)."""

    def __init__(self, in_dim: int, mem_dim: int):
        super().__init__()
        self.mem_dim = mem_dim
        self.leaf_cell = nn.Linear(in_dim, mem_dim)
        self.leaf_output = nn.Linear(in_dim, mem_dim)
        self.gates = nn.Linear(2 * mem_dim, 4 * mem_dim)  # [h_left; h_right] -> i, f_left, f_right, u

    def leaf(self, x: torch.Tensor):
        c = self.leaf_cell(x)
        return c, torch.sigmoid(self.leaf_output(x)) * torch.tanh(c)

    def compose(self, left_c, left_h, right_c, right_h):
        i, f_left, f_right, u = self.gates(torch.cat([left_h, right_h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(f_left) * left_c + torch.sigmoid(f_right) * right_c
        return c, torch.tanh(c)


class TreeLSTMClassifier(nn.Module):
    """Embeddings -> Tree-LSTM (through an engine) -> per-node logits ``[n_nodes, K]`` in the batch's node order."""

    def __init__(self, embeddings: torch.Tensor, num_classes: int, mem_dim: int = 150, dropout: float = 0.5,
                 freeze_embeddings: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.embedding = nn.Embedding.from_pretrained(embeddings.clone(), freeze=freeze_embeddings)
        self.cell = TreeLSTMCell(embeddings.shape[1], mem_dim)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(mem_dim, num_classes)

    def forward(self, batch: TreeBatch, engine) -> torch.Tensor:
        hidden = engine(self.cell, batch, self.embedding(batch.leaf_words))
        return self.output(self.dropout(hidden))


class GlobalPoolingCNN(nn.Module):
    """``tokens [B, L]`` (0 = padding) -> logits ``[B, K]``; documents shorter than 21 tokens are padded to 21 so
    that the three k=5 convolutions and two pools leave at least one position."""

    MIN_LENGTH = 21

    def __init__(self, embeddings: torch.Tensor, num_classes: int, channels: int = 128, dropout: float = 0.5,
                 freeze_embeddings: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.embedding = nn.Embedding.from_pretrained(embeddings.clone(), freeze=freeze_embeddings, padding_idx=0)
        dim = embeddings.shape[1]
        self.conv1 = nn.Conv1d(dim, channels, 5)
        self.conv2 = nn.Conv1d(channels, channels, 5)
        self.conv3 = nn.Conv1d(channels, channels, 5)
        self.hidden = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(channels, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] < self.MIN_LENGTH:
            tokens = F.pad(tokens, (0, self.MIN_LENGTH - tokens.shape[1]))
        x = self.embedding(tokens).transpose(1, 2)          # [B, d, L]
        x = F.max_pool1d(F.relu(self.conv1(x)), 5, stride=1)
        x = F.max_pool1d(F.relu(self.conv2(x)), 5, stride=1)
        x = F.relu(self.conv3(x)).amax(dim=2)                # global max pooling over time
        return self.output(self.dropout(F.relu(self.hidden(x))))
