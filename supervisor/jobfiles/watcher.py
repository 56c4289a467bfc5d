"""DirectoryWatcher: "these paths in the jobs directory may have changed", nothing more.

A thin shell around a watchdog observer. Events are never interpreted beyond their kind:
with watchdog 7.1 an ``os.replace`` save is only a ``moved`` event from the temp name, a
vim save looks like a delete first, and a deleted-and-recreated directory leaves the
observer alive but blind. So every path an event names is remembered with a deadline, and
once the deadline passes with no later event on it, the path is handed to the coordinator,
which stats it and lets the Reconciler decide. The deadline depends on what the event says
about the file at that path:

=========================================  ==============================================
event                                      path handed over after
=========================================  ==============================================
``moved``: its new name (``dest_path``)    at once: a rename is the last step of a save,
                                           the file under the new name is complete
``closed`` (IN_CLOSE_WRITE)                ``closed_s`` (2 ms): the writer is done. The
                                           wait is for a temp file's rename, which comes
                                           well under 1 ms after its close: it moves the
                                           temp name back to settling, so a temp file
                                           named like a job file (``tmpXXXX.json``) is
                                           not loaded and then found gone
anything else: created, modified, attrib,  ``settle_s`` (50 ms): the file may be mid-write
deleted, a ``moved`` event's old name      or its name about to be reused (vim renames
                                           the original away, then writes it anew)
=========================================  ==============================================

A path that settles (no close seen) while its file is empty, or while it is a symlink to
nothing, is given more time, up to ``EMPTY_WAIT_S`` (1 s) from its first event: a writer
can be descheduled between creating a file and writing it (``cat > x.json``,
``Path.write_text`` on a loaded machine), a link can be made before its target, and a
ConfigMap key's link dangles between the kubelet's swap of ``..data`` and the link's own
removal; none of those, read then, is a mistake to report. One that stays that way, or
is closed empty, is handed over as any other.

Symlinked job files (a Kubernetes ConfigMap volume, links to ``/etc/taskd/real/``): an
event on anything such a file is read through, a link on the way (``..data``), a
directory on the way or the target itself, is an event on the job file, which then
settles (``settle_s``, or ``closed_s`` after a close). The kubelet's update is a rename
of a new ``..data`` over the old one, so every job file read through ``..data`` is
handed over within ``settle_s``, and no other file is. What each job file is read
through comes from ``link_targets.resolve``: for every symlinked job file at start, at
each safety-net rescan and after lost events, and for each job file handed over that was
a link or whose name an event made (a file written and closed in place is no link and
costs nothing). The directories outside the jobs directory that hold links or targets
(``/etc/taskd/real/``, the timestamped directory) are watched as well (``TargetWatches``).

A later event on a path replaces its deadline, in either direction: an editor's save
(created, modified, closed) is handed over once, at its close; a ``modified`` after the
close puts the path back to settling. So a rename inside the directory hands over the new
name before the old one (the Reconciler still sees one job renamed), and a file moved in
from another directory, which watchdog reports as ``created``, settles.

Threads: the observer thread calls ``record``; everything else runs in the coordinator,
which waits on ``fileno()`` (a wakeup pipe) and sleeps until ``next_deadline()``.
When watching itself went wrong (inotify unavailable, the directory replaced, the
kernel queue overflowed) the answer is a full rescan, never a guess.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from supervisor.jobfiles.jobdir import is_job_file_name
from supervisor.jobfiles.link_targets import LinkIndex, LinkReader, TargetWatches, resolve

# Opened / closed-without-writing events are left out: reading a job file (which the
# daemon does after every change) must not look like a change.
_EVENT_FILTER = [FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent,
                 FileDeletedEvent, FileMovedEvent, DirCreatedEvent, DirDeletedEvent,
                 DirMovedEvent]
_STOP_TIMEOUT_S = 5.0
EMPTY_WAIT_S = 1.0  # how long an empty, unclosed new file may wait for its content


class DirectoryWatcher:
    def __init__(self, directory: str, *, settle_s: float = 0.05, closed_s: float = 0.002,
                 clock: Callable[[], float] = time.monotonic, force_polling: bool = False,
                 poll_interval_s: float = 1.0, health_interval_s: float = 1.0) -> None:
        self.directory = directory
        self.polling = False  # whether the running observer polls instead of using inotify
        self._settle_s = settle_s
        self._closed_s = closed_s
        self._clock = clock
        self._force_polling = force_polling
        self._poll_interval_s = poll_interval_s
        self._health_interval_s = health_interval_s
        self._next_health_check = clock()
        self._lock = threading.Lock()  # guards the fields the observer thread writes
        self._pending: dict[str, float] = {}  # path -> when to hand it over
        # Paths pending after an event that says nothing of the writer being done: when
        # their first such event came (for EMPTY_WAIT_S).
        self._unclosed: dict[str, float] = {}
        self._wake_pending = False
        self._rescan_needed = False
        self._watch_lost = False
        self._parents = frozenset({_normalized(directory)})
        self._real = _normalized(directory)  # what is watched: the directory's real path
        # Guarded by _lock (the observer threads look up, the coordinator stores).
        self._links = LinkIndex()
        self._targets = TargetWatches(self.on_target_event, event_filter=_EVENT_FILTER,
                                      poll_interval_s=poll_interval_s)
        self._unwatched_targets: set[str] = set()  # reported as not watchable
        self._made: set[str] = set()  # pending paths an event made: maybe new symlinks
        self._diagnostics: list[dict[str, Any]] = []
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) being watched
        self._missing_reported = False
        self._generation = 0  # which observer's events count
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- observer thread ----------------------------------------------------------------

    def record(self, *paths: str, now: float | None = None, wait_s: float | None = None,
               made: bool | None = None) -> None:
        """Remember that ``paths`` saw an event: each is handed over once ``wait_s``
        (default ``settle_s``) has passed with no later event on it. Paths outside the
        directory are dropped; the others are reported as ``snapshot(directory)`` spells
        them. ``made``: whether the name may now be a new symlink: True when the event
        made it (created, renamed onto), False when it was written and closed (a symlink
        is never written through its own name), None when the event says nothing."""
        when = self._clock() if now is None else now
        due = when + (self._settle_s if wait_s is None else wait_s)
        with self._lock:
            recorded = False
            for raw in paths:
                parent, name = os.path.split(raw)
                if name and _normalized(parent) in self._parents:
                    path = os.path.join(self.directory, name)
                    self._pending[path] = due
                    if wait_s is None:
                        self._unclosed.setdefault(path, when)
                    else:
                        self._unclosed.pop(path, None)  # closed or renamed into place
                    if made:
                        self._made.add(path)
                    elif made is not None:
                        self._made.discard(path)
                    recorded = True
            if recorded:
                self._wake()

    def on_event(self, event: FileSystemEvent, generation: int | None = None) -> None:
        if generation is not None and generation != self._generation:
            # From an observer being replaced: the restart means a full rescan anyway,
            # and its "directory deleted" must not mark the new watch as lost.
            return
        src, dest = os.fsdecode(event.src_path), os.fsdecode(event.dest_path)
        if event.event_type in ("deleted", "moved") and any(
                path and _normalized(path) in self._parents for path in (src, dest)):
            self.need_rescan(lost=True)  # the directory itself went away
        # The module docstring's table. (An empty name, as in a non-move's dest_path,
        # names no path: record() drops it.)
        if event.event_type == "moved":
            self.record(src)
            self.record(dest, wait_s=0.0, made=True)
        elif event.event_type == "closed":
            self.record(src, wait_s=self._closed_s, made=False)
        elif event.event_type == "created":
            self.record(src, made=True)
        else:
            self.record(src, dest)
        self._record_dependents(event)

    def on_target_event(self, event: FileSystemEvent) -> None:
        """An event in a directory outside the jobs directory that symlinked job files
        are read through."""
        self._record_dependents(event)

    def _record_dependents(self, event: FileSystemEvent) -> None:
        """The job files read through a path the event names have changed too."""
        with self._lock:
            if not self._links:
                return
            found: set[str] = set()
            for raw in (event.src_path, event.dest_path):
                path = os.fsdecode(raw)
                if path:
                    found |= self._links.dependents(_normalized(path))
        if found:
            # Never at once, even after a rename: the kubelet's swap of ``..data`` is
            # followed by the removal of the links to keys it dropped.
            self.record(*found, wait_s=self._closed_s if event.event_type == "closed" else None)

    def need_rescan(self, *, lost: bool = False) -> None:
        with self._lock:
            self._rescan_needed = True
            self._watch_lost = self._watch_lost or lost
            self._wake()

    def events_lost(self) -> None:
        """The kernel's event queue overflowed: only a full rescan can tell what changed.
        Said once per rescan (not per lost batch), so an operator sees why it happened."""
        with self._lock:
            if not self._rescan_needed:
                self._diagnostics.append({"event": "watcher_overflow", "level": "warning",
                                          "directory": self.directory,
                                          "reason": "kernel event queue overflowed; "
                                                    "rescanning the directory"})
        self.need_rescan()

    def _wake(self) -> None:
        """With the lock held: one byte per wakeup, not one per event of a burst."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._write_fd, b"\0")  # non-blocking
            except OSError:
                pass  # a full pipe wakes the coordinator all the same; closed: stopping

    # -- coordinator ----------------------------------------------------------------------

    def fileno(self) -> int:
        return self._read_fd

    def settled(self, now: float | None = None) -> set[str]:
        """Paths whose deadline has passed, each once; the others stay pending."""
        try:
            while os.read(self._read_fd, 4096):
                pass
        except OSError:
            pass  # empty (BlockingIOError), or closed by stop()
        when = self._clock() if now is None else now
        with self._lock:
            self._wake_pending = False  # after draining: a later event writes again
            # The stored deadline, not ``when - last``: exactly what next_deadline()
            # says, so waking at the deadline always settles (no float-rounding spin).
            ready = {path for path, due in self._pending.items() if due <= when}
            for path in ready:
                del self._pending[path]
            unclosed = {path: self._unclosed.pop(path) for path in ready
                        if path in self._unclosed}
        waiting = {path: first for path, first in unclosed.items()
                   if when - first < EMPTY_WAIT_S and _incomplete(path)}
        if waiting:
            with self._lock:
                for path, first in waiting.items():
                    if path not in self._pending:  # else a newer event decides
                        self._pending[path] = min(when + self._settle_s,
                                                  first + EMPTY_WAIT_S)
                        self._unclosed[path] = first
            ready -= waiting.keys()
        self._relink(ready)
        return ready

    def next_deadline(self) -> float | None:
        with self._lock:
            if not self._pending:
                return None
            return min(self._pending.values())

    def take_rescan_needed(self, now: float | None = None) -> bool:
        """Whether the caller must rescan the whole directory: the observer saw it go or
        the kernel queue overflow, or the watch itself had to be restarted.

        The coordinator asks every loop step, so the health of the watch is checked here
        too, at most every ``health_interval_s`` (a stat and two thread checks). A
        directory deleted and recreated, swapped by ``ln -sfn`` or an observer that died
        leaves no event behind; waiting for the safety-net rescan to call
        ``health_check`` would leave the daemon blind to new files for that long.
        """
        when = self._clock() if now is None else now
        restarted = False
        if when >= self._next_health_check:
            self._next_health_check = when + self._health_interval_s
            restarted = self._restart_if_needed()
            self._sync_targets(recheck=True)  # a watched target directory gone, or back
        with self._lock:
            needed, self._rescan_needed = self._rescan_needed, False
        if needed and not restarted:
            self._index_links()  # events were lost: links may have changed unseen
        return needed or restarted

    def drain_diagnostics(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self._diagnostics = self._diagnostics, []
        return events

    def start(self) -> None:
        self._observer = self._launch()
        _OVERFLOW_WATCH.watchers.add(self)

    def health_check(self) -> bool:
        """Restart a dead or blind observer; True means the caller must rescan fully.

        The coordinator calls this at every safety-net rescan, so what symlinked job files
        are read through is looked up afresh here too (restarting does it anyway)."""
        if self._observer is None:
            return False
        if self._restart_if_needed():
            return True
        self._index_links()
        return False

    def _restart_if_needed(self) -> bool:
        if self._observer is None:
            return False
        reason = self._restart_reason()
        if reason is None:
            return False
        try:
            observer = self._launch()
        except OSError as error:
            # The directory is missing (or unusable) right now: keep trying, say it once.
            if not self._missing_reported:
                self._missing_reported = True
                self._diagnose("watcher_directory_missing", "error",
                               reason=f"{reason}; cannot watch: {error.strerror or error}")
            return False
        old, self._observer = self._observer, observer
        _stop(old)
        self._missing_reported = False
        self._diagnose("watcher_restarted", "warning", reason=reason)
        return True

    def stop(self) -> None:
        _OVERFLOW_WATCH.watchers.discard(self)
        if self._observer is not None:
            _stop(self._observer)
            self._observer = None
        self._targets.stop()
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1

    # -- the observer -------------------------------------------------------------------

    def _restart_reason(self) -> str | None:
        assert self._observer is not None
        if self._missing_reported:
            return "directory recreated"
        if not self._observer.is_alive():
            return "observer thread died"
        emitters = list(self._observer.emitters)
        with self._lock:
            lost = self._watch_lost
        if lost or not emitters or not all(emitter.is_alive() for emitter in emitters):
            return "directory deleted or moved"
        try:
            st = os.stat(self.directory)
        except OSError:
            return "directory missing"
        # Not enough on its own: ext4 hands a recreated directory the same inode number.
        # inotify's emitter stops on IN_DELETE_SELF, which the check above catches.
        if (st.st_dev, st.st_ino) != self._identity:
            return "directory replaced"
        return None

    def _launch(self) -> BaseObserver:
        """A running observer on the directory: inotify if possible, else polling."""
        # Watch the real directory: watchdog does not follow a symlinked directory (it asks
        # inotify not to), and after `ln -sfn` the symlink points somewhere new anyway.
        real = os.path.realpath(self.directory)
        st = os.stat(real)
        with self._lock:
            self._parents = frozenset({_normalized(self.directory), real})
            self._watch_lost = False
            self._generation += 1
        observer = None
        if not self._force_polling:
            try:
                observer = self._started(Observer(), real)
            except OSError as error:  # no inotify, out of watches (ENOSPC) or instances
                self._diagnose("watcher_polling", "warning",
                               reason=f"inotify unavailable: {error.strerror or error}")
        self.polling = observer is None
        if observer is None:
            observer = self._started(PollingObserver(timeout=self._poll_interval_s), real)
        self._identity = (st.st_dev, st.st_ino)
        self._real = real
        self._index_links()
        return observer

    def _started(self, observer: BaseObserver, path: str) -> BaseObserver:
        try:
            observer.schedule(_Handler(self, self._generation), path, recursive=False,
                              event_filter=_EVENT_FILTER)
            observer.start()
        except BaseException:
            _stop(observer)
            raise
        return observer

    # -- symlinked job files ------------------------------------------------------------

    def _index_links(self) -> None:
        """Look up what every symlinked job file is read through. Always followed by a
        full rescan (or the first load), which sees whatever changed before."""
        found = {}
        read = LinkReader()
        try:
            with os.scandir(self._real) as entries:
                for entry in entries:  # is_symlink(): from the listing, no system call
                    if is_job_file_name(entry.name) and entry.is_symlink():
                        resolution = resolve(entry.path, read)
                        if resolution is not None:
                            found[os.path.join(self.directory, entry.name)] = resolution
        except OSError:
            return  # the directory is missing: the health check says so
        with self._lock:
            self._links.replace_all(found)
        self._sync_targets(recheck=False)

    def _relink(self, handed_over: set[str]) -> None:
        """Look up again what the job files just handed over are read through, when a
        link may have been made (the name was created or renamed onto), removed or
        pointed elsewhere (it was a link): a file written in place costs nothing here."""
        with self._lock:
            made = self._made & handed_over
            self._made -= made
            job_files = {path for path in handed_over if path in made or path in self._links}
        job_files = {path for path in job_files if is_job_file_name(os.path.basename(path))}
        if not job_files:
            return
        read = LinkReader()
        resolutions = {path: resolve(os.path.join(self._real, os.path.basename(path)), read)
                       for path in job_files}
        with self._lock:
            changed = [self._links.set(path, found) for path, found in resolutions.items()]
        if any(changed):
            self._sync_targets(recheck=True)

    def _sync_targets(self, *, recheck: bool) -> None:
        """Watch the directories outside the jobs directory that symlinked job files are
        read through. With ``recheck``, the job files read through a directory that has
        just begun to be watched are handed over once more: it may have changed between
        their lookup and the watch (no rescan follows to see it)."""
        with self._lock:
            wanted = self._links.directories() - {self._real}
        if not wanted and not self._targets.watched():
            return
        added, problems = self._targets.sync(wanted, polling=self.polling)
        by_reason: dict[str, list[str]] = {}
        for directory in sorted(problems.keys() - self._unwatched_targets):
            by_reason.setdefault(problems[directory], []).append(directory)
        for reason, directories in by_reason.items():  # said once, not every second
            self._diagnose("watcher_target_unwatched", "warning", count=len(directories),
                           targets=directories[:10],
                           reason=f"{reason}; changes there are seen at the periodic "
                                  f"rescan")
        self._unwatched_targets = set(problems)
        if recheck and added:
            with self._lock:
                again = set().union(*(self._links.in_directory(d) for d in added))
            if again:
                self.record(*again)

    def _diagnose(self, event: str, level: str, **fields: Any) -> None:
        with self._lock:
            self._diagnostics.append({"event": event, "level": level,
                                      "directory": self.directory, **fields})


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: DirectoryWatcher, generation: int) -> None:
        self._watcher = watcher
        self._generation = generation

    def dispatch(self, event: FileSystemEvent) -> None:
        self._watcher.on_event(event, self._generation)


class _OverflowWatch(logging.Handler):
    """watchdog only logs a kernel queue overflow; turn that warning into a rescan."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.watchers: weakref.WeakSet[DirectoryWatcher] = weakref.WeakSet()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            for watcher in list(self.watchers):
                watcher.events_lost()


_OVERFLOW_WATCH = _OverflowWatch()
logging.getLogger("watchdog.observers.inotify_c").addHandler(_OVERFLOW_WATCH)


def _stop(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(_STOP_TIMEOUT_S)
    except (OSError, RuntimeError):
        pass  # half-started: nothing more to stop


def _normalized(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _incomplete(path: str) -> bool:
    """An empty regular file, or a symlink to nothing (yet)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return os.path.islink(path)
    except OSError:
        return False  # unusable: hand it over, the reconciler says why
    return st.st_size == 0 and stat.S_ISREG(st.st_mode)
