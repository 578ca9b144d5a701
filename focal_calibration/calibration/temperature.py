"""Temperature scaling (Guo et al., 2017) as used in §5.1 of Mukhoti et al. (NeurIPS 2020).

The paper picks T on a validation set by grid search over T = 0.1, 0.2, ..., 10.0, minimising the ECE (15 bins);
Guo et al. instead minimise the NLL over a continuous T. Both are here: ``method="grid"`` with objective ``"ece"``,
``"adaece"`` or ``"nll"``, and ``method="lbfgs"`` (NLL only, optimised over log T).

The grid is evaluated for all temperatures at once: the prediction (argmax) does not depend on T > 0, so per T only
``log sum_k exp((z_k - z_max) / T)`` is needed, computed on ``[chunk_T, rows, K]`` blocks of at most
``max_chunk_elements`` numbers. ECE / AdaECE use the binning of :mod:`focal_calibration.calibration.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from focal_calibration import constants
from focal_calibration.calibration.metrics import adaptive_ece, ece_from_sums, equal_width_sums
from focal_calibration.validation import (check_choice, check_finite, check_grid, check_int, check_n_bins,
                                          compute_dtype, prepare_scores)

__all__ = ["fit_temperature", "TemperatureFit", "DEFAULT_TEMPERATURES"]

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

    if method == "lbfgs":
        temperature = _fit_lbfgs(logits, labels, int(max_chunk_elements))
        if temperatures is None:  # no grid asked for: report the metrics at the fitted T only
            grid = np.array([temperature])
    curves = torch.stack(_curves(logits, labels, grid, n_bins, int(max_chunk_elements))).cpu().numpy()
    if method == "grid":
        temperature = float(grid[np.argmin(curves[OBJECTIVES.index(objective)])])  # first minimum = smallest T
    return TemperatureFit(temperature=temperature, objective=objective, method=method, temperatures=grid,
                          ece=curves[0], adaece=curves[1], nll=curves[2])
