"""Tests of focal_calibration.plots.label_reliability_diagrams: the plotted bars equal each label's bins (computed
by hand for a small case), empty labels say so, the figure is saved as a whole PNG."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from focal_calibration import multilabel_reliability_bins
from focal_calibration.plots import label_reliability_diagrams

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bars(ax, label):
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return (np.array([r.get_x() for r in container.patches]), np.array([r.get_y() for r in container.patches]),
            np.array([r.get_height() for r in container.patches]))


def test_panels_show_each_labels_bins(tmp_path):
    # label 0: p = (.1, .9, .8), y = (0, 1, 0); label 1: p = (.3, .3, .7), y = (1, 0, 1); label 2 masked out; M = 2
    probs = torch.tensor([[0.1, 0.3, 0.5], [0.9, 0.3, 0.5], [0.8, 0.7, 0.5]], dtype=torch.float64)
    labels = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[:, 2] = False
    bins = multilabel_reliability_bins(labels, probs=probs, n_bins=2, mask=mask)
    path = tmp_path / "figures" / "labels.png"
    fig = label_reliability_diagrams(bins, names=["cat", "dog", "bird"], columns=2, path=path)
    assert len(fig.axes) == 4 and not fig.axes[3].get_visible()  # 3 panels in a 2 x 2 grid
    assert [ax.get_title() for ax in fig.axes[:3]] == ["cat", "dog", "bird"]
    # label 0: bins (0, .5] {.1}: 0 positives of 1; (.5, 1] {.9, .8}: 1 of 2, mean confidence .85
    x, bottom, height = _bars(fig.axes[0], "Outputs")
    np.testing.assert_allclose(x, [0.0, 0.5])
    np.testing.assert_allclose(height, [0.0, 0.5])
    _, gap_bottom, gap_height = _bars(fig.axes[0], "Gap")
    np.testing.assert_allclose(gap_bottom, [0.0, 0.5])
    np.testing.assert_allclose(gap_bottom + gap_height, [0.1, 0.85])
    # label 1: (0, .5] {.3, .3}: 1 of 2; (.5, 1] {.7}: 1 of 1
    np.testing.assert_allclose(_bars(fig.axes[1], "Outputs")[2], [0.5, 1.0])
    texts = [[t.get_text() for t in ax.texts] for ax in fig.axes[:3]]
    assert texts[0] == [f"ECE {100 * 0.8 / 3:.1f}%"] and texts[2] == ["no samples"]
    assert len(_bars(fig.axes[2], "Outputs")[0]) == 0
    assert fig.axes[0].get_ylabel() == "Fraction of positives" and fig.axes[2].get_xlabel() == "Predicted probability"
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_MAGIC
    assert os.listdir(path.parent) == ["labels.png"]  # no temporary file left behind


def test_top_label_axis_titles_and_default_names():
    probs = torch.rand(50, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = (probs > 0.4).long()
    bins = multilabel_reliability_bins(labels, probs=probs, confidence="top_label")
    fig = label_reliability_diagrams(bins, confidence="top_label")
    assert [ax.get_title() for ax in fig.axes[:5]] == [f"label {i}" for i in range(5)]
    assert fig.axes[0].get_ylabel() == "Accuracy" and fig.axes[4].get_xlabel() == "Confidence"


@pytest.mark.parametrize("kwargs, message", [
    (dict(bins=[]), "at least one label"),
    (dict(names=["a"]), "one title per label"),
    (dict(columns=0), "columns"),
    (dict(confidence="max"), "confidence"),
])
def test_bad_arguments(kwargs, message):
    probs = torch.rand(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    arguments = dict(bins=multilabel_reliability_bins((probs > 0.5).long(), probs=probs))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        label_reliability_diagrams(arguments.pop("bins"), **arguments)
