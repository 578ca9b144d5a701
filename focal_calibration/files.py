"""Files that are whole or absent: every file the package writes goes through :func:`atomic_write`.

A temporary file in the target's folder is written, flushed and fsynced, then ``os.replace``-d over the target, so a
reader (or a run resumed after SIGKILL, or a full disk) sees the old file or the new one, never half of one. The new
file gets the permissions an ordinary ``open(path, "w")`` would give it (``0o666`` less the process's umask), not
``tempfile.mkstemp``'s private ``0o600``: colleagues on shared storage can read a run's results. A write that fails
because the file system refused it (full disk, quota, read-only) raises ``OSError`` naming the target file and the
system's reason, even when the writer (``torch.save``, matplotlib) wrapped it in an error of its own.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "json_ready", "current_umask"]


def current_umask() -> int:
    """The process's file-mode creation mask, read without changing it where the OS allows (Linux'
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# errno values of a write the file system refused (the user's storage, not a bug): reported naming the target
_REFUSED_WRITE = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EISDIR",
                                                             "ENOTDIR", "EEXIST", "EFBIG", "EIO", "ENAMETOOLONG")
                           if hasattr(errno, name))


def _os_cause(error: BaseException) -> OSError | None:
    """The ``OSError`` with an errno at the root of ``error`` (``torch.save`` reports a failed write as a
    ``RuntimeError`` from its zip writer, with the ``OSError`` as context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


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
    ``path``: readers (and a run resumed after SIGKILL) see the old file or the new one, never half of one.

    Args:
        path: the target file (its folder is created if needed).
        write: called once with the open temporary file (binary, or UTF-8 text with ``binary=False``).
        binary: open the temporary file in binary mode (default) or as UTF-8 text.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the file system refused the write (no space, quota, read-only, permissions, ``path`` is a folder):
            ``filename`` is ``path`` and the message is the system's reason, whatever error ``write`` raised for it.
            The temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp_name = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0o600 is for secrets, not results
        except (AttributeError, OSError):  # no fchmod (Windows) or a file system without modes
            pass
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
        cause = _os_cause(error)
        if cause is None or cause.errno not in _REFUSED_WRITE:
            raise
        # name the folder when creating it failed, else the target (never the temporary file)
        failed = Path(os.fsdecode(cause.filename)) if cause.filename is not None else None
        where = failed if failed is not None and failed in path.parents else path
        raise OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(where)) from error
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
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: no import here
    if torch is not None and isinstance(value, torch.Tensor):
        return json_ready(value.tolist())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
