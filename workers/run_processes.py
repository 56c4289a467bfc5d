"""Finding the processes that belong to one run, wherever they went.

Every process a run starts carries ``TASKD_EXECUTION_ID`` (the run's own id; in a hook
``TASKD_RUN_ID`` names the run that set it off) in its environment, so it can be found
even after it left the run's process group (``setsid``, a daemonizing script), and even
by a process other than the worker that started it (the coordinator, when that worker
was lost).
"""

from __future__ import annotations

import os
import signal

RUN_ID_VARIABLE = "TASKD_RUN_ID"
EXECUTION_ID_VARIABLE = "TASKD_EXECUTION_ID"


def find_processes_with_env(name: str, value: str) -> list[int]:
    """Pids of the processes whose environment has ``name=value``, among those we can read.

    This finds descendants that left the task's process group (``setsid``, daemons).
    """
    needle = b"\0" + f"{name}={value}".encode() + b"\0"
    own = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, not ours, or a kernel thread
            continue
        if needle in b"\0" + environ:
            found.append(int(entry))
    return found


def signal_processes(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_run_processes(run_id: str) -> list[int]:
    """SIGKILL every process still carrying this run's id; the pids signalled."""
    pids = find_processes_with_env(EXECUTION_ID_VARIABLE, run_id)
    signal_processes(pids, signal.SIGKILL)
    return pids
