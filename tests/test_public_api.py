"""The package exports exactly the API modules' public names, every module declares its public names, and the
README's API tour runs as written."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import torch

import focal_calibration

# re-exported by the package
API_MODULES = ("focal", "gamma", "losses", "metrics", "bootstrap", "temperature", "scaling", "evidence")
# constants used through their modules (focal_calibration.temperature.DEFAULT_TEMPERATURES, ...)
NOT_EXPORTED = {"DEFAULT_TEMPERATURES", "DEFAULT_ODIR_GRID", "VERDICTS",
                "REGIME_TRAIN_ERROR_MAX", "REGIME_NLL_RISE_MIN"}
PUBLIC_MODULES = sorted(m.name for m in pkgutil.iter_modules(focal_calibration.__path__) if not m.name.startswith("_"))
# Public helpers their modules do not declare yet (owners: focal.py -> losses / perf, metrics.py and bootstrap.py ->
# metrics): each should join its module's __all__ or become private. A new undeclared public name fails the test.
UNDECLARED = {
    "focal": {"focal_terms"},
    "metrics": {"SampleStatistics", "adaptive_ece", "bin_index", "ece_from_sums", "equal_width_sums", "probabilities",
                "sample_statistics"},
    "bootstrap": {"count_weights", "percentile_interval", "resample_indices", "weighted_bin_sums"},
}


def _module(name):
    return importlib.import_module(f"focal_calibration.{name}")


def test_the_package_exports_exactly_the_api_modules_names():
    declared = {name: module for module in API_MODULES for name in _module(module).__all__}
    expected = (set(declared) - NOT_EXPORTED) | {"set_value_checks"}
    assert sorted(focal_calibration.__all__) == sorted(expected)
    for name in expected - {"set_value_checks"}:
        assert getattr(focal_calibration, name) is getattr(_module(declared[name]), name), name
    namespace = {}
    exec("from focal_calibration import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(focal_calibration.__all__)


def test_every_module_declares_its_public_names():
    for name in PUBLIC_MODULES:
        module = _module(name)
        assert [n for n in module.__all__ if not hasattr(module, n)] == [], name
        defined = {n for n, obj in vars(module).items() if not n.startswith("_")
                   and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__}
        assert sorted(defined - set(module.__all__) - UNDECLARED.get(name, set())) == [], name


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
