"""The state directory: where the store lives, and the lock that keeps it one daemon's.

``--state-dir DIR``, else ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``; the first
of its colon-separated paths), else none: state in memory only.

The lock is an ``flock`` on ``DIR/taskd.lock`` held by the coordinator for its life
(the kernel lets go of it however the process ends, so a stale lock cannot exist). The
file says which pid holds it, for the message a second daemon prints.
"""

from __future__ import annotations

import fcntl
import os

STORE_FILE = "state.db"
LOCK_FILE = "taskd.lock"


class StateDirInUse(Exception):
    """Another daemon holds the state directory."""


class StateDirUnusable(Exception):
    """The lock file cannot be made (say the directory is read-only): no store then."""


def state_dir_from(option: str | None, environ: dict[str, str] | os._Environ) -> str | None:
    if option:
        return os.path.abspath(option)
    from_systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.abspath(from_systemd) if from_systemd else None


def store_path(state_dir: str) -> str:
    return os.path.join(state_dir, STORE_FILE)


class StateDirLock:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, creating the directory if need be; StateDirInUse otherwise."""
        try:
            os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as error:
            try:  # a read-only state dir: flock needs no write access to the file
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise StateDirUnusable(f"--state-dir {self.state_dir}: cannot create "
                                       f"{self.path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirInUse(f"--state-dir {self.state_dir}: in use by another taskd"
                                f"{f' (pid {holder})' if holder else ''}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # read-only: locked all the same, only without our pid in it
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the flock goes with the last descriptor
            self._fd = None


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
