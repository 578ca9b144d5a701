"""Run a command that dies with its parent process: the guard of every process the grid runner starts.

    python -I -S parent_guard.py --parent PID -- COMMAND [ARGS...]
    python -I -S parent_guard.py --parent-env NAME -- COMMAND [ARGS...]   # the parent's pid is in $NAME

On Linux the guard asks the kernel to send it SIGKILL when its parent exits (``prctl(PR_SET_PDEATHSIG)``), checks
that the parent is still the process named (if it died before the request, no signal would ever come: the guard
exits at once), and replaces itself by the command (``exec``: same pid, and the request survives the exec). A chain
of guarded processes -- driver -> submitit controller -> submitit task -> trainer -- therefore ends entirely when the
driver is killed, even by ``kill -9``, which no cleanup code in the driver can catch.

Elsewhere (no ``prctl``) the guard only runs the command: a killed driver may leave its jobs running there.

It imports nothing but the standard library and is run as a file (``-I -S``: no site, no PYTHONPATH; ~20 ms), so it
costs no package import. :func:`die_with_parent` is also used in-process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent", "main"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_GONE_STATUS = 128 + signal.SIGKILL  # what the guarded process would have exited with, had the signal come


def die_with_parent(parent: int) -> bool:
    """Have the kernel SIGKILL this process when its parent exits; exit now if the parent is not ``parent`` any more
    (it died before the request, and this process was re-parented). Returns False where unsupported (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}")
    if os.getppid() != parent:
        os._exit(PARENT_GONE_STATUS)
    return True


def main(argv: list[str]) -> int:
    """Parse ``--parent PID | --parent-env NAME -- COMMAND...``, guard this process and exec the command."""
    usage = "usage: parent_guard.py (--parent PID | --parent-env NAME) -- COMMAND [ARGS...]"
    if len(argv) < 4 or argv[0] not in ("--parent", "--parent-env") or argv[2] != "--":
        print(f"parent_guard.py: error: {usage}", file=sys.stderr)
        return 2
    value = argv[1] if argv[0] == "--parent" else os.environ.get(argv[1], "")
    if not value.isdigit():
        print(f"parent_guard.py: error: {argv[0]} {argv[1]!r} does not give a process id ({value!r})", file=sys.stderr)
        return 2
    die_with_parent(int(value))
    command = argv[3:]
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"parent_guard.py: error: cannot run {command[0]!r}: {error.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
