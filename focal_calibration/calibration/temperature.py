"""Temperature scaling (Guo et al., 2017) as used in §5.1 of Mukhoti et al. (NeurIPS 2020).

The paper picks T on a validation set by grid search over T = 0.1, 0.2, ..., 10.0, minimising the ECE (15 bins);
Guo et al. instead minimise the NLL over a continuous T. Both are here: ``method="grid"`` with objective ``"ece"``,
``"adaece"`` or ``"nll"``, and ``method="lbfgs"`` (NLL only, optimised over log T).

The grid is evaluated for all temperatures at once: the prediction (argmax) does not depend on T > 0, so per T only
``log sum_k exp((z_k - z_max) / T)`` is needed, computed on ``[chunk_T, rows, K]`` blocks of at most
``max_chunk_elements`` numbers. ECE / AdaECE use the binning of :mod:`focal_calibration.calibration.metrics`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from focal_calibration import constants
from focal_calibration.calibration import multilabel
from focal_calibration.calibration.metrics import _inner_edges, adaptive_ece, ece_from_sums, equal_width_sums
from focal_calibration.validation import (check_choice, check_finite, check_grid, check_int, check_n_bins,
                                          compute_dtype, prepare_scores)

__all__ = ["fit_temperature", "TemperatureFit", "DEFAULT_TEMPERATURES", "TemperatureFitWarning",
           "undetermined_curves", "fit_label_temperatures", "fit_binary_temperature", "LabelTemperatureFit"]


class TemperatureFitWarning(UserWarning):
    """A temperature fit whose data do not determine T (the objective is the same for every temperature): the fit
    returns a T anyway (see the fit's docstring), and says so with this warning. Turn it into an error with
    ``warnings.simplefilter("error", TemperatureFitWarning)``."""


def undetermined_curves(curves: np.ndarray) -> np.ndarray:
    """Which rows of objective curves ``[..., T]`` are flat (the same value at every T, up to 1e-12 relative
    rounding): there the data do not determine T. A curve of one temperature is never called flat."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.shape[-1] < 2:
        return np.zeros(curves.shape[:-1], dtype=bool)
    low, high = curves.min(-1), curves.max(-1)
    with np.errstate(invalid="ignore"):  # inf - inf: an infinite NLL everywhere is flat too
        spread = np.where(np.isfinite(high), high - low, np.where(high == low, 0.0, np.inf))
    return spread <= 1e-12 * np.maximum(1.0, np.abs(low))

DEFAULT_TEMPERATURES = np.arange(1, 101) / 10  # the paper's 0.1, ..., 10.0, each exactly k/10 (not summed steps)
OBJECTIVES = ("ece", "adaece", "nll")
METHODS = ("grid", "lbfgs")


@dataclass
class TemperatureFit:
    """A fitted temperature and the ECE (eq. 1), AdaECE (eq. 3) and NLL curves over ``temperatures``."""
    temperature: float
    objective: str
    method: str
    temperatures: np.ndarray
    ece: np.ndarray
    adaece: np.ndarray
    nll: np.ndarray

    def scale(self, logits):
        """Temperature-scaled logits, ``logits / temperature`` (tensor or array in, same type out)."""
        return logits / self.temperature


def _block_elements(max_chunk_elements: int, device: torch.device) -> int:
    return min(max_chunk_elements, constants.CPU_CACHE_BLOCK_ELEMENTS) if device.type == "cpu" else max_chunk_elements


def _check_finite_in_blocks(logits: torch.Tensor, block: int) -> None:
    """Like check_finite, without its full-size temporaries: a NaN / inf reaches its block's sum (one host sync);
    only a block whose sum is not finite (or merely overflows) gets the exact, value-naming check."""
    rows = max(1, block // logits.shape[1])
    blocks = logits.split(rows)
    dtype = compute_dtype(logits.dtype)
    suspect = torch.stack([~torch.isfinite(b.sum(dtype=dtype)) for b in blocks]).nonzero().view(-1)
    for index in suspect.tolist():
        check_finite(blocks[index], "logits")


def _shifted_logits(logits: torch.Tensor, max_logit: torch.Tensor, start: int, stop: int, dtype) -> torch.Tensor:
    """``z - max_k z`` for rows [start, stop): <= 0 with an exact 0 at the argmax, so exp never overflows."""
    return logits[start:stop].to(dtype) - max_logit[start:stop, None].to(dtype)


def _curves(logits, labels, grid, n_bins, max_chunk_elements):
    """ECE, AdaECE and NLL (float64 tensors [T]) of softmax(logits / T) for every T of the grid."""
    n, k = logits.shape
    dtype = compute_dtype(logits.dtype)
    device = logits.device
    max_logit, prediction = logits.max(dim=-1)
    correct = prediction == labels  # T > 0 does not change the argmax
    label_gap = (logits.gather(1, labels[:, None]).squeeze(1).to(dtype) - max_logit.to(dtype))  # z_y - z_max <= 0
    temps = torch.tensor(grid, dtype=dtype, device=device)
    n_temps = len(grid)

    # Blocks of [chunk_t, chunk_rows, K] <= max_chunk_elements, and <= constants.CPU_CACHE_BLOCK_ELEMENTS so the three
    # passes over a
    # block (divide, exp, sum) mostly hit the cache.
    block = _block_elements(max_chunk_elements, device)
    chunk_rows = max(1, min(n, block // k))
    chunk_t = max(1, min(n_temps, block // (chunk_rows * k)))
    log_conf = torch.empty(n_temps, n, dtype=dtype, device=device)  # log max_k softmax(z / T)_k
    for row in range(0, n, chunk_rows):
        shifted = _shifted_logits(logits, max_logit, row, row + chunk_rows, dtype)
        for t in range(0, n_temps, chunk_t):
            scaled = shifted / temps[t:t + chunk_t, None, None]
            log_conf[t:t + chunk_t, row:row + chunk_rows] = -scaled.exp_().sum(-1).log_()

    # NLL = -mean log p_y with log p_y = (z_y - z_max) / T + log p_max
    nll = -(label_gap / temps[:, None] + log_conf).to(torch.float64).mean(-1)
    # ECE / AdaECE over chunks of temperatures: binning and sorting hold ~16 words per element
    metric_chunk = max(1, max_chunk_elements // (16 * n))
    ece, adaece = [], []
    for t in range(0, n_temps, metric_chunk):
        conf = log_conf[t:t + metric_chunk].exp()
        ece.append(ece_from_sums(*equal_width_sums(conf, correct, n_bins))[0])
        adaece.append(adaptive_ece(conf, correct, n_bins))
    ece, adaece = torch.cat(ece), torch.cat(adaece)
    return ece, adaece, nll


def _nll_and_grad(logits, labels, max_logit, log_t: float, max_chunk_elements):
    """NLL(T) = mean_i [log sum_k exp(beta d_ik) - beta d_iy] with d = z - z_max, beta = 1/T = exp(-log T), and its
    derivative w.r.t. log T: -beta * mean_i [E_softmax(beta d_i)[d_i] - d_iy]. Chunked, float64 accumulation."""
    n, k = logits.shape
    dtype = compute_dtype(logits.dtype)
    beta = float(np.exp(-log_t))
    chunk_rows = max(1, _block_elements(max_chunk_elements, logits.device) // k)
    loss = torch.zeros((), dtype=torch.float64, device=logits.device)
    dloss_dbeta = torch.zeros((), dtype=torch.float64, device=logits.device)
    for row in range(0, n, chunk_rows):
        shifted = _shifted_logits(logits, max_logit, row, row + chunk_rows, dtype)
        label_shifted = shifted.gather(1, labels[row:row + chunk_rows, None]).squeeze(1)
        weights = (shifted * beta).exp_()
        total = weights.sum(-1)
        mean_shifted = weights.mul_(shifted).sum(-1) / total  # weights are not needed after their total
        loss += (total.log() - beta * label_shifted).to(torch.float64).sum()
        dloss_dbeta += (mean_shifted - label_shifted).to(torch.float64).sum()
    return loss / n, -beta * dloss_dbeta / n


def _fit_lbfgs(logits, labels, max_chunk_elements) -> float:
    """Guo et al.'s NLL fit: L-BFGS (strong Wolfe line search) on log T, starting at T = 1."""
    max_logit = logits.max(dim=-1).values
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    # 1-D and smooth: converges in a handful of evaluations; the caps stop a drift to T -> inf (e.g. labels that
    # the logits do not predict at all, where the NLL keeps falling towards log K).
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=50, max_eval=60, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        loss, grad = _nll_and_grad(logits, labels, max_logit, float(log_t.detach()), max_chunk_elements)
        log_t.grad = grad.detach().cpu().reshape(())
        return loss.cpu()

    optimizer.step(closure)
    return float(torch.exp(log_t.detach()))


@torch.no_grad()
def fit_temperature(logits, labels, objective: str = "ece", *, method: str = "grid", temperatures=None,
                    n_bins: int = 15, ignore_index: int | None = None,
                    max_chunk_elements: int = 2 ** 25) -> TemperatureFit:
    """Fit a temperature T > 0 for ``softmax(logits / T)`` on validation logits ``[..., K]`` and labels ``[...]``.

    Args:
        objective: ``"ece"`` (the paper's choice), ``"adaece"`` or ``"nll"``.
        method: ``"grid"``: the minimiser over ``temperatures`` (ties -> the smallest T); ``"lbfgs"``: continuous NLL
            fit on log T (Guo et al., 2017), only with objective ``"nll"``.
        temperatures: the grid; default T = k/10 for k = 1..100 (exact decimals). The curves are evaluated on it;
            with ``method="lbfgs"`` and no grid given, ``temperatures`` is ``[T_fit]`` (the metrics at the fit).
        n_bins: bins of ECE / AdaECE (equal-width ``((i-1)/M, i/M]`` resp. equal-mass, see metrics).
        ignore_index: rows with this label are dropped.
        max_chunk_elements: bound on the ``[chunk_T, rows, K]`` blocks (memory ~ 4-8 bytes each).

    Raises:
        ValueError: for fewer than 2 (non-ignored) samples: one sample cannot determine a temperature.

    Warns:
        TemperatureFitWarning: when the data do not determine T: the grid objective has the same value at every
            temperature (e.g. every row's logits are equal, so softmax(z / T) is uniform for every T, or every
            confidence is exactly 1 on the whole grid) -- the fit then keeps the paper loop's first T, the smallest
            -- or, with ``method="lbfgs"``, every row's logits are equal (the NLL does not depend on T; T = 1 is
            returned).
    """
    check_choice(objective, OBJECTIVES, "objective")
    check_choice(method, METHODS, "method")
    if method == "lbfgs" and objective != "nll":
        raise ValueError(f"method='lbfgs' fits the NLL only; got objective={objective!r} (use method='grid')")
    n_bins = check_n_bins(n_bins)
    max_chunk_elements = check_int(max_chunk_elements, "max_chunk_elements", 1)
    # ascending, so the first minimum is the smallest T (as the paper's loop)
    grid = check_grid(temperatures, "temperatures", default=DEFAULT_TEMPERATURES)
    logits, labels, _ = prepare_scores(labels, logits, None, ignore_index)
    if logits.shape[0] == 0:
        raise ValueError(f"empty input: every label is ignore_index={ignore_index}")
    _check_finite_in_blocks(logits, _block_elements(int(max_chunk_elements), logits.device))
    if logits.shape[0] < 2:
        raise ValueError(f"fit_temperature needs at least 2 samples to determine a temperature, got "
                         f"{logits.shape[0]}")

    if method == "lbfgs":
        if bool((logits.amax(-1) == logits.amin(-1)).all()):
            warnings.warn("fit_temperature: every row's logits are equal, so softmax(logits / T) and the NLL do "
                          "not depend on T: the temperature is not determined by these data (returning T = 1)",
                          TemperatureFitWarning, stacklevel=3)
        temperature = _fit_lbfgs(logits, labels, int(max_chunk_elements))
        if temperatures is None:  # no grid asked for: report the metrics at the fitted T only
            grid = np.array([temperature])
    curves = torch.stack(_curves(logits, labels, grid, n_bins, int(max_chunk_elements))).cpu().numpy()
    if method == "grid":
        objective_curve = curves[OBJECTIVES.index(objective)]
        temperature = float(grid[np.argmin(objective_curve)])  # first minimum = smallest T
        if undetermined_curves(objective_curve):
            warnings.warn(f"fit_temperature: the {objective} is the same at every temperature of the grid "
                          f"({objective_curve[0]:.6g}), so these data do not determine T (returning the first, "
                          f"T = {temperature:g})", TemperatureFitWarning, stacklevel=3)
    return TemperatureFit(temperature=temperature, objective=objective, method=method, temperatures=grid,
                          ece=curves[0], adaece=curves[1], nll=curves[2])


# ----------------------------------------------------------------------------------------------------------------
# Binary and multi-label (sigmoid) temperature scaling: p = σ(z / T), one T per label
# ----------------------------------------------------------------------------------------------------------------

LABEL_METHODS = ("grid", "newton")
_LOG_BETA_RANGE = 18.420680743952367  # |log(1/T)| <= log(1e8): T in [1e-8, 1e8]
_NEWTON_ITERATIONS = 100


@dataclass
class LabelTemperatureFit:
    """One temperature per label for ``σ(logits / T_l)``, and each label's ECE (eq. 1), AdaECE (eq. 3) and NLL
    curves ``[L, T]`` over ``temperatures`` (``[T]``; with ``method="newton"`` and no grid, ``[L, 1]``: each label's
    own fitted T)."""
    temperature: np.ndarray
    objective: str
    method: str
    confidence: str
    temperatures: np.ndarray
    ece: np.ndarray
    adaece: np.ndarray
    nll: np.ndarray

    def scale(self, logits):
        """``logits [..., L] / temperature`` (tensor or array in, same type out)."""
        if isinstance(logits, torch.Tensor):
            return logits / torch.as_tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        return logits / self.temperature


def _label_curves(logits, positive, valid, temperatures: torch.Tensor, n_bins, confidence, max_chunk_elements):
    """ECE, AdaECE and NLL (float64 ``[L, T]``) of σ(logits / T) for temperatures ``[T, L]`` (a column per label)
    or ``[T, 1]`` (shared), with the binning and tie rules of the multi-label metrics.

    T > 0 keeps each label's order of confidences (σ(z / T) is non-decreasing in z, in floating point too; σ(|z| /
    T) in |z|), so each label is sorted once for all temperatures, the pairs that do not count last (confidence 1 at
    every T, cut off at the label's count). On the sorted confidences every metric is a difference of prefix sums:
    the equal-width bins ((i-1)/M, i/M] end where ``searchsorted`` puts the exact edges (the largest value <= i/M,
    as :func:`~focal_calibration.calibration.metrics.bin_index` decides); AdaECE's equal-mass boundary at rank b
    inside a tie group [first, last) counts that group's mean correctness for its ranks below b (the tie rule of
    :func:`~focal_calibration.calibration.metrics.adaptive_ece`). Per temperature that is a few passes over the
    pairs (divide, sigmoid, log-sigmoid, cumulative sum) and O(M log N) searches per label: measured 3-3.5x faster
    than binning and grouping every pair at every T (the same values to 1e-13).
    """
    n, labels = logits.shape
    n_temps, M = temperatures.shape[0], n_bins
    device = logits.device
    top_label = confidence == "top_label"
    z = logits.t()
    counted = valid.t()
    correct = (((z > 0) == positive.t()) if top_label else positive.t()) & counted
    inf = torch.full((), torch.inf, dtype=z.dtype, device=device)
    order = torch.where(counted, z.abs() if top_label else z, inf).sort(dim=-1).indices
    counted = counted.gather(1, order)
    z = torch.where(counted, z.gather(1, order), inf)  # [L, N] sorted; uncounted last, confidence 1 at every T
    sign = torch.where(positive.t().gather(1, order), 1.0, -1.0).to(z.dtype)  # NLL = -log σ(±x)
    pad = torch.zeros(labels, 1, dtype=torch.float64, device=device)
    cum_correct = torch.cat([pad, correct.gather(1, order).to(torch.float64).cumsum(1)], 1)  # [L, N + 1]
    counts = counted.sum(-1)
    boundaries = (torch.arange(M + 1, device=device) * counts[:, None] + M - 1) // M  # equal-mass bin starts
    edges = torch.tensor(_inner_edges(M, z.dtype), dtype=z.dtype, device=device)
    chunk = max(1, min(n_temps, max_chunk_elements // (16 * n * labels)))
    curves = []
    for start in range(0, n_temps, chunk):
        temps = temperatures[start:start + chunk]
        block = temps.shape[0]
        rows = block * labels
        x = z[None] / temps[:, :, None]  # [block, L, N]
        nll = -torch.where(counted, F.logsigmoid(x * sign), 0).sum(-1, dtype=torch.float64) / counts
        conf = torch.sigmoid(x.abs_() if top_label else x).view(rows, n)  # each row non-decreasing
        del x
        cum_conf = torch.cat([pad.repeat(block, 1), conf.to(torch.float64).cumsum(1)], 1)  # [rows, N + 1]
        cum_corr = cum_correct.repeat(block, 1)
        count = counts.repeat(block)[:, None]
        ends = torch.searchsorted(conf, edges.expand(rows, -1).contiguous(), right=True).clamp(max=count)
        ends = torch.cat([torch.zeros_like(count), ends, count], 1)  # equal-width bin b is [ends[b], ends[b + 1])
        ece = (cum_corr.gather(1, ends).diff(dim=1) - cum_conf.gather(1, ends).diff(dim=1)).abs().sum(1) / count[:, 0]
        rank = boundaries.repeat(block, 1)
        inside = rank < count
        value = conf.gather(1, rank.clamp(max=n - 1))
        first = torch.where(inside, torch.searchsorted(conf, value, right=False), rank)  # the tie group of the rank
        last = torch.where(inside, torch.searchsorted(conf, value, right=True).clamp(max=count), rank)
        below = cum_corr.gather(1, first)
        correct_at = below + (rank - first) * (cum_corr.gather(1, last) - below) / (last - first).clamp(min=1)
        gap = correct_at.diff(dim=1) - cum_conf.gather(1, rank).diff(dim=1)
        adaece = gap.abs().sum(1) / count[:, 0]
        curves.append(torch.stack([ece.view(block, labels), adaece.view(block, labels), nll]))
    return torch.cat(curves, 1).permute(0, 2, 1)  # [3, L, T]


def _nll_derivative(logits, positive, valid, log_beta, max_chunk_elements):
    """Per label g = dNLL/dβ = mean over counted pairs of (σ(β z) - y) z and g' = mean σ(1 - σ) z² (float64, β =
    1/T = exp(log_beta) ``[L]``); the NLL is convex in β (g' >= 0), so g is increasing."""
    n, labels = logits.shape
    beta = torch.exp(log_beta)
    rows = max(1, _block_elements(max_chunk_elements, logits.device) // labels)
    g = torch.zeros(labels, dtype=torch.float64, device=logits.device)
    slope = torch.zeros_like(g)
    for start in range(0, n, rows):
        z = logits[start:start + rows].to(torch.float64)
        weight = valid[start:start + rows].to(torch.float64)
        p = torch.sigmoid(z * beta)
        g += ((p - positive[start:start + rows].to(torch.float64)) * z * weight).sum(0)
        slope += (p * (1 - p) * z.square() * weight).sum(0)
    count = valid.sum(0).to(torch.float64)
    return g / count, slope / count


def _fit_label_nll(logits, positive, valid, max_chunk_elements) -> tuple[np.ndarray, np.ndarray]:
    """Each label's continuous NLL minimiser T (as fit_temperature's L-BFGS fit, to machine precision): the root of
    the increasing g(β) by Newton steps in log β kept inside a shrinking bracket (bisection when a step leaves it),
    vectorised over labels. Returns (T [L], undetermined [L] bool: the NLL keeps falling towards T -> 0 or
    T -> inf within [1e-8, 1e8], or does not depend on T)."""
    labels = logits.shape[1]
    device = logits.device
    low = torch.full((labels,), -_LOG_BETA_RANGE, dtype=torch.float64, device=device)
    high = -low
    g_low = _nll_derivative(logits, positive, valid, low, max_chunk_elements)[0]
    g_high = _nll_derivative(logits, positive, valid, high, max_chunk_elements)[0]
    # g(β) >= 0 already at the smallest β: the optimum is T -> inf (or g == 0 everywhere: no dependence on T);
    # g(β) <= 0 at the largest: T -> 0. Such labels stop at the end of the range.
    to_infinity, to_zero = g_low >= 0, g_high <= 0
    log_beta = torch.where(to_infinity, low, torch.where(to_zero, high, torch.zeros_like(low)))
    active = ~(to_infinity | to_zero)
    for _ in range(_NEWTON_ITERATIONS):
        if not bool(active.any()):
            break
        g, slope = _nll_derivative(logits, positive, valid, log_beta, max_chunk_elements)
        low = torch.where(active & (g < 0), log_beta, low)
        high = torch.where(active & (g > 0), log_beta, high)
        step = -g / (slope * torch.exp(log_beta))  # Newton in log β: dg/dlog β = β g'
        proposal = log_beta + step
        inside = torch.isfinite(proposal) & (proposal > low) & (proposal < high)
        proposal = torch.where(inside, proposal, (low + high) / 2)
        done = (g == 0) | ((proposal - log_beta).abs() <= 4e-16 * log_beta.abs().clamp(min=1)) | (
            (high - low) <= 4e-16 * log_beta.abs().clamp(min=1))
        log_beta = torch.where(active & ~done, proposal, log_beta)
        active &= ~done
    temperature = torch.exp(-log_beta)
    return temperature.cpu().numpy(), (to_infinity | to_zero).cpu().numpy()


def _label_fit(logits, labels, objective, method, temperatures, n_bins, confidence, mask, ignore_index,
               max_chunk_elements, per_label: bool, caller: str):
    check_choice(objective, OBJECTIVES, "objective")
    check_choice(method, LABEL_METHODS, "method")
    check_choice(confidence, multilabel.CONFIDENCES, "confidence")
    if method == "newton" and objective != "nll":
        raise ValueError(f"method='newton' fits the NLL only; got objective={objective!r} (use method='grid')")
    n_bins = check_n_bins(n_bins)
    max_chunk_elements = check_int(max_chunk_elements, "max_chunk_elements", 1)
    grid = check_grid(temperatures, "temperatures", default=DEFAULT_TEMPERATURES)
    stats = multilabel.label_statistics(labels, logits=logits, mask=mask, ignore_index=ignore_index,
                                           multilabel=per_label)  # validates
    logits = multilabel._as_2d(torch.as_tensor(logits), per_label, "logits")
    valid = stats.valid
    positive = stats.correct  # under the "positive" convention: the target
    z = logits.to(compute_dtype(logits.dtype))
    z = torch.where(valid, z, torch.zeros((), dtype=z.dtype, device=z.device))  # uncounted pairs may hold NaN
    counts = valid.sum(0)
    few = (counts < 2).nonzero().view(-1).tolist()
    if few:
        where = "" if not per_label else f" for label(s) {few[:10]}{' ...' if len(few) > 10 else ''}"
        raise ValueError(f"{caller} needs at least 2 counted samples per temperature to determine it, got "
                         f"{int(counts[few[0]])}{where}")
    constant = ((z == 0) | ~valid).all(0).cpu().numpy()  # σ(0 / T) = 1/2 for every T

    if method == "newton":
        fitted, undetermined = _fit_label_nll(z, positive, valid, max_chunk_elements)
        undetermined |= constant
        reason = "the NLL keeps decreasing towards T -> 0 or T -> inf (or does not depend on T)"
        table = torch.as_tensor(fitted, dtype=torch.float64, device=z.device)[None] if temperatures is None else \
            torch.as_tensor(grid, dtype=torch.float64, device=z.device)[:, None]
        grid_out = fitted[:, None] if temperatures is None else grid
    else:
        table = torch.as_tensor(grid, dtype=torch.float64, device=z.device)[:, None]
        grid_out = grid
    curves = _label_curves(z, positive, valid, table.to(z.dtype), n_bins, confidence,
                           int(max_chunk_elements)).cpu().numpy()
    if method == "grid":
        objective_curves = curves[OBJECTIVES.index(objective)]
        fitted = grid[np.argmin(objective_curves, axis=1)]  # first minimum = smallest T
        undetermined = undetermined_curves(objective_curves)
        reason = f"the {objective} is the same at every temperature of the grid (returning the first)"
    if undetermined.any():
        which = np.flatnonzero(undetermined).tolist()
        where = f"label(s) {which[:10]}{' ...' if len(which) > 10 else ''}: " if per_label else ""
        warnings.warn(f"{caller}: {where}{reason}, so these data do not determine T", TemperatureFitWarning,
                      stacklevel=4)
    return fitted, grid_out, curves


@torch.no_grad()
def fit_label_temperatures(logits, labels, objective: str = "ece", *, method: str = "grid", temperatures=None,
                           n_bins: int = 15, confidence: str = "positive", mask=None, ignore_index: int | None = None,
                           max_chunk_elements: int = 2 ** 25) -> LabelTemperatureFit:
    """One temperature per label for multi-label logits ``[N, L]`` (labels last; ``p = σ(z / T_l)``), each fitted
    on its own label's counted samples -- the same as fitting each label alone, vectorised over labels.

    Args:
        logits: ``[N, L]`` validation logits; labels: 0 / 1 targets of the same shape.
        objective: ``"ece"`` (the paper's choice), ``"adaece"`` or ``"nll"`` (binary cross-entropy), of the
            multi-label metrics' conventions (:mod:`focal_calibration.calibration.multilabel`).
        method: ``"grid"``: the minimiser over ``temperatures`` (ties -> the smallest T), as :func:`fit_temperature`;
            ``"newton"``: the continuous NLL minimiser (Guo et al.'s fit, what ``fit_temperature(method="lbfgs")``
            finds for softmax), only with objective ``"nll"``: the NLL is convex in 1/T, and its derivative's root is
            found per label by Newton steps inside a shrinking bracket (to machine precision, T in [1e-8, 1e8]).
        temperatures: the grid (default T = k/10 for k = 1..100). With ``method="newton"`` and no grid the curves
            are each label's metrics at its fitted T.
        n_bins: bins of ECE / AdaECE. confidence: ``"positive"`` or ``"top_label"`` (see the metrics).
        mask / ignore_index: drop single (sample, label) pairs.

    Raises:
        ValueError: a label with fewer than 2 counted samples (its T cannot be determined), or bad input.

    Warns:
        TemperatureFitWarning: naming the labels whose T the data do not determine: a flat grid objective (e.g.
            every logit 0), or a NLL that keeps falling towards T -> 0 (perfectly separated) or T -> inf.
    """
    fitted, grid, curves = _label_fit(logits, labels, objective, method, temperatures, n_bins, confidence, mask,
                                      ignore_index, max_chunk_elements, True, "fit_label_temperatures")
    return LabelTemperatureFit(temperature=np.asarray(fitted, dtype=np.float64), objective=objective, method=method,
                               confidence=confidence, temperatures=grid, ece=curves[0], adaece=curves[1],
                               nll=curves[2])


@torch.no_grad()
def fit_binary_temperature(logits, labels, objective: str = "ece", *, method: str = "grid", temperatures=None,
                           n_bins: int = 15, confidence: str = "positive", mask=None,
                           ignore_index: int | None = None, max_chunk_elements: int = 2 ** 25) -> TemperatureFit:
    """One temperature for binary logits (``p = σ(z / T)``; any shape, flattened: for ``[N, L]`` multi-label
    logits, one T shared by every label, fitted on all pairs pooled). Arguments, warnings and errors as
    :func:`fit_label_temperatures`; returns a :class:`TemperatureFit` (curves ``[T]``)."""
    fitted, grid, curves = _label_fit(logits, labels, objective, method, temperatures, n_bins, confidence, mask,
                                      ignore_index, max_chunk_elements, False, "fit_binary_temperature")
    return TemperatureFit(temperature=float(fitted[0]), objective=objective, method=method,
                          temperatures=np.asarray(grid, dtype=np.float64).reshape(-1), ece=curves[0, 0],
                          adaece=curves[1, 0], nll=curves[2, 0])
