"""The documentation site: every public module of the package has an API reference entry, every public name it
declares has a docstring, and every page of docs/ is in the site's navigation. (``make test`` also builds the site
with ``mkdocs build --strict``, which fails on broken links, missing pages and docstrings that do not match their
signatures.)"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import yaml

import focal_calibration

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _public_modules():
    for info in pkgutil.walk_packages(focal_calibration.__path__, "focal_calibration."):
        if not any(part.startswith("_") for part in info.name.split(".")) and not info.ispkg:
            yield info.name


def _api_directives():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md"))
    return set(re.findall(r"^::: ([\w.]+)", text, re.M))


def test_every_public_module_has_an_api_reference_entry():
    assert sorted(set(_public_modules()) - _api_directives()) == []


def test_every_public_name_has_a_docstring():
    missing = []
    for name in _public_modules():
        if name.endswith("triton_kernels"):
            continue  # imports triton; its public functions are checked by reading the source below
        module = importlib.import_module(name)
        if not (module.__doc__ or "").strip():
            missing.append(name)
        for public in getattr(module, "__all__", []):
            obj = getattr(module, public)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip():
                missing.append(f"{name}.{public}")
    source = (ROOT / "focal_calibration" / "losses" / "triton_kernels.py").read_text(encoding="utf-8")
    for public in re.search(r"__all__ = \[([^\]]*)\]", source).group(1).replace('"', "").split(","):
        public = public.strip()
        match = re.search(rf"^def {public}\(.*?:\n\s+\"\"\"", source, re.M | re.S)
        if public.isupper() or not public:
            continue
        if match is None:
            missing.append(f"focal_calibration.losses.triton_kernels.{public}")
    assert missing == []


def _nav_pages(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _nav_pages(value)
    elif isinstance(node, list):
        for item in node:
            yield from _nav_pages(item)


def test_every_docs_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))
    nav = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if (DOCS / "results") not in p.parents}
    assert sorted(pages - nav) == []
    assert sorted(nav - pages) == []
