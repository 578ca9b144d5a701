"""The package's architecture: the top level exports exactly the user's API, every module declares its public
names, the layers import only downwards (no cycle, lazy imports included), nothing outside a package imports its
private names, and the README's API tour runs as written."""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import torch

import focal_calibration

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "focal_calibration"
# the subpackages whose __all__ the top level re-exports
API_PACKAGES = ("losses", "calibration")
# Public helpers their modules do not declare yet: each should join its module's __all__ or become private. A new
# undeclared public name fails the test.
UNDECLARED = {
    "calibration.metrics": {"SampleStatistics", "adaptive_ece", "bin_index", "probabilities", "sample_statistics"},
    "calibration.bootstrap": {"count_weights", "percentile_interval", "resample_indices", "weighted_bin_sums"},
}
# Which top-level parts of the package each part may import (the layers, bottom up). "files", "validation" and
# "constants" are the foundation; losses and calibration never import each other or the tooling above them.
ALLOWED = {
    "constants": set(), "validation": set(), "files": set(),
    "losses": {"constants", "validation", "files"},
    "calibration": {"constants", "validation", "files"},
    "plots": {"constants", "validation", "files", "losses", "calibration"},
    "experiments": {"constants", "validation", "files", "losses", "calibration", "plots"},
    # the optional frameworks (torchmetrics, Lightning, Hugging Face): nothing in the package imports them
    "integrations": {"constants", "validation", "files", "losses", "calibration"},
    "__init__": {"constants", "validation", "files", "losses", "calibration"},
}


def _module_names():
    names = []
    for info in pkgutil.walk_packages(focal_calibration.__path__, "focal_calibration."):
        if info.name.endswith("triton_kernels"):
            continue  # imports triton (walked by the import-graph test from its source)
        names.append(info.name)
    return names


def _imports(path: Path):
    """Every focal_calibration module a file imports, at the top or inside a function: (module, names, lineno)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("focal_calibration"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("focal_calibration")]
    return found


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    base = ROOT / Path(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _graph():
    """module -> set of package modules it imports (``from pkg import name`` counts as pkg.name when that is a
    module, else as pkg)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        deps = set()
        for module, names, _ in _imports(path):
            for name in names or [None]:
                target = f"{module}.{name}" if name and _is_module(f"{module}.{name}") else module
                deps.add(target)
        graph[_module_of(path)] = deps
    return graph


def test_the_package_exports_exactly_the_api_packages_names():
    expected = {"set_value_checks"}
    for package in API_PACKAGES:
        sub = importlib.import_module(f"focal_calibration.{package}")
        for name in sub.__all__:
            expected.add(name)
            assert getattr(focal_calibration, name) is getattr(sub, name), name
    assert sorted(focal_calibration.__all__) == sorted(expected)
    namespace = {}
    exec("from focal_calibration import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(focal_calibration.__all__)


def test_every_module_declares_its_public_names():
    for name in _module_names():
        module = importlib.import_module(name)
        short = name[len("focal_calibration."):] if "." in name else ""
        if not hasattr(module, "__all__"):
            assert name.count(".") == 1 and (PACKAGE / short / "__init__.py").exists(), f"{name} has no __all__"
            continue
        assert [n for n in module.__all__ if not hasattr(module, n)] == [], name
        defined = {n for n, obj in vars(module).items() if not n.startswith("_")
                   and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__}
        assert sorted(defined - set(module.__all__) - UNDECLARED.get(short, set())) == [], name


def test_no_import_cycle_lazy_imports_included():
    graph = _graph()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep == node or dep not in graph:
                continue
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    # a package's __init__ importing its own submodules is the usual re-export, not a layer violation
    for node in sorted(graph):
        graph[node] = {d for d in graph[node] if not node.startswith(d + ".") and not d == node.rsplit(".", 1)[0]
                       or not (ROOT / Path(*d.split(".")) / "__init__.py").exists()}
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_layers_import_only_downwards():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        part = parts[0]
        for module, names, line in _imports(path):
            targets = [module.split(".")[1]] if module.count(".") >= 1 else [n if _is_module(f"{module}.{n}")
                                                                              else "__init__" for n in names]
            for target in targets:
                if target != part and target not in ALLOWED[part]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({target})")
    assert bad == []


def test_nothing_outside_a_package_imports_its_private_names():
    """The suites, scripts, benchmarks and the fairseq criterion use public names only; inside the package, no
    subpackage imports another's private names."""
    bad = []
    roots = [ROOT / d for d in ("classification", "treelstm", "fairseq_focal", "scripts", "benchmarks", "examples")]
    files = [p for r in roots if r.exists() for p in r.rglob("*.py")] + list(PACKAGE.rglob("*.py"))
    for path in files:
        inside = PACKAGE in path.parents
        own = path.relative_to(PACKAGE).parts[0] if inside else None
        for module, names, line in _imports(path):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else None
            private_module = any(p.startswith("_") for p in parts)
            private_names = [n for n in names if n.startswith("_")]
            if (private_module or private_names) and not (inside and target == own):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} {private_names}")
    assert bad == []


def test_readme_api_tour_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = re.search(r"## API tour\s+```python\n(.*?)```", readme, re.S).group(1)
    torch.manual_seed(0)
    scores = torch.randn(3000, 10) * 3
    truth = torch.distributions.Categorical(logits=scores / 3).sample()  # the scores are 3x over-confident
    namespace = dict(logits=torch.randn(4, 10, 7, requires_grad=True), labels=torch.randint(0, 10, (4, 7)), epoch=0,
                     val_logits=scores[:2000], val_labels=truth[:2000], test_logits=scores[2000:],
                     test_labels=truth[2000:])
    exec(compile(tour, "README.md (API tour)", "exec"), namespace)
    assert abs(namespace["fit"].temperature - 3.0) <= 0.3
    assert namespace["post"]["ece"] < namespace["m"]["ece"]
