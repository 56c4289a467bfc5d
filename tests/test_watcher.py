"""DirectoryWatcher: settling with a fake clock (how long each kind of event makes a path
wait), then a real observer on a real directory.

Real-filesystem tests wait the way the daemon's coordinator does (on ``fileno()`` until
``next_deadline()``), bounded by a deadline; never a fixed sleep.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait

import hypothesis.strategies as st
import pytest
from hypothesis import given
from watchdog.events import (
    DirDeletedEvent,
    DirModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

import supervisor.jobfiles.watcher as watcher_module
from supervisor.jobfiles.jobdir import FileStamp, snapshot
from supervisor.jobfiles.jobspec import read_stamped_job_file
from supervisor.jobfiles.reconcile import Reconciler
from supervisor.jobfiles.watcher import DirectoryWatcher

TIMEOUT_S = 20.0  # only reached on failure; generous for a loaded machine
SETTLE_S, CLOSED_S = 0.05, 0.002


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- settling, without threads --------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[tuple[DirectoryWatcher, FakeClock]]:
    clock = FakeClock()
    watcher = DirectoryWatcher("/jobs", settle_s=SETTLE_S, closed_s=CLOSED_S, clock=clock)
    yield watcher, clock
    watcher.stop()


def readable(watcher: DirectoryWatcher) -> bool:
    return bool(wait([watcher], timeout=0))


def test_a_burst_on_one_path_settles_once(fake):
    watcher, clock = fake
    for _ in range(5):  # an editor's save: create, modify, modify, close, attrib
        watcher.record("/jobs/a.json")
        clock.now += 0.02
    assert watcher.settled() == set()  # the last event is only 0.02 s old
    deadline = watcher.next_deadline()
    assert deadline == pytest.approx(clock.now - 0.02 + 0.05)
    assert watcher.settled(now=deadline - 0.001) == set()
    assert watcher.settled(now=deadline) == {"/jobs/a.json"}
    assert watcher.settled(now=deadline + 1) == set() and watcher.next_deadline() is None


def test_paths_settle_independently(fake):
    watcher, _ = fake
    watcher.record("/jobs/a.json", now=100.0)
    watcher.record("/jobs/b.json", now=100.04)
    assert watcher.next_deadline() == pytest.approx(100.05)
    assert watcher.settled(now=watcher.next_deadline()) == {"/jobs/a.json"}
    assert watcher.next_deadline() == pytest.approx(100.09)
    assert watcher.settled(now=watcher.next_deadline()) == {"/jobs/b.json"}


def test_a_moved_event_records_both_paths(fake):
    watcher, clock = fake
    watcher.on_event(FileMovedEvent("/jobs/.a.json.tmp", "/jobs/a.json"))
    clock.now += 1
    assert watcher.settled() == {"/jobs/.a.json.tmp", "/jobs/a.json"}


def test_an_empty_unclosed_file_waits_for_its_content(tmp_path):
    # A writer descheduled between creating the file and writing it: the empty file is
    # not handed over (and reported invalid) while it may still be filled.
    clock = FakeClock()
    watcher = DirectoryWatcher(str(tmp_path), settle_s=SETTLE_S, closed_s=CLOSED_S,
                               clock=clock)
    path = str(tmp_path / "a.json")
    open(path, "w").close()
    watcher.on_event(FileCreatedEvent(path))
    clock.now += SETTLE_S
    assert watcher.settled() == set()
    assert watcher.next_deadline() == pytest.approx(clock.now + SETTLE_S)
    clock.now += SETTLE_S
    assert watcher.settled() == set()
    write(path, "{}")  # the content lands (its close event may come late or be lost)
    clock.now += SETTLE_S
    assert watcher.settled() == {path}


def test_an_empty_file_is_handed_over_when_closed_or_after_the_wait(tmp_path):
    clock = FakeClock()
    watcher = DirectoryWatcher(str(tmp_path), settle_s=SETTLE_S, closed_s=CLOSED_S,
                               clock=clock)
    closed, left, gone = (str(tmp_path / name) for name in ("c.json", "l.json", "g.json"))
    for path in (closed, left):
        open(path, "w").close()
        watcher.on_event(FileCreatedEvent(path))
    watcher.on_event(FileCreatedEvent(gone))  # no such file: nothing to wait for
    watcher.on_event(FileClosedEvent(closed))  # closed empty: really empty
    clock.now += SETTLE_S
    assert watcher.settled() == {closed, gone}
    handed = set()
    while not handed:  # waits at most EMPTY_WAIT_S from its first event
        deadline = watcher.next_deadline()
        assert deadline is not None and deadline <= 100.0 + watcher_module.EMPTY_WAIT_S
        clock.now = deadline
        handed = watcher.settled()
    assert handed == {left} and clock.now == pytest.approx(100.0 + watcher_module.EMPTY_WAIT_S)
    assert watcher.next_deadline() is None


# -- how long each kind of event makes its path wait ------------------------------------

A, TMP, BACKUP = "/jobs/a.json", "/jobs/.a.json.tmp", "/jobs/a.json~"


@pytest.mark.parametrize("event, path, wait_s", [
    # A rename's new name holds a complete file: handed over at once.
    (FileMovedEvent(TMP, A), A, 0.0),
    # Its old name is gone, or about to be reused (vim renames the original away, then
    # writes it anew): it settles.
    (FileMovedEvent(TMP, A), TMP, SETTLE_S),
    (FileMovedEvent(A, BACKUP), A, SETTLE_S),
    # The writer closed it: complete, after a moment for a temp file's rename to arrive.
    (FileClosedEvent(A), A, CLOSED_S),
    # Maybe mid-write.
    (FileCreatedEvent(A), A, SETTLE_S),
    (FileModifiedEvent(A), A, SETTLE_S),
    (FileAttribEvent(A), A, SETTLE_S),
    (FileDeletedEvent(A), A, SETTLE_S),
], ids=["moved: new name", "moved: temp name", "moved: vim's original", "closed", "created",
        "modified", "attrib", "deleted"])
def test_how_long_a_path_waits_depends_on_what_its_event_says(fake, event, path, wait_s):
    watcher, clock = fake
    watcher.on_event(event)
    due = clock.now + wait_s
    assert path not in watcher.settled(now=due - 0.0005)
    assert path in watcher.settled(now=due)


def test_a_save_is_handed_over_at_its_close_not_after_settling(fake):
    watcher, clock = fake
    for event in (FileCreatedEvent(A), FileModifiedEvent(A), FileModifiedEvent(A)):
        watcher.on_event(event)
        clock.now += 0.01
    assert watcher.next_deadline() == pytest.approx(clock.now - 0.01 + SETTLE_S)
    watcher.on_event(FileClosedEvent(A))
    assert watcher.next_deadline() == pytest.approx(clock.now + CLOSED_S)
    assert watcher.settled(now=clock.now + CLOSED_S) == {A}
    assert watcher.next_deadline() is None


@pytest.mark.parametrize("later", [FileModifiedEvent, FileAttribEvent, FileCreatedEvent,
                                   FileDeletedEvent])
def test_a_change_after_the_close_waits_settle_s_again(fake, later):
    watcher, clock = fake
    watcher.on_event(FileClosedEvent(A))
    clock.now += 0.001  # before the close was handed over (vim sets the mode after it)
    watcher.on_event(later(A))
    assert watcher.settled(now=clock.now + CLOSED_S) == set()
    assert watcher.next_deadline() == pytest.approx(clock.now + SETTLE_S)
    assert watcher.settled(now=clock.now + SETTLE_S) == {A}


def test_a_temp_file_renamed_after_its_close_is_never_handed_over_complete(fake):
    """The pair of events of an ``os.replace`` save: the temp name's close is overtaken
    by its rename, so the temp name only settles (and is gone by then); the job file's
    name is handed over at once."""
    watcher, clock = fake
    watcher.on_event(FileClosedEvent(TMP))
    clock.now += 0.0003  # what a save takes from close to rename (measured: 0.07-0.3 ms)
    watcher.on_event(FileMovedEvent(TMP, A))
    assert watcher.settled(now=clock.now) == {A}
    assert watcher.settled(now=clock.now + SETTLE_S - 0.001) == set()
    assert watcher.settled(now=clock.now + SETTLE_S) == {TMP}


def test_a_rename_onto_a_settling_name_hands_it_over_at_once(fake):
    """A backup-then-replace save (``mv -b``, ``install -b``): the original renamed away
    (its name settling), then a new file renamed onto the name, which is complete."""
    watcher, clock = fake
    watcher.on_event(FileMovedEvent(A, BACKUP))
    clock.now += 0.001
    watcher.on_event(FileMovedEvent(TMP, A))
    assert watcher.settled(now=clock.now) == {A, BACKUP}
    assert watcher.settled(now=clock.now + SETTLE_S) == {TMP}


# What each event says about path A: how long it makes A wait (None: A not named).
EVENTS: dict[str, tuple[FileSystemEvent, float]] = {
    "created": (FileCreatedEvent(A), SETTLE_S),
    "modified": (FileModifiedEvent(A), SETTLE_S),
    "attrib": (FileAttribEvent(A), SETTLE_S),
    "closed": (FileClosedEvent(A), CLOSED_S),
    "deleted": (FileDeletedEvent(A), SETTLE_S),
    "moved away": (FileMovedEvent(A, BACKUP), SETTLE_S),
    "moved onto": (FileMovedEvent(TMP, A), 0.0),
}
STEPS = st.lists(st.tuples(st.sampled_from([*EVENTS, "look"]), st.integers(0, 80)),
                 max_size=30)


@given(STEPS)
def test_a_path_is_handed_over_once_its_last_event_has_waited(steps):
    """Any history of events on a path, looked at any time: the path is handed over at
    the first look once its last event's wait is over, once, and never earlier."""
    clock = FakeClock()
    watcher = DirectoryWatcher("/jobs", settle_s=SETTLE_S, closed_s=CLOSED_S, clock=clock)
    due: float | None = None  # the model: when A is to be handed over
    try:
        for step, gap_ms in steps:
            clock.now += gap_ms / 1000
            if step == "look":
                handed = A in watcher.settled()
                assert handed is (due is not None and due <= clock.now)
                due = None if handed else due
            else:
                event, wait_s = EVENTS[step]
                watcher.on_event(event)
                due = clock.now + wait_s
            if due is not None:
                next_deadline = watcher.next_deadline()
                assert next_deadline is not None and next_deadline <= due
    finally:
        watcher.stop()


def test_paths_outside_the_directory_and_the_directory_itself_are_not_reported(fake):
    watcher, clock = fake
    watcher.on_event(FileMovedEvent("/jobs/a.json", "/elsewhere/a.json"))
    watcher.on_event(DirModifiedEvent("/jobs"))  # every change in it: not a rescan
    watcher.record("/jobs/sub/b.json", "/jobsx/c.json", "/jobs")
    clock.now += 1
    assert watcher.settled() == {"/jobs/a.json"}
    assert watcher.take_rescan_needed() is False


def test_paths_are_spelled_like_the_directory_given(tmp_path):
    watcher = DirectoryWatcher(str(tmp_path) + "/", clock=FakeClock())
    try:
        watcher.record(str(tmp_path / "a.json"), now=0.0)
        assert watcher.settled(now=1.0) == {os.path.join(str(tmp_path) + "/", "a.json")}
    finally:
        watcher.stop()


def test_the_directory_going_away_asks_for_a_rescan(fake):
    watcher, _ = fake
    watcher.on_event(DirDeletedEvent("/jobs"))
    assert readable(watcher)
    assert watcher.take_rescan_needed() is True and watcher.take_rescan_needed() is False


def test_wakeup_pipe_is_readable_until_drained(fake):
    watcher, _ = fake
    assert not readable(watcher)
    for _ in range(3):
        watcher.record("/jobs/a.json")
    assert readable(watcher)
    watcher.settled()
    assert not readable(watcher)
    watcher.record("/jobs/a.json")  # a later event wakes the coordinator again
    assert readable(watcher)


def test_a_watchdog_queue_overflow_asks_for_a_rescan(tmp_path):
    watcher = DirectoryWatcher(str(tmp_path))
    watcher.start()
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        assert watcher.take_rescan_needed() is True and readable(watcher)
    finally:
        watcher.stop()


# -- a real observer on a real directory ------------------------------------------------


@pytest.fixture(params=["inotify", "polling"])
def jobs(request, tmp_path) -> Iterator[tuple[DirectoryWatcher, str]]:
    directory = tmp_path / "jobs.d"
    directory.mkdir()
    watcher = DirectoryWatcher(str(directory), force_polling=request.param == "polling",
                               poll_interval_s=0.05)
    watcher.start()
    assert watcher.polling is (request.param == "polling")
    yield watcher, str(directory)
    watcher.stop()


def settle(watcher: DirectoryWatcher, expected: set[str], *, health: bool = False) -> set[str]:
    """Run the coordinator's loop until every expected path has settled.

    With ``health``, the loop also checks the watch as the coordinator does; when that
    says "rescan" (the observer was restarted), a rescan is what finds the files: one
    written before the new observer's first snapshot is never an event of its own.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + TIMEOUT_S
    while not expected <= seen:
        if health and (watcher.health_check() or watcher.take_rescan_needed()):
            seen |= {entry.path for entry in os.scandir(watcher.directory)}
        now = time.monotonic()
        assert now < deadline, f"settled {sorted(seen)}, expected {sorted(expected)}"
        settles_at = watcher.next_deadline()
        until = deadline if settles_at is None else min(settles_at, deadline)
        wait([watcher], timeout=max(0.0, until - now))
        seen |= watcher.settled()
    return seen


def write(path: str, data: str = "{}") -> None:
    with open(path, "w") as handle:
        handle.write(data)


def join(directory: str, *names: str) -> set[str]:
    return {os.path.join(directory, name) for name in names}


Scenario = Callable[[str, str], set[str]]  # (jobs dir, outside dir) -> expected paths


def added(d: str, _: str) -> set[str]:
    write(os.path.join(d, "a.json"))
    return join(d, "a.json")


def modified_in_place(d: str, _: str) -> set[str]:
    with open(os.path.join(d, "a.json"), "a") as handle:
        handle.write(" ")
    return join(d, "a.json")


def replaced_atomically(d: str, _: str) -> set[str]:
    write(os.path.join(d, ".a.json.tmp"), '{"changed": 1}')
    os.replace(os.path.join(d, ".a.json.tmp"), os.path.join(d, "a.json"))
    return join(d, "a.json")


def vim_save(d: str, _: str) -> set[str]:
    os.rename(os.path.join(d, "a.json"), os.path.join(d, "a.json~"))
    write(os.path.join(d, "a.json"), '{"changed": 1}')
    os.unlink(os.path.join(d, "a.json~"))
    return join(d, "a.json")


def deleted(d: str, _: str) -> set[str]:
    os.unlink(os.path.join(d, "a.json"))
    return join(d, "a.json")


def moved_in(d: str, outside: str) -> set[str]:
    write(os.path.join(outside, "b.json"))
    os.rename(os.path.join(outside, "b.json"), os.path.join(d, "b.json"))
    return join(d, "b.json")


def moved_out(d: str, outside: str) -> set[str]:
    os.rename(os.path.join(d, "a.json"), os.path.join(outside, "a.json"))
    return join(d, "a.json")


def renamed_inside(d: str, _: str) -> set[str]:
    os.rename(os.path.join(d, "a.json"), os.path.join(d, "b.json"))
    return join(d, "a.json", "b.json")


@pytest.mark.parametrize("scenario", [added, modified_in_place, replaced_atomically, vim_save,
                                      deleted, moved_in, moved_out, renamed_inside])
def test_every_kind_of_change_is_reported(jobs, tmp_path, scenario: Scenario):
    watcher, directory = jobs
    outside = tmp_path / "outside"
    outside.mkdir()
    if scenario is not added:
        write(os.path.join(directory, "a.json"))
        settle(watcher, join(directory, "a.json"))
    expected = scenario(directory, str(outside))
    seen = settle(watcher, expected)
    assert all(os.path.dirname(path) == directory for path in seen)


def test_reading_a_file_is_not_a_change(jobs):
    watcher, directory = jobs
    path = os.path.join(directory, "a.json")
    write(path)
    settle(watcher, {path})
    with open(path) as handle:
        handle.read()
    write(os.path.join(directory, "marker.json"))  # events arrive in order
    assert settle(watcher, join(directory, "marker.json")) == join(directory, "marker.json")
    # The marker was handed over as soon as it was closed: had the read been recorded,
    # it would still be waiting.
    assert watcher.next_deadline() is None


# With settle_s far beyond any wait here: whatever is handed over did not settle.
PATIENT_S = 3600.0


@pytest.fixture
def patient(tmp_path) -> Iterator[tuple[DirectoryWatcher, str]]:
    directory = tmp_path / "jobs.d"
    directory.mkdir()
    watcher = DirectoryWatcher(str(directory), settle_s=PATIENT_S)
    watcher.start()
    if watcher.polling:  # polling reports neither closes nor (reliably) renames
        watcher.stop()
        pytest.skip("no inotify here")
    yield watcher, str(directory)
    watcher.stop()


def replace_save(d: str) -> None:  # as most tools save
    write(os.path.join(d, ".a.json.tmp"), '{"changed": 1}')
    os.replace(os.path.join(d, ".a.json.tmp"), os.path.join(d, "a.json"))


@pytest.mark.parametrize("change, complete, left", [
    (replace_save, "a.json", ".a.json.tmp"),
    (lambda d: write(os.path.join(d, "a.json")), "a.json", None),
    (lambda d: os.rename(os.path.join(d, "a.json"), os.path.join(d, "b.json")), "b.json",
     "a.json"),
], ids=["os.replace", "written and closed", "renamed inside"])
def test_a_complete_file_is_handed_over_without_settling(patient, change, complete, left):
    watcher, directory = patient
    write(os.path.join(directory, "a.json"))
    settle(watcher, join(directory, "a.json"))
    change(directory)
    seen = settle(watcher, join(directory, complete))
    if left is None:
        assert watcher.next_deadline() is None
    else:  # the name the file left (a temp name, the old name) still settles, as before
        assert os.path.join(directory, left) not in seen
        deadline = watcher.next_deadline()
        assert deadline is not None and deadline > time.monotonic() + PATIENT_S / 2


def test_a_file_still_being_written_waits_to_settle(patient):
    watcher, directory = patient
    path, marker = os.path.join(directory, "a.json"), os.path.join(directory, "marker.json")
    with open(path, "w") as handle:
        handle.write("{")
        handle.flush()  # created, modified: not complete
        write(marker)  # created, modified, closed: complete
        assert settle(watcher, {marker}) == {marker}  # a.json's events came first
        deadline = watcher.next_deadline()
        assert deadline is not None and deadline > time.monotonic() + PATIENT_S / 2
        handle.write("}")
    assert settle(watcher, {path}) == {path}  # closed: complete


def wait_for_restart(watcher: DirectoryWatcher) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not watcher.health_check():
        assert time.monotonic() < deadline, "health_check() never restarted the observer"
        wait([watcher], timeout=0.02)  # the observer has to notice first


def test_directory_deleted_and_recreated_is_watched_again(jobs):
    watcher, directory = jobs
    assert watcher.health_check() is False
    shutil.rmtree(directory)
    os.mkdir(directory)
    if not watcher.polling:
        # inotify watched the old directory: blind until restarted. (Polling lists the
        # path, so it simply carries on; ext4 even gives the new directory the same inode.)
        wait_for_restart(watcher)
        assert watcher.drain_diagnostics()[-1]["event"] == "watcher_restarted"
    write(os.path.join(directory, "a.json"))
    # Polling notices the gap only if a poll fell into it; then it needs its restart.
    settle(watcher, join(directory, "a.json"), health=watcher.polling)
    assert watcher.health_check() is False
    # Watched again: the next file is an event, no rescan needed.
    write(os.path.join(directory, "b.json"))
    settle(watcher, join(directory, "b.json"))


def test_directory_missing_for_a_while_is_reported_once(jobs):
    watcher, directory = jobs
    shutil.rmtree(directory)
    deadline = time.monotonic() + TIMEOUT_S
    while not watcher.drain_diagnostics():
        assert watcher.health_check() is False
        assert time.monotonic() < deadline
        wait([watcher], timeout=0.02)
    assert watcher.health_check() is False and watcher.drain_diagnostics() == []
    os.mkdir(directory)
    assert watcher.health_check() is True


def test_symlink_swap_is_followed(tmp_path):
    old, new, link = tmp_path / "v1", tmp_path / "v2", str(tmp_path / "jobs.d")
    old.mkdir()
    new.mkdir()
    os.symlink(old, link)
    watcher = DirectoryWatcher(link)
    watcher.start()
    try:
        write(os.path.join(link, "a.json"))
        assert settle(watcher, join(link, "a.json")) == join(link, "a.json")
        os.symlink(new, link + ".tmp")
        os.replace(link + ".tmp", link)  # ln -sfn
        assert watcher.health_check() is True
        assert watcher.drain_diagnostics()[-1]["reason"] == "directory replaced"
        write(os.path.join(link, "b.json"))
        settle(watcher, join(link, "b.json"))
    finally:
        watcher.stop()


def test_dead_observer_is_restarted(jobs):
    watcher, directory = jobs
    observer = watcher._observer
    observer.stop()
    observer.join(TIMEOUT_S)
    assert watcher.health_check() is True
    assert watcher.drain_diagnostics()[-1]["reason"] == "observer thread died"
    write(os.path.join(directory, "a.json"))
    settle(watcher, join(directory, "a.json"))


def test_no_inotify_falls_back_to_polling(tmp_path, monkeypatch):
    def no_inotify():
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watcher_module, "Observer", no_inotify)
    watcher = DirectoryWatcher(str(tmp_path), poll_interval_s=0.05)
    watcher.start()
    try:
        assert watcher.polling is True
        [event] = watcher.drain_diagnostics()
        assert event["event"] == "watcher_polling" and event["level"] == "warning"
        assert "inotify watch limit reached" in event["reason"]
        write(str(tmp_path / "a.json"))
        settle(watcher, join(str(tmp_path), "a.json"))
    finally:
        watcher.stop()


# -- with the Reconciler: one reload per save -------------------------------------------


def stamp(path: str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp.of(st) if stat.S_ISREG(st.st_mode) else None


def job(command: str) -> str:
    return json.dumps({"job_id": "a", "schedule": "* * * * *",
                       "task": {"type": "execute_command", "command": command}})


@pytest.mark.parametrize("save", ["in place", "os.replace", "vim", "rename inside"])
def test_each_save_is_exactly_one_reload(tmp_path, save):
    directory = str(tmp_path)
    path, renamed = os.path.join(directory, "a.json"), os.path.join(directory, "b.json")
    write(path, job("true"))
    rec = Reconciler(functools.partial(read_stamped_job_file, default_zone="UTC"))
    rec.full(snapshot(directory))
    watcher = DirectoryWatcher(directory, settle_s=0.2)  # generous: a loaded test machine
    watcher.start()
    try:
        if save == "in place":
            write(path, job("echo in place"))
        elif save == "os.replace":
            write(path + ".tmp", job("echo replaced"))
            os.replace(path + ".tmp", path)
        elif save == "vim":
            os.rename(path, path + "~")
            write(path, job("echo vim"))
            os.unlink(path + "~")
        else:
            os.rename(path, renamed)
        events: list[dict] = []  # the coordinator's loop, until a reload and quiet
        deadline = time.monotonic() + TIMEOUT_S
        while not events or watcher.next_deadline() is not None:
            now = time.monotonic()
            assert now < deadline, events
            settles_at = watcher.next_deadline()
            wait([watcher], timeout=max(0.0, (settles_at or deadline) - now))
            events += rec.paths(watcher.settled(), stamp).events
    finally:
        watcher.stop()
    expected = "job_renamed" if save == "rename inside" else "job_updated"
    assert [event["event"] for event in events] == [expected]
    assert rec.jobs()["a"].file == (renamed if save == "rename inside" else path)
