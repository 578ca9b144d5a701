"""Losses of the per-class form against a soft target, with an analytic backward: probability targets (mixup, cutmix,
distillation) and label smoothing under the ``nn.CrossEntropyLoss`` contract (classes on dim 1).

The paper's focal loss for a target distribution q (Appendix A, "a simple extension of focal loss"; eq. 5 is its
binary case), with PyTorch's class weights w and its label smoothing q' = (1 - α) q + α / C:

    L = -Σ_k s_k (1 - p_k)^γ_k log p_k,     s_k = w_k q'_k

and the same form for every loss of the log-probabilities ℓ(log p; θ) (cross-entropy at γ = 0, inverse focal, Poly-1):
L = Σ_k s_k ℓ(log p_k; θ_k). A sample-dependent γ (FLSD, Proposition 2's policy) is evaluated per class term at that
term's own probability p_k: for a one-hot q only the target's term is left and this is the policy at p_y, FLSD itself.

The target coefficients are one affine map of the target, s_k = w_k (on · q_k + off): PyTorch's smoothing is
on = 1 - α, off = α / C; the paper's form of label smoothing (§5.1) on = 1 - α - α/(C-1), off = α/(C-1). Class-index
targets are q = onehot(y) (never built: s is written chunk by chunk), with 0 at ``ignore_index``.

Backward: with c_k = -dℓ/d(log p_k) (for focal loss g(p_k, γ_k), Proposition 1's factor) and d log p_k / dz_j =
δ_kj - p_j,

    dL/dz_j = p_j Σ_k s_k c_k - s_j c_j

evaluated in chunks of positions in the forward, written over the log-softmax buffer: that buffer is the only N×C
tensor kept between forward and backward, and the per-class temporaries stay chunk-sized.
"""

from __future__ import annotations

import torch

from focal_calibration import constants
from focal_calibration.losses.math import focal_terms
from focal_calibration.validation import check_finite_logits, compute_dtype, value_checks_enabled

__all__ = ["soft_target_loss"]


def _chunks(shape):
    """Index tuples (into the [N, C] / [N, C, S] tensors, into the [N] / [N, S] ones) covering them in pieces of about
    SOFT_TARGET_CHUNK_ELEMENTS logits: several samples a piece, or pieces of one sample's positions."""
    n, num_classes = shape[:2]
    positions = shape[2] if len(shape) == 3 else 1
    budget = constants.SOFT_TARGET_CHUNK_ELEMENTS
    if num_classes * positions <= budget:
        step = max(1, budget // (num_classes * positions))
        rows = [slice(i, min(i + step, n)) for i in range(0, n, step)]
        return [((r,), (r,)) if len(shape) == 2 else ((r, slice(None), slice(None)), (r, slice(None))) for r in rows]
    step = max(1, budget // num_classes)
    return [((slice(i, i + 1), slice(None), slice(j, j + step)), (slice(i, i + 1), slice(j, j + step)))
            for i in range(n) for j in range(0, positions, step)]


class _SoftTargetFunction(torch.autograd.Function):
    """Per-position Σ_k s_k ℓ(log p_k; θ) of logits [N, C] / [N, C, S]; the forward also writes dL/dz over its
    log-softmax. (2-D logits stay 2-D: torch's softmax over dim 1 of [N, C, 1] takes a strided kernel ~20x slower than
    its last-dimension one.)"""

    @staticmethod
    def forward(ctx, logits, target, weight, on, off, row_terms, param, ignore_index):
        num_classes = logits.shape[1]
        buffer = torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=1)  # log p, becomes the gradient
        dtype = buffer.dtype
        probabilities = target.is_floating_point()
        w = None if weight is None else weight.to(device=buffer.device, dtype=dtype).view(
            (1, num_classes) + (1,) * (logits.dim() - 2))
        if not probabilities:
            valid = (target != ignore_index).unsqueeze(1)  # [N, 1, S]
            safe = torch.where(valid, target.unsqueeze(1), torch.zeros((), dtype=target.dtype, device=target.device))
        needs_grad = ctx.needs_input_grad[0]
        loss = buffer.new_empty(buffer.shape[:1] + buffer.shape[2:])
        cross_entropy = row_terms is focal_terms and not callable(param) and not isinstance(param, torch.Tensor) \
            and param == 0  # γ = 0: the terms are -log p and c = 1, no per-class arithmetic
        for chunk, at in _chunks(buffer.shape):  # chunk: into [N, C(, S)]; at: into [N(, S)]
            log_p = buffer[chunk]
            if cross_entropy:
                terms, c = -log_p, None  # c = None: 1 for every class
            else:
                if callable(param):  # a sample-dependent γ, per class term at its own (detached) probability
                    theta = param(log_p.exp())
                elif isinstance(param, torch.Tensor) and param.dim() > 0:  # one γ per position
                    theta = param[at].unsqueeze(1)
                else:
                    theta = param
                if isinstance(theta, torch.Tensor):
                    theta = theta.to(device=log_p.device, dtype=dtype)
                terms, c = row_terms(log_p, theta)
            if probabilities:
                s = target[chunk].to(dtype) * on + off
                if w is not None:
                    s.mul_(w)
                # a class with s_k = 0 adds nothing, even where its log p_k is -inf (a masked class): no 0 · inf
                loss[at] = torch.where(s != 0, s * terms, 0.0).sum(1)
                if needs_grad:
                    sc = s if c is None else s.mul_(c)
                    log_p.exp_().mul_(sc.sum(1, keepdim=True)).sub_(sc)  # p_j Σ_k s_k c_k - s_j c_j
                continue
            # class indices: s = w (on · onehot(y) + off), never built -- the on part is a gather / scatter at y
            y = safe[chunk]
            weighted = terms if w is None else terms * w
            row_loss = weighted.gather(1, y).squeeze(1).mul_(on)
            if off:
                row_loss.add_(weighted.sum(1), alpha=off)
            loss[at] = row_loss
            if needs_grad:
                wc = w if c is None else (c if w is None else c.mul_(w))  # w_k c_k (None: all 1)
                wc_y = torch.ones_like(row_loss).unsqueeze(1) if wc is None else wc.expand_as(log_p).gather(1, y)
                total = wc_y * on  # Σ_k s_k c_k = on · w_y c_y + off · Σ_k w_k c_k
                if off:
                    total.add_(num_classes if wc is None else wc.expand_as(log_p).sum(1, keepdim=True), alpha=off)
                gradient = log_p.exp_().mul_(total)  # p_j Σ_k s_k c_k ...
                if off:
                    gradient.sub_(off if wc is None else wc * off)  # ... - off · w_j c_j ...
                gradient.scatter_add_(1, y, wc_y.mul_(-on))  # ... - on · w_y c_y at j = y
                gradient.masked_fill_(~valid[chunk], 0.0)  # exact 0 whatever an ignored position's logits
        if not probabilities:
            loss = torch.where(valid.squeeze(1), loss, 0.0)
        if value_checks_enabled(loss):  # a NaN / +inf logit, or a -inf one that makes the loss infinite, named
            check_finite_logits(logits, loss)
        ctx.gradient = buffer if needs_grad else None
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        gradient = ctx.gradient * grad_loss.to(ctx.gradient.dtype).unsqueeze(1)  # a new tensor: retain_graph works
        return (gradient.to(ctx.logits_dtype),) + (None,) * 7


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor, row_terms, param, *, weight=None, on: float = 1.0,
                     off: float = 0.0, ignore_index: int = -100) -> torch.Tensor:
    """Per-position Σ_k w_k (on · q_k + off) ℓ(log p_k; θ) (see the module docstring), with its analytic backward.

    Args:
        logits: ``[N, C]`` or ``[N, C, d1, ...]``, classes on dim 1, already checked.
        target: class probabilities of the logits' shape, or class indices ``[N]`` / ``[N, d1, ...]`` (q = onehot,
            0 at ``ignore_index``).
        row_terms: ``(log_p, θ) -> (loss, c)`` elementwise, c = -dℓ/d(log p) (e.g.
            :func:`focal_calibration.losses.math.focal_terms`).
        param: θ: a number, one value per position (the target's shape without the class dimension), or a callable
            of the detached probabilities (evaluated per class term).
        weight: per-class weights ``[C]`` or None. on, off: the target's affine map (label smoothing).

    Returns:
        The loss per position, ``[N]`` / ``[N, d1, ...]`` (float32 for half inputs).
    """
    n, num_classes = logits.shape[:2]
    spatial = logits.shape[2:]
    if logits.dim() > 2:  # [N, C, d1, ...] -> [N, C, S] (a view for contiguous logits)
        logits = logits.reshape(n, num_classes, -1)
        target = target.reshape(n, num_classes, -1) if target.is_floating_point() else target.reshape(n, -1)
        if isinstance(param, torch.Tensor) and param.dim() > 0:
            param = param.reshape(n, -1)
    loss = _SoftTargetFunction.apply(logits, target, weight, float(on), float(off), row_terms, param, ignore_index)
    return loss.reshape((n,) + tuple(spatial))
