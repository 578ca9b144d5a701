"""The package's public names exist, and the README's API tour runs as written."""

import re
from pathlib import Path

import torch

import focal_calibration


def test_every_public_name_is_exported():
    missing = [name for name in focal_calibration.__all__ if not hasattr(focal_calibration, name)]
    assert missing == []


def test_readme_api_tour_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    tour = re.search(r"## API tour\s+```python\n(.*?)```", readme, re.S).group(1)
    torch.manual_seed(0)
    scores = torch.randn(3000, 10) * 3
    truth = torch.distributions.Categorical(logits=scores / 3).sample()  # the scores are 3x over-confident
    namespace = dict(logits=torch.randn(4, 7, 10, requires_grad=True), labels=torch.randint(0, 10, (4, 7)), epoch=0,
                     val_logits=scores[:2000], val_labels=truth[:2000], test_logits=scores[2000:],
                     test_labels=truth[2000:])
    exec(compile(tour, "README.md (API tour)", "exec"), namespace)
    assert abs(namespace["fit"].temperature - 3.0) <= 0.3
    assert namespace["post"]["ece"] < namespace["m"]["ece"]
