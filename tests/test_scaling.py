"""focal_calibration.calibration.scaling against independent references: hand-derived optima (saturated models
reproduce the
empirical class frequencies), known generating maps, autograd of the naive objective, temperature scaling as a special
case of vector scaling, and the ``dirichletcal`` package (Kull et al.'s code) on the same inputs."""

import numpy as np
import pytest
import torch
from scipy.special import expit, log_softmax, logit

from focal_calibration.calibration import scaling
from focal_calibration.calibration.metrics import calibration_metrics
from focal_calibration.calibration.scaling import ScalingFit, fit_dirichlet, fit_matrix_scaling, fit_vector_scaling
from focal_calibration.calibration.temperature import fit_temperature


def sampled_labels(scores, seed):
    """Labels drawn from softmax(scores): scores are the logits of a perfectly calibrated model."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(1)


def reference_nll(logits, labels):
    return float(-log_softmax(np.asarray(logits, dtype=np.float64), axis=1)[np.arange(len(labels)), labels].mean())


def repeated_points(points, counts):
    """Logits: each row of ``points`` repeated; labels: counts[p][c] copies of class c at point p."""
    logits, labels = [], []
    for point, per_class in zip(points, counts):
        for cls, count in enumerate(per_class):
            logits += [point] * count
            labels += [cls] * count
    return torch.tensor(logits, dtype=torch.float64), torch.tensor(labels)


def softmax_np(s):
    return np.exp(log_softmax(np.asarray(s, dtype=np.float64), axis=1))


# ----------------------------------------------------------------------------------------------------------------
# Hand-derived optima

def test_vector_scaling_two_classes_hand_derived_optimum():
    # z = (0, s): the new logit gap is a_1 s + (b_1 - b_0), a logistic regression on s with two distinct values, so
    # the optimum reproduces the empirical frequency of class 1 at each value (f = 3/10 at s = -1, 8/10 at s = 2).
    logits, labels = repeated_points([[0.0, -1.0], [0.0, 2.0]], [[7, 3], [2, 8]])
    fit = fit_vector_scaling(logits, labels)
    f1, f2 = 0.3, 0.8
    slope = (logit(f2) - logit(f1)) / 3.0
    assert fit.weight[1] == pytest.approx(slope, abs=1e-6)
    assert fit.bias[1] - fit.bias[0] == pytest.approx(logit(f1) + slope, abs=1e-6)
    assert fit.weight[0] == 1.0  # multiplies z_0 = 0: its gradient is 0, it stays at the identity's value
    entropy = -np.mean([np.log(0.7)] * 7 + [np.log(0.3)] * 3 + [np.log(0.2)] * 2 + [np.log(0.8)] * 8)
    assert fit.nll == pytest.approx(entropy, abs=1e-10)
    assert fit.converged and fit.n_params == 4 and fit.odir is None
    p1 = softmax_np(fit.scale(np.array([[0.0, -1.0], [0.0, 2.0]])))[:, 1]
    np.testing.assert_allclose(p1, [f1, f2], atol=1e-7)
    np.testing.assert_allclose(p1, expit(slope * np.array([-1.0, 2.0]) + logit(f1) + slope), atol=1e-7)


@pytest.mark.parametrize("fit_map", [fit_matrix_scaling, fit_dirichlet])
def test_saturated_matrix_maps_reproduce_empirical_frequencies(fit_map):
    # K = 3 and 4 affinely independent points in R^3 (logits for matrix scaling; their log-softmax, a curved surface,
    # for Dirichlet calibration): each new-logit gap is an affine function of 3 features with 4 free coefficients,
    # so the NLL optimum puts exactly the empirical class frequencies at every point.
    points = [[0.0, 0.0, 0.0], [2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [-1.0, 1.0, 2.5]]
    counts = [[10, 6, 4], [3, 12, 5], [5, 5, 10], [12, 2, 6]]
    logits, labels = repeated_points(points, counts)
    fit = fit_map(logits, labels)
    got = softmax_np(fit.scale(np.array(points)))
    want = np.array(counts) / 20.0
    np.testing.assert_allclose(got, want, atol=2e-6)
    entropy = -np.sum(np.array(counts) * np.log(want)) / len(labels)
    assert fit.nll == pytest.approx(entropy, abs=1e-9)


def test_optimality_conditions_hold_at_the_fit():
    # First-order conditions of the unregularised NLL (moment matching), checked in NumPy from the fitted
    # probabilities: sum_i (p_i - onehot_i) x_i^T = 0 and sum_i (p_i - onehot_i) = 0, up to the optimiser's stopping
    # rule (objective change < 1e-11 per iteration leaves gradients of order 1e-6).
    logits = torch.randn(600, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    labels = sampled_labels(logits / 2 + torch.tensor([0.5, 0.0, -0.5, 0.2], dtype=torch.float64), seed=2)
    onehot = np.eye(4)[labels.numpy()]
    for fit_map, features in ((fit_matrix_scaling, logits.numpy()),
                              (fit_dirichlet, log_softmax(logits.numpy(), axis=1))):
        fit = fit_map(logits, labels)
        residual = softmax_np(fit.scale(logits.numpy())) - onehot
        np.testing.assert_allclose(residual.T @ features / 600, 0, atol=1e-5)
        np.testing.assert_allclose(residual.mean(0), 0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Known generating maps, and the nesting temperature ⊂ vector ⊂ matrix scaling

def test_vector_scaling_recovers_a_known_temperature():
    logits = torch.randn(8000, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    labels = sampled_labels(logits, seed=4)
    fit = fit_vector_scaling(logits * 2.5, labels)  # true map: a = 1/2.5 for every class, b = 0
    np.testing.assert_allclose(fit.weight, 0.4, atol=0.03)
    np.testing.assert_allclose(fit.bias - fit.bias.mean(), 0, atol=0.08)


def test_matrix_scaling_recovers_a_known_map():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(20000, 4, generator=generator, dtype=torch.float64) * 2
    true_w = torch.tensor([[0.6, 0.2, 0.0, -0.1], [0.0, 0.8, 0.1, 0.0], [0.3, 0.0, 0.5, 0.0], [0.0, -0.2, 0.0, 1.1]],
                          dtype=torch.float64)
    true_b = torch.tensor([0.3, -0.2, 0.0, 0.1], dtype=torch.float64)
    labels = sampled_labels(logits @ true_w.T + true_b, seed=6)
    fit = fit_matrix_scaling(logits, labels)
    # softmax is unchanged by adding one vector to every row of W (and one number to b): compare centred parameters
    np.testing.assert_allclose(fit.weight - fit.weight.mean(0), (true_w - true_w.mean(0)).numpy(), atol=0.06)
    np.testing.assert_allclose(fit.bias - fit.bias.mean(), (true_b - true_b.mean()).numpy(), atol=0.06)


def test_nll_nesting_identity_temperature_vector_matrix():
    logits = torch.randn(3000, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 3
    labels = sampled_labels(logits / 3 + torch.tensor([0.4, 0.0, 0.0, -0.4, 0.2], dtype=torch.float64), seed=8)
    identity = reference_nll(logits, labels)
    temperature = fit_temperature(logits, labels, "nll", method="lbfgs")
    vector, matrix = fit_vector_scaling(logits, labels), fit_matrix_scaling(logits, labels)
    nll_t = reference_nll(logits / temperature.temperature, labels)
    assert vector.nll == pytest.approx(reference_nll(vector.scale(logits.numpy()), labels.numpy()), rel=1e-12)
    assert nll_t < identity
    assert vector.nll <= nll_t + 1e-10  # T-scaling is vector scaling with a = 1/T, b = 0
    assert matrix.nll <= vector.nll + 1e-10  # vector scaling is matrix scaling with a diagonal W
    # here the labels carry class biases that T cannot express, so the richer maps gain strictly
    assert vector.nll < nll_t - 1e-3
    as_vector = ScalingFit(method="vector", weight=np.full(5, 1 / temperature.temperature), bias=np.zeros(5),
                           odir=None, nll=0.0, ece=0.0, adaece=0.0, objective=0.0, n_iter=0, converged=True)
    torch.testing.assert_close(as_vector.scale(logits), logits / temperature.temperature)


# ----------------------------------------------------------------------------------------------------------------
# The objective's analytic gradient vs autograd of the naive formula (float64)

@pytest.mark.parametrize("method, odir", [("vector", None), ("matrix", None), ("matrix", (0.7, 0.3)),
                                          ("dirichlet", (2.0, 0.5))])
def test_gradient_matches_autograd_of_the_naive_objective(method, odir):
    generator = torch.Generator().manual_seed(9)
    n, k = 50, 4
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, k, (n,), generator=generator)
    n_weight = k if method == "vector" else k * k
    theta = torch.randn(n_weight + k, generator=generator, dtype=torch.float64)
    x = scaling._features(logits, method)
    loss, grad = scaling._objective(theta, x, labels, odir, chunk_rows=7)  # chunks of 7 rows: exercises the sums

    naive_theta = theta.clone().requires_grad_()
    weight, bias = naive_theta[:n_weight], naive_theta[n_weight:]
    features = torch.log_softmax(logits, -1) if method == "dirichlet" else logits
    new_logits = features * weight + bias if method == "vector" else features @ weight.view(k, k).T + bias
    naive = -torch.log_softmax(new_logits, -1)[torch.arange(n), labels].mean()
    if odir is not None:
        w = weight.view(k, k)
        off = sum(w[i, j] ** 2 for i in range(k) for j in range(k) if i != j)
        naive = naive + odir[0] * off / (k * (k - 1)) + odir[1] * (bias ** 2).sum() / k
    naive.backward()
    assert float(loss) == pytest.approx(naive.item(), rel=1e-13)
    torch.testing.assert_close(grad, naive_theta.grad, rtol=1e-11, atol=1e-13)


# ----------------------------------------------------------------------------------------------------------------
# dirichletcal (Kull et al.'s package) on the same inputs

@pytest.fixture(scope="module")
def dirichletcal_problem():
    rng = np.random.default_rng(11)
    n, k = 150, 3
    logits = rng.normal(size=(n, k)) * 2
    labels = np.array([rng.choice(k, p=p) for p in softmax_np(logits / 2 + np.array([0.5, 0.0, -0.3]))])
    return logits, labels


def test_against_dirichletcal(dirichletcal_problem):
    from dirichletcal.calib.fulldirichlet import FullDirichletCalibrator
    from dirichletcal.calib.multinomial import MultinomialRegression

    logits, labels = dirichletcal_problem
    # Their L-BFGS (scipy's defaults: projected-gradient tolerance 1e-5) is less converged than ours, hence 1e-4.
    tolerance = dict(atol=1e-4, rtol=0)

    # matrix scaling = their multinomial regression on logits ("Full") with ODIR (reg_norm=True is Kull et al.'s
    # normalisation λ/(K(K-1)), μ/K; ref_row=False regularises W itself, not W minus its last row). Unregularised
    # matrix scaling is checked above against hand-derived optima (their package is slow: ~1-3 s a fit).
    ours = fit_matrix_scaling(logits, labels, odir=(0.8, 0.3))
    ref = MultinomialRegression(method="Full", reg_lambda=0.8, reg_mu=0.3, reg_norm=True, ref_row=False,
                                optimizer="fmin_l_bfgs_b").fit(logits, labels)
    np.testing.assert_allclose(softmax_np(ours.scale(logits)), np.asarray(ref.predict_proba(logits)), **tolerance)
    ref_weights = np.asarray(ref.weights_)  # [K, K + 1]: W then b; identifiable under ODIR
    np.testing.assert_allclose(ours.weight, ref_weights[:, :-1], atol=1e-3)
    np.testing.assert_allclose(ours.bias, ref_weights[:, -1], atol=1e-3)

    # vector scaling = their "Diag" regression on logits
    ours = fit_vector_scaling(logits, labels)
    ref = MultinomialRegression(method="Diag", ref_row=False, optimizer="fmin_l_bfgs_b").fit(logits, labels)
    np.testing.assert_allclose(softmax_np(ours.scale(logits)), np.asarray(ref.predict_proba(logits)), **tolerance)
    np.testing.assert_allclose(ours.weight, np.diag(np.asarray(ref.weights_)[:, :-1]), atol=1e-3)

    # Dirichlet calibration with ODIR: their calibrator takes probabilities (and logs them after clipping at 2e-308)
    probs = softmax_np(logits)
    ours = fit_dirichlet(logits, labels, odir=(0.5, 0.2))
    ref = FullDirichletCalibrator(reg_lambda=0.5, reg_mu=0.2, reg_norm=True, ref_row=False,
                                  optimizer="fmin_l_bfgs_b").fit(probs, labels)
    np.testing.assert_allclose(softmax_np(ours.scale(logits)), np.asarray(ref.predict_proba(probs)), **tolerance)
    np.testing.assert_allclose(ours.weight, np.asarray(ref.weights)[:, :-1], atol=1e-3)
    np.testing.assert_allclose(ours.bias, np.asarray(ref.weights)[:, -1], atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# ODIR chosen by cross-validation

def test_odir_cross_validation_path_matches_refits_on_the_documented_folds():
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(300, 4, generator=generator, dtype=torch.float64) * 3
    labels = sampled_labels(logits / 3, seed=13)
    grid = [0.01, 1.0, 100.0]
    fit = fit_matrix_scaling(logits, labels, odir="cv", odir_grid=grid, cv_folds=3, seed=4)
    np.testing.assert_array_equal(fit.odir_grid, grid)
    assert fit.odir == (grid[int(np.argmin(fit.cv_nll))],) * 2
    # the fold rule of the docstring: a seeded permutation dealt round-robin into the folds
    fold = np.empty(300, dtype=int)
    fold[np.random.default_rng(4).permutation(300)] = np.arange(300) % 3
    for i, lam in enumerate(grid):
        held_out = 0.0
        for f in range(3):
            train, held = fold != f, fold == f
            refit = fit_matrix_scaling(logits[train], labels[train], odir=(lam, lam))  # cold start
            held_out += reference_nll(refit.scale(logits[held].numpy()), labels[held].numpy()) * held.sum()
        assert fit.cv_nll[i] == pytest.approx(held_out / 300, abs=1e-5)  # warm vs cold start: stopping noise
    final = fit_matrix_scaling(logits, labels, odir=fit.odir)
    np.testing.assert_allclose(fit.weight, final.weight, atol=1e-6)
    # deterministic: the same call gives the same numbers
    again = fit_matrix_scaling(logits, labels, odir="cv", odir_grid=grid, cv_folds=3, seed=4)
    np.testing.assert_array_equal(again.cv_nll, fit.cv_nll)
    np.testing.assert_array_equal(again.weight, fit.weight)
    summary = fit.summary()
    assert summary["odir"]["lambda"] == fit.odir[0] and "3-fold" in summary["odir"]["chosen_by"]
    assert summary["n_params"] == 20 and summary["method"] == "matrix"


def test_odir_allows_more_parameters_than_samples_and_shrinks_towards_a_diagonal():
    logits = torch.randn(60, 10, generator=torch.Generator().manual_seed(14), dtype=torch.float64) * 2
    labels = torch.arange(60) % 10  # every class present, K^2 + K = 110 > 60 samples
    weak, strong = (fit_matrix_scaling(logits, labels, odir=(lam, lam)) for lam in (0.01, 1000.0))
    off = ~np.eye(10, dtype=bool)
    assert np.abs(strong.weight[off]).max() < np.abs(weak.weight[off]).max() / 10
    assert np.abs(strong.bias).max() < np.abs(weak.bias).max()
    assert weak.nll < strong.nll  # less regularisation fits the fitting set better


# ----------------------------------------------------------------------------------------------------------------
# scale(), ignore_index, precision

def test_scale_types_shapes_and_precision():
    logits = torch.randn(400, 5, generator=torch.Generator().manual_seed(15)) * 2
    labels = sampled_labels(logits.double(), seed=16)
    fit = fit_matrix_scaling(logits, labels)  # float32 logits: computed in float32, sums in float64
    want = logits.double().numpy() @ fit.weight.T + fit.bias
    out = fit.scale(logits)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), want, atol=1e-4)
    out_np = fit.scale(logits.numpy())
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    batched = fit.scale(logits.view(4, 100, 5))
    assert batched.shape == (4, 100, 5)
    torch.testing.assert_close(batched.reshape(400, 5), out)
    assert fit.scale(logits.half()).dtype == torch.float32
    double = fit_matrix_scaling(logits.double(), labels)
    assert fit.nll == pytest.approx(double.nll, abs=1e-6)
    dirichlet = fit_dirichlet(logits.double(), labels)
    np.testing.assert_allclose(dirichlet.scale(logits.double().numpy()),
                               log_softmax(logits.double().numpy(), axis=1) @ dirichlet.weight.T + dirichlet.bias,
                               atol=1e-12)


def test_ignore_index_drops_rows():
    logits = torch.randn(300, 3, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    labels = sampled_labels(logits, seed=18)
    masked = labels.clone()
    masked[::7] = -100
    keep = masked != -100
    got = fit_vector_scaling(logits, masked, ignore_index=-100)
    want = fit_vector_scaling(logits[keep], labels[keep])
    np.testing.assert_array_equal(got.weight, want.weight)
    assert got.nll == want.nll


def test_metrics_at_the_fit_are_the_cores():
    logits = torch.randn(500, 4, generator=torch.Generator().manual_seed(19), dtype=torch.float64) * 3
    labels = sampled_labels(logits / 2, seed=20)
    for max_chunk_elements in (2 ** 25, 44):  # one chunk; chunks of 11 rows (streamed metrics)
        fit = fit_vector_scaling(logits, labels, n_bins=10, max_chunk_elements=max_chunk_elements)
        metrics = calibration_metrics(labels, logits=fit.scale(logits), n_bins=10)
        for key in ("nll", "ece", "adaece"):
            assert getattr(fit, key) == pytest.approx(metrics[key], rel=1e-9), key


# ----------------------------------------------------------------------------------------------------------------
# Bad input

def test_too_many_parameters_names_both_numbers_and_suggests_alternatives():
    logits, labels = torch.randn(50, 10), torch.arange(50) % 10
    with pytest.raises(ValueError, match=r"110 parameters for K = 10 .* only 50 samples.*fit_vector_scaling.*odir"):
        fit_matrix_scaling(logits, labels)
    with pytest.raises(ValueError, match=r"Dirichlet calibration has 110 parameters"):
        fit_dirichlet(logits, labels)
    with pytest.raises(ValueError, match=r"vector scaling has 20 parameters .* only 15 samples.*fit_temperature"):
        fit_vector_scaling(logits[:15], labels[:15])


@pytest.mark.parametrize("fit_map, kwargs, logits, labels, message", [
    (fit_vector_scaling, {}, torch.tensor([[0.0, float("nan")]] * 4), torch.tensor([0, 1, 0, 1]), "finite, got nan"),
    (fit_matrix_scaling, {}, torch.zeros(10, 2), torch.tensor([0, 1] * 4 + [0, 2]), "class index 2"),
    (fit_matrix_scaling, {}, torch.zeros(10, 2), torch.tensor([0, 1] * 4 + [0, -1]), "class index -1"),
    (fit_vector_scaling, {}, torch.zeros(10, 3), torch.tensor([0, 1] * 5), "class 2 never occurs"),
    (fit_vector_scaling, {}, torch.zeros(10, 1), torch.zeros(10, dtype=torch.long), "K >= 2"),
    (fit_vector_scaling, {}, torch.zeros(3, 2), torch.tensor([0, 1]), "shape mismatch"),
    (fit_vector_scaling, dict(ignore_index=0), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), "empty"),
    (fit_matrix_scaling, dict(odir=(-1.0, 0.0)), torch.zeros(10, 2), torch.arange(10) % 2, "lambda .* got -1.0"),
    (fit_matrix_scaling, dict(odir=(1.0, float("inf"))), torch.zeros(10, 2), torch.arange(10) % 2, "mu .* got inf"),
    (fit_matrix_scaling, dict(odir="odir"), torch.zeros(10, 2), torch.arange(10) % 2, "odir must be None, 'cv'"),
    (fit_matrix_scaling, dict(odir=(1.0,)), torch.zeros(10, 2), torch.arange(10) % 2, "odir must be None, 'cv'"),
    (fit_dirichlet, dict(odir="cv", cv_folds=1), torch.zeros(10, 2), torch.arange(10) % 2, "cv_folds .* got 1"),
    (fit_dirichlet, dict(odir="cv", cv_folds=11), torch.zeros(10, 2), torch.arange(10) % 2, "cv_folds = 11 exceeds"),
    (fit_dirichlet, dict(odir="cv", odir_grid=[]), torch.zeros(10, 2), torch.arange(10) % 2, "must not be empty"),
    (fit_dirichlet, dict(odir="cv", odir_grid=[1.0, -2.0]), torch.zeros(10, 2), torch.arange(10) % 2, "got -2.0"),
    (fit_vector_scaling, dict(max_iter=0), torch.zeros(10, 2), torch.arange(10) % 2, "max_iter .* got 0"),
    (fit_vector_scaling, dict(n_bins=0), torch.zeros(10, 2), torch.arange(10) % 2, "n_bins"),
])
def test_bad_inputs(fit_map, kwargs, logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_map(logits, labels, **kwargs)


def test_scale_rejects_mismatched_or_bad_logits():
    fit = fit_vector_scaling(torch.randn(40, 3, dtype=torch.float64), torch.arange(40) % 3)
    with pytest.raises(ValueError, match=r"logits have 4 classes .* fitted on K = 3"):
        fit.scale(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="finite, got inf"):
        fit.scale(np.array([[0.0, np.inf, 1.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        fit.scale(torch.zeros(2, 3, dtype=torch.long))
