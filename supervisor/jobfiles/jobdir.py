"""Which files in a jobs directory are job files, and a cheap snapshot of them.

A job file is a regular ``*.json`` file whose name does not start with ``.``; editor
droppings (``.x.json.swp``, ``x.json~``, ``#x.json#``, ``*.tmp``) never match. The
snapshot (size, mtime, inode per file) is what reconciliation compares to notice changes
without reading every file.
"""

from __future__ import annotations

import os


def is_job_file_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith((".", "#")) and len(name) > 5


_FIELD_BITS = 64
_FIELD_MASK = (1 << _FIELD_BITS) - 1


def _signed(field: int) -> int:
    return field - (1 << _FIELD_BITS) if field >> (_FIELD_BITS - 1) else field


class FileStamp(int):
    """Enough of a file's stat to tell that it changed (or was replaced) since last look.

    The reconciler keeps one per job file, so it is one int: size, mtime_ns, inode and
    ctime_ns as 64-bit fields of one 256-bit number (80 bytes, where a slotted object with
    four ints of its own took 172). Two stamps are equal when all four fields are.
    """

    __slots__ = ()

    def __new__(cls, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> FileStamp:
        return super().__new__(cls, (size & _FIELD_MASK)
                               | (mtime_ns & _FIELD_MASK) << _FIELD_BITS
                               | (inode & _FIELD_MASK) << 2 * _FIELD_BITS
                               | (ctime_ns & _FIELD_MASK) << 3 * _FIELD_BITS)

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    @property
    def size(self) -> int:
        return int(self) & _FIELD_MASK

    @property
    def mtime_ns(self) -> int:
        return _signed(int(self) >> _FIELD_BITS & _FIELD_MASK)

    @property
    def inode(self) -> int:
        return int(self) >> 2 * _FIELD_BITS & _FIELD_MASK

    @property
    def ctime_ns(self) -> int:
        return _signed(int(self) >> 3 * _FIELD_BITS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileStamp) and int(self) == int(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = int.__hash__

    def __bool__(self) -> bool:
        return True  # a stamp is something, whatever its fields

    def __reduce__(self) -> tuple[type[FileStamp], tuple[int, int, int, int]]:
        return FileStamp, (self.size, self.mtime_ns, self.inode, self.ctime_ns)

    def __repr__(self) -> str:
        return (f"FileStamp(size={self.size}, mtime_ns={self.mtime_ns}, inode={self.inode}, "
                f"ctime_ns={self.ctime_ns})")


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


#: The stamp of a file listed but not looked at (no file has inode 0): it equals no
#: stamp a reconciler knows, so the file is read, and the read's own ``fstat`` says what
#: the file was. Used for the first load, where every file is new anyway: 100,000 files
#: load without 100,000 ``stat`` calls.
UNSTAMPED = FileStamp(0, 0, 0, 0)


def snapshot(directory: str, *, stamped: bool = True) -> dict[str, FileStamp]:
    """Every job file directly in ``directory`` (symlinks followed) with its stamp
    (``UNSTAMPED`` for each when not ``stamped``).

    Raises OSError when the directory itself cannot be listed.
    """
    found: dict[str, FileStamp] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_job_file_name(entry.name):
                if not stamped:
                    found[entry.path] = UNSTAMPED
                    continue
                try:
                    found[entry.path] = FileStamp.of(entry.stat())
                except OSError:
                    found_stamp = stamp(entry.path)
                    if found_stamp is not None:
                        found[entry.path] = found_stamp
    return found
