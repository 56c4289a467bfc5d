"""Symlinked job files: a Kubernetes ConfigMap volume, and links to files elsewhere.

First what a link is read through (``resolve``, a table on a real directory) and the
index kept of it (a table, then a property against a model). Then the watcher on a real
directory, updated exactly as the kubelet's AtomicWriter does it: a new timestamped
directory, a ``..data_tmp`` link to it renamed over ``..data``, links for new keys
created, links for dropped keys removed, the old timestamped directory removed
(``tests/configmap_volume.py``). No
rescan runs in these tests: whatever is handed over came from an event. Waiting is the
coordinator's way (on ``fileno()`` until ``next_deadline()``), bounded by a deadline.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import example, given
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent

import supervisor.jobfiles.link_targets as link_targets
import supervisor.jobfiles.watcher as watcher_module
from supervisor.jobfiles.jobdir import snapshot, stamp
from supervisor.jobfiles.jobspec import read_stamped_job_file
from supervisor.jobfiles.link_targets import LinkIndex, Resolution, resolve
from supervisor.jobfiles.reconcile import Reconciler
from supervisor.jobfiles.watcher import DirectoryWatcher
from tests.configmap_volume import ConfigMapVolume

TIMEOUT_S = 20.0  # only reached on failure; generous for a loaded machine
SETTLE_S = 0.2  # generous: the kubelet's steps after the swap come well within it


# -- what a link is read through ---------------------------------------------------------


def job(job_id: str, command: str = "true") -> str:
    return json.dumps({"job_id": job_id, "schedule": "* * * * *",
                       "task": {"type": "execute_command", "command": command}})


def test_a_configmap_key_is_read_through_data_and_its_timestamped_directory(tmp_path):
    mount = ConfigMapVolume(tmp_path)
    mount.write({"job-a.json": "{}"})
    ts = str(mount.ts_dir())
    assert resolve(str(tmp_path / "job-a.json")) == Resolution(
        looked_up=(str(tmp_path / "..data"), ts, os.path.join(ts, "job-a.json")),
        directories=frozenset({str(tmp_path), ts}))


def layout_outside(jobs: Path, outside: Path) -> str:
    (outside / "real").mkdir()
    (outside / "real" / "x.json").write_text("{}")
    os.symlink(outside / "real" / "x.json", jobs / "a.json")
    return "a.json"


def layout_relative_up(jobs: Path, outside: Path) -> str:
    (outside / "real").mkdir()
    (outside / "real" / "x.json").write_text("{}")
    os.symlink(f"../{outside.name}/real/x.json", jobs / "a.json")
    return "a.json"


def layout_chain(jobs: Path, outside: Path) -> str:
    (outside / "real").mkdir()
    (outside / "real" / "x.json").write_text("{}")
    os.symlink(outside / "real", outside / "current")  # a link to a directory on the way
    os.symlink(outside / "current" / "x.json", outside / "link.json")
    os.symlink(outside / "link.json", jobs / "a.json")
    return "a.json"


def layout_dangling(jobs: Path, outside: Path) -> str:
    (outside / "real").mkdir()
    os.symlink(outside / "real" / "x.json", jobs / "a.json")
    return "a.json"


def layout_missing_directory(jobs: Path, outside: Path) -> str:
    os.symlink(outside / "real" / "x.json", jobs / "a.json")
    return "a.json"


def layout_loop(jobs: Path, outside: Path) -> str:
    os.symlink("b.json", jobs / "a.json")
    os.symlink("a.json", jobs / "b.json")
    return "a.json"


def layout_regular(jobs: Path, outside: Path) -> str:
    (jobs / "a.json").write_text("{}")
    return "a.json"


# (layout, what it looks up after the job file, the directories where that is seen);
# paths relative to the test's tmp dir, "J" the jobs dir, "O" the outside dir. An
# absolute target is looked up from the root: the tmp dir's own ancestors, not listed.
RESOLUTIONS = [
    (layout_outside, ["O", "O/real", "O/real/x.json"], ["J", "O/real"]),
    (layout_relative_up, ["O", "O/real", "O/real/x.json"], ["J", "O/real"]),
    (layout_chain, ["O", "O/link.json", "O", "O/current", "O", "O/real", "O/real/x.json"],
     ["J", "O", "O/real"]),
    (layout_dangling, ["O", "O/real", "O/real/x.json"], ["J", "O/real"]),
    (layout_missing_directory, ["O", "O/real"], ["J", "O"]),
]


@pytest.mark.parametrize("layout, looked_up, directories", RESOLUTIONS,
                         ids=lambda value: getattr(value, "__name__", ""))
def test_what_a_link_is_read_through(tmp_path, layout, looked_up, directories):
    jobs, outside = tmp_path / "J", tmp_path / "O"
    jobs.mkdir()
    outside.mkdir()
    found = resolve(str(jobs / layout(jobs, outside)))
    assert found is not None
    ours = [path for path in found.looked_up if path.startswith(str(tmp_path) + "/")]
    assert ours == [str(tmp_path / path) for path in looked_up]
    assert found.directories == {str(tmp_path / path) for path in directories}


def test_a_link_loop_ends(tmp_path):
    found = resolve(str(tmp_path / layout_loop(tmp_path, tmp_path)))
    assert found is not None and len(found.looked_up) == link_targets.MAX_LINKS


@pytest.mark.parametrize("layout", [layout_regular, None], ids=["regular file", "missing"])
def test_what_is_not_a_link_resolves_to_none(tmp_path, layout):
    if layout is not None:
        layout(tmp_path, tmp_path)
    assert resolve(str(tmp_path / "a.json")) is None


# -- the index --------------------------------------------------------------------------


def res(*looked_up: str, dirs: tuple[str, ...] = ("/j",)) -> Resolution:
    return Resolution(tuple(looked_up), frozenset(dirs))


@pytest.mark.parametrize("steps, dependents, directories", [
    # (job file, resolution) in order -> dependents of "/j/..data", directories
    ([("a", res("/j/..data", "/j/..ts1", dirs=("/j", "/j/..ts1"))),
      ("b", res("/j/..data", "/j/..ts1", dirs=("/j", "/j/..ts1")))],
     {"a", "b"}, {"/j", "/j/..ts1"}),
    ([("a", res("/j/..data", "/j/..ts1", dirs=("/j", "/j/..ts1"))),
      ("a", res("/j/..data", "/j/..ts2", dirs=("/j", "/j/..ts2")))],
     {"a"}, {"/j", "/j/..ts2"}),
    ([("a", res("/j/..data", dirs=("/j", "/j/..ts1"))), ("a", None)], set(), set()),
    ([("a", res("/j/..data")), ("b", res("/j/..data")), ("a", None)], {"b"}, {"/j"}),
], ids=["two keys", "updated", "link removed", "one of two removed"])
def test_index_table(steps, dependents, directories):
    index = LinkIndex()
    for job_file, resolution in steps:
        index.set(job_file, resolution)
    assert index.dependents("/j/..data") == dependents
    assert index.directories() == directories


def test_index_says_when_the_directories_change():
    index = LinkIndex()
    first = res("/j/..data", dirs=("/j", "/j/..ts1"))
    assert index.set("a", first) is True
    assert index.set("a", first) is False  # the same resolution again
    assert index.set("b", first) is False  # the same directories, one more file
    assert index.set("a", res("/j/..data", "/x", dirs=("/j", "/j/..ts1"))) is False
    assert index.set("a", None) is False and index.set("b", None) is True


PATHS = st.sampled_from(["/j/..data", "/j/..ts1", "/j/..ts2", "/x/a", "/x"])
RESOLUTION = st.none() | st.builds(
    Resolution, st.lists(PATHS, max_size=4).map(tuple),
    st.frozensets(st.sampled_from(["/j", "/j/..ts1", "/j/..ts2", "/x"]), max_size=3))


@given(st.lists(st.tuples(st.sampled_from("abc"), RESOLUTION), max_size=20))
@example([("a", Resolution(("/j/..data", "/j/..data"), frozenset())), ("a", None)])
def test_index_agrees_with_recomputing_from_scratch(steps):
    index = LinkIndex()
    model: dict[str, Resolution] = {}
    for job_file, resolution in steps:
        directories_before = {d for r in model.values() for d in r.directories}
        changed = index.set(job_file, resolution)
        if resolution is None:
            model.pop(job_file, None)
        else:
            model[job_file] = resolution
        directories = {d for r in model.values() for d in r.directories}
        assert changed is (directories != directories_before)
        assert index.directories() == directories
        assert len(index) == len(model)
        for path in ["/j/..data", "/j/..ts1", "/j/..ts2", "/x/a", "/x"]:
            assert index.dependents(path) == {
                name for name, r in model.items() if path in r.looked_up}
        for directory in ["/j", "/j/..ts1", "/x"]:
            assert index.in_directory(directory) == {
                name for name, r in model.items() if directory in r.directories}


# -- settling, with a fake clock ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_new_link_to_nothing_waits_for_its_target(tmp_path):
    clock = FakeClock()
    watcher = DirectoryWatcher(str(tmp_path), settle_s=0.05, clock=clock)
    try:
        link, target = str(tmp_path / "a.json"), tmp_path / "real.json"
        os.symlink(target, link)
        watcher.on_event(FileCreatedEvent(link))
        clock.now += 0.05
        assert watcher.settled() == set()  # dangling: its target may be on its way
        target.write_text("{}")
        clock.now += 0.05
        assert watcher.settled() == {link}
        os.symlink(tmp_path / "nowhere.json", tmp_path / "b.json")  # dangling for good
        watcher.on_event(FileCreatedEvent(str(tmp_path / "b.json")))
        handed: set[str] = set()
        while not handed:
            clock.now = watcher.next_deadline()
            handed = watcher.settled()
        assert clock.now == pytest.approx(100.1 + watcher_module.EMPTY_WAIT_S)
    finally:
        watcher.stop()


@pytest.mark.parametrize("events, looked_up", [
    ([FileCreatedEvent], True),  # ln -s: a created name, never written through
    ([FileCreatedEvent, FileModifiedEvent, FileClosedEvent], False),  # written in place
    ([FileModifiedEvent, FileClosedEvent], False),
    ([FileClosedEvent, FileCreatedEvent], True),  # made again after the close
    ([lambda path: FileMovedEvent(path + ".tmp", path)], True),  # renamed onto the name
], ids=["created", "created and written", "written", "closed, then created", "renamed onto"])
def test_only_a_name_an_event_made_is_looked_up_as_a_new_link(tmp_path, monkeypatch,
                                                              events, looked_up):
    read: list[str] = []

    def counting_read_link(path: str) -> str | int:
        read.append(path)
        return real_read_link(path)

    real_read_link = link_targets.read_link
    monkeypatch.setattr(link_targets, "read_link", counting_read_link)
    clock = FakeClock()
    watcher = DirectoryWatcher(str(tmp_path), settle_s=0.05, clock=clock)
    try:
        path = str(tmp_path / "a.json")
        (tmp_path / "a.json").write_text("{}")
        for event in events:
            watcher.on_event(event(path))
        clock.now += 1
        assert path in watcher.settled()
        assert (path in read) is looked_up
    finally:
        watcher.stop()


# -- the watcher on a real directory ----------------------------------------------------


@pytest.fixture(params=["inotify", "polling"])
def mode(request) -> str:
    return request.param


def watching(directory: Path, mode: str, **options) -> DirectoryWatcher:
    watcher = DirectoryWatcher(str(directory), settle_s=SETTLE_S,
                               force_polling=mode == "polling", poll_interval_s=0.05,
                               **options)
    watcher.start()
    assert watcher.polling is (mode == "polling")
    return watcher


def loop_until(watcher: DirectoryWatcher, done, *, rec: Reconciler | None = None
               ) -> tuple[set[str], list[dict]]:
    """The coordinator's loop, without its rescans, until ``done(seen, events)``; then on
    until nothing is pending, so a later hand-over (or reload) would show too."""
    seen: set[str] = set()
    events: list[dict] = []
    deadline = time.monotonic() + TIMEOUT_S
    while not done(seen, events) or watcher.next_deadline() is not None:
        now = time.monotonic()
        assert now < deadline, f"handed over {sorted(seen)}, events {events}"
        assert watcher.take_rescan_needed() is False  # no rescan explains anything here
        settles_at = watcher.next_deadline()
        until = now + 0.05 if settles_at is None else min(settles_at, deadline)
        wait([watcher], timeout=max(0.0, until - now))
        settled = watcher.settled()
        seen |= settled
        if rec is not None and settled:
            events += rec.paths(settled, stamp).events
    return seen, events


def names(paths: set[str]) -> set[str]:
    return {os.path.basename(path) for path in paths}


def reconciler(directory: Path) -> Reconciler:
    rec = Reconciler(functools.partial(read_stamped_job_file, default_zone="UTC"))
    rec.full(snapshot(str(directory)))
    return rec


@pytest.fixture
def mount(tmp_path) -> Iterator[ConfigMapVolume]:
    directory = tmp_path / "jobs.d"
    directory.mkdir()
    yield ConfigMapVolume(directory)


def settled_quietly(watcher: DirectoryWatcher) -> None:
    """Wait out whatever start-up left pending (nothing, normally)."""
    loop_until(watcher, lambda seen, events: True)


def test_a_configmap_update_hands_over_every_key_and_nothing_else(mount, mode):
    mount.write({"job-a.json": job("a"), "job-b.json": job("b")})
    (mount.mount / "local.json").write_text(job("local"))  # a regular file beside them
    rec = reconciler(mount.mount)
    watcher = watching(mount.mount, mode)
    try:
        settled_quietly(watcher)
        mount.write({"job-a.json": job("a", "echo v2"), "job-b.json": job("b", "echo v2")})
        seen, events = loop_until(
            watcher, lambda seen, events: {"job-a.json", "job-b.json"} <= names(seen),
            rec=rec)
    finally:
        watcher.stop()
    assert "local.json" not in names(seen)
    assert sorted((e["event"], e["job_id"]) for e in events) == [
        ("job_updated", "a"), ("job_updated", "b")]
    assert rec.jobs()["a"].task_params["command"] == "echo v2"


def test_a_key_added_by_an_update_is_loaded(mount, mode):
    mount.write({"job-a.json": job("a")})
    rec = reconciler(mount.mount)
    watcher = watching(mount.mount, mode)
    try:
        settled_quietly(watcher)
        mount.write({"job-a.json": job("a"), "job-c.json": job("c")})
        _, events = loop_until(
            watcher, lambda seen, events: any(e["event"] == "job_added" for e in events),
            rec=rec)
    finally:
        watcher.stop()
    assert [(e["event"], e["job_id"]) for e in events] == [("job_added", "c")]
    assert sorted(rec.jobs()) == ["a", "c"]


def test_a_key_removed_by_an_update_is_removed_without_an_error(mount, mode):
    """Between the swap and the removal of its link, the dropped key's link dangles:
    it is never read then (no "invalid file" on the way to "removed")."""
    mount.write({"job-a.json": job("a"), "job-b.json": job("b")})
    rec = reconciler(mount.mount)
    watcher = watching(mount.mount, mode)
    try:
        settled_quietly(watcher)
        mount.write({"job-a.json": job("a", "echo v2")})
        _, events = loop_until(
            watcher, lambda seen, events: any(e["event"] == "job_removed" for e in events)
            and any(e["event"] == "job_updated" for e in events), rec=rec)
    finally:
        watcher.stop()
    assert sorted((e["event"], e["job_id"]) for e in events) == [
        ("job_removed", "b"), ("job_updated", "a")]
    assert rec.errors() == {}


def test_the_timestamped_directory_watched_follows_the_updates(mount):
    mount.write({"job-a.json": job("a")})
    watcher = watching(mount.mount, "inotify")
    try:
        assert watcher._targets.watched() == {str(mount.ts_dir())}
        for version in range(3):
            mount.write({"job-a.json": job("a", f"echo {version}")})
            loop_until(watcher, lambda seen, events: "job-a.json" in names(seen))
            assert watcher._targets.watched() == {str(mount.ts_dir())}
        for key in ("job-a.json", "..data"):
            os.unlink(mount.mount / key)
        loop_until(watcher, lambda seen, events: "job-a.json" in names(seen))
        assert watcher._targets.watched() == set()  # no symlinked job file left
    finally:
        watcher.stop()


# -- links to files elsewhere ------------------------------------------------------------


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    """jobs.d/a.json -> real/x.json, outside the jobs directory."""
    jobs, real = tmp_path / "jobs.d", tmp_path / "etc" / "real"
    jobs.mkdir()
    real.mkdir(parents=True)
    (real / "x.json").write_text(job("a", "echo v1"))
    os.symlink(real / "x.json", jobs / "a.json")
    return jobs, real


def edit_in_place(real: Path, text: str) -> None:
    with open(real / "x.json", "r+") as handle:
        handle.truncate()
        handle.write(text)


def edit_by_rename(real: Path, text: str) -> None:
    (real / ".x.json.tmp").write_text(text)
    os.replace(real / ".x.json.tmp", real / "x.json")


def edit_after_recreating_the_directory(real: Path, text: str) -> None:
    shutil.rmtree(real)
    real.mkdir()
    (real / "x.json").write_text(text)


def command(rec: Reconciler) -> str:
    return rec.jobs()["a"].task_params["command"]


@pytest.mark.parametrize("edit", [edit_in_place, edit_by_rename,
                                  edit_after_recreating_the_directory],
                         ids=["in place", "os.replace", "directory recreated"])
def test_a_target_outside_the_directory_changed_is_reloaded(linked, mode, edit):
    jobs, real = linked
    rec = reconciler(jobs)
    watcher = watching(jobs, mode, health_interval_s=0.05)
    try:
        settled_quietly(watcher)
        for version in ("v2", "v3"):  # the second: still watched after the first
            edit(real, job("a", f"echo {version}"))
            loop_until(watcher, lambda seen, events, v=version: command(rec) == f"echo {v}",
                       rec=rec)
    finally:
        watcher.stop()


def test_regular_files_beside_links_watch_nothing_more(tmp_path):
    (tmp_path / "a.json").write_text(job("a"))
    watcher = watching(tmp_path, "inotify")
    try:
        assert watcher._targets.watched() == set() and len(watcher._links) == 0
    finally:
        watcher.stop()


def test_too_many_target_directories_are_reported_once(tmp_path, monkeypatch):
    monkeypatch.setattr(link_targets, "MAX_TARGET_DIRECTORIES", 1)
    jobs = tmp_path / "jobs.d"
    jobs.mkdir()
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.json").write_text(job(name))
        os.symlink(tmp_path / name / "x.json", jobs / f"{name}.json")
    watcher = watching(jobs, "inotify", health_interval_s=0.0)
    try:
        assert watcher._targets.watched() == {str(tmp_path / "one")}  # sorted: the first
        for _ in range(3):
            watcher.take_rescan_needed()
            watcher.health_check()
        [event] = watcher.drain_diagnostics()
        assert event["event"] == "watcher_target_unwatched" and event["count"] == 2
        assert event["targets"] == [str(tmp_path / "three"), str(tmp_path / "two")]
        assert "periodic rescan" in event["reason"]
    finally:
        watcher.stop()
