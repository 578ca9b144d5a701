"""Files that are whole or absent: every file the package writes goes through :func:`atomic_write`.

A temporary file in the target's folder is written, flushed and fsynced, then ``os.replace``-d over the target, so a
reader (or a run resumed after SIGKILL, or a full disk) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "json_ready"]


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write, *, binary: bool = True) -> Path:
    """Call ``write(handle)`` on a temp file in ``path``'s folder, flush + fsync it, then ``os.replace`` it over
    ``path``: readers (and a run resumed after SIGKILL) see the old file or the new one, never half of one."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a result table is the old one or the new one, never half."""
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    return write_text_atomic(path, json.dumps(json_ready(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")



def json_ready(value):
    """Paths -> str, tuples -> lists, tensors / numpy scalars -> Python numbers, non-finite floats -> None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor):
        return json_ready(value.tolist())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
