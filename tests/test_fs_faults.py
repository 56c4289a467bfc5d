"""Filesystem faults against a real daemon: each ends with exactly the right schedule.

The jobs directory deleted and recreated or swapped by ``ln -sfn``; files unreadable,
truncated mid-edit or arriving 10,000 at once; inotify unavailable at start; the observer
thread dying; and the save patterns of the usual editors and tools.

"Exactly right" is checked three ways: the daemon's status (``taskd status --json``) lists
exactly the expected jobs and file errors; every job fires each second with a command
that echoes its version, so the records show which version is scheduled; and, as the
positive marker that nothing else is going on, each expected job runs once more while
no other job starts. Diagnostics are counted where the contract says how many there are
(exactly one ``job_updated`` per save).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

from supervisor.jobfiles.watcher import DirectoryWatcher
from tests.daemon_harness import Daemon, wait_until

pytestmark = pytest.mark.slow

EVERY_SECOND = "* * * * * *"
FAR_FUTURE = "2099-01-01T00:00:00Z"  # loaded, never due while a test runs
# Well under the coordinator's 30 s safety-net rescan: a test passing within it shows the
# watcher itself noticed.
REACT_S = 10.0


def job_text(job_id: str, version: str, schedule: str = EVERY_SECOND) -> str:
    return json.dumps({"job_id": job_id, "schedule": schedule,
                       "task": {"type": "execute_command", "command": f"echo {version}"}})


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def status(daemon: Daemon) -> dict[str, Any]:
    answer = daemon.client("status", "--json")
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def started(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["timestamp"])


def runs(daemon: Daemon, job_id: str, version: str, timeout: float = REACT_S) -> None:
    """Wait until the latest run of ``job_id`` echoed ``version``."""
    def latest_is_version() -> bool:
        records = daemon.records(job_id)
        return bool(records) and records[-1]["output_tail"] == f"{version}\n"

    wait_until(latest_is_version, timeout, message=f"{job_id} running {version}")


def assert_schedule(daemon: Daemon, expected: dict[str, str], *, errors: tuple[str, ...] = (),
                    quiet: frozenset[str] = frozenset(), timeout: float = REACT_S
                    ) -> dict[str, Any]:
    """The daemon runs exactly ``expected`` (job_id -> version echoed), knows the
    far-future jobs ``quiet`` besides, and reports file errors for exactly ``errors``
    (file names). Returns the status it checked."""
    for job_id, version in expected.items():
        runs(daemon, job_id, version, timeout)

    def files_right() -> dict[str, Any] | None:
        state = status(daemon)
        jobs = {job["job_id"] for job in state["jobs"]}
        bad = {os.path.basename(error["file"]) for error in state["errors"]}
        return state if jobs == set(expected) | quiet and bad == set(errors) else None

    # The records can be right a moment before a removal or an error is applied.
    state = wait_until(files_right, timeout, interval=0.2, message="status to match")
    for job in state["jobs"]:
        assert Path(job["file"]).parent == daemon.jobs, job
    checked_at = datetime.now(UTC)
    seen = {job_id: len(daemon.records(job_id)) for job_id in expected}
    wait_until(lambda: all(len(daemon.records(job_id)) > seen[job_id] for job_id in expected),
               timeout, message="one more run of every expected job")
    for record in daemon.records():
        if started(record) > checked_at:
            assert record["job_id"] in expected, record
            assert record["output_tail"] == f"{expected[record['job_id']]}\n", record
    return state


def events_for(daemon: Daemon, name: str, file_name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events(name) if os.path.basename(e.get("file", "")) == file_name]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path)
    yield daemon
    daemon.kill()


def wrapper_works(wrapper: list[str]) -> bool:
    try:
        return subprocess.run([*wrapper, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# -- the directory itself -------------------------------------------------------------


def rm_and_mkdir(daemon: Daemon, build: Callable[[Path], None]) -> None:
    shutil.rmtree(daemon.jobs)
    # Let the daemon see the directory gone (its files' deletions) before it comes back:
    # the slow case, where the rescan the deletion triggered found nothing to read.
    daemon.wait_event("job_removed", count=2)
    daemon.jobs.mkdir()
    build(daemon.jobs)


def rename_new_over(daemon: Daemon, build: Callable[[Path], None]) -> None:
    staged = daemon.base / "jobs.new"
    staged.mkdir()
    build(staged)
    os.rename(daemon.jobs, daemon.base / "jobs.old")
    os.rename(staged, daemon.jobs)


@pytest.mark.parametrize("replace", [rm_and_mkdir, rename_new_over])
def test_jobs_dir_deleted_and_recreated(daemon, replace):
    write(daemon.jobs / "a.json", job_text("a", "v1"))
    write(daemon.jobs / "b.json", job_text("b", "v1"))
    daemon.start()
    runs(daemon, "a", "v1")
    runs(daemon, "b", "v1")

    def build(directory: Path) -> None:
        write(directory / "b.json", job_text("b", "v2"))
        write(directory / "c.json", job_text("c", "v1"))

    replace(daemon, build)
    assert_schedule(daemon, {"b": "v2", "c": "v1"})
    # The new directory is watched, not only rescanned once: a new file is seen at once.
    write(daemon.jobs / "d.json", job_text("d", "v1"))
    assert_schedule(daemon, {"b": "v2", "c": "v1", "d": "v1"})
    assert [e["reason"] for e in daemon.events("watcher_restarted")]


def test_symlinked_jobs_dir_follows_an_atomic_swap(tmp_path):
    for version, names in (("v1", "ab"), ("v2", "bc")):
        (tmp_path / version).mkdir()
        for name in names:
            write(tmp_path / version / f"{name}.json", job_text(name, version))
    os.symlink("v1", tmp_path / "jobs.d")
    daemon = Daemon(tmp_path)  # --jobs-dir tmp_path/jobs.d, the symlink
    try:
        daemon.start()
        assert_schedule(daemon, {"a": "v1", "b": "v1"})
        # The usual config-management deploy, pruning the old release at once.
        subprocess.run("ln -sfn v2 jobs.d.tmp && mv -T jobs.d.tmp jobs.d && rm -rf v1",
                       shell=True, cwd=tmp_path, check=True)
        assert_schedule(daemon, {"b": "v2", "c": "v2"})
        assert daemon.events("watcher_restarted")
        # The new target is watched.
        write(daemon.jobs / "d.json", job_text("d", "v2"))
        assert_schedule(daemon, {"b": "v2", "c": "v2", "d": "v2"})
        assert daemon.events("job_invalid") == []
    finally:
        daemon.kill()


# -- one file -------------------------------------------------------------------------

# A root daemon reads anything a mode can forbid: CAP_DAC_OVERRIDE. So the daemon runs
# without it (and without CAP_DAC_READ_SEARCH), as a unit with a CapabilityBoundingSet
# would; it is still uid 0, so the file-ownership rule for root applies unchanged, and
# chmod 000 really makes a file unreadable to it.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.skipif(not wrapper_works(NO_DAC), reason="setpriv cannot drop capabilities here")
def test_unreadable_file_is_reported_and_keeps_its_last_good_version(tmp_path):
    daemon = Daemon(tmp_path, wrapper=NO_DAC)
    a = write(daemon.jobs / "a.json", job_text("a", "v1"))
    write(daemon.jobs / "b.json", job_text("b", "v1"))
    c = write(daemon.jobs / "c.json", job_text("c", "v1"))
    c.chmod(0)
    try:
        daemon.start()
        [ready] = daemon.events("ready")
        assert ready["invalid_files"] == 1
        [invalid] = events_for(daemon, "job_invalid", "c.json")
        assert "cannot read: Permission denied" in invalid["error"]
        assert_schedule(daemon, {"a": "v1", "b": "v1"}, errors=("c.json",))

        a.chmod(0)
        [invalid] = daemon.wait_event("job_invalid", where=lambda e: e["file"] == str(a))
        assert invalid["job_id"] == "a"
        assert "cannot read: Permission denied" in invalid["error"]
        assert "previous version stays scheduled" in invalid["error"]
        state = assert_schedule(daemon, {"a": "v1", "b": "v1"}, errors=("a.json", "c.json"))
        assert "Permission denied" in {e["file"]: e["error"] for e in state["errors"]}[str(a)]

        write(a, job_text("a", "v2"))  # still mode 000: still unreadable, reported once
        a.chmod(0o644)
        c.chmod(0o644)
        assert_schedule(daemon, {"a": "v2", "b": "v1", "c": "v1"})
        assert len(events_for(daemon, "job_invalid", "a.json")) == 1
        assert len(events_for(daemon, "job_updated", "a.json")) == 1
        assert len(events_for(daemon, "job_added", "c.json")) == 1
        assert daemon.events("job_removed") == []
    finally:
        daemon.kill()


def test_special_files_named_like_jobs_never_block_the_daemon(daemon):
    """What even root cannot read as a job: a FIFO (opening it would block forever), a
    directory, a dangling symlink, a symlink loop. Present at start and appearing later,
    none of them stalls the loop or touches the other jobs."""
    write(daemon.jobs / "b.json", job_text("b", "v1"))
    os.mkfifo(daemon.jobs / "fifo.json")
    (daemon.jobs / "dir.json").mkdir()
    daemon.start()
    runs(daemon, "b", "v1")
    os.mkfifo(daemon.jobs / "fifo2.json")
    (daemon.jobs / "dir2.json").mkdir()
    os.symlink("nowhere.json", daemon.jobs / "dangling.json")
    os.symlink("loop.json", daemon.jobs / "loop.json")
    write(daemon.jobs / "c.json", job_text("c", "v1"))  # after them in the event stream
    # Each is reported as an error naming the file (not a regular file, or cannot be read).
    state = assert_schedule(daemon, {"b": "v1", "c": "v1"}, errors=(
        "fifo.json", "dir.json", "fifo2.json", "dir2.json", "dangling.json", "loop.json"))
    assert daemon.events("fatal") == [] and state["queue_depth"] == 0
    reasons = {os.path.basename(e["file"]): e["error"] for e in state["errors"]}
    assert "not a regular file (a FIFO)" in reasons["fifo.json"]
    assert "not a regular file (a directory)" in reasons["dir2.json"]
    assert "cannot read: No such file or directory" in reasons["dangling.json"]


def test_file_truncated_mid_edit_keeps_the_previous_version_until_completed(daemon):
    path = write(daemon.jobs / "a.json", job_text("a", "v1"))
    write(daemon.jobs / "b.json", job_text("b", "v1"))
    daemon.start()
    runs(daemon, "a", "v1")
    with open(path, "w") as handle:  # truncated to 0 bytes, and left so for a while
        [invalid] = daemon.wait_event("job_invalid")
        assert invalid["file"] == str(path) and "previous version stays scheduled" in invalid[
            "error"]
        assert_schedule(daemon, {"a": "v1", "b": "v1"}, errors=("a.json",))
        handle.write(job_text("a", "v2"))  # the edit completed
    assert_schedule(daemon, {"a": "v2", "b": "v1"})
    assert len(daemon.events("job_invalid")) == 1
    assert [e["job_id"] for e in daemon.events("job_updated")] == ["a"]
    assert daemon.events("job_removed") == []


# -- 10,000 files at once ---------------------------------------------------------------

BURST = 10_000


@pytest.mark.parametrize("how", ["moved in", "written directly", "while stopped"])
def test_ten_thousand_files_in_one_burst(daemon, how):
    """Moved in: one event each. Written directly: three each (created, modified, closed),
    30,000 in all. While stopped: the same, with the daemon stopped (SIGSTOP) so nothing
    reads the kernel's queue (16,384 events): it overflows, and only a rescan can tell."""
    write(daemon.jobs / "pulse.json", job_text("pulse", "v1"))
    daemon.start()
    runs(daemon, "pulse", "v1")
    staging = daemon.base / "staging"  # same filesystem: a rename is atomic
    staging.mkdir()
    target = staging if how == "moved in" else daemon.jobs
    names = [f"burst-{n:05d}.json" for n in range(BURST)]
    if how == "while stopped":
        daemon.signal(signal.SIGSTOP)
    began = time.monotonic()
    try:
        for name in names:
            write(target / name, job_text(name.removesuffix(".json"), "v1", FAR_FUTURE))
        if how == "moved in":
            for name in names:
                os.rename(staging / name, daemon.jobs / name)
    finally:
        daemon.signal(signal.SIGCONT)
    written = time.monotonic()

    def added() -> list[dict[str, Any]] | None:
        found = [e for e in daemon.events("job_added") if e["job_id"].startswith("burst-")]
        return found if len(found) >= BURST else None

    found = wait_until(added, 60, interval=0.25, message=f"{BURST} jobs added")
    loaded = time.monotonic()
    print(f"\n{BURST} files {how}: written in {written - began:.2f} s, "
          f"all loaded {loaded - began:.2f} s after the first")
    assert sorted(e["job_id"] for e in found) == [n.removesuffix(".json") for n in names]
    burst = frozenset(n.removesuffix(".json") for n in names)
    state = assert_schedule(daemon, {"pulse": "v1"}, quiet=burst, timeout=30)
    assert len(state["jobs"]) == BURST + 1
    overflows = daemon.events("watcher_overflow")
    assert bool(overflows) is (how == "while stopped"), overflows
    for name in ("job_added", "job_updated", "job_removed", "job_invalid", "job_conflict"):
        events = [e for e in daemon.events(name) if e.get("job_id") != "pulse"]
        assert len(events) == (BURST if name == "job_added" else 0), (name, events[:3])


# -- inotify unavailable at start ------------------------------------------------------


def inotify_limited(limit: str) -> list[str]:
    """Run the daemon in a user namespace of its own whose inotify limit is 0: the
    limits count per user namespace, so nothing else on the machine is affected."""
    return ["unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo 0 > /proc/sys/user/{limit} && exec "$@"', "limited"]


@pytest.mark.parametrize("limit, reason", [
    ("max_inotify_watches", "inotify watch limit reached"),
    ("max_inotify_instances", "inotify instance limit reached"),
])
def test_inotify_exhausted_at_start_falls_back_to_polling(tmp_path, limit, reason):
    if not wrapper_works(inotify_limited(limit)):
        pytest.skip("no user namespaces here (unshare --user)")
    daemon = Daemon(tmp_path, wrapper=inotify_limited(limit))
    a = write(daemon.jobs / "a.json", job_text("a", "v1"))
    b = write(daemon.jobs / "b.json", job_text("b", "v1"))
    try:
        daemon.start()
        [polling] = daemon.wait_event("watcher_polling")
        assert polling["level"] == "warning" and reason in polling["reason"], polling
        assert_schedule(daemon, {"a": "v1", "b": "v1"})
        daemon.write_raw("a.json", job_text("a", "v2"))  # saved by rename
        write(b, job_text("b", "v2"))  # in place
        write(daemon.jobs / "c.json", job_text("c", "v1"))
        assert_schedule(daemon, {"a": "v2", "b": "v2", "c": "v1"})
        a.unlink()
        assert_schedule(daemon, {"b": "v2", "c": "v1"})
        assert len(daemon.events("job_updated")) == 2
        assert len(daemon.events("watcher_polling")) == 1
        assert daemon.events("watcher_restarted") == []
    finally:
        daemon.kill()


# -- the observer thread dying -----------------------------------------------------------


@pytest.mark.parametrize("force_polling", [False, True], ids=["inotify", "polling"])
def test_dead_observer_is_noticed_by_the_loop_and_restarted(tmp_path, force_polling):
    """In process: nothing outside the daemon can kill its observer thread. The loop asks
    ``take_rescan_needed()`` every step; within the health interval that restarts the
    observer and asks for a full rescan, without waiting for the 30 s safety net."""
    watcher = DirectoryWatcher(str(tmp_path), force_polling=force_polling,
                               poll_interval_s=0.05, health_interval_s=0.1)
    watcher.start()
    try:
        observer = watcher._observer
        assert observer is not None
        observer.stop()
        observer.join(5)
        deadline = time.monotonic() + 5
        while not watcher.take_rescan_needed():
            assert time.monotonic() < deadline, "the dead observer was never restarted"
            wait([watcher], timeout=0.02)
        assert [e["reason"] for e in watcher.drain_diagnostics()] == ["observer thread died"]
        assert watcher._observer is not observer and watcher._observer.is_alive()
        write(tmp_path / "a.json", "{}")
        expected = os.path.join(str(tmp_path), "a.json")
        settled: set[str] = set()
        while expected not in settled:
            assert time.monotonic() < deadline, "no event from the new observer"
            wait([watcher], timeout=0.05)
            settled |= watcher.settled()
        assert watcher.take_rescan_needed() is False
    finally:
        watcher.stop()


# -- how editors and tools save ----------------------------------------------------------

Save = Callable[[Path, Path, str], None]  # (job file, staging dir, new text)


def vim(path: Path, staging: Path, text: str) -> None:
    """vim's default (backupcopy=auto, for a file with one link): probe the directory
    with a file named 4913, rename the original to the backup, write anew, drop the backup.
    The swap file lives beside it throughout."""
    swap = path.with_name(f".{path.name}.swp")
    swap.write_bytes(b"b0VIM 9.0")
    probe = path.with_name("4913")
    probe.touch()
    probe.unlink()
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    shutil.copymode(backup, path)
    backup.unlink()
    swap.unlink()


def vim_backupcopy_yes(path: Path, staging: Path, text: str) -> None:
    """backupcopy=yes: copy to the backup, then overwrite the original in place."""
    backup = path.with_name(path.name + "~")
    shutil.copy2(path, backup)
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    backup.unlink()


def emacs(path: Path, staging: Path, text: str) -> None:
    """A lock symlink .#x.json (dangling by design) and an auto-save file #x.json# while
    editing; the save renames the original to x.json~ and writes a new file."""
    lock = path.with_name(f".#{path.name}")
    os.symlink("root@host.4242:1700000000", lock)
    autosave = path.with_name(f"#{path.name}#")
    autosave.write_text(text[:15])
    os.rename(path, path.with_name(path.name + "~"))
    path.write_text(text)
    autosave.unlink()
    lock.unlink()


def vscode(path: Path, staging: Path, text: str) -> None:
    """In place: truncate, then write (in two chunks, as a large buffer is)."""
    with open(path, "w") as handle:
        handle.write(text[:20])
        handle.flush()
        handle.write(text[20:])


def sed_i(path: Path, staging: Path, text: str) -> None:
    """The real sed: a temporary sedXXXXXX in the same directory, renamed over."""
    old_version = json.loads(path.read_text())["task"]["command"]
    new_version = json.loads(text)["task"]["command"]
    subprocess.run(["sed", "-i", f"s/{old_version}/{new_version}/", str(path)], check=True)


def cp(path: Path, staging: Path, text: str) -> None:
    """The real cp: opens the existing file with O_TRUNC and writes."""
    source = write(staging / path.name, text)
    subprocess.run(["cp", str(source), str(path)], check=True)


def mv(path: Path, staging: Path, text: str) -> None:
    """The real mv from the same filesystem: a rename over the file."""
    source = write(staging / path.name, text)
    subprocess.run(["mv", str(source), str(path)], check=True)


def rsync(path: Path, staging: Path, text: str) -> None:
    """rsync writes .x.json.XXXXXX beside the file, sets its mode and times, renames it
    over. The real binary when there is one, else the same steps."""
    source = write(staging / path.name, text)
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", str(source), str(path)], check=True)
        return
    temporary = path.with_name(f".{path.name}.Xq3k9z")
    shutil.copyfile(source, temporary)
    shutil.copystat(source, temporary)
    os.rename(temporary, path)


def git_checkout(path: Path, staging: Path, text: str) -> None:
    """Switch the tree to the commit holding the new version (git unlinks the file and
    creates it anew); see ``commit_two_versions`` for the repository."""
    subprocess.run(["git", "-C", str(path.parent.parent), "checkout", "-q", "-"], check=True)


def commit_two_versions(path: Path, text: str) -> None:
    """A repository in the jobs directory's parent with the old and the new version of
    ``path`` committed; the tree is left at the old one, the new one is ``git checkout -``."""
    repo = path.parent.parent

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=taskd", "-c", "user.email=taskd@example.com",
                        "-C", str(repo), *args], check=True, capture_output=True)

    old = path.read_text()
    git("init", "-q")
    git("add", str(path.relative_to(repo)))
    git("commit", "-q", "-m", "old")
    write(path, text)
    git("commit", "-q", "-a", "-m", "new")
    git("checkout", "-q", "HEAD~1")
    assert path.read_text() == old


SAVES: list[Save] = [vim, vim_backupcopy_yes, emacs, vscode, sed_i, cp, mv, rsync,
                     git_checkout]


@pytest.fixture(scope="module")
def editing(tmp_path_factory) -> Iterator[tuple[Daemon, Path]]:
    """One daemon for every save pattern, each saving its own job file."""
    base = tmp_path_factory.mktemp("saves")
    daemon = Daemon(base, workers=4)
    for save in SAVES:
        write(daemon.jobs / f"{save.__name__}.json", job_text(save.__name__, "v1"))
    commit_two_versions(daemon.jobs / "git_checkout.json", job_text("git_checkout", "v2"))
    staging = base / "staging"
    staging.mkdir()
    daemon.start()
    yield daemon, staging
    daemon.kill()


@pytest.mark.parametrize("save", SAVES, ids=[save.__name__ for save in SAVES])
def test_each_save_pattern_is_exactly_one_reload(editing, save):
    daemon, staging = editing
    job_id = save.__name__
    name = f"{job_id}.json"
    path = daemon.jobs / name
    mode = stat.S_IMODE(path.stat().st_mode)
    runs(daemon, job_id, "v1")
    save(path, staging, job_text(job_id, "v2"))
    assert stat.S_IMODE(path.stat().st_mode) == mode  # the save pattern is faithful
    runs(daemon, job_id, "v2")
    # Positive marker: a file that appears after the save with an event that settles
    # (a hard link: "created" alone; a close or a rename would be handed over at once) is
    # handed over after every path the save touched has settled, so once it is loaded,
    # any second reload of this job would be visible.
    marker = f"{job_id}-marker"  # its file name does not contain the saved one's
    staged = write(staging / f"{marker}.json", job_text(marker, "v1", FAR_FUTURE))
    os.link(staged, daemon.jobs / f"{marker}.json")
    daemon.wait_event("job_added", where=lambda e: e["job_id"] == marker)
    # Nothing about the file or its droppings (x.json~, #x.json#, .x.json.XXXXXX...)
    # but its load and this one reload.
    about = [e for e in daemon.events() if e.get("job_id") == job_id
             or name in os.path.basename(e.get("file") or "")]
    assert [e["event"] for e in about] == ["job_added", "job_updated"], about
    state = status(daemon)
    [job] = [job for job in state["jobs"] if job["job_id"] == job_id]
    assert job["file"] == str(path) and state["errors"] == []
    assert daemon.records(job_id)[-1]["output_tail"] == "v2\n"
