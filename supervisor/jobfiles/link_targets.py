"""What a symlinked job file is read through, and watching it.

A job file may be a symlink, and so may every step on the way to what it names. The
kubelet mounts a Kubernetes ConfigMap that way::

    jobs.d/job-a.json -> ..data/job-a.json
    jobs.d/..data     -> ..2026_12_03_10_00_00.123456789
    jobs.d/..2026_12_03_10_00_00.123456789/job-a.json        (the content)

and updates it by writing a new timestamped directory and renaming a new ``..data``
link over the old one: ``job-a.json`` itself never sees an event. A job file linked to
``/etc/taskd/real/x.json`` that is edited in place has its events in ``/etc/taskd/real``
only. So for each job file that is a symlink, ``resolve`` lists every path its
resolution looked up (``..data``, the timestamped directory, the file in it) and the
directories where a change to those paths is seen (where each link and the target
live). The ``LinkIndex`` answers "which job files does an event on this path concern",
and ``TargetWatches`` watches those directories besides the jobs directory.

Only symlinked job files are indexed: a directory of regular files costs nothing here.
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

MAX_LINKS = 40  # as the kernel's ELOOP limit
# Each watched directory is a watchdog emitter thread: enough for any sane layout (a
# ConfigMap needs one, however many keys it has), bounded for an insane one.
MAX_TARGET_DIRECTORIES = 64


@dataclass(frozen=True, slots=True)
class Resolution:
    looked_up: tuple[str, ...]  # every path after the job file itself that resolving it read
    directories: frozenset[str]  # where the links and the target live (or it went missing)


def read_link(path: str) -> str | int:
    """What the symlink at ``path`` holds, or the errno saying why not (EINVAL: it is
    there and not a link)."""
    try:
        return os.readlink(path)
    except OSError as error:
        return error.errno or errno.EIO


class LinkReader:
    """``read_link`` for one pass over many job files, each path read once: a
    ConfigMap's keys all go through the same ``..data`` and timestamped directory."""

    def __init__(self) -> None:
        self._read: dict[str, str | int] = {}

    def __call__(self, path: str) -> str | int:
        found = self._read.get(path)
        if found is None:
            found = self._read[path] = read_link(path)
        return found


def resolve(path: str, read: Callable[[str], str | int] = read_link) -> Resolution | None:
    """How the symlink at ``path`` resolves; None when ``path`` is not a symlink.

    ``path``'s directory must be free of symlinks (the jobs directory's real path): the
    walk is the kernel's, one ``readlink`` per component, and stops where a component is
    missing or unreadable (that directory is where its appearing will be seen).
    """
    target = read(path)
    if isinstance(target, int):
        return None  # not a symlink (EINVAL), or gone
    here = os.path.dirname(path)  # resolved so far: a real directory
    looked_up: list[str] = []
    directories = {here}
    pending = _components(target)  # what is left to look up, the next component last
    if target.startswith("/"):
        here = "/"
    links = 1
    while pending and links <= MAX_LINKS:
        part = pending.pop()
        if part == "..":
            here = os.path.dirname(here)
            continue
        entry = os.path.join(here, part)
        looked_up.append(entry)
        target = read(entry)
        if isinstance(target, int):
            if target != errno.EINVAL:
                directories.add(here)  # missing or unreachable: the rest cannot be looked up
                break
            if not pending:
                directories.add(here)  # the target itself
            here = entry  # not a link: a directory on the way, or the target
            continue
        links += 1
        directories.add(here)
        if target.startswith("/"):
            here = "/"
        pending.extend(_components(target))
    return Resolution(tuple(looked_up), frozenset(directories))


def _components(target: str) -> list[str]:
    return [part for part in reversed(target.split("/")) if part not in ("", ".")]


class LinkIndex:
    """Job file -> its Resolution, and back: looked-up path -> the job files it concerns.

    Pure bookkeeping: the watcher resolves outside its lock and stores under it.
    """

    def __init__(self) -> None:
        self._resolutions: dict[str, Resolution] = {}
        self._dependents: dict[str, set[str]] = {}
        self._directories: dict[str, int] = defaultdict(int)  # directory -> job files

    def __len__(self) -> int:
        return len(self._resolutions)

    def __contains__(self, job_file: str) -> bool:
        return job_file in self._resolutions

    def set(self, job_file: str, resolution: Resolution | None) -> bool:
        """Store how ``job_file`` resolves (None: not a symlink, or gone). True when the
        set of directories changed."""
        old = self._resolutions.get(job_file)
        if old == resolution:
            return False
        gone: set[str] = set()
        came: set[str] = set()
        if old is not None:
            del self._resolutions[job_file]
            for path in set(old.looked_up):  # a path may be looked up twice (a chain)
                dependents = self._dependents[path]
                dependents.discard(job_file)
                if not dependents:
                    del self._dependents[path]
            for directory in old.directories:
                self._directories[directory] -= 1
                if not self._directories[directory]:
                    del self._directories[directory]
                    gone.add(directory)
        if resolution is not None:
            self._resolutions[job_file] = resolution
            for path in resolution.looked_up:
                self._dependents.setdefault(path, set()).add(job_file)
            for directory in resolution.directories:
                if directory not in self._directories:
                    came.add(directory)
                self._directories[directory] += 1
        return gone != came

    def replace_all(self, resolutions: dict[str, Resolution]) -> None:
        for job_file in set(self._resolutions) - set(resolutions):
            self.set(job_file, None)
        for job_file, resolution in resolutions.items():
            self.set(job_file, resolution)

    def dependents(self, path: str) -> set[str]:
        """The job files whose resolution looked ``path`` up."""
        return set(self._dependents.get(path, ()))

    def in_directory(self, directory: str) -> set[str]:
        """The job files resolved through something in ``directory``."""
        return {job_file for job_file, resolution in self._resolutions.items()
                if directory in resolution.directories}

    def directories(self) -> set[str]:
        return set(self._directories)


class _Handler(FileSystemEventHandler):
    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        self._on_event = on_event

    def dispatch(self, event: FileSystemEvent) -> None:
        self._on_event(event)


class TargetWatches:
    """Watches on the directories symlinked job files are read through, beyond the jobs
    directory; one observer for all of them, started when the first is needed.

    A watched directory that goes away (the kubelet removes the old timestamped
    directory after each update) ends its emitter; ``sync`` drops it, and watches it
    again should it be wanted and there once more.
    """

    def __init__(self, on_event: Callable[[FileSystemEvent], None], *,
                 event_filter: list[type[FileSystemEvent]], poll_interval_s: float) -> None:
        self._handler = _Handler(on_event)
        self._event_filter = event_filter
        self._poll_interval_s = poll_interval_s
        self._observer: BaseObserver | None = None
        self._watches: dict[str, ObservedWatch] = {}

    def watched(self) -> set[str]:
        return set(self._watches)

    def sync(self, wanted: set[str], *, polling: bool) -> tuple[set[str], dict[str, str]]:
        """Watch exactly the ``wanted`` directories (up to MAX_TARGET_DIRECTORIES, in
        sorted order). Returns the directories newly watched and, for those that could
        not be, why (a missing directory is not a problem: nothing to see there yet)."""
        observer = self._observer
        if observer is not None:
            alive = {emitter.watch for emitter in list(observer.emitters)
                     if emitter.is_alive()}
            for directory, watch in list(self._watches.items()):
                if directory not in wanted or watch not in alive:
                    del self._watches[directory]
                    _unschedule(observer, watch)
        added: set[str] = set()
        problems: dict[str, str] = {}
        for directory in sorted(wanted - set(self._watches)):
            if len(self._watches) >= MAX_TARGET_DIRECTORIES:
                problems[directory] = (f"more than {MAX_TARGET_DIRECTORIES} directories "
                                       f"hold symlink targets")
                continue
            try:
                observer = self._running(polling)
                self._watches[directory] = observer.schedule(
                    self._handler, directory, recursive=False,
                    event_filter=self._event_filter)
            except OSError as error:
                if error.errno not in (errno.ENOENT, errno.ENOTDIR):
                    problems[directory] = error.strerror or str(error)
                continue
            added.add(directory)
        return added, problems

    def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            self._watches.clear()
            observer.stop()
            if observer.is_alive():
                observer.join(5.0)

    def _running(self, polling: bool) -> BaseObserver:
        if self._observer is None:
            observer = (PollingObserver(timeout=self._poll_interval_s) if polling
                        else Observer())
            observer.start()
            self._observer = observer
        return self._observer


def _unschedule(observer: BaseObserver, watch: ObservedWatch) -> None:
    try:
        observer.unschedule(watch)
    except (KeyError, RuntimeError):
        pass  # already gone with its emitter
