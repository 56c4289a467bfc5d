"""What every taskd child process (worker, logger) does first.

It must not outlive the coordinator: the kernel sends it SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), and EOF on its channel tells it the same. Ctrl-C in a terminal
signals the whole foreground process group; only the coordinator decides what that
means, so children catch SIGINT and do nothing. (Caught, not ignored: an ignored signal
stays ignored across exec, and the tasks a worker starts must get the default action.)

Descriptors it inherited (from the fork server: its channel among them) are made
close-on-exec, so no command a worker starts holds them: a ``sleep 600 &`` left behind
must not keep a dead worker's channel open, and ``posix_spawn`` closes nothing itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def become_child_process(coordinator_pid: int) -> None:
    signal.signal(signal.SIGINT, _ignore)
    close_inherited_on_exec()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: EOF on the channel still ends the child
    # The coordinator may have died before prctl took effect: then nobody will signal us.
    # (Children are forked by a fork server, which itself exits when the coordinator dies.)
    try:
        os.kill(coordinator_pid, 0)
    except ProcessLookupError:
        sys.exit(0)
    except PermissionError:
        pass


def close_inherited_on_exec() -> None:
    """Mark every descriptor above stderr close-on-exec."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: fall back to the common range
        names = [str(fd) for fd in range(3, 256)]
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # not open (the listing's own descriptor, or a gap in the range)


def _ignore(signum: int, frame: object) -> None:
    pass
