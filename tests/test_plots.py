"""Tests of focal_calibration.plots: the plotted data must equal the numbers given (or the paper's formulas)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure

from focal_calibration import plots
from focal_calibration.calibration import metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _container(ax, label_prefix):
    found = [c for c in ax.containers if str(c.get_label()).startswith(label_prefix)]
    assert len(found) == 1, [c.get_label() for c in ax.containers]
    return found[0]


def _bars(container):
    xs = np.array([r.get_x() for r in container.patches])
    bottoms = np.array([r.get_y() for r in container.patches])
    heights = np.array([r.get_height() for r in container.patches])
    widths = np.array([r.get_width() for r in container.patches])
    return xs, bottoms, heights, widths


def _line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return np.asarray(found[0].get_xdata(), float), np.asarray(found[0].get_ydata(), float)


def _assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def _g_formula(p, gamma):
    """Proposition 1, written independently: g = (1-p)^γ - γ p (1-p)^(γ-1) log p, with p log p -> 0 at p = 0."""
    p = np.asarray(p, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        second = np.where(p < 1, gamma * (1 - p) ** (gamma - 1) * plogp, 0.0)
    return (1 - p) ** gamma - second


# ----------------------------------------------------------------------------------------------------------------
# reliability_diagram

HAND_BINS = SimpleNamespace(
    edges=np.linspace(0.0, 1.0, 6),
    counts=np.array([0, 3, 5, 10, 2]),
    confidence=np.array([np.nan, 0.31, 0.52, 0.71, 0.93]),
    accuracy=np.array([np.nan, 1 / 3, 0.4, 0.9, 0.5]),
    ece=0.123,
    mce=0.43,
)


def test_reliability_diagram_bars_equal_bins(tmp_path):
    path = tmp_path / "sub" / "rel.png"
    fig = plots.reliability_diagram(HAND_BINS, title="hand-made", path=path)
    assert isinstance(fig, Figure)
    _assert_png(path)
    ax, ax_pct = fig.axes[0], fig.axes[1]

    xs, bottoms, heights, widths = _bars(_container(ax, "Outputs"))
    nonempty = HAND_BINS.counts > 0
    np.testing.assert_allclose(xs, HAND_BINS.edges[:-1][nonempty])
    np.testing.assert_allclose(widths, 0.2)
    np.testing.assert_allclose(bottoms, 0.0)
    np.testing.assert_allclose(heights, HAND_BINS.accuracy[nonempty])

    gx, gbottom, gheight, _ = _bars(_container(ax, "Gap"))
    np.testing.assert_allclose(gx, HAND_BINS.edges[:-1][nonempty])
    np.testing.assert_allclose(gbottom, HAND_BINS.accuracy[nonempty])
    np.testing.assert_allclose(gbottom + gheight, HAND_BINS.confidence[nonempty])
    assert _container(ax, "Gap").patches[0].get_hatch()

    dx, dy = _line(ax, "Perfect calibration")
    np.testing.assert_allclose(dx, dy)

    px, _, pheights, _ = _bars(_container(ax_pct, "% of samples"))
    np.testing.assert_allclose(px, HAND_BINS.edges[:-1])
    np.testing.assert_allclose(pheights, 100 * HAND_BINS.counts / 20)
    assert pheights.sum() == pytest.approx(100.0)

    texts = " ".join(t.get_text() for t in ax.texts)
    assert "ECE = 12.30%" in texts and "MCE = 43.00%" in texts
    assert ax.get_title() == "hand-made"


def test_reliability_diagram_rejects_inconsistent_bins():
    bad = SimpleNamespace(edges=np.linspace(0, 1, 4), counts=np.array([1, 2]), confidence=np.array([0.2, 0.5]),
                          accuracy=np.array([0.0, 1.0]))
    with pytest.raises(ValueError):
        plots.reliability_diagram(bad)


def test_reliability_diagram_of_real_bins():
    rng = np.random.default_rng(0)
    n, k, m = 2000, 3, 10
    logits = rng.normal(size=(n, k)) * 2.0
    labels = rng.integers(0, k, size=n)
    bins = metrics.reliability_bins(labels, logits=logits, n_bins=m)
    fig = plots.reliability_diagram(bins)
    # the test's own binning: bin i is ((i-1)/M, i/M]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    idx = np.clip(np.ceil(conf * m).astype(int) - 1, 0, m - 1)
    counts = np.bincount(idx, minlength=m)
    acc = np.bincount(idx, weights=(pred == labels), minlength=m)
    nonempty = counts > 0
    _, _, heights, _ = _bars(_container(fig.axes[0], "Outputs"))
    np.testing.assert_allclose(heights, acc[nonempty] / counts[nonempty], atol=1e-6)
    _, _, pheights, _ = _bars(_container(fig.axes[1], "% of samples"))
    np.testing.assert_allclose(pheights, 100 * counts / n, atol=1e-9)
    assert pheights.sum() == pytest.approx(100.0)


# ----------------------------------------------------------------------------------------------------------------
# g_curves (Fig. 4a)

def test_g_curves_match_proposition_1(tmp_path):
    gammas = (1, 2, 3, 5, 7)
    fig = plots.g_curves(gammas, path=tmp_path / "g.png")
    _assert_png(tmp_path / "g.png")
    ax = fig.axes[0]
    for gamma in gammas:
        p, y = _line(ax, f"γ = {gamma:g}")
        assert p.min() == 0.0 and p.max() == 1.0 and len(p) > 100
        np.testing.assert_allclose(y, _g_formula(p, gamma), rtol=1e-9, atol=1e-12)
        assert y[0] == pytest.approx(1.0) and y[-1] == pytest.approx(0.0, abs=1e-12)
    _, one = _line(ax, "g = 1")
    np.testing.assert_allclose(one, 1.0)
    # γ = 1: g = 1 - p - p log p crosses 1 at p0 = 1/e ≈ 0.37 (the paper's "p0 ≈ 0.4"); > 1 below, < 1 above
    p, y = _line(ax, "γ = 1")
    inner = (p > 0) & (p < 1)
    assert np.all(y[inner & (p < 1 / np.e - 1e-3)] > 1) and np.all(y[inner & (p > 1 / np.e + 1e-3)] < 1)


def test_g_curves_custom_grid():
    p = np.array([0.05, 0.2, 0.25, 0.6])
    fig = plots.g_curves((3, 5), p=p)
    _, y5 = _line(fig.axes[0], "γ = 5")
    np.testing.assert_allclose(y5, _g_formula(p, 5))
    assert y5[1] == pytest.approx(1.0, abs=0.03)  # the paper: g(0.2, 5) ≈ 1
    _, y3 = _line(fig.axes[0], "γ = 3")
    assert y3[2] == pytest.approx(1.0, abs=0.03)  # g(0.25, 3) ≈ 1


# ----------------------------------------------------------------------------------------------------------------
# optimal_confidence_curves (Fig. 6, eq. 5)

def test_optimal_confidence_curves(tmp_path):
    fig = plots.optimal_confidence_curves((0, 1, 3), path=tmp_path / "opt.png")
    _assert_png(tmp_path / "opt.png")
    ax = fig.axes[0]
    q, p_ce = _line(ax, "CE (γ = 0)")
    assert q.min() == 0.0 and q.max() == 1.0
    np.testing.assert_allclose(p_ce, q, atol=1e-6)  # cross-entropy: p̂ = q

    # independent brute force of eq. 5 on a fine grid at a few q
    x = np.linspace(1e-6, 1 - 1e-6, 200001)
    q1, p1 = _line(ax, "FL γ = 1")
    _, p3 = _line(ax, "FL γ = 3")
    for qi in (0.1, 0.3, 0.75, 0.9):
        j = int(np.argmin(np.abs(q1 - qi)))
        for gamma, curve in ((1, p1), (3, p3)):
            obj = -(1 - x) ** gamma * q1[j] * np.log(x) - x ** gamma * (1 - q1[j]) * np.log1p(-x)
            assert curve[j] == pytest.approx(x[np.argmin(obj)], abs=2e-5)
    # focal loss is more entropic: |p̂ - 0.5| <= |q - 0.5|, more so for larger γ
    inner = (q1 > 0.01) & (q1 < 0.99) & (np.abs(q1 - 0.5) > 0.02)
    assert np.all(np.abs(p1[inner] - 0.5) < np.abs(q1[inner] - 0.5))
    assert np.all(np.abs(p3[inner] - 0.5) < np.abs(p1[inner] - 0.5))


# ----------------------------------------------------------------------------------------------------------------
# temperature_curves

def test_temperature_curves_hand_made(tmp_path):
    t = np.arange(1, 101) / 10
    fit = SimpleNamespace(temperatures=t, ece=np.abs(t - 1.3) / 10, adaece=np.abs(t - 1.5) / 10,
                          nll=0.3 + (t - 1.4) ** 2, temperature=1.3, objective="ece")
    fig = plots.temperature_curves(fit, path=tmp_path / "t.png")
    _assert_png(tmp_path / "t.png")
    ax, ax_nll = fig.axes[0], fig.axes[1]
    x, y = _line(ax, "ECE (%)")
    np.testing.assert_allclose(x, t)
    np.testing.assert_allclose(y, 100 * fit.ece)
    _, y = _line(ax, "AdaECE (%)")
    np.testing.assert_allclose(y, 100 * fit.adaece)
    _, y = _line(ax_nll, "NLL")
    np.testing.assert_allclose(y, fit.nll)
    marks = [ln for ln in ax.get_lines() if ln.get_label().startswith("chosen T = 1.3")]
    assert len(marks) == 1
    np.testing.assert_allclose(marks[0].get_xdata(), 1.3)


def test_temperature_curves_of_real_fit():
    temperature = pytest.importorskip("focal_calibration.calibration.temperature")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=500)
    logits = rng.normal(size=(500, 4)) * 3 + 3 * np.eye(4)[labels]
    fit = temperature.fit_temperature(logits, labels, objective="ece")
    fig = plots.temperature_curves(fit)
    x, y = _line(fig.axes[0], "ECE (%)")
    np.testing.assert_allclose(x, np.asarray(fit.temperatures))
    np.testing.assert_allclose(y, 100 * np.asarray(fit.ece))
    j = int(np.argmin(np.asarray(fit.ece)))
    assert float(fit.temperature) == pytest.approx(x[j])


# ----------------------------------------------------------------------------------------------------------------
# generic demo plots

def test_line_curves(tmp_path):
    steps = np.arange(0, 50, 10)
    a = {"CE": steps ** 0.5, "FL": steps ** 0.25}
    fig = plots.line_curves(steps, [("(a)", "norm", a), ("(b)", "loss", {"CE": -steps, "FL": steps})],
                            xlabel="step", path=tmp_path / "l.png")
    _assert_png(tmp_path / "l.png")
    assert len(fig.axes) == 2
    x, y = _line(fig.axes[0], "FL")
    np.testing.assert_allclose(x, steps)
    np.testing.assert_allclose(y, steps ** 0.25)
    _, y = _line(fig.axes[1], "CE")
    np.testing.assert_allclose(y, -steps)
    # same colour for the same series in every panel
    assert _line_color(fig.axes[0], "CE") == _line_color(fig.axes[1], "CE") != _line_color(fig.axes[0], "FL")
    with pytest.raises(ValueError):
        plots.line_curves(steps, [("bad", "y", {"CE": steps[:-1]})])


def _line_color(ax, label):
    return [ln.get_color() for ln in ax.get_lines() if ln.get_label() == label][0]


def test_confidence_histogram(tmp_path):
    rng = np.random.default_rng(2)
    runs = {"CE": 0.5 + 0.5 * rng.random(300) ** 0.3, "FL": 0.5 + 0.5 * rng.random(120)}
    fig = plots.confidence_histogram(runs, bins=10, range=(0.5, 1.0), path=tmp_path / "h.png")
    _assert_png(tmp_path / "h.png")
    ax = fig.axes[0]
    edges = np.linspace(0.5, 1.0, 11)
    for label, values in runs.items():
        _, _, heights, _ = _bars(_container(ax, label))
        counts, _ = np.histogram(values, bins=edges)
        np.testing.assert_allclose(heights, 100 * counts / len(values))
        assert heights.sum() == pytest.approx(100.0)
    fig = plots.confidence_histogram(runs, bins=5, range=(0.5, 1.0), percent=False)
    _, _, heights, _ = _bars(_container(fig.axes[0], "FL"))
    np.testing.assert_array_equal(heights, np.histogram(runs["FL"], bins=np.linspace(0.5, 1, 6))[0])


def test_linear_decision_regions(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] > 0).astype(int)
    fig = plots.linear_decision_regions(x, y, {"CE": (3.0, 4.0), "FL": (0.6, 0.8)}, resolution=50,
                                        path=tmp_path / "d.png")
    _assert_png(tmp_path / "d.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("CE") and "‖w‖ = 5.000" in t for t in titles)
    assert any(t.startswith("FL") and "‖w‖ = 1.000" in t for t in titles)
    with pytest.raises(ValueError):
        plots.linear_decision_regions(x[:, :1], y, {"CE": (1.0, 0.0)})


def test_no_pyplot_state():
    """The module must not import pyplot (no global figure registry, no backend switch)."""
    code = ("import sys; import focal_calibration.plots as p; import numpy as np; "
            "from types import SimpleNamespace as S; "
            "p.g_curves(); p.line_curves([0, 1], [('a', 'b', {'x': [1, 2]})]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MPLBACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
