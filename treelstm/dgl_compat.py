"""Import DGL 2.1 on a torch it has no GraphBolt build for -- the one compatibility step of the text suite.

Why: ``dgl==2.1.0`` is the newest DGL wheel for Linux on the package index. ``import dgl`` imports
``dgl.distributed``, which imports ``dgl.graphbolt``, whose ``__init__`` calls ``load_graphbolt()`` at import time;
that loads ``dgl/graphbolt/libgraphbolt_pytorch_<torch version>.so`` and raises ``FileNotFoundError`` when the
running torch has none (the wheel ships builds for torch 2.0-2.2 only, ABI-incompatible with newer ones; no
environment variable skips the call). Nothing else in DGL fails: the core C library (``libdgl.so``), graphs,
``prop_nodes_topo`` and message passing do not use GraphBolt, and neither does the Tree-LSTM.

What: when (and only when) the GraphBolt library for the running torch is missing, a placeholder module is put in
``sys.modules["dgl.graphbolt"]`` before ``import dgl``; the placeholder raises a clear ``AttributeError`` on any
use, so code that *does* need GraphBolt (DGL's distributed training, its new data loaders) fails loudly instead of
silently. DGL's own files are not modified. When a DGL release with a GraphBolt build for your torch is installed,
this module imports DGL untouched.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

__all__ = ["import_dgl", "graphbolt_library_path"]

_PLACEHOLDER_NOTE = ("dgl.graphbolt is unavailable: this DGL wheel has no GraphBolt library for torch {torch}; "
                     "treelstm.dgl_compat imported DGL without it (the Tree-LSTM does not use GraphBolt)")


class _GraphBoltPlaceholder(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__dict__['_note']} (asked for dgl.graphbolt.{name})")


def graphbolt_library_path() -> str | None:
    """Where DGL's ``load_graphbolt()`` looks for its library for the running torch (None if DGL is absent)."""
    import torch

    spec = importlib.util.find_spec("dgl")
    if spec is None or not spec.submodule_search_locations:
        return None
    version = torch.__version__.split("+", maxsplit=1)[0]
    return os.path.join(list(spec.submodule_search_locations)[0], "graphbolt", f"libgraphbolt_pytorch_{version}.so")


def import_dgl():
    """``import dgl``, applying the placeholder only if the GraphBolt library for this torch is missing.

    Raises ImportError with install instructions when DGL is not installed.
    """
    if "dgl" in sys.modules:
        return sys.modules["dgl"]
    path = graphbolt_library_path()
    if path is None:
        raise ImportError("the DGL engine needs DGL: pip install 'dgl==2.1.0' 'torchdata==0.9.0' packaging pandas "
                          "pyyaml pydantic (or the project's [dgl] extra)")
    if sys.platform.startswith("linux") and not os.path.exists(path):
        import torch

        placeholder = _GraphBoltPlaceholder("dgl.graphbolt")
        placeholder.__dict__["_note"] = _PLACEHOLDER_NOTE.format(torch=torch.__version__)
        sys.modules["dgl.graphbolt"] = placeholder
    import dgl

    return dgl
