"""Which processes descend from a PID (read from /proc), to prove that none outlives its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

ProcId = tuple[int, int]  # (pid, start time in clock ticks): a pid alone may be reused


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may hold spaces: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> set[ProcId]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    children: dict[int, list[ProcId]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: set[ProcId] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def alive(procs: set[ProcId]) -> set[ProcId]:
    """Those of ``procs`` still running (same pid AND same start time)."""
    still: set[ProcId] = set()
    for pid, started in procs:
        with contextlib.suppress(Exception):
            stat = _stat(pid)
            if stat is not None and stat[1] == started:
                still.add((pid, started))
    return still


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError):
        return []


def stop_all(leader: subprocess.Popen[bytes], seen: set[ProcId], grace: float = 0.0) -> None:
    """Stop ``leader``'s process group (SIGTERM first when ``grace`` > 0, then SIGKILL), then whatever of
    ``seen`` still runs: nothing a test started outlives it."""
    if leader.poll() is None:
        if grace > 0:
            os.killpg(leader.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                leader.wait(grace)
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait(10)
    for pid, _ in alive(seen):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
