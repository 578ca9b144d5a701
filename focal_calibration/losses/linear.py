"""Focal loss straight from the features: the loss of ``logits = hidden @ weight.T + bias`` computed in chunks of
rows (and, for very large vocabularies, of classes), so that the ``[N × V]`` logits and their gradient never exist.

For a language model or a translation decoder the logits of a batch (tokens × vocabulary) and their gradient are the
largest tensors of a training step. Fused linear cross-entropy kernels (Liger-Kernel, Cut Cross-Entropy) avoid them
for cross-entropy; this module does it for the paper's focal loss, its γ policies, AdaFocal's signed γ and the
label-smoothed focal loss of the fairseq criterion.

Per chunk R of rows (``rows = constants.LINEAR_CHUNK_ELEMENTS // V``):

1. z = h_R Wᵀ + b, one block of classes at a time: the row max m, S = Σ_j exp(z_j - m) (the online softmax of
   several blocks), the target's logit z_y and, when asked, the argmax. log p_y = (z_y - m) - log S; γ comes from the
   detached p_y (a policy is called once per chunk, with that chunk's p_y); (L, c) = row_terms(log p_y, γ) with
   c = -dL/d(log p_y) = g(p_y, γ) (Proposition 1, :func:`focal_calibration.losses.math.focal_terms`).
2. The chunk's logit gradient G = c · (softmax - onehot) — with label smoothing
   G_j = p_j Σ_k s_k g_k - s_j g_j (:mod:`focal_calibration.losses.fused_smoothed`) — then dL/dh_R = G W,
   dL/dW += Gᵀ h_R, dL/db += Σ_rows G.

When a chunk holds every class (one block, the usual case) step 2 reuses step 1's logits: three matmuls over the
problem in all, as many as ``F.cross_entropy(h @ W.T)`` forward and backward, and the gradients are computed during
the forward, as Liger does (the backward only scales them by the incoming gradient). ``reduction="none"`` (whose
backward needs each row's incoming gradient) and ``recompute=True`` keep one or three numbers per row instead and
recompute the logits in the backward: a fourth matmul. With several blocks of classes (V > LINEAR_CHUNK_ELEMENTS /
LINEAR_MIN_ROWS, or ``chunk_classes`` < V) the logits of a block are recomputed for step 2 (and, with label
smoothing, once more for Σ_k s_k g_k, which needs the normaliser first).

Precision: float32 and float64 inputs compute in their dtype. Half (float16 / bfloat16) inputs multiply in their
dtype (the BLAS / cuBLAS kernels accumulate in float32) and do everything else in float32: the softmax, the focal
terms, the loss (returned in float32), the gradient accumulators of W, b and h (cast to the inputs' dtypes at the
end); the logit gradient G is rounded to the half dtype for the two gradient matmuls, as a materialised half-precision
backward would.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import nn

from focal_calibration import constants
from focal_calibration.losses.gamma import FixedGamma, GammaPolicy
from focal_calibration.losses.math import focal_terms, signed_focal_terms
from focal_calibration.losses.modules import AdaFocalLoss
from focal_calibration.validation import (check_finite, check_int, check_label_smoothing, check_labels_in_range,
                                          check_nonnegative_number,
                                          check_reduction, compute_dtype, prepare_gamma, value_checks_enabled)

__all__ = ["linear_focal_loss", "LinearFocalLoss", "LinearFocalStats", "chunk_plan"]

GammaArg = Union[float, torch.Tensor, Callable[[torch.Tensor], Union[float, torch.Tensor]]]


class LinearFocalStats(NamedTuple):
    """Per-row statistics of :func:`linear_focal_loss` (``return_stats=True``), shaped like the target, detached.

    Attributes:
        nll: -log p_y (0 at ignored rows), the loss's dtype: for perplexity.
        confidence: the top-1 softmax probability max_j p_j: for calibration statistics (ECE, AdaFocal's bins).
        prediction: the top-1 class (int64).
        correct: ``prediction == target`` (False at ignored rows).
        gamma: the γ each row used (the fixed γ repeated, or the policy's per-row value).
    """

    nll: torch.Tensor
    confidence: torch.Tensor
    prediction: torch.Tensor
    correct: torch.Tensor
    gamma: torch.Tensor


class _Options(NamedTuple):
    gamma: GammaArg
    alpha: float  # label smoothing: the true class gets 1 - α, every other class α / (V - 1)
    signed: bool  # AdaFocal's signed γ: inverse focal loss where γ < 0
    ignore_index: int
    reduction: str
    mode: str  # "eager": gradients in the forward; "recompute": in the backward; "value": no gradient
    want_stats: bool
    rows: int
    classes: int


def chunk_plan(n_rows: int, n_classes: int, chunk_rows: Optional[int] = None,
               chunk_classes: Optional[int] = None) -> tuple[int, int]:
    """(rows, classes) per chunk of :func:`linear_focal_loss` for N rows and V classes. By default
    rows = ``constants.LINEAR_CHUNK_ELEMENTS`` // V of every class; where that is fewer than
    ``constants.LINEAR_MIN_ROWS``, that many rows and blocks of budget // rows classes. Given sizes are used as they
    are (``chunk_rows`` alone: of every class); everything capped at N and V."""
    budget = constants.LINEAR_CHUNK_ELEMENTS
    rows = chunk_rows if chunk_rows is not None else max(budget // n_classes, constants.LINEAR_MIN_ROWS)
    rows = max(1, min(rows, n_rows))
    if chunk_classes is not None:
        classes = chunk_classes
    elif chunk_rows is not None or rows * n_classes <= budget:
        classes = n_classes
    else:
        classes = max(1, budget // rows)
    return rows, min(classes, n_classes)


class _Problem:
    """The inputs cut into row chunks × blocks of classes, the logits of one (rows, block) pair, and the gradient
    accumulators."""

    def __init__(self, hidden, weight, bias, options: _Options):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.dtype = compute_dtype(hidden.dtype)
        n_rows, n_classes = hidden.shape[0], weight.shape[0]
        self.n_classes = n_classes
        self.row_chunks = [slice(s, min(s + options.rows, n_rows)) for s in range(0, n_rows, options.rows)]
        self.blocks = [slice(s, min(s + options.classes, n_classes)) for s in range(0, n_classes, options.classes)]
        self.single_block = len(self.blocks) == 1
        self.grad_hidden = self.grad_weight = self.grad_bias = None

    def logits(self, rows: slice, block: slice) -> torch.Tensor:
        """z = h[rows] W[block]ᵀ + b[block], a fresh tensor in the compute dtype (the caller may overwrite it)."""
        w = self.weight[block].t()
        z = torch.mm(self.hidden[rows], w) if self.bias is None else torch.addmm(self.bias[block], self.hidden[rows], w)
        return z if z.dtype == self.dtype else z.to(self.dtype)

    def start_gradients(self, need_hidden: bool, need_weight: bool, need_bias: bool) -> None:
        zeros = dict(dtype=self.dtype, device=self.hidden.device)
        self.grad_hidden = torch.zeros(self.hidden.shape, **zeros) if need_hidden else None
        self.grad_weight = torch.zeros(self.weight.shape, **zeros) if need_weight else None
        self.grad_bias = torch.zeros(self.n_classes, **zeros) if need_bias else None

    def add_gradient(self, rows: slice, block: slice, grad_logits: torch.Tensor) -> None:
        """Accumulate dL/dh[rows] += G W[block], dL/dW[block] += Gᵀ h[rows], dL/db[block] += Σ_rows G."""
        if self.grad_bias is not None:
            self.grad_bias[block].add_(grad_logits.sum(0))
        g = grad_logits if grad_logits.dtype == self.weight.dtype else grad_logits.to(self.weight.dtype)
        same = self.dtype == self.weight.dtype  # else half inputs: products in half, accumulated in float32
        if self.grad_hidden is not None:
            out = self.grad_hidden[rows]
            out.addmm_(g, self.weight[block]) if same else out.add_(torch.mm(g, self.weight[block]))
        if self.grad_weight is not None:
            out = self.grad_weight[block]
            out.addmm_(g.t(), self.hidden[rows]) if same else out.add_(torch.mm(g.t(), self.hidden[rows]))

    def gradients(self, scale=None):
        """The accumulated gradients (times ``scale``, a 0-d tensor) in the inputs' dtypes."""
        out = []
        for grad, like in ((self.grad_hidden, self.hidden), (self.grad_weight, self.weight),
                           (self.grad_bias, self.bias)):
            if grad is not None and scale is not None:
                grad.mul_(scale.to(grad.dtype))
            out.append(None if grad is None else grad.to(like.dtype))
        return tuple(out)


class _Scan(NamedTuple):
    """Step 1 over the blocks of one row chunk."""
    row_max: torch.Tensor  # m
    sum_exp: torch.Tensor  # S = Σ exp(z - m)
    target_logit: torch.Tensor  # z_y
    prediction: Optional[torch.Tensor]  # argmax (want_stats)
    kept: Optional[torch.Tensor]  # one block: its logits ("logits") or exp(z - m) ("exp"); else None


def _block_target(target: torch.Tensor, block: slice, width: int):
    """(index of the target inside the block, clamped, [r, 1]; whether the target lies in the block [r])."""
    local = target - block.start
    inside = (local >= 0) & (local < width)
    return local.clamp(0, width - 1)[:, None], inside


def _scan(problem: _Problem, rows: slice, target: torch.Tensor, keep: str, want_argmax: bool) -> _Scan:
    row_max = sum_exp = target_logit = prediction = kept = None
    for block in problem.blocks:
        z = problem.logits(rows, block)
        index, inside = _block_target(target, block, z.shape[1])
        z_t = z.gather(1, index).squeeze(1)
        target_logit = z_t if target_logit is None else torch.where(inside, z_t, target_logit)
        if want_argmax:
            block_max, block_arg = z.max(dim=1)
            block_arg = block_arg + block.start
            prediction = block_arg if prediction is None else torch.where(block_max > row_max, block_arg, prediction)
        else:
            block_max = z.amax(dim=1)
        if row_max is not None:  # online softmax: rescale the sum so far to the new max
            new_max = torch.maximum(row_max, block_max)
            sum_exp = sum_exp * torch.exp(row_max - new_max)
            row_max = new_max
        else:
            row_max = block_max
        if problem.single_block and keep == "logits":
            kept = z
            block_sum = (z - row_max[:, None]).exp_().sum(1)
        else:
            z.sub_(row_max[:, None]).exp_()  # the logits are not needed any more (or kept as exp(z - m))
            block_sum = z.sum(1)
            kept = z if problem.single_block else None
        sum_exp = block_sum if sum_exp is None else sum_exp + block_sum
    return _Scan(row_max, sum_exp, target_logit, prediction, kept)


def _chunk_gamma(gamma, rows: slice, log_p_y: torch.Tensor):
    """γ of a chunk's rows: a policy called with their detached p_y, their slice of a per-row tensor, or the number."""
    if callable(gamma):
        gamma = gamma(torch.exp(log_p_y))
    elif isinstance(gamma, torch.Tensor) and gamma.dim() > 0:
        gamma = gamma[rows]
    if isinstance(gamma, torch.Tensor):
        return gamma.to(device=log_p_y.device, dtype=log_p_y.dtype)
    return gamma


def _per_row(gamma) -> bool:
    return isinstance(gamma, torch.Tensor) and gamma.dim() > 0


def _smoothing_weights(alpha: float, n_classes: int):
    off = alpha / (n_classes - 1)  # every wrong class
    return off, 1.0 - alpha - off  # the true class's extra weight (it also gets `off` in a sum over all classes)


def _smoothed_block(log_p, index, inside, gamma_col):
    """Focal terms and g of every class of a block (from its log p), and the target's (0 where it is elsewhere)."""
    terms, g = focal_terms(log_p, gamma_col)
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    return (terms, g, torch.where(inside, terms.gather(1, index).squeeze(1), zero),
            torch.where(inside, g.gather(1, index).squeeze(1), zero))


def _sub_rows(shape):
    """Row slices of a [rows, classes] block with at most SMOOTHED_FOCAL_CHUNK_ELEMENTS entries each: the per-class
    focal terms take several temporaries of that size."""
    step = max(1, constants.SMOOTHED_FOCAL_CHUNK_ELEMENTS // shape[1])
    return [slice(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


def _rows_of(gamma_col, sub: slice):
    return gamma_col[sub] if _per_row(gamma_col) else gamma_col


def _smoothed_block_gradient(log_p, target, block, gamma_col, g_y, weighted_sum, coef, off, on):
    """A block's G from its log p (in place, sub-chunk by sub-chunk of rows), g recomputed."""
    index, inside = _block_target(target, block, log_p.shape[1])
    for sub in _sub_rows(log_p.shape):
        _, g = focal_terms(log_p[sub], _rows_of(gamma_col, sub))
        _smoothed_gradient(log_p[sub], g, index[sub], inside[sub], g_y[sub], weighted_sum[sub], coef[sub], off, on)
    return log_p


def _smoothed_gradient(log_p, g, index, inside, g_y, weighted_sum, coef, off, on):
    """G_j = k (p_j Σ_k s_k g_k - s_j g_j) over a block, in place over log_p and g (k = coef per row)."""
    grad = log_p.exp_().mul_((weighted_sum * coef)[:, None])
    grad.sub_(g.mul_((off * coef)[:, None]))
    return grad.scatter_add_(1, index, (-on * coef * g_y * inside)[:, None])


def _plain_gradient(exp_z, index, inside, coef, scale_rows):
    """G = coef · (softmax - onehot) over a block from exp(z - shift), in place: softmax = exp_z · scale_rows."""
    grad = exp_z.mul_((coef * scale_rows)[:, None])
    return grad.scatter_add_(1, index, (-coef * inside)[:, None])


class _ChunkResult(NamedTuple):
    loss: torch.Tensor  # [r]
    saved: Optional[tuple]  # per-row tensors for the backward (mode "recompute")
    nll: torch.Tensor
    confidence: torch.Tensor
    prediction: Optional[torch.Tensor]
    gamma: torch.Tensor


def _forward_chunk(problem: _Problem, rows: slice, target, valid, gamma, options: _Options,
                   coef_scale) -> _ChunkResult:
    """Loss, statistics and (mode "eager") the gradient of one row chunk. ``coef_scale`` [r] multiplies each row's
    gradient (the reduction's 1/n, 0 at ignored rows)."""
    smoothing = options.alpha > 0
    eager = options.mode == "eager"
    keep = "logits" if smoothing else "exp"
    scan = _scan(problem, rows, target, keep, options.want_stats)
    log_sum = torch.log(scan.sum_exp)
    log_p_y = (scan.target_logit - scan.row_max) - log_sum
    if value_checks_enabled(log_p_y):  # every row (ignored ones at class 0): a non-finite logit makes G NaN
        check_finite(log_p_y, "logits")
    lse = scan.row_max + log_sum
    row_gamma = _chunk_gamma(gamma, rows, log_p_y)
    zero = torch.zeros((), dtype=log_p_y.dtype, device=log_p_y.device)
    saved = None
    if not smoothing:
        loss, c = (signed_focal_terms if options.signed else focal_terms)(log_p_y, row_gamma)
        loss, c = torch.where(valid, loss, zero), torch.where(valid, c, zero)
        if eager:
            coef = c * coef_scale
            for block in problem.blocks:
                index, inside = _block_target(target, block, block.stop - block.start)
                if scan.kept is not None:  # one block: exp(z - m) from step 1, softmax = exp(z - m) / S
                    grad = _plain_gradient(scan.kept, index, inside, coef, 1.0 / scan.sum_exp)
                else:
                    exp_z = problem.logits(rows, block).sub_(lse[:, None]).exp_()
                    grad = _plain_gradient(exp_z, index, inside, coef, torch.ones_like(coef))
                problem.add_gradient(rows, block, grad)
        elif options.mode == "recompute":
            saved = (lse, c)
    else:
        off, on = _smoothing_weights(options.alpha, problem.n_classes)
        gamma_col = row_gamma[:, None] if _per_row(row_gamma) else row_gamma
        sum_terms, sum_g, term_y, g_y = (torch.zeros_like(lse) for _ in range(4))
        one_block = scan.kept is not None
        for block in problem.blocks:  # Σ_k f(p_k) and Σ_k g_k need the normaliser: after step 1
            log_p = (scan.kept if one_block else problem.logits(rows, block)).sub_(lse[:, None])
            index, inside = _block_target(target, block, log_p.shape[1])
            for sub in _sub_rows(log_p.shape):  # per-class temporaries of a few MB (as fused_smoothed)
                terms, g, t_y, gy = _smoothed_block(log_p[sub], index[sub], inside[sub], _rows_of(gamma_col, sub))
                sum_terms[sub] += terms.sum(1)
                sum_g[sub] += g.sum(1)
                term_y[sub] += t_y
                g_y[sub] += gy
                if one_block and eager:  # these rows' sums are complete: their gradient now, reusing g
                    _smoothed_gradient(log_p[sub], g, index[sub], inside[sub], g_y[sub],
                                       off * sum_g[sub] + on * g_y[sub], coef_scale[sub], off, on)
            if one_block and eager:
                problem.add_gradient(rows, block, log_p)  # log_p now holds G
        loss = torch.where(valid, off * sum_terms + on * term_y, zero)
        weighted_sum = off * sum_g + on * g_y  # Σ_k s_k g_k
        if eager and not one_block:
            for block in problem.blocks:
                log_p = problem.logits(rows, block).sub_(lse[:, None])
                problem.add_gradient(rows, block, _smoothed_block_gradient(
                    log_p, target, block, gamma_col, g_y, weighted_sum, coef_scale, off, on))
        elif options.mode == "recompute":
            saved = (lse, weighted_sum, torch.zeros_like(lse) + row_gamma, g_y)
    confidence = torch.reciprocal(scan.sum_exp)  # max_j p_j = exp(m - lse) = 1 / S
    gamma_rows = torch.zeros_like(lse) + row_gamma  # no host sync for a 0-d tensor γ
    nll = torch.where(valid, -log_p_y, zero)
    return _ChunkResult(loss, saved, nll, confidence, scan.prediction, gamma_rows)


def _backward_chunk(problem: _Problem, rows: slice, target, saved, coef_scale, options: _Options) -> None:
    """Recompute the logits of one row chunk and accumulate its gradient (modes "recompute")."""
    if options.alpha == 0:
        lse, c = saved
        coef = c * coef_scale
        for block in problem.blocks:
            exp_z = problem.logits(rows, block).sub_(lse[:, None]).exp_()
            index, inside = _block_target(target, block, exp_z.shape[1])
            problem.add_gradient(rows, block, _plain_gradient(exp_z, index, inside, coef, torch.ones_like(coef)))
        return
    lse, weighted_sum, gamma_rows, g_y = saved
    off, on = _smoothing_weights(options.alpha, problem.n_classes)
    for block in problem.blocks:
        log_p = problem.logits(rows, block).sub_(lse[:, None])
        problem.add_gradient(rows, block, _smoothed_block_gradient(
            log_p, target, block, gamma_rows[:, None], g_y, weighted_sum, coef_scale, off, on))


class _LinearFocalFunction(torch.autograd.Function):
    """Per-row (reduction "none") or reduced loss from the features; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, options: _Options, grads_needed):
        problem = _Problem(hidden, weight, bias, options)
        valid = target != options.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        dtype = problem.dtype
        scale = torch.ones((), dtype=dtype, device=hidden.device)
        if options.reduction == "mean":
            scale = scale / valid.sum().clamp_min(1).to(dtype)
        if options.mode == "eager":
            problem.start_gradients(*grads_needed)
        n_rows = hidden.shape[0]
        loss = torch.empty(n_rows, dtype=dtype, device=hidden.device)
        nll, confidence, gamma_rows = torch.empty_like(loss), torch.empty_like(loss), torch.empty_like(loss)
        prediction = torch.zeros(n_rows if options.want_stats else 0, dtype=torch.long, device=hidden.device)
        saved = []
        for rows in problem.row_chunks:
            row_valid = valid[rows]
            coef_scale = torch.where(row_valid, scale, torch.zeros_like(scale))
            out = _forward_chunk(problem, rows, safe_target[rows], row_valid, options.gamma, options, coef_scale)
            loss[rows], nll[rows], confidence[rows], gamma_rows[rows] = out.loss, out.nll, out.confidence, out.gamma
            if options.want_stats:
                prediction[rows] = out.prediction
            if out.saved is not None:
                saved.append(out.saved)
        correct = (prediction == target) & valid if options.want_stats else \
            torch.zeros(0, dtype=torch.bool, device=hidden.device)
        result = loss if options.reduction == "none" else loss.sum() * scale
        ctx.options, ctx.mode = options, options.mode
        if options.mode == "eager":
            ctx.problem = problem
        elif options.mode == "recompute":
            ctx.grads_needed = grads_needed
            ctx.per_row = [torch.cat(parts) for parts in zip(*saved)]
            ctx.save_for_backward(hidden, weight, bias, safe_target, valid, scale)
        ctx.mark_non_differentiable(nll, confidence, prediction, correct, gamma_rows)
        return result, nll, confidence, prediction, correct, gamma_rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *_):
        if ctx.mode == "eager":
            problem = ctx.problem
            if problem is None:
                raise RuntimeError("linear_focal_loss computes its gradients in the forward, so its graph can be "
                                   "backpropagated once; pass recompute=True to use retain_graph")
            ctx.problem = None
            return problem.gradients(grad_loss) + (None, None, None)
        hidden, weight, bias, target, valid, scale = ctx.saved_tensors
        options = ctx.options
        problem = _Problem(hidden, weight, bias, options)
        problem.start_gradients(*ctx.grads_needed)
        grad_rows = grad_loss.to(problem.dtype) * (scale if options.reduction != "none" else 1.0)
        grad_rows = torch.where(valid, grad_rows.expand(valid.shape), torch.zeros_like(scale))
        start = 0
        for rows in problem.row_chunks:
            count = rows.stop - rows.start
            saved = tuple(t[start:start + count] for t in ctx.per_row)
            start += count
            _backward_chunk(problem, rows, target[rows], saved, grad_rows[rows], options)
        return problem.gradients() + (None, None, None)


def linear_focal_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                      bias: Optional[torch.Tensor] = None, *, gamma: GammaArg = 1.0, label_smoothing: float = 0.0,
                      signed_gamma: bool = False, ignore_index: int = -100, reduction: str = "mean",
                      return_stats: bool = False, recompute: bool = False, chunk_rows: Optional[int] = None,
                      chunk_classes: Optional[int] = None):
    """Focal loss -(1 - p_y)^γ log p_y of the logits ``hidden @ weight.T + bias``, never materialising them.

    Equal, to rounding, to :func:`focal_calibration.losses.fused.focal_loss` (or, with ``label_smoothing``,
    :func:`focal_calibration.losses.fused_smoothed.focal_label_smoothed_loss_classes_last`) on
    ``F.linear(hidden, weight, bias)``,
    with the gradients of ``hidden``, ``weight`` and ``bias``; it holds one chunk of logits at a time (see the module
    docstring for the algorithm, the chunk sizes and the precision of half inputs).

    Args:
        hidden: ``[..., d]`` features (the output layer's input), float64 / float32 / float16 / bfloat16.
        weight: ``[V, d]`` output projection (``nn.Linear(d, V).weight``, or a tied embedding), the hidden's dtype.
        target: ``[...]`` class indices in [0, V); entries equal to ``ignore_index`` contribute 0 loss and gradient.
        bias: optional ``[V]`` bias.
        gamma: a number >= 0 (0 is cross-entropy), a per-sample tensor shaped like ``target``, or a callable of the
            detached p_y returning γ per row (a :class:`~focal_calibration.losses.gamma.GammaPolicy` such as
            FLSD-53, or AdaFocal's ``AdaFocalLoss.gamma_of`` with ``signed_gamma=True``). A callable is called once
            per chunk of rows with that chunk's p_y.
        label_smoothing: α in [0, 1]: focal loss against the smoothed target that gives the true class 1 - α and
            every other class α / (V - 1), -Σ_k s_k (1 - p_k)^γ log p_k (the fairseq criterion's
            ``--label-smoothing``; γ = 0 is label-smoothed cross-entropy).
        signed_gamma: γ may be negative, meaning inverse focal loss -(1 + p_y)^|γ| log p_y (AdaFocal's form).
        ignore_index: target value to skip.
        reduction: ``"mean"`` (over non-ignored rows; 0 if none), ``"sum"`` or ``"none"`` (shaped like ``target``).
        return_stats: also return a :class:`LinearFocalStats` (per-row NLL, top-1 confidence, prediction,
            correctness, γ), from the same pass over the logits.
        recompute: compute the gradients in the backward, recomputing the logits (one more matmul) instead of during
            the forward; the graph may then be backpropagated more than once. ``reduction="none"`` always recomputes.
        chunk_rows, chunk_classes: rows and classes per chunk (default: ``constants.LINEAR_CHUNK_ELEMENTS`` // V
            rows, every class; the peak extra memory is a few chunks of logits plus the gradients).

    Returns:
        The loss (0-d, or shaped like ``target``; float32 for half inputs), and the statistics when ``return_stats``.

    Raises:
        ValueError / TypeError: shapes, dtypes, γ, α, a label out of range or a non-finite logit (the last two on CPU
            tensors, or everywhere with value checks on: :func:`focal_calibration.set_value_checks`).
    """
    check_reduction(reduction)
    hidden, weight, bias, target = _check_inputs(hidden, weight, bias, target)
    alpha = check_label_smoothing(label_smoothing)
    if alpha > 0 and signed_gamma:
        raise ValueError("label_smoothing applies to focal loss with γ >= 0, not to a signed γ (signed_gamma=True)")
    if alpha > 0 and weight.shape[0] < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got V={weight.shape[0]}")
    gamma = prepare_gamma(gamma, target.shape, signed=signed_gamma)
    if isinstance(gamma, torch.Tensor) and gamma.dim() > 0:
        gamma = gamma.reshape(-1)
    target1d = target.reshape(-1)
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    if value_checks_enabled(target1d):
        check_labels_in_range(target1d, weight.shape[0], ignore_index)
    for value, name in ((chunk_rows, "chunk_rows"), (chunk_classes, "chunk_classes")):
        if value is not None:
            check_int(value, name, 1)
    rows, classes = chunk_plan(hidden2d.shape[0], weight.shape[0], chunk_rows, chunk_classes)
    grads_needed = (hidden2d.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    if not (torch.is_grad_enabled() and any(grads_needed)):
        mode = "value"
    else:
        mode = "recompute" if recompute or reduction == "none" else "eager"
    options = _Options(gamma, alpha, bool(signed_gamma), ignore_index, reduction, mode, bool(return_stats), rows,
                       classes)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, nll, confidence, prediction, correct, gamma_rows = _LinearFocalFunction.apply(
            hidden2d, weight, bias, target1d, options, grads_needed)
    if reduction == "none":
        loss = loss.reshape(target.shape)
    if not return_stats:
        return loss
    shape = target.shape
    return loss, LinearFocalStats(nll.reshape(shape), confidence.reshape(shape), prediction.reshape(shape),
                                  correct.reshape(shape), gamma_rows.reshape(shape))


def _check_inputs(hidden, weight, bias, target):
    """Shapes, dtypes and devices of the features, the projection, the bias and the target; under autocast the
    floating inputs are cast to its dtype, as ``F.linear`` would be."""
    for tensor, name in ((hidden, "hidden"), (weight, "weight")) + (((bias, "bias"),) if bias is not None else ()):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex() or \
            target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {getattr(target, 'dtype', type(target))}")
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError(f"hidden must be [..., d] and weight [V, d], got shapes {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dimension d={hidden.shape[-1]} does not match weight [V, d] = "
                         f"{tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one class (row), got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) (one entry per class), got {tuple(bias.shape)}")
    if hidden.shape[:-1] != target.shape:
        raise ValueError(f"shape mismatch: hidden has shape {tuple(hidden.shape)} (features last), so target must "
                         f"have shape {tuple(hidden.shape[:-1])}, got {tuple(target.shape)}")
    if target.numel() == 0:
        raise ValueError(f"linear_focal_loss got an empty batch (hidden shape {tuple(hidden.shape)})")
    devices = {t.device for t in (hidden, weight, bias, target) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"hidden, weight, bias and target must be on one device, got {sorted(map(str, devices))}")
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    dtypes = {t.dtype for t in (hidden, weight, bias) if t is not None}
    if len(dtypes) > 1:
        raise TypeError(f"hidden, weight and bias must have one dtype, got {', '.join(sorted(map(str, dtypes)))}")
    return hidden, weight, bias, target


class LinearFocalLoss(nn.Module):
    """:func:`linear_focal_loss` as a module: ``loss(hidden, weight, target, bias=None)``.

    Args:
        gamma: a number, a :class:`~focal_calibration.losses.gamma.GammaPolicy` (FL-γ, FLSc, FLSD-53, Proposition 2)
            or an :class:`~focal_calibration.losses.modules.AdaFocalLoss`, whose per-bin signed γ is used (its state
            stays in that module: keep calling its ``observe_validation``).
        label_smoothing, reduction, ignore_index: as :func:`linear_focal_loss`.

    Example::

        head = nn.Linear(512, 32000, bias=False)
        loss = LinearFocalLoss(parse_gamma_policy("flsd-53"))(features, head.weight, target)
    """

    def __init__(self, gamma: Union[float, GammaPolicy, AdaFocalLoss] = 1.0, label_smoothing: float = 0.0,
                 reduction: str = "mean", ignore_index: int = -100):
        super().__init__()
        self.adafocal = gamma if isinstance(gamma, AdaFocalLoss) else None
        self.policy = None if self.adafocal is not None else (
            gamma if isinstance(gamma, GammaPolicy) else FixedGamma(gamma))
        self.label_smoothing = check_nonnegative_number(label_smoothing, "label_smoothing")
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the γ policy (epoch-scheduled γ)."""
        (self.policy or self.adafocal).set_epoch(epoch)

    def forward(self, hidden, weight, target, bias=None):
        if self.adafocal is not None:
            gamma, signed = self.adafocal.gamma_of, True
        else:
            gamma, signed = (self.policy if self.policy.sample_dependent else self.policy(None)), False
        return linear_focal_loss(hidden, weight, target, bias, gamma=gamma, label_smoothing=self.label_smoothing,
                                 signed_gamma=signed, ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self):
        what = "AdaFocal" if self.adafocal is not None else repr(self.policy)
        return (f"gamma={what}, label_smoothing={self.label_smoothing:g}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}")
