"""Post-hoc calibration maps beside temperature scaling: vector and matrix scaling (Guo et al., ICML 2017, §4.2) and
Dirichlet calibration (Kull et al., NeurIPS 2019), with Kull et al.'s ODIR regulariser.

Each map turns logits ``z`` in R^K into new logits ``s``; the calibrated probabilities are ``softmax(s)``:

* vector scaling (Guo et al.):      ``s = a ⊙ z + b``             2K parameters; temperature scaling is a = 1/T, b = 0
* matrix scaling (Guo et al.):      ``s = W z + b``               K² + K parameters
* Dirichlet calibration (Kull et al.): ``s = W log softmax(z) + b``  K² + K parameters: matrix scaling on
  log-probabilities (the multinomial logistic regression form of the Dirichlet map)

The parameters minimise the validation NLL (Guo et al.: "optimized with respect to NLL")

    L(θ) = -1/N Σ_i log softmax(s_i)_{y_i},

plus, as an option for the two K × K maps, Kull et al.'s Off-Diagonal and Intercept Regularisation (ODIR)

    λ · 1/(K(K−1)) Σ_{i≠j} W_ij²  +  μ · 1/K Σ_j b_j²

which leaves the diagonal free (so the identity map and temperature scaling cost nothing) and shrinks the K² − K
off-diagonal weights and the biases. Every objective is convex in the parameters, so L-BFGS (strong-Wolfe line search,
deterministic, started at the identity map) reaches the unique optimum of the predictions. The gradient is analytic:
dL/ds_i = (softmax(s_i) − onehot(y_i)) / N, then dL/dW = Σ_i (dL/ds_i) x_iᵀ, dL/db = Σ_i dL/ds_i and for vector
scaling dL/da = Σ_i (dL/ds_i) ⊙ x_i, with x = z or log softmax(z). Rows are processed in chunks of at most
``max_chunk_elements`` numbers, in float32 (float64 for float64 logits), and the sums accumulate in float64.

``odir="cv"`` chooses λ = μ from ``odir_grid`` by ``cv_folds``-fold cross-validation on the given (validation) set —
Kull et al. choose their coefficients by cross-validation too — with a seeded split, warm-starting each fold's path
from the strongest regularisation down; the path (grid, held-out NLL) is kept on the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from focal_calibration import constants
from focal_calibration.calibration.metrics import CalibrationAccumulator
from focal_calibration.validation import (as_tensor, check_finite, check_grid, check_int, check_n_bins,
                                          check_nonnegative_number, compute_dtype, prepare_scores)

__all__ = ["fit_vector_scaling", "fit_matrix_scaling", "fit_dirichlet", "ScalingFit", "DEFAULT_ODIR_GRID"]

# λ = μ candidates of odir="cv": 10^-2 ... 10^4 (Kull et al.'s experiment scripts search 10^-5 or 10^-2 ... 10^6)
DEFAULT_ODIR_GRID = 10.0 ** np.arange(-2, 5)


@dataclass
class ScalingFit:
    """A fitted vector / matrix scaling or Dirichlet map and its validation metrics at the fit.

    ``weight`` is ``a`` ([K], vector scaling) or ``W`` ([K, K], row j gives new logit j); ``bias`` is ``b`` [K].
    ``nll`` / ``ece`` / ``adaece`` are the (unregularised) validation metrics of the fitted map, ``objective`` the
    minimised value (NLL + ODIR penalty). With ``odir="cv"``: ``odir_grid`` (λ = μ candidates) and ``cv_nll`` (mean
    held-out NLL of each) are the regularisation path, and ``odir`` the chosen pair.
    """
    method: str
    weight: np.ndarray
    bias: np.ndarray
    odir: tuple[float, float] | None
    nll: float
    ece: float
    adaece: float
    objective: float
    n_iter: int
    converged: bool
    odir_grid: np.ndarray | None = None
    cv_nll: np.ndarray | None = None
    cv_folds: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.bias.shape[0])

    @property
    def n_params(self) -> int:
        return int(self.weight.size + self.bias.size)

    def scale(self, logits):
        """The calibrated logits ``s`` of ``logits [..., K]`` (tensor or array in, same type out; float16 / bfloat16
        come back as float32, the precision the map is computed in). ``softmax(s)`` are the calibrated probabilities."""
        is_tensor = isinstance(logits, torch.Tensor)
        z = as_tensor(logits, "logits")
        if not z.is_floating_point():
            raise TypeError(f"logits must be floating-point, got dtype {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.num_classes:
            raise ValueError(f"logits have {z.shape[-1] if z.dim() else 0} classes (shape {tuple(z.shape)}), but this "
                             f"{self.method} map was fitted on K = {self.num_classes}")
        check_finite(z, "logits")
        dtype = compute_dtype(z.dtype)
        weight = torch.as_tensor(self.weight, dtype=dtype, device=z.device)
        bias = torch.as_tensor(self.bias, dtype=dtype, device=z.device)
        flat = _features(z.reshape(-1, self.num_classes).to(dtype), self.method)
        out = _linear_map(flat, weight, bias).reshape(z.shape)
        return out if is_tensor else out.detach().cpu().numpy()

    def summary(self) -> dict:
        """JSON-ready description (no arrays): map, parameter count, regularisation, fit diagnostics."""
        odir = None if self.odir is None else {"lambda": self.odir[0], "mu": self.odir[1]}
        if odir is not None and self.odir_grid is not None:
            odir["chosen_by"] = f"{self.cv_folds}-fold cross-validated NLL over lambda = mu in " \
                                f"{[float(v) for v in self.odir_grid]}"
        return {"method": self.method, "num_classes": self.num_classes, "n_params": self.n_params, "odir": odir,
                "val_nll": self.nll, "val_ece": self.ece, "objective": self.objective, "n_iter": self.n_iter,
                "converged": self.converged}


# ----------------------------------------------------------------------------------------------------------------
# The maps and their objective (pure functions)

def _features(logits: torch.Tensor, method: str) -> torch.Tensor:
    """x: the logits (vector / matrix scaling) or their log-softmax (Dirichlet: the map acts on log-probabilities)."""
    return torch.log_softmax(logits, dim=-1) if method == "dirichlet" else logits


def _linear_map(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """s = a ⊙ x + b for a weight vector, s = x Wᵀ + b for a weight matrix."""
    return torch.addcmul(bias, x, weight) if weight.dim() == 1 else torch.addmm(bias, x, weight.T)


def _nll_and_grad(x, labels, weight, bias, chunk_rows):
    """Mean NLL of softmax(s) over the rows and its gradient w.r.t. (weight, bias), float64 sums over row chunks."""
    n = x.shape[0]
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float64, device=x.device)
    grad_bias = torch.zeros(bias.shape, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_rows):
        rows, target = x[start:start + chunk_rows], labels[start:start + chunk_rows, None]
        log_p = torch.log_softmax(_linear_map(rows, weight, bias), dim=-1)
        loss -= log_p.gather(1, target).sum(dtype=torch.float64)
        dlogits = log_p.exp_().scatter_add_(1, target, log_p.new_full(target.shape, -1.0))  # softmax − onehot
        grad_bias += dlogits.sum(0, dtype=torch.float64)
        if weight.dim() == 1:
            grad_weight += (dlogits * rows).sum(0, dtype=torch.float64)
        else:
            grad_weight += (dlogits.T @ rows).to(torch.float64)
    return loss / n, grad_weight / n, grad_bias / n


def _odir_penalty(weight: torch.Tensor, bias: torch.Tensor, lam: float, mu: float):
    """Kull et al.'s ODIR term λ/(K(K−1)) Σ_{i≠j} W_ij² + μ/K Σ_j b_j² and its gradient (w.r.t. W, b)."""
    k = bias.shape[0]
    off_diagonal = weight - torch.diag_embed(torch.diagonal(weight))
    scale_w, scale_b = lam / (k * (k - 1)), mu / k
    value = scale_w * off_diagonal.square().sum() + scale_b * bias.square().sum()
    return value, 2 * scale_w * off_diagonal, 2 * scale_b * bias


def _identity_params(k: int, vector: bool, device) -> torch.Tensor:
    """The flat parameters (weight then bias, float64) of the identity map s = x."""
    weight = torch.ones(k, dtype=torch.float64, device=device) if vector else \
        torch.eye(k, dtype=torch.float64, device=device)
    return torch.cat([weight.reshape(-1), torch.zeros(k, dtype=torch.float64, device=device)])


def _split_params(theta: torch.Tensor, k: int):
    weight = theta[:-k] if theta.numel() == 2 * k else theta[:-k].view(k, k)
    return weight, theta[-k:]


def _objective(theta, x, labels, odir, chunk_rows):
    """(NLL [+ ODIR], flat gradient), both float64."""
    k = x.shape[1]
    weight, bias = _split_params(theta, k)
    loss, grad_weight, grad_bias = _nll_and_grad(x, labels, weight.to(x.dtype), bias.to(x.dtype), chunk_rows)
    if odir is not None:
        penalty, penalty_weight, penalty_bias = _odir_penalty(weight, bias, *odir)
        loss, grad_weight, grad_bias = loss + penalty, grad_weight + penalty_weight, grad_bias + penalty_bias
    return loss, torch.cat([grad_weight.reshape(-1), grad_bias])


def _minimise(x, labels, odir, start, max_iter, chunk_rows):
    """L-BFGS (strong Wolfe) from ``start``; returns (theta, objective, iterations, converged)."""
    theta = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4 + 1,
                                  tolerance_grad=1e-7, tolerance_change=1e-11, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        loss, grad = _objective(theta.detach(), x, labels, odir, chunk_rows)
        theta.grad = grad
        return loss

    optimizer.step(closure)
    n_iter = int(optimizer.state[theta]["n_iter"])
    final = theta.detach()
    loss, _ = _objective(final, x, labels, odir, chunk_rows)
    return final, float(loss), n_iter, n_iter < max_iter


# ----------------------------------------------------------------------------------------------------------------
# Argument checks

def _check_odir(odir):
    """None, "cv", or a pair (λ, μ) of finite numbers >= 0."""
    if odir is None or (isinstance(odir, str) and odir == "cv"):
        return odir
    if isinstance(odir, str) or not hasattr(odir, "__len__") or len(odir) != 2:
        raise ValueError(f"odir must be None, 'cv' or a pair (lambda, mu) of numbers >= 0, got {odir!r}")
    return tuple(check_nonnegative_number(value, f"odir {name}") for name, value in zip(("lambda", "mu"), odir))


def _prepare(logits, labels, ignore_index, max_chunk_elements):
    """Validated logits [N, K] and labels [N] (ignored rows dropped), and the row chunk size."""
    max_chunk_elements = check_int(max_chunk_elements, "max_chunk_elements", 1)
    logits, labels, _ = prepare_scores(labels, logits, None, ignore_index)
    if logits.shape[0] == 0:
        raise ValueError(f"empty input: every label is ignore_index={ignore_index}")
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"a calibration map needs K >= 2 classes, got logits of shape {tuple(logits.shape)}")
    on_cpu = logits.device.type == "cpu"
    block = min(max_chunk_elements, constants.CPU_CACHE_BLOCK_ELEMENTS) if on_cpu else max_chunk_elements
    chunk_rows = max(1, block // k)
    for start in range(0, logits.shape[0], chunk_rows):  # chunked: no N x K mask
        check_finite(logits[start:start + chunk_rows], "logits")
    return logits.detach(), labels, chunk_rows


def _check_identifiable(n: int, k: int, n_params: int, labels: torch.Tensor, name: str, hint: str) -> None:
    """An unregularised fit needs at least as many samples as parameters, and every class among the labels (else the
    NLL has no finite minimiser: the bias of a missing class runs to −inf)."""
    if n_params > n:
        raise ValueError(f"{name} has {n_params} parameters for K = {k} classes but the validation set has only "
                         f"{n} samples; {hint}")
    counts = torch.bincount(labels, minlength=k)
    missing = (counts == 0).nonzero().view(-1)
    if missing.numel():
        raise ValueError(f"class {int(missing[0])} never occurs among the {n} validation labels, so the unregularised "
                         f"{name} fit has no finite optimum; {hint}")


def _fold_ids(n: int, folds: int, seed: int) -> torch.Tensor:
    """Fold of every row: a seeded permutation dealt round-robin into ``folds`` folds of equal size (±1)."""
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return torch.from_numpy(fold)


def _cross_validate(x, labels, grid, folds, seed, max_iter, chunk_rows):
    """Mean held-out NLL of λ = μ for each grid value; each fold walks the grid from the largest value down, warm
    starting from the previous solution (the path is smooth, so later fits take few iterations)."""
    fold_of = _fold_ids(x.shape[0], folds, seed).to(x.device)
    k = x.shape[1]
    held_out_loss = np.zeros(len(grid))
    for fold in range(folds):
        train, held = fold_of != fold, fold_of == fold
        x_train, labels_train, x_held, labels_held = x[train], labels[train], x[held], labels[held]
        theta = _identity_params(k, False, x.device)
        for index in range(len(grid) - 1, -1, -1):
            theta, *_ = _minimise(x_train, labels_train, (grid[index], grid[index]), theta, max_iter, chunk_rows)
            loss, _ = _objective(theta, x_held, labels_held, None, chunk_rows)
            held_out_loss[index] += float(loss) * labels_held.numel()
    return held_out_loss / x.shape[0]


def _fit(method, logits, labels, *, odir, odir_grid, cv_folds, seed, ignore_index, n_bins, max_iter,
         max_chunk_elements) -> ScalingFit:
    n_bins = check_n_bins(n_bins)
    max_iter = check_int(max_iter, "max_iter", 1)
    odir = _check_odir(odir)
    grid = None
    if odir == "cv":
        grid = check_grid(odir_grid, "odir_grid", default=DEFAULT_ODIR_GRID, allow_zero=True)
        cv_folds = check_int(cv_folds, "cv_folds", 2)
        seed = check_int(seed, "seed", 0)
    logits, labels, chunk_rows = _prepare(logits, labels, ignore_index, max_chunk_elements)
    n, k = logits.shape
    vector = method == "vector"
    name = {"vector": "vector scaling", "matrix": "matrix scaling", "dirichlet": "Dirichlet calibration"}[method]
    if odir is None:
        hint = "use fit_temperature (1 parameter) or a larger validation set" if vector else \
            "use fit_vector_scaling (2K parameters) or ODIR regularisation (odir=(lambda, mu) or odir='cv')"
        _check_identifiable(n, k, 2 * k if vector else k * k + k, labels, name, hint)
    if odir == "cv" and cv_folds > n:
        raise ValueError(f"cv_folds = {cv_folds} exceeds the {n} validation samples")

    x = _features(logits.to(compute_dtype(logits.dtype)), method)
    cv_nll = None
    if odir == "cv":
        cv_nll = _cross_validate(x, labels, grid, cv_folds, seed, max_iter, chunk_rows)
        best = float(grid[np.flatnonzero(cv_nll == cv_nll.min())[-1]])  # ties -> the stronger regularisation
        odir = (best, best)
    theta, objective, n_iter, converged = _minimise(x, labels, odir, _identity_params(k, vector, x.device),
                                                    max_iter, chunk_rows)
    weight, bias = _split_params(theta, k)
    metrics = _metrics_at_fit(x, labels, weight.to(x.dtype), bias.to(x.dtype), n_bins, chunk_rows)
    return ScalingFit(method=method, weight=weight.cpu().numpy().copy(), bias=bias.cpu().numpy().copy(), odir=odir,
                      nll=metrics["nll"], ece=metrics["ece"], adaece=metrics["adaece"], objective=objective,
                      n_iter=n_iter, converged=converged, odir_grid=grid, cv_nll=cv_nll,
                      cv_folds=cv_folds if grid is not None else None)


def _metrics_at_fit(x, labels, weight, bias, n_bins, chunk_rows) -> dict:
    """Validation metrics of the fitted map, streamed over row chunks (the mapped N x K logits never exist at once)."""
    accumulator = CalibrationAccumulator(n_bins, classwise=False)
    for start in range(0, x.shape[0], chunk_rows):
        accumulator.update(labels[start:start + chunk_rows],
                           logits=_linear_map(x[start:start + chunk_rows], weight, bias))
    return accumulator.compute()


# ----------------------------------------------------------------------------------------------------------------
# Public entry points

@torch.no_grad()
def fit_vector_scaling(logits, labels, *, ignore_index: int | None = None, n_bins: int = 15, max_iter: int = 1000,
                       max_chunk_elements: int = 2 ** 25) -> ScalingFit:
    """Vector scaling (Guo et al. 2017): ``s = a ⊙ z + b`` minimising the NLL on validation logits ``[..., K]`` and
    labels ``[...]``; unregularised, so it needs 2K <= N and every class among the labels.

    Args:
        ignore_index: rows with this label are dropped.
        n_bins: bins of the ECE / AdaECE reported at the fit.
        max_iter: L-BFGS iterations (``converged`` is False when they ran out).
        max_chunk_elements: bound on the ``[rows, K]`` blocks processed at once.
    """
    return _fit("vector", logits, labels, odir=None, odir_grid=None, cv_folds=None, seed=0,
                ignore_index=ignore_index, n_bins=n_bins, max_iter=max_iter, max_chunk_elements=max_chunk_elements)


@torch.no_grad()
def fit_matrix_scaling(logits, labels, *, odir=None, odir_grid=None, cv_folds: int = 3, seed: int = 0,
                       ignore_index: int | None = None, n_bins: int = 15, max_iter: int = 1000,
                       max_chunk_elements: int = 2 ** 25) -> ScalingFit:
    """Matrix scaling (Guo et al. 2017): ``s = W z + b`` minimising the NLL on validation logits ``[..., K]``.

    Args:
        odir: ``None`` (Guo et al.'s unregularised fit: needs K² + K <= N and every class among the labels),
            ``(lambda, mu)`` (Kull et al.'s ODIR penalty, see the module docstring) or ``"cv"`` (λ = μ chosen from
            ``odir_grid``, default 10^-2 ... 10^4, by ``cv_folds``-fold cross-validation with split seed ``seed``).
        ignore_index: as :func:`fit_vector_scaling`.
        n_bins: as :func:`fit_vector_scaling`.
        max_iter: as :func:`fit_vector_scaling`.
        max_chunk_elements: as :func:`fit_vector_scaling`.
    """
    return _fit("matrix", logits, labels, odir=odir, odir_grid=odir_grid, cv_folds=cv_folds, seed=seed,
                ignore_index=ignore_index, n_bins=n_bins, max_iter=max_iter, max_chunk_elements=max_chunk_elements)


@torch.no_grad()
def fit_dirichlet(logits, labels, *, odir=None, odir_grid=None, cv_folds: int = 3, seed: int = 0,
                  ignore_index: int | None = None, n_bins: int = 15, max_iter: int = 1000,
                  max_chunk_elements: int = 2 ** 25) -> ScalingFit:
    """Dirichlet calibration (Kull et al. 2019): ``s = W log softmax(z) + b``, i.e. matrix scaling of the
    log-probabilities, from logits ``[..., K]`` (the log-softmax is exact, no clipping). Arguments as
    :func:`fit_matrix_scaling`; Kull et al. recommend ODIR for neural networks."""
    return _fit("dirichlet", logits, labels, odir=odir, odir_grid=odir_grid, cv_folds=cv_folds, seed=seed,
                ignore_index=ignore_index, n_bins=n_bins, max_iter=max_iter, max_chunk_elements=max_chunk_elements)
