"""Figures of Mukhoti et al. (NeurIPS 2020): reliability diagrams (Fig. 1), g(p, γ) of Proposition 1 (Fig. 4a), the
optimal p̂ of eq. 5 (Fig. 6), temperature-scaling curves, and small generic plots used by the Appendix B demo.

Every function builds a :class:`matplotlib.figure.Figure` directly (with an Agg canvas attached), never touches
pyplot's global state or the user's backend, returns the figure, and, when ``path`` is given, also saves it there
(parent folders are created; the format follows the file suffix) with :func:`save_figure`: atomically, like every
file the package writes (a full disk leaves the old figure or none, never half of one). Nothing is shown.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from focal_calibration.files import atomic_write

__all__ = [
    "save_figure",
    "reliability_diagram",
    "label_reliability_diagrams",
    "g_curves",
    "optimal_confidence_curves",
    "temperature_curves",
    "line_curves",
    "spread_curves",
    "confidence_histogram",
    "linear_decision_regions",
]

PathLike = Union[str, "os.PathLike[str]"]

# Colour-blind-safe cycle (Okabe-Ito), used for every multi-series plot.
_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _new_figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)  # an explicit Agg canvas: savefig/draw work without pyplot or a global backend switch
    return fig


def save_figure(fig: Figure, path: PathLike, *, dpi: int = 150) -> str:
    """Save ``fig`` to ``path`` atomically (:func:`focal_calibration.files.atomic_write`), cropped to its content.

    Args:
        fig: the figure.
        path: the target file; its suffix chooses the format (``.png``, ``.pdf``, ``.svg`` ...; none: PNG). Parent
            folders are created.
        dpi: resolution of raster formats.

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    atomic_write(path, lambda handle: fig.savefig(handle, format=suffix or "png", dpi=dpi, bbox_inches="tight"))
    return path


def _finish(fig: Figure, path: Optional[PathLike]) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _gamma_label(gamma) -> str:
    return f"γ = {float(gamma):g}"


# ----------------------------------------------------------------------------------------------------------------
# Fig. 1: reliability diagram


def _bin_arrays(bins, what: str):
    """(edges [M+1], counts, accuracy, confidence [M]) of a ReliabilityBins-like object as float64 arrays, checked."""
    edges, counts, accuracy, confidence = (np.asarray(getattr(bins, field), dtype=np.float64).reshape(-1)
                                           for field in ("edges", "counts", "accuracy", "confidence"))
    m = counts.shape[0]
    if edges.shape[0] != m + 1 or accuracy.shape[0] != m or confidence.shape[0] != m:
        raise ValueError(f"{what} must have edges [M+1] and counts/accuracy/confidence [M]; got edges {edges.shape}, "
                         f"counts {counts.shape}, accuracy {accuracy.shape}, confidence {confidence.shape}")
    return edges, counts, accuracy, confidence

def reliability_diagram(bins, *, title: Optional[str] = None, path: Optional[PathLike] = None) -> Figure:
    """Reliability diagram in the style of the paper's Fig. 1.

    Top panel: one bar per confidence bin at the bin's accuracy (label ``"Outputs"``), the gap between the bin's
    accuracy and its mean confidence as a red hatched bar (label ``"Gap"``; it starts at the accuracy and ends at the
    mean confidence, so its signed height is ``confidence - accuracy``), the diagonal of perfect calibration, and the
    ECE / MCE in %. Bottom panel: % of samples per bin (sums to 100 when there is any sample).

    Args:
        bins: a :class:`focal_calibration.calibration.metrics.ReliabilityBins` (or any object with ``edges``
            [M+1], ``counts`` [M], ``confidence`` [M], ``accuracy`` [M] (NaN where empty), and optionally ``ece`` /
            ``mce``).
            Empty bins get no bar.
        title: figure title (optional).
        path: where to save the figure (optional).

    Returns the figure; ``fig.axes[0]`` is the reliability panel, ``fig.axes[1]`` the % panel.
    """
    edges, counts, accuracy, confidence = _bin_arrays(bins, "bins")
    m = counts.shape[0]
    left = edges[:-1]
    width = np.diff(edges)
    nonempty = (counts > 0) & np.isfinite(accuracy) & np.isfinite(confidence)
    total = counts.sum()
    percent = 100.0 * counts / total if total > 0 else np.zeros_like(counts)

    fig = _new_figure((5.0, 6.4))
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1.35), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    ax_pct = fig.add_subplot(gs[1], sharex=ax)

    ax.bar(left[nonempty], accuracy[nonempty], width=width[nonempty], align="edge", color="#1f4e9c",
           edgecolor="black", linewidth=0.6, label="Outputs", zorder=2)
    ax.bar(left[nonempty], confidence[nonempty] - accuracy[nonempty], bottom=accuracy[nonempty],
           width=width[nonempty], align="edge", color=(0.9, 0.1, 0.1, 0.3), edgecolor="red", hatch="//",
           linewidth=0.6, label="Gap", zorder=3)
    lo, hi = float(edges[0]), float(edges[-1])
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="0.3", linewidth=1.2, label="Perfect calibration", zorder=4)
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
    ax.tick_params(labelbottom=False)
    ax.grid(True, linestyle=":", alpha=0.5, zorder=0)

    lines = []
    ece = getattr(bins, "ece", None)
    mce = getattr(bins, "mce", None)
    if ece is not None and np.isfinite(ece):
        lines.append(f"ECE = {100 * float(ece):.2f}%")
    if mce is not None and np.isfinite(mce):
        lines.append(f"MCE = {100 * float(mce):.2f}%")
    if lines:
        ax.text(0.97, 0.04, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize=10,
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.6", alpha=0.9), zorder=5)
    if title:
        ax.set_title(title)

    ax_pct.bar(left, percent, width=width, align="edge", color="#1f4e9c", edgecolor="black", linewidth=0.6,
               label="% of samples")
    ax_pct.set_xlabel("Confidence")
    ax_pct.set_ylabel("% of samples")
    ax_pct.set_ylim(0.0, max(5.0, float(percent.max()) * 1.15) if m else 100.0)
    ax_pct.grid(True, axis="y", linestyle=":", alpha=0.5)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Reliability diagrams per label (binary / multi-label)

def label_reliability_diagrams(bins: Sequence, *, names: Optional[Sequence[str]] = None, columns: int = 4,
                               confidence: str = "positive", title: Optional[str] = None,
                               path: Optional[PathLike] = None) -> Figure:
    """One small reliability diagram per label, in a grid of panels (multi-label calibration at a glance).

    Each panel: a bar per non-empty confidence bin at the bin's observed frequency (label ``"Outputs"``), the gap to
    its mean confidence as a red hatched bar (``"Gap"``, from the observed frequency to the mean confidence), the
    diagonal, and the label's ECE in %; a label without samples says so. Panels share both axes.

    Args:
        bins: one bins object per label (e.g.
            :func:`focal_calibration.calibration.multilabel.multilabel_reliability_bins` or
            :meth:`MultilabelCalibrationAccumulator.bins`): ``edges`` [M+1], ``counts`` [M], ``confidence`` [M],
            ``accuracy`` [M] (NaN where empty), optionally ``ece``.
        names: a title per panel (default ``"label 0"``, ``"label 1"``, ...).
        columns: panels per row (fewer when there are fewer labels).
        confidence: the convention the bins were computed with: ``"positive"`` (x: predicted probability, y:
            fraction of positives) or ``"top_label"`` (x: confidence, y: accuracy). Only the axis titles change.
        title: figure title (optional). path: where to save the figure (optional; written as every figure of this
            module is).

    Returns the figure; ``fig.axes[i]`` is label i's panel (then the unused cells of the grid, hidden).
    """
    bins = list(bins)
    if not bins:
        raise ValueError("label_reliability_diagrams needs the bins of at least one label, got none")
    if confidence not in ("positive", "top_label"):
        raise ValueError(f"confidence must be 'positive' or 'top_label', got {confidence!r}")
    names = [f"label {i}" for i in range(len(bins))] if names is None else [str(n) for n in names]
    if len(names) != len(bins):
        raise ValueError(f"names must give one title per label: {len(bins)} labels, {len(names)} names")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    columns = min(columns, len(bins))
    rows = -(-len(bins) // columns)
    fig = _new_figure((2.3 * columns + 0.6, 2.3 * rows + 0.6))
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).reshape(-1)
    x_title, y_title = ("Predicted probability", "Fraction of positives") if confidence == "positive" else (
        "Confidence", "Accuracy")
    for index, (ax, label_bins, name) in enumerate(zip(axes, bins, names)):
        edges, counts, accuracy, mean_conf = _bin_arrays(label_bins, f"bins of {name}")
        left, width = edges[:-1], np.diff(edges)
        filled = (counts > 0) & np.isfinite(accuracy) & np.isfinite(mean_conf)
        ax.bar(left[filled], accuracy[filled], width=width[filled], align="edge", color="#1f4e9c",
               edgecolor="black", linewidth=0.4, label="Outputs", zorder=2)
        ax.bar(left[filled], mean_conf[filled] - accuracy[filled], bottom=accuracy[filled], width=width[filled],
               align="edge", color=(0.9, 0.1, 0.1, 0.3), edgecolor="red", hatch="//", linewidth=0.4, label="Gap",
               zorder=3)
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1.0, label="Perfect calibration", zorder=4)
        ax.set_xlim(float(edges[0]), float(edges[-1]))
        ax.set_ylim(0.0, 1.0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, linestyle=":", alpha=0.5, zorder=0)
        ece = getattr(label_bins, "ece", None)
        text = "no samples" if not filled.any() else (
            f"ECE {100 * float(ece):.1f}%" if ece is not None and np.isfinite(ece) else "")
        if text:
            ax.text(0.96, 0.04, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.6", alpha=0.9), zorder=5)
        if index % columns == 0:
            ax.set_ylabel(y_title, fontsize=8)
        if index >= len(bins) - columns:  # the lowest panel of its column (the grid's last row may be short)
            ax.set_xlabel(x_title, fontsize=8)
            ax.tick_params(labelbottom=True)
    for ax in axes[len(bins):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 4a: g(p, γ) of Proposition 1

def g_curves(gammas: Sequence[float] = (1, 2, 3, 4, 5, 6, 7), *, p=None, path: Optional[PathLike] = None) -> Figure:
    """g(p, γ) = (1-p)^γ - γ p (1-p)^(γ-1) log p (Proposition 1) against p, one line per γ (Fig. 4a), plus the
    g = 1 line: where a curve lies below it, focal loss gives a smaller gradient than cross-entropy.

    Args:
        gammas: the γ values (>= 0), one curve each (label ``"γ = ..."``).
        p: the p grid (default 501 points evenly spaced on [0, 1]; g(0, γ) = 1 and g(1, γ) = 0 for γ > 0).
        path: where to save the figure (optional).
    """
    from focal_calibration.losses.math import g

    p = np.linspace(0.0, 1.0, 501) if p is None else np.asarray(p, dtype=np.float64).reshape(-1)
    fig = _new_figure((5.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, gamma in enumerate(gammas):
        ax.plot(p, np.asarray(g(p, float(gamma)), dtype=np.float64), color=_color(i), linewidth=1.6,
                label=_gamma_label(gamma))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label="g = 1")
    ax.set_xlim(float(p.min()), float(p.max()))
    ax.set_xlabel("p (probability of the true class)")
    ax.set_ylabel("g(p, γ)")
    ax.set_title("Proposition 1: g(p, γ) = ‖∂L_f/∂w‖ / ‖∂L_c/∂w‖")
    ax.grid(True, linestyle=":", alpha=0.5)
    ax.legend(fontsize=9, ncol=2, loc="upper right")
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Fig. 6: optimal p̂ of eq. 5

def optimal_confidence_curves(gammas: Sequence[float] = (0, 1, 2, 3, 4, 5), *, q=None,
                              path: Optional[PathLike] = None) -> Figure:
    """The minimiser p̂ of eq. 5, argmin_x -(1-x)^γ q log x - x^γ (1-q) log(1-x), against the target q (Fig. 6).

    γ = 0 is cross-entropy (p̂ = q, labelled ``"CE (γ = 0)"``); focal losses (``"FL γ = ..."``) pull p̂ towards 0.5.

    Args:
        gammas: the γ values (>= 0), one curve each.
        q: the q grid (default 201 points evenly spaced on [0, 1]).
        path: where to save the figure (optional).
    """
    from focal_calibration.losses.math import optimal_confidence

    q = np.linspace(0.0, 1.0, 201) if q is None else np.asarray(q, dtype=np.float64).reshape(-1)
    fig = _new_figure((5.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, gamma in enumerate(gammas):
        p_hat = np.asarray(optimal_confidence(q, float(gamma)), dtype=np.float64).reshape(-1)
        label = "CE (γ = 0)" if float(gamma) == 0.0 else f"FL {_gamma_label(gamma)}"
        ax.plot(q, p_hat, color=_color(i), linewidth=1.6, label=label)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("q (target probability of class 1)")
    ax.set_ylabel("optimal p̂ (eq. 5)")
    ax.set_title("Eq. 5: loss-minimising prediction for a soft target")
    ax.grid(True, linestyle=":", alpha=0.5)
    ax.legend(fontsize=9, loc="upper left")
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Temperature scaling

def temperature_curves(fit, *, title: Optional[str] = None, logx: bool = True,
                       path: Optional[PathLike] = None) -> Figure:
    """ECE and AdaECE (left axis, %) and NLL (right axis) of a
    :class:`focal_calibration.calibration.temperature.TemperatureFit`
    against the temperature T, with the chosen T marked by a vertical line.

    Args:
        fit: a ``TemperatureFit`` (``temperatures``, ``ece``, ``adaece``, ``nll`` arrays on the grid, the chosen
            ``temperature`` and the ``objective`` it minimised).
        title: figure title (optional).
        logx: log-scale T axis (the default grid 0.1 ... 10 then shows T < 1 and T > 1 alike).
        path: where to save the figure (optional).
    """
    t = np.asarray(fit.temperatures, dtype=np.float64).reshape(-1)
    fig = _new_figure((6.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, 100.0 * np.asarray(fit.ece, dtype=np.float64), color=_color(0), linewidth=1.6, label="ECE (%)")
    ax.plot(t, 100.0 * np.asarray(fit.adaece, dtype=np.float64), color=_color(1), linewidth=1.6,
            label="AdaECE (%)")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("calibration error (%)")
    ax.grid(True, linestyle=":", alpha=0.5)
    ax_nll = ax.twinx()
    ax_nll.plot(t, np.asarray(fit.nll, dtype=np.float64), color=_color(2), linewidth=1.6, linestyle="-.",
                label="NLL")
    ax_nll.set_ylabel("NLL")
    chosen = float(fit.temperature)
    objective = getattr(fit, "objective", None)
    ax.axvline(chosen, color="black", linestyle="--", linewidth=1.0,
               label=f"chosen T = {chosen:g}" + (f" (min {objective})" if objective else ""))
    ax.set_xlim(float(t.min()), float(t.max()))
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax_nll.get_legend_handles_labels()
    # below the axes, so it never hides a curve
    ax.legend(handles + h2, labels + l2, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Generic plots used by the Appendix B demo

def line_curves(x, panels: Sequence[Tuple[str, str, Mapping[str, Sequence[float]]]], *, xlabel: str = "",
                logy: bool = False, path: Optional[PathLike] = None) -> Figure:
    """Side-by-side panels of line curves sharing one x axis (e.g. Fig. 7's logit / weight norms against steps).

    Args:
        x: the shared x values [n].
        panels: a sequence of ``(title, ylabel, series)``, where ``series`` maps a legend label to y values [n];
            one panel per entry, one line per series (same colour for the same label across panels).
        xlabel: label of every panel's x axis.
        logy: log-scale y axes.
        path: where to save the figure (optional).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if len(panels) == 0:
        raise ValueError("line_curves needs at least one panel")
    fig = _new_figure((4.8 * len(panels), 3.8))
    colors: dict = {}
    for k, (title, ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for label, y in series.items():
            y = np.asarray(y, dtype=np.float64).reshape(-1)
            if y.shape != x.shape:
                raise ValueError(f"series {label!r} of panel {title!r} has {y.shape[0]} values, x has {x.shape[0]}")
            colors.setdefault(label, _color(len(colors)))
            ax.plot(x, y, color=colors[label], linewidth=1.6, label=str(label))
        if logy:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, linestyle=":", alpha=0.5)
        ax.legend(fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def spread_curves(series: Mapping[str, Tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
                  *, title: str = "", xlabel: str = "", ylabel: str = "", logx: bool = False, symlog_y: bool = False,
                  hline: Optional[float] = None, path: Optional[PathLike] = None) -> Figure:
    """One line per series with a shaded band (e.g. mean over seeds, band from the seeds' minimum to maximum).

    Args:
        series: label -> ``(x, centre, low, high)``, four sequences of equal length.
        logx: log-scale x axis; symlog_y: symmetric-log y axis (values down to 0, e.g. a training error);
        hline: a dashed reference line (e.g. T = 1).
    """
    if len(series) == 0:
        raise ValueError("spread_curves needs at least one series")
    fig = _new_figure((5.6, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, columns) in enumerate(series.items()):
        x, centre, low, high = (np.asarray(c, dtype=np.float64).reshape(-1) for c in columns)
        if not (x.shape == centre.shape == low.shape == high.shape):
            raise ValueError(f"series {label!r}: x, centre, low and high must have the same length, got "
                             f"{x.shape[0]}, {centre.shape[0]}, {low.shape[0]}, {high.shape[0]}")
        ax.plot(x, centre, color=_color(i), linewidth=1.6, marker="o", markersize=3.5, label=str(label))
        ax.fill_between(x, low, high, color=_color(i), alpha=0.18, linewidth=0)
    if hline is not None:
        ax.axhline(hline, color="0.4", linestyle="--", linewidth=1)
    if logx:
        ax.set_xscale("log")
        ticks = sorted({float(v) for columns in series.values() for v in columns[0]})
        ax.set_xticks(ticks, [f"{v:,.0f}" if v >= 1 else f"{v:g}" for v in ticks])
        ax.minorticks_off()
    if symlog_y:
        ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, linestyle=":", alpha=0.5)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _finish(fig, path)


def confidence_histogram(confidences: Mapping[str, Sequence[float]], *, bins: int = 20,
                         range: Tuple[float, float] = (0.0, 1.0), percent: bool = True, title: Optional[str] = None,
                         xlabel: str = "confidence", path: Optional[PathLike] = None) -> Figure:
    """Overlaid histograms of the confidences of several runs (e.g. Fig. 8a: confidences of misclassified points).

    Args:
        confidences: maps a run's label to its confidence values (legend shows the label, n and the mean).
        bins: the number of equal-width bins over ``range`` (as :func:`numpy.histogram`).
        range: the histogram's range.
        percent: y axis in % of each run's samples (else raw counts).
        title: the axes' title.
        xlabel: the x axis' label.
        path: where to save the figure (optional).

    Each run is one bar container (``ax.containers[i]``, label starting with the run's label); its bar heights are
    ``np.histogram(values, bins, range)`` counts (in % of the run's samples when ``percent``).
    """
    edges = np.linspace(float(range[0]), float(range[1]), int(bins) + 1)
    width = np.diff(edges)
    fig = _new_figure((5.8, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    n_runs = max(len(confidences), 1)
    for i, (label, values) in enumerate(confidences.items()):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        counts, _ = np.histogram(values, bins=edges)
        heights = 100.0 * counts / max(values.size, 1) if percent else counts.astype(np.float64)
        mean = f", mean {values.mean():.3f}" if values.size else ""
        # side-by-side bars inside each bin, so no run hides another
        ax.bar(edges[:-1] + width * i / n_runs, heights, width=width / n_runs, align="edge", color=_color(i),
               edgecolor="black", linewidth=0.4, alpha=0.85, label=f"{label} (n = {values.size}{mean})")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of samples" if percent else "count")
    ax.grid(True, axis="y", linestyle=":", alpha=0.5)
    ax.legend(fontsize=9, loc="upper left")
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def linear_decision_regions(x, y, weights: Mapping[str, Sequence[float]], *, resolution: int = 200,
                            class_names: Tuple[str, str] = ("class 0", "class 1"),
                            path: Optional[PathLike] = None) -> Figure:
    """Decision regions of bias-free 2-D linear binary classifiers p(y=1|x) = σ(w·x) over the data (Fig. 8b,c).

    One panel per model: the background shows p(y=1|x) (filled contours), the boundary w·x = 0 is a solid black line
    and the 0.1 / 0.9 confidence contours are dashed (closer together = more confident), the points are coloured
    by label.

    Args:
        x: points [N, 2]; y: labels [N] in {0, 1}.
        weights: maps a model's label to its weight vector (w1, w2).
        resolution: grid points per axis of the background.
        class_names: legend names of labels 0 and 1.
        path: where to save the figure (optional).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x must be [N, 2] and y [N], got {x.shape} and {y.shape}")
    pad = 0.5
    (x0, y0), (x1, y1) = x.min(axis=0) - pad, x.max(axis=0) + pad
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    n = len(weights)
    fig = _new_figure((4.6 * n + 0.8, 4.4))
    axes = [fig.add_subplot(1, n, k + 1) for k in range(n)]
    levels = np.linspace(0.0, 1.0, 11)
    mappable = None
    for ax, (label, w) in zip(axes, weights.items()):
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        prob = 1.0 / (1.0 + np.exp(-(w[0] * gx + w[1] * gy)))
        mappable = ax.contourf(gx, gy, prob, levels=levels, cmap="RdBu_r", alpha=0.35)
        ax.contour(gx, gy, prob, levels=[0.1, 0.9], colors="0.2", linestyles="--", linewidths=1.0)
        ax.contour(gx, gy, prob, levels=[0.5], colors="black", linewidths=1.8)
        for cls, color, marker in ((0, "#08306b", "o"), (1, "#a50f15", "^")):
            sel = y == cls
            ax.scatter(x[sel, 0], x[sel, 1], s=7, c=color, marker=marker, alpha=0.8, linewidths=0,
                       label=class_names[cls])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        ax.set_title(f"{label}: w = ({w[0]:.3f}, {w[1]:.3f}), ‖w‖ = {np.linalg.norm(w):.3f}", fontsize=10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.legend(fontsize=8, loc="upper left", markerscale=2.5, framealpha=0.9)
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=axes, shrink=0.85, pad=0.02)
        cbar.set_label("p(y = 1 | x) = σ(w·x)  (dashed: 0.1 and 0.9)")
    return _finish(fig, path)
