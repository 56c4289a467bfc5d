"""A user made with useradd for a test, removed after (a pytest plugin: conftest).

``user`` (module scope) is an account with its own primary group, a supplementary group
and a home directory under a temp dir; whatever it still runs at the end is killed.
Tests that use it need root and useradd: without them they are skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from workers.run_as import resolve_group


@dataclass(frozen=True)
class MadeUser:
    name: str
    uid: int
    gid: int  # its own primary group
    extra_group: str  # a supplementary group it is a member of
    extra_gid: int
    home: Path


def _retrying(argv: list[str]) -> None:
    """Another test process may hold the lock on /etc/passwd for a moment."""
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        time.sleep(0.05)


def pids_of_uid(uid: int) -> list[int]:
    """Live processes of ``uid`` (zombies are dead: their reaper may be slow)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in "ZX":
                found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def user() -> Iterator[MadeUser]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("making a test user needs root and useradd")
    name = f"taskd-t{uuid.uuid4().hex[:8]}"
    extra = f"{name}-x"
    base = tempfile.mkdtemp(prefix="taskd-homes-")
    os.chmod(base, 0o755)  # the user must reach its home below it
    _retrying(["groupadd", extra])
    try:
        _retrying(["useradd", "-m", "-b", base, "-U", "-G", extra, "-s", "/bin/sh", name])
        try:
            entry = pwd.getpwnam(name)
            yield MadeUser(name, entry.pw_uid, entry.pw_gid, extra, resolve_group(extra),
                           Path(entry.pw_dir))
        finally:
            for pid in pids_of_uid(pwd.getpwnam(name).pw_uid):  # what a test left running
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _retrying(["userdel", "-r", "-f", name])
    finally:
        _retrying(["groupdel", extra])
        shutil.rmtree(base, ignore_errors=True)
