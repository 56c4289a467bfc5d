"""Which files in a jobs directory are job files, and a cheap snapshot of them.

A job file is a regular ``*.json`` file whose name does not start with ``.``; editor
droppings (``.x.json.swp``, ``x.json~``, ``#x.json#``, ``*.tmp``) never match. The
snapshot (size, mtime, inode per file) is what reconciliation compares to notice changes
without reading every file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def is_job_file_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith((".", "#")) and len(name) > 5


@dataclass(frozen=True, slots=True)
class FileStamp:
    """Enough of a file's stat to tell that it changed (or was replaced) since last look."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def stamp(path: str) -> FileStamp | None:
    """The stamp of whatever has a job file's name at ``path``; None if nothing does.

    Not only regular files: a directory, a FIFO or a dangling symlink named ``x.json`` is
    there, and reading it fails with an error naming the file, instead of the job
    silently vanishing.
    """
    try:
        return FileStamp.of(os.stat(path))
    except OSError:
        pass
    try:
        return FileStamp.of(os.lstat(path))  # a dangling or looping symlink
    except OSError:
        return None


def snapshot(directory: str) -> dict[str, FileStamp]:
    """Every job file directly in ``directory`` (symlinks followed) with its stamp.

    Raises OSError when the directory itself cannot be listed.
    """
    found: dict[str, FileStamp] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_job_file_name(entry.name):
                try:
                    found[entry.path] = FileStamp.of(entry.stat())
                except OSError:
                    found_stamp = stamp(entry.path)
                    if found_stamp is not None:
                        found[entry.path] = found_stamp
    return found
