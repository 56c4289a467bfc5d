"""Who may define jobs: cron's rule for job files read by a daemon running as root.

Whoever can write a job file can run commands as taskd's user. So when taskd runs as
root, a job file must be owned by root and writable by nobody else (no group or other
write bit), as cron demands of crontabs. ``--allow-insecure-files`` turns the check off.
A daemon running as an ordinary user reads what that user can read: the user already
owns everything the jobs could do.
"""

from __future__ import annotations

import functools
import os
import stat


@functools.cache
def daemon_uid() -> int:
    """The daemon's effective uid, asked once: taskd never changes it, and a load asks
    for every file (a system call each, 100,000 of them for 100,000 files)."""
    return os.geteuid()


def untrusted_reason(st: os.stat_result, *, daemon_uid: int) -> str | None:
    """Why a job file with this stat may not be trusted, or None when it may."""
    if daemon_uid != 0:
        return None
    if st.st_uid != 0:
        return (f"refused: owned by uid {st.st_uid}, not root (taskd runs as root; "
                f"use --allow-insecure-files to accept it)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"refused: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}; "
                f"taskd runs as root; chmod go-w the file or use --allow-insecure-files)")
    return None
