"""Fused Triton kernels for focal loss on CUDA: the plain loss (§4) and the label-smoothed one (fairseq criterion).

    focal_loss(logits, target, gamma=gamma, backend="triton")     # "auto" picks these for CUDA tensors
    focal_loss_classes_last(logits, target, gamma, backend="triton")

Plain focal loss, per row of logits z with target y (Mukhoti et al. 2020, §4 and Proposition 1 on the logits):

    forward   one read of the row: online max m and S = Σ exp(z - m) in blocks; log p_y = (z_y - m) - log S;
              writes L = -(1 - p_y)^γ log p_y, g(p_y, γ), log p_y, m and log S (five numbers per row)
    backward  one read and one fresh write: dL/dz = dL_out · g · (exp(z - m - log S) - onehot(y))

γ is a number, a per-row tensor, or a threshold table bucketized in the kernel (FLSD-53 / 532 / Proposition 2:
``SampleDependentGamma.tables()``); any other policy callable gets the kernel's p_y (a first launch at γ = 0 gives
log p_y, the policy maps p_y to a per-row γ, and the per-row terms come from ``focal_terms``).

Label-smoothed focal loss (``focal_label_smoothed_loss_classes_last``), s = (1-α) onehot + α (1 - onehot)/(K-1):

    L = off · Σ_k f(p_k) + on · f(p_y),  f(p) = -(1-p)^γ log p,  off = α/(K-1), on = 1 - α - off
    dL/dz_j = p_j · (off · Σ_k g_k + on · g_y) - off · g_j - [j = y] · on · g_y

forward: a second read of the row for Σ_k f(p_k) and Σ_k g(p_k) (rows of small K come from cache); backward: one read,
one write, g_j recomputed per element.

Numerics as in :func:`focal_calibration.losses.math.focal_terms`: float32 math for float32 / float16 / bfloat16 logits,
1 - p as -expm1(log p), γ p (1-p)^(γ-1) log p as γ p (1-p)^γ · log p / (1-p) (finite as p -> 1). The per-row and
per-class terms use libdevice's exp / log / expm1 / pow (Triton's tl.exp and tl.log are fast approximations; the
softmax sums keep them). Ignored rows get 0 loss and an exact-0 gradient whatever their logits; a label outside
[0, K) that is not ignore_index gives a NaN loss (the checks that name it run where value checks are on).

Testing without a GPU: with ``TRITON_INTERPRET=1`` set before this module is imported, the kernels run on CPU tensors
in Triton's interpreter (NumPy): libdevice is not available there, so the accurate helpers compute in float64 NumPy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from focal_calibration.losses.backend import TRITON_DTYPES
from focal_calibration.losses.gamma import SampleDependentGamma
from focal_calibration.losses.math import focal_terms
from focal_calibration.validation import check_finite_logits, value_checks_enabled

__all__ = ["focal_loss_rows", "focal_smoothed_rows", "INTERPRETER"]

INTERPRETER = bool(triton.knobs.runtime.interpret)  # read when the @triton.jit below are decorated

MAX_BLOCK_COLS = 8192  # columns of a row tile; longer rows loop over tiles (tests shrink it)
TILE_ELEMENTS = 4096  # rows per program = TILE_ELEMENTS // block columns, for short rows
GAMMA_FIXED, GAMMA_PER_ROW, GAMMA_TABLE = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------------
# Accurate elementwise math (libdevice on the GPU; float64 NumPy in the interpreter)

if INTERPRETER:
    @triton.jit
    def _exp(x):
        return tl.exp(x.to(tl.float64)).to(tl.float32)

    @triton.jit
    def _log(x):
        return tl.log(x.to(tl.float64)).to(tl.float32)

    @triton.jit
    def _pow(base, exponent):  # base > 0
        return tl.exp(exponent.to(tl.float64) * tl.log(base.to(tl.float64))).to(tl.float32)

    @triton.jit
    def _neg_expm1(x):
        """1 - exp(x) for x <= 0 by Kahan's expm1 trick: (u - 1) · x / log u with u = exp(x), in float64."""
        x64 = x.to(tl.float64)
        u = tl.exp(x64)
        u_minus_1 = u - 1.0
        exact = (u == 1.0) | (u_minus_1 == -1.0)
        ratio = x64 / tl.log(tl.where(exact, 0.5, u))
        expm1 = tl.where(u == 1.0, x64, tl.where(u_minus_1 == -1.0, -1.0, u_minus_1 * ratio))
        return (-expm1).to(tl.float32)
else:
    from triton.language.extra import libdevice

    @triton.jit
    def _exp(x):
        return libdevice.exp(x)

    @triton.jit
    def _log(x):
        return libdevice.log(x)

    @triton.jit
    def _pow(base, exponent):
        return libdevice.pow(base, exponent)

    @triton.jit
    def _neg_expm1(x):
        return -libdevice.expm1(x)


@triton.jit
def _focal_terms(log_p, gamma):
    """(loss, g) of focal_terms(): L = -(1-p)^γ log p and g(p, γ) = (1-p)^γ (1 - γ p log p / (1-p)) (Prop. 1)."""
    one_minus_p = _neg_expm1(log_p)
    positive = one_minus_p > 0
    safe = tl.where(positive, one_minus_p, 1.0)
    weight = tl.where(positive, _pow(safe, gamma), tl.where(gamma == 0, 1.0, 0.0))  # 0^0 = 1: γ = 0 is CE
    loss = -weight * log_p
    p = _exp(log_p)
    # log p / (1 - p) -> -1 as p -> 1; p == 0 (log p = -inf) gives p · ratio = 0.
    ratio = tl.where(positive, log_p / safe, -1.0)
    p_ratio = tl.where(p > 0, p * ratio, 0.0)
    return loss, weight * (1.0 - gamma * p_ratio)


@triton.jit
def _row_gamma(rows, in_rows, log_p, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value,
               GAMMA_MODE: tl.constexpr, N_THRESHOLDS: tl.constexpr):
    """γ of each row: a number, a per-row tensor, or gammas[#thresholds <= p_y] (torch.bucketize(right=True))."""
    if GAMMA_MODE == 0:
        gamma = tl.zeros_like(log_p) + gamma_value
    elif GAMMA_MODE == 1:
        gamma = tl.load(gamma_ptr + rows, mask=in_rows, other=0.0).to(tl.float32)
    else:
        p = _exp(log_p)
        band = tl.zeros_like(rows)
        for i in tl.static_range(N_THRESHOLDS):
            band += (p >= tl.load(thresholds_ptr + i)).to(band.dtype)
        gamma = tl.load(gammas_ptr + band, mask=in_rows, other=0.0)
    return gamma


@triton.jit
def _load_tile(logits_ptr, offsets, in_rows, start, n_cols, other, BLOCK_COLS: tl.constexpr):
    """Columns start ... start + BLOCK_COLS of this program's rows, in float32: (columns, mask, z)."""
    c = start + tl.arange(0, BLOCK_COLS)
    mask = in_rows[:, None] & (c < n_cols)[None, :]
    z = tl.load(logits_ptr + offsets[:, None] + c[None, :], mask=mask, other=other).to(tl.float32)
    return c, mask, z


@triton.jit
def _row_stats(logits_ptr, offsets, in_rows, n_cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Online max m and S = Σ exp(z - m) of each row in one read, tile by tile."""
    row_max = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_ROWS], tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):
        _, _, z = _load_tile(logits_ptr, offsets, in_rows, start, n_cols, float("-inf"), BLOCK_COLS)
        new_max = tl.maximum(row_max, tl.max(z, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows that are all -inf so far (or masked)
        total = total * tl.exp(row_max - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
        row_max = new_max
    # rows past the end get m = 0, S = 1: no inf - inf downstream (they are never stored)
    return tl.where(in_rows, row_max, 0.0), _log(tl.where(in_rows, total, 1.0))


@triton.jit
def _row_log_p(logits_ptr, offsets, in_rows, target, valid, row_max, log_norm, n_cols):
    """log p_y = (z_y - m) - log S, read at the target (class 0 for ignored rows); NaN for a label outside [0, K)."""
    safe_target = tl.where(valid, target, 0)
    in_range = (safe_target >= 0) & (safe_target < n_cols)
    z_y = tl.load(logits_ptr + offsets + safe_target, mask=in_rows & in_range, other=0.0).to(tl.float32)
    return tl.where(in_range, (z_y - row_max) - log_norm, float("nan"))


@triton.jit
def _forward_rows(logits_ptr, row_stride, target_ptr, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value, n_rows,
                  n_cols, ignore_index, GAMMA_MODE: tl.constexpr, N_THRESHOLDS: tl.constexpr,
                  BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """This program's rows: their statistics (one read of the logits), log p_y and γ."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_rows = rows < n_rows
    offsets = rows.to(tl.int64) * row_stride
    row_max, log_norm = _row_stats(logits_ptr, offsets, in_rows, n_cols, BLOCK_ROWS, BLOCK_COLS)
    target = tl.load(target_ptr + rows, mask=in_rows, other=ignore_index)
    valid = in_rows & (target != ignore_index)
    log_p = _row_log_p(logits_ptr, offsets, in_rows, target, valid, row_max, log_norm, n_cols)
    gamma = _row_gamma(rows, in_rows, log_p, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value,
                       GAMMA_MODE, N_THRESHOLDS)
    return rows, in_rows, offsets, valid, row_max, log_norm, log_p, gamma


@triton.jit
def _backward_rows(target_ptr, grad_loss_ptr, grad_loss_stride, row_max_ptr, log_norm_ptr, n_rows, ignore_index,
                   BLOCK_ROWS: tl.constexpr):
    """This program's rows for a backward: targets, dL/dL_row (0 at ignored rows), and the saved m and log S."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_rows = rows < n_rows
    target = tl.load(target_ptr + rows, mask=in_rows, other=ignore_index)
    valid = in_rows & (target != ignore_index)
    grad_loss = tl.load(grad_loss_ptr + rows.to(tl.int64) * grad_loss_stride, mask=valid, other=0.0)
    grad_loss = tl.where(valid, grad_loss.to(tl.float32), 0.0)
    row_max = tl.load(row_max_ptr + rows, mask=in_rows, other=0.0)
    log_norm = tl.load(log_norm_ptr + rows, mask=in_rows, other=0.0)
    return rows, in_rows, target, valid, grad_loss, row_max, log_norm


@triton.jit
def _focal_forward_kernel(logits_ptr, row_stride, target_ptr, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value,
                          loss_ptr, g_ptr, log_p_ptr, row_max_ptr, log_norm_ptr, n_rows, n_cols, ignore_index,
                          GAMMA_MODE: tl.constexpr, N_THRESHOLDS: tl.constexpr,
                          BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, in_rows, _, valid, row_max, log_norm, log_p, gamma = _forward_rows(
        logits_ptr, row_stride, target_ptr, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value, n_rows, n_cols,
        ignore_index, GAMMA_MODE, N_THRESHOLDS, BLOCK_ROWS, BLOCK_COLS)
    loss, g = _focal_terms(log_p, gamma)
    tl.store(loss_ptr + rows, tl.where(valid, loss, 0.0), mask=in_rows)
    tl.store(g_ptr + rows, tl.where(valid, g, 0.0), mask=in_rows)
    tl.store(log_p_ptr + rows, log_p, mask=in_rows)
    tl.store(row_max_ptr + rows, row_max, mask=in_rows)
    tl.store(log_norm_ptr + rows, log_norm, mask=in_rows)


@triton.jit
def _focal_backward_kernel(logits_ptr, row_stride, target_ptr, grad_loss_ptr, grad_loss_stride, g_ptr, row_max_ptr,
                           log_norm_ptr, grad_ptr, grad_row_stride, n_rows, n_cols, ignore_index,
                           BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, in_rows, target, valid, grad_loss, row_max, log_norm = _backward_rows(
        target_ptr, grad_loss_ptr, grad_loss_stride, row_max_ptr, log_norm_ptr, n_rows, ignore_index, BLOCK_ROWS)
    coef = grad_loss * tl.load(g_ptr + rows, mask=valid, other=0.0)
    offsets = rows.to(tl.int64) * row_stride
    grad_offsets = rows.to(tl.int64) * grad_row_stride
    for start in range(0, n_cols, BLOCK_COLS):
        c, mask, z = _load_tile(logits_ptr, offsets, in_rows, start, n_cols, 0.0, BLOCK_COLS)
        p = tl.exp((z - row_max[:, None]) - log_norm[:, None])
        grad = coef[:, None] * (p - tl.where(c[None, :] == target[:, None], 1.0, 0.0))
        grad = tl.where(valid[:, None], grad, 0.0)  # exact zeros for ignored rows, whatever their logits
        tl.store(grad_ptr + grad_offsets[:, None] + c[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _smoothed_forward_kernel(logits_ptr, row_stride, target_ptr, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value,
                             off, on, loss_ptr, nll_ptr, gamma_out_ptr, weighted_g_ptr, g_y_ptr, row_max_ptr,
                             log_norm_ptr, n_rows, n_cols, ignore_index, GAMMA_MODE: tl.constexpr,
                             N_THRESHOLDS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, in_rows, offsets, valid, row_max, log_norm, log_p_y, gamma = _forward_rows(
        logits_ptr, row_stride, target_ptr, gamma_ptr, thresholds_ptr, gammas_ptr, gamma_value, n_rows, n_cols,
        ignore_index, GAMMA_MODE, N_THRESHOLDS, BLOCK_ROWS, BLOCK_COLS)
    loss_y, g_y = _focal_terms(log_p_y, gamma)
    sum_loss = tl.zeros([BLOCK_ROWS], tl.float32)
    sum_g = tl.zeros([BLOCK_ROWS], tl.float32)
    for start in range(0, n_cols, BLOCK_COLS):  # second read: the per-class terms need log S
        _, mask, z = _load_tile(logits_ptr, offsets, in_rows, start, n_cols, 0.0, BLOCK_COLS)
        loss_k, g_k = _focal_terms((z - row_max[:, None]) - log_norm[:, None], gamma[:, None])
        sum_loss += tl.sum(tl.where(mask, loss_k, 0.0), axis=1)
        sum_g += tl.sum(tl.where(mask, g_k, 0.0), axis=1)
    tl.store(loss_ptr + rows, tl.where(valid, off * sum_loss + on * loss_y, 0.0), mask=in_rows)
    tl.store(nll_ptr + rows, tl.where(valid, -log_p_y, 0.0), mask=in_rows)
    tl.store(gamma_out_ptr + rows, gamma, mask=in_rows)
    tl.store(weighted_g_ptr + rows, off * sum_g + on * g_y, mask=in_rows)  # Σ_k s_k g_k
    tl.store(g_y_ptr + rows, g_y, mask=in_rows)
    tl.store(row_max_ptr + rows, row_max, mask=in_rows)
    tl.store(log_norm_ptr + rows, log_norm, mask=in_rows)


@triton.jit
def _smoothed_backward_kernel(logits_ptr, row_stride, target_ptr, grad_loss_ptr, grad_loss_stride, gamma_ptr,
                              weighted_g_ptr, g_y_ptr, row_max_ptr, log_norm_ptr, off, on, grad_ptr, grad_row_stride,
                              n_rows, n_cols, ignore_index, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, in_rows, target, valid, coef, row_max, log_norm = _backward_rows(
        target_ptr, grad_loss_ptr, grad_loss_stride, row_max_ptr, log_norm_ptr, n_rows, ignore_index, BLOCK_ROWS)
    gamma = tl.load(gamma_ptr + rows, mask=in_rows, other=0.0)
    weighted_g = tl.load(weighted_g_ptr + rows, mask=in_rows, other=0.0)
    on_g_y = on * tl.load(g_y_ptr + rows, mask=in_rows, other=0.0)
    offsets = rows.to(tl.int64) * row_stride
    grad_offsets = rows.to(tl.int64) * grad_row_stride
    for start in range(0, n_cols, BLOCK_COLS):
        c, mask, z = _load_tile(logits_ptr, offsets, in_rows, start, n_cols, 0.0, BLOCK_COLS)
        log_p = (z - row_max[:, None]) - log_norm[:, None]
        _, g_k = _focal_terms(log_p, gamma[:, None])
        grad = _exp(log_p) * weighted_g[:, None] - off * g_k - tl.where(c[None, :] == target[:, None],
                                                                         on_g_y[:, None], 0.0)
        grad = tl.where(valid[:, None], coef[:, None] * grad, 0.0)
        tl.store(grad_ptr + grad_offsets[:, None] + c[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launching

def _launch_config(n_rows: int, n_cols: int) -> tuple[tuple[int], dict]:
    block_cols = min(triton.next_power_of_2(n_cols), MAX_BLOCK_COLS)
    block_rows = max(1, min(TILE_ELEMENTS // block_cols, triton.next_power_of_2(n_rows)))
    num_warps = max(4, min(16, block_rows * block_cols // 512))
    return (triton.cdiv(n_rows, block_rows),), dict(BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, num_warps=num_warps)


def _check_inputs(logits: torch.Tensor) -> torch.Tensor:
    if logits.dtype not in TRITON_DTYPES:
        raise ValueError(f"backend='triton' computes float32, float16 and bfloat16 logits, got {logits.dtype} "
                         f"(use backend='torch')")
    if not logits.is_cuda and not INTERPRETER:
        raise ValueError(f"backend='triton' needs CUDA tensors, got logits on {logits.device} (set TRITON_INTERPRET=1 "
                         "before importing focal_calibration.losses.triton_kernels to run the kernels on the CPU for "
                         "testing)")
    return logits if logits.stride(1) == 1 else logits.contiguous()


def _gamma_arguments(gamma, like: torch.Tensor) -> dict:
    """Kernel arguments of a γ that is a number, a per-row tensor, or a SampleDependentGamma table."""
    unused = like  # a pointer the kernel never reads for this γ mode
    if isinstance(gamma, SampleDependentGamma):
        thresholds, gammas = gamma.tables(like.device, torch.float32)
        return dict(gamma_ptr=unused, thresholds_ptr=thresholds, gammas_ptr=gammas, gamma_value=0.0,
                    GAMMA_MODE=GAMMA_TABLE, N_THRESHOLDS=len(gamma.thresholds))
    if isinstance(gamma, torch.Tensor):
        if gamma.dim() == 0:
            gamma = gamma.expand(like.shape[0])
        return dict(gamma_ptr=gamma.to(device=like.device, dtype=torch.float32).contiguous(), thresholds_ptr=unused,
                    gammas_ptr=unused, gamma_value=0.0, GAMMA_MODE=GAMMA_PER_ROW, N_THRESHOLDS=0)
    return dict(gamma_ptr=unused, thresholds_ptr=unused, gammas_ptr=unused, gamma_value=float(gamma),
                GAMMA_MODE=GAMMA_FIXED, N_THRESHOLDS=0)


def _focal_forward(logits, target, gamma, ignore_index):
    """Launch the plain forward kernel: (loss, g, log_p, row_max, log_norm), each [N] float32."""
    n_rows, n_cols = logits.shape
    rows = [torch.empty(n_rows, dtype=torch.float32, device=logits.device) for _ in range(5)]
    grid, config = _launch_config(n_rows, n_cols)
    _focal_forward_kernel[grid](logits, logits.stride(0), target, **_gamma_arguments(gamma, rows[0]), loss_ptr=rows[0],
                                g_ptr=rows[1], log_p_ptr=rows[2], row_max_ptr=rows[3], log_norm_ptr=rows[4],
                                n_rows=n_rows, n_cols=n_cols, ignore_index=ignore_index, **config)
    return rows


def _policy_gamma(logits, target, policy, ignore_index):
    """γ of a policy the kernel cannot bucketize: a γ = 0 launch gives log p_y, the policy maps p_y to γ."""
    _, _, log_p, _, _ = _focal_forward(logits, target, 0.0, ignore_index)
    gamma = policy(torch.exp(log_p))
    return gamma if isinstance(gamma, torch.Tensor) else float(gamma)


def _resolve_gamma(logits, target, gamma, ignore_index):
    if callable(gamma) and not isinstance(gamma, SampleDependentGamma):
        return _policy_gamma(logits, target, gamma, ignore_index)
    return gamma


def _check_log_p(log_p: torch.Tensor, logits: torch.Tensor) -> None:
    """The torch path's check of finite logits (CPU / interpreter, or FOCAL_CALIBRATION_CHECKS=1)."""
    if value_checks_enabled(log_p):
        check_finite_logits(logits, log_p)


class _FocalTritonFunction(torch.autograd.Function):
    """Per-row focal loss of 2-D logits by the fused kernels; the gradient is g · (softmax - onehot)."""

    @staticmethod
    def forward(ctx, logits, target, gamma, ignore_index):
        loss, g_factor, log_p, row_max, log_norm = _focal_forward(logits, target, gamma, ignore_index)
        _check_log_p(log_p, logits)
        ctx.save_for_backward(logits, target, g_factor, row_max, log_norm)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        logits, target, g_factor, row_max, log_norm = ctx.saved_tensors
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        grid, config = _launch_config(*logits.shape)
        _focal_backward_kernel[grid](logits, logits.stride(0), target, grad_loss, grad_loss.stride(0), g_factor,
                                     row_max, log_norm, grad, grad.stride(0), logits.shape[0], logits.shape[1],
                                     ctx.ignore_index, **config)
        return grad, None, None, None


class _FocalPolicyTritonFunction(torch.autograd.Function):
    """A policy callable the kernel cannot bucketize: the kernel's log p_y, γ = policy(p_y), focal_terms() per row."""

    @staticmethod
    def forward(ctx, logits, target, policy, ignore_index):
        _, _, log_p, row_max, log_norm = _focal_forward(logits, target, 0.0, ignore_index)
        _check_log_p(log_p, logits)
        gamma = policy(torch.exp(log_p))
        if isinstance(gamma, torch.Tensor):
            gamma = gamma.to(log_p)
        loss, g_factor = focal_terms(log_p, gamma)
        valid = target != ignore_index
        zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
        ctx.save_for_backward(logits, target, torch.where(valid, g_factor, zero), row_max, log_norm)
        ctx.ignore_index = ignore_index
        return torch.where(valid, loss, zero)

    backward = _FocalTritonFunction.backward


def focal_loss_rows(logits: torch.Tensor, target: torch.Tensor, gamma, ignore_index: int) -> torch.Tensor:
    """Per-row focal loss ``[N]`` (float32) of checked, flattened ``logits [N, K]`` / ``target [N]`` (the triton
    backend of :func:`focal_calibration.losses.fused.focal_loss_classes_last` and
    :func:`focal_calibration.losses.functional.focal_loss`, which validate and reduce)."""
    logits = _check_inputs(logits)
    if callable(gamma) and not isinstance(gamma, SampleDependentGamma):
        return _FocalPolicyTritonFunction.apply(logits, target, gamma, ignore_index)
    return _FocalTritonFunction.apply(logits, target, gamma, ignore_index)


class _SmoothedTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, gamma, alpha, ignore_index):
        n_rows, n_cols = logits.shape
        off = alpha / (n_cols - 1)
        on = 1.0 - alpha - off
        rows = [torch.empty(n_rows, dtype=torch.float32, device=logits.device) for _ in range(7)]
        loss, nll, gamma_rows, weighted_g, g_y, row_max, log_norm = rows
        grid, config = _launch_config(n_rows, n_cols)
        _smoothed_forward_kernel[grid](logits, logits.stride(0), target, **_gamma_arguments(gamma, loss), off=off,
                                       on=on, loss_ptr=loss, nll_ptr=nll, gamma_out_ptr=gamma_rows,
                                       weighted_g_ptr=weighted_g, g_y_ptr=g_y, row_max_ptr=row_max,
                                       log_norm_ptr=log_norm, n_rows=n_rows, n_cols=n_cols,
                                       ignore_index=ignore_index, **config)
        if value_checks_enabled(loss):  # NaN logits in an ignored row show in its row statistics
            check_finite_logits(logits, row_max + log_norm)
            check_finite_logits(logits, loss)
        ctx.mark_non_differentiable(nll)
        ctx.save_for_backward(logits, target, gamma_rows, weighted_g, g_y, row_max, log_norm)
        ctx.ignore_index, ctx.off, ctx.on = ignore_index, off, on
        return loss, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_nll):
        logits, target, gamma_rows, weighted_g, g_y, row_max, log_norm = ctx.saved_tensors
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        grid, config = _launch_config(*logits.shape)
        _smoothed_backward_kernel[grid](logits, logits.stride(0), target, grad_loss, grad_loss.stride(0), gamma_rows,
                                        weighted_g, g_y, row_max, log_norm, ctx.off, ctx.on, grad, grad.stride(0),
                                        logits.shape[0], logits.shape[1], ctx.ignore_index, **config)
        return grad, None, None, None, None


def focal_smoothed_rows(logits: torch.Tensor, target: torch.Tensor, gamma, alpha: float,
                        ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (loss, nll) ``[N]`` of the label-smoothed focal loss (the triton backend of
    :func:`focal_calibration.losses.fused_smoothed.focal_label_smoothed_loss_classes_last`, which validates and
    reduces)."""
    logits = _check_inputs(logits)
    gamma = _resolve_gamma(logits, target, gamma, ignore_index)
    return _SmoothedTritonFunction.apply(logits, target, gamma, alpha, ignore_index)
