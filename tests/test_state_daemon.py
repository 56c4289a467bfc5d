"""The state dir with real daemons: restarts, two daemons on one dir, every bad store.

The store holds what happened, never what is scheduled: whatever is wrong with it, the
daemon says so once (the file, what is lost) and goes on scheduling in memory. What a
restart remembers is tabled in tests/test_restart_memory.py with the clock injected;
here each case is checked once end to end. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervisor.store import migrations
from supervisor.store.sqlite import SQLiteStore
from supervisor.store.state_dir import StateDirLock
from tests.daemon_harness import Daemon, run_client, wait_until


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def state_daemon(base: Path, state: Path, *args: str) -> Daemon:
    return Daemon(base, args=("--state-dir", str(state), *args))


def restart(daemon: Daemon) -> dict:
    """Start again (same files, same log): the new life's ``ready`` event."""
    lives = len(daemon.events("ready"))
    daemon.start(wait_ready=False)
    return daemon.wait_event("ready", count=lives + 1)[-1]


def stored(state: Path, job_id: str | None = None) -> list[dict]:
    store = SQLiteStore(str(state / "state.db"), read_only=True)
    try:
        from supervisor.store.abc import HistoryQuery
        return store.history(HistoryQuery(job_id=job_id, limit=100_000))
    finally:
        store.close()


def test_restart_one_time_job_history_and_last_runs(tmp_path, cleanup):
    state = tmp_path / "state"
    daemon = state_daemon(tmp_path, state)
    cleanup(daemon)
    daemon.write_job("once.json", schedule=soon(1), command="echo once")
    daemon.write_job("bad.json", schedule="0 0 1 1 *", command="echo broken; exit 3")
    daemon.start()
    assert daemon.wait_event("ready")[0]["state"] == str(state / "state.db")
    assert daemon.client("run", "bad").returncode == 0
    daemon.wait_records("once")
    daemon.wait_records("bad")
    assert daemon.stop() == 0
    logged = {r["run_id"] for r in daemon.records()}
    assert {r["run_id"] for r in stored(state)} == logged  # everything logged is stored

    # `systemctl restart` right after: the one-time job is within --misfire-grace, and a
    # daemon without memory would run it again.
    restart(daemon)
    status = {job["job_id"]: job for job in daemon.client_json("status")["jobs"]}
    assert status["bad"]["last_failure"] is not None and status["bad"]["last_success"] is None
    assert status["once"]["last_success"] is not None
    history = run_client("history", "bad", "--state-dir", str(state), "--json")
    assert history.returncode == 0, history.stderr
    [record] = json.loads(history.stdout)
    assert (record["status"], record["exit_code"], record["manual"]) == ("FAILURE", 3, True)
    assert "broken" in record["output_tail"]
    assert daemon.stop() == 0
    assert len(daemon.records("once")) == 1
    assert daemon.events("missed") == []


@pytest.mark.parametrize(("catch_up", "deadline"), [
    ("none", 3600), ("latest", 3600), ("all", 3600), ("latest", 0)])
def test_what_fell_while_stopped_follows_catch_up(tmp_path, cleanup, catch_up, deadline):
    state = tmp_path / "state"
    daemon = state_daemon(tmp_path, state)
    cleanup(daemon)
    # Every second: stopped for a few seconds, it misses several occurrences.
    daemon.write_job("tick.json", catch_up=catch_up, starting_deadline_s=deadline)
    daemon.start()
    daemon.wait_records("tick")
    assert daemon.stop() == 0
    last_before = max(datetime.fromisoformat(r["scheduled_for"])
                      for r in daemon.records("tick"))
    wait_until(lambda: datetime.now(UTC) > last_before + timedelta(seconds=3.5),
               message="three occurrences missed", interval=0.1)
    restarted = datetime.now(UTC)
    restart(daemon)
    # Regular runs after the restart show the catch-up (if any) was decided.
    daemon.wait_records("tick", where=lambda r: datetime.fromisoformat(
        r["scheduled_for"]) > restarted + timedelta(seconds=1))
    assert daemon.stop() == 0
    caught = [datetime.fromisoformat(r["scheduled_for"]) for r in daemon.records("tick")
              if r.get("catch_up")]
    missed = sum(e["count"] for e in daemon.events("missed") if e.get("catch_up"))
    fell = int((restarted - last_before).total_seconds())  # whole seconds between
    if catch_up == "none":
        assert caught == [] and missed == 0
    elif catch_up == "latest" and deadline:
        assert len(caught) == 1 and caught[0] > last_before and missed >= 2
    elif catch_up == "all":
        assert caught == sorted(caught) and len(caught) >= 3 and missed == 0
        assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(caught))
        assert caught[0] == last_before + timedelta(seconds=1)
    else:  # the deadline (0 s) passed for every one of them
        assert caught == [] and missed >= 3
    assert fell >= 3
    # Every second has at most one record (catch-up never doubles a run).
    scheduled = [r["scheduled_for"] for r in daemon.records("tick")]
    assert len(set(scheduled)) == len(scheduled)


def test_runs_of_a_killed_daemon_are_recorded_lost_by_the_next(tmp_path, cleanup):
    state = tmp_path / "state"
    daemon = state_daemon(tmp_path, state)
    cleanup(daemon)
    daemon.write_job("long.json", schedule=soon(1), command="sleep 60")
    daemon.start()
    wait_until(lambda: any(w["job_id"] == "long" for w in
                           daemon.client_json("status")["workers"]), message="long running")
    # Its dispatch reached the store (the logger commits each quiet moment).
    wait_until(lambda: _unfinished(state) == 1, message="run stored as unfinished")
    daemon.kill()  # SIGKILL of the coordinator: nobody writes the run's record
    restart(daemon)
    [lost] = daemon.wait_records("long")
    assert (lost["status"], lost["error"]) == ("FAILURE", "daemon lost")
    assert daemon.stop() == 0
    assert len(daemon.records("long")) == 1  # not re-run: it is a one-time job that ran


def _unfinished(state: Path) -> int:
    with sqlite3.connect(state / "state.db") as db:
        return db.execute("SELECT count(*) FROM unfinished").fetchone()[0]


def test_a_second_daemon_on_the_same_state_dir_exits_2(tmp_path, cleanup):
    state = tmp_path / "state"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = state_daemon(tmp_path / "a", state)
    cleanup(first)
    first.start()
    second = state_daemon(tmp_path / "b", state)  # its own socket: only the dir is shared
    cleanup(second)
    second.start(wait_ready=False)
    assert second.process is not None
    assert second.process.wait(timeout=30) == 2
    message = second.stderr_path.read_text()
    assert f"--state-dir {state}: in use by another taskd (pid {first.pid})" in message
    assert first.stop() == 0


# -- bad stores: one diagnostic, and scheduling goes on --------------------------------


def assert_unusable(daemon: Daemon, path: Path, reason: str) -> None:
    [event] = daemon.wait_event("state_store_unusable")
    assert event["file"] == str(path) and reason in event["error"], event
    assert "history" in event["lost"] and "in memory" in event["lost"]
    # Scheduling goes on: the per-second job keeps running after the diagnostic.
    count = len(daemon.records("tick"))
    daemon.wait_records("tick", count=count + 2)
    assert len(daemon.events("state_store_unusable")) == 1


def newer_store(path: Path) -> None:
    SQLiteStore(str(path)).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE taskd_schema SET version = ?", (migrations.CURRENT + 1,))


def foreign_database(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 500)


@pytest.mark.parametrize(("prepare", "reason"), [
    (garbage, "corrupt"),
    (foreign_database, "not a taskd state store"),
    (newer_store, "written by a newer taskd"),
], ids=["corrupt", "foreign", "newer"])
def test_a_store_unusable_at_start_is_one_diagnostic_and_left_as_it_is(
        tmp_path, cleanup, prepare, reason):
    state = tmp_path / "state"
    state.mkdir()
    path = state / "state.db"
    prepare(path)
    before = path.read_bytes()
    daemon = state_daemon(tmp_path, state)
    cleanup(daemon)
    daemon.write_job("tick.json")
    daemon.start()
    assert daemon.wait_event("ready")[0]["state"] == "memory"
    assert_unusable(daemon, path, reason)
    assert daemon.stop() == 0
    assert path.read_bytes() == before  # never rewritten
    result = run_client("history", "--state-dir", str(state))
    assert result.returncode == 1 and str(path) in result.stderr


def test_a_store_deleted_while_running(tmp_path, cleanup):
    state = tmp_path / "state"
    daemon = state_daemon(tmp_path, state)
    cleanup(daemon)
    daemon.write_job("tick.json")
    daemon.start()
    daemon.wait_records("tick")
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    assert_unusable(daemon, state / "state.db", "deleted or replaced")
    assert daemon.stop() == 0


def test_a_store_locked_by_another_process(tmp_path, cleanup):
    state = tmp_path / "state"
    state.mkdir()
    path = state / "state.db"
    SQLiteStore(str(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # someone's sqlite3 shell, mid-transaction
    try:
        daemon = state_daemon(tmp_path, state)
        cleanup(daemon)
        daemon.write_job("tick.json")
        daemon.start()
        assert_unusable(daemon, path, "locked")
        assert daemon.stop() == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_state_dir(tmp_path, cleanup):
    with tmpfs(tmp_path / "state", "4m") as state:
        lock = StateDirLock(str(state))
        lock.acquire()
        lock.release()
        SQLiteStore(str(state / "state.db")).close()
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        daemon = state_daemon(tmp_path, state)
        cleanup(daemon)
        daemon.write_job("tick.json")
        daemon.start()
        assert daemon.wait_event("ready")[0]["state"] == "memory"
        assert_unusable(daemon, state / "state.db", "read-only")
        assert daemon.stop() == 0


def test_a_full_disk_while_running(tmp_path, cleanup):
    with tmpfs(tmp_path / "state", "200k") as state:
        daemon = state_daemon(tmp_path, state)
        cleanup(daemon)
        # 4 KiB of output per record, five a second: the store fills in a few seconds.
        for n in range(5):
            daemon.write_job(f"tick{n}.json", command="head -c 4096 /dev/zero | tr '\\0' x")
        daemon.write_job("tick.json")
        daemon.start()
        assert_unusable(daemon, state / "state.db", "full")
        assert daemon.stop() == 0


def test_pause_is_kept_across_a_restart_and_resume_starts_from_now(tmp_path, cleanup):
    state = tmp_path / "state"
    daemon = state_daemon(tmp_path, state)
    cleanup(daemon)
    daemon.write_job("tick.json", catch_up="all", starting_deadline_s=3600)
    daemon.start()
    daemon.wait_records("tick")
    paused = daemon.client("pause", "tick")
    assert paused.returncode == 0 and paused.stdout.strip() == "tick paused", paused
    assert daemon.wait_event("job_paused")[0]["job_id"] == "tick"
    assert daemon.stop() == 0
    ran_before = len(daemon.records("tick"))
    restart(daemon)
    [job] = [j for j in daemon.client_json("status")["jobs"] if j["job_id"] == "tick"]
    assert job["paused"] is True and job["next_run"] is None
    resumed_at = datetime.now(UTC)
    resumed = daemon.client("resume", "tick")
    assert resumed.returncode == 0 and resumed.stdout.startswith("tick resumed; next run ")
    daemon.wait_records("tick", count=ran_before + 2)
    missing = daemon.client("pause", "nope")
    assert missing.returncode == 1 and "no job with job_id 'nope'" in missing.stderr
    assert daemon.stop() == 0
    after = daemon.records("tick")[ran_before:]
    # Nothing made up for the pause: every run after it is an occurrence after resume.
    assert all(datetime.fromisoformat(r["scheduled_for"]) > resumed_at - timedelta(seconds=1)
               and not r.get("catch_up") for r in after), after
