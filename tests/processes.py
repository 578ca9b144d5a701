"""Helpers of the tests that watch processes (Linux /proc): is a process running, its parent, waiting for a state."""

import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: orphans may be re-parented to an init that never reaps them)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def processes_running(*fragments: str) -> list[int]:
    """The running processes whose command line contains every one of ``fragments``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(f in command for f in fragments) and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first true value, polled every 50 ms; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return value
