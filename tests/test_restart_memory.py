"""What a daemon remembers across a restart, with the clock injected and the store real.

Each "life" is a coordinator with faked workers and logger (tests/test_coordinator_step.py)
driven through simulated time; what its logger was told (records and marks, in order) is
applied to a real SQLite store, and the next life starts from that store's memory. No
process, no sleep: restart tables for one-time jobs, each ``catch_up`` value, deadlines,
bounds, runs lost with their daemon, and last runs shown across restarts.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from supervisor.control.diagnostics import Diagnostics
from supervisor.processes.coordinator import Coordinator, DaemonOptions
from supervisor.store.sqlite import SQLiteStore
from tests.test_coordinator_step import (
    FakeClock,
    FakeLogger,
    FakeNotifier,
    FakeQueue,
    FakeWatcher,
)
from workers.execution import execution_record
from workers.task_type import TaskOutcome

T0 = datetime(2026, 11, 26, 12, 0, 0, 500000, tzinfo=UTC)


class Life:
    """One daemon's life on a state dir, from ``start`` (simulated time) to ``stop``."""

    def __init__(self, jobs: Path, store_path: Path, start: datetime, *,
                 fail: set[str] = frozenset()) -> None:
        self.clock = FakeClock()
        self.clock.wall = start
        self.store_path = store_path
        store = SQLiteStore(str(store_path))
        memory = store.load_memory()
        store.close()
        self.stream = io.StringIO()
        self.fail = fail  # job ids whose runs fail
        self.coordinator = Coordinator(
            DaemonOptions(jobs_dir=str(jobs), timezone="UTC", misfire_grace_s=60),
            queue=FakeQueue(), logger=FakeLogger(storing=True), watcher=FakeWatcher(),
            clock=self.clock, diagnostics=Diagnostics(self.stream),
            notifier=FakeNotifier(), memory=memory, state=str(store_path))
        self.coordinator.load()
        self.finish_runs()

    def wait(self, objects, timeout):
        self.clock.sleep(max(timeout, 0.001))
        return []

    def finish_runs(self) -> None:
        queue = self.coordinator.queue
        for execution in queue.pending:
            failed = execution.job_id in self.fail
            started = max(self.clock.wall, datetime.fromisoformat(execution.scheduled_for))
            outcome = TaskOutcome(not failed, int(failed), "exit code 1" if failed else None,
                                  "")
            queue.finished.append(execution_record(execution, started=started,
                                                   finished=started, outcome=outcome,
                                                   worker=1))
        queue.pending = []

    def run_until(self, when: datetime) -> None:
        while self.clock.wall < when:
            self.coordinator.step(wait=self.wait)
            self.finish_runs()
        self.coordinator.step(wait=lambda objects, timeout: [])  # collect the last ones

    def stop(self, *, crash: bool = False) -> None:
        """A clean stop, or a crash: what the logger had not stored yet is lost, and runs
        handed out are left unfinished."""
        if crash:
            items = [item for item in self.coordinator.logger.items if "record" not in item]
        else:
            self.coordinator.shut_down(wait=self.wait)
            items = self.coordinator.logger.items
        store = SQLiteStore(str(self.store_path))
        store.apply(items)
        store.close()

    @property
    def executions(self):
        return self.coordinator.queue.put_log

    @property
    def records(self):
        return self.coordinator.logger.submitted

    def events(self, name: str) -> list[dict]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [event for event in lines if event["event"] == name]


def write_job(jobs: Path, job_id: str, schedule: str, **fields) -> None:
    (jobs / f"{job_id}.json").write_text(json.dumps(
        {"job_id": job_id, "schedule": schedule,
         "task": {"type": "execute_command", "command": "true"}, **fields}))


@pytest.fixture
def dirs(tmp_path):
    jobs = tmp_path / "jobs.d"
    jobs.mkdir()
    return jobs, tmp_path / "state.db"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_one_time_job_that_ran_never_runs_again(dirs):
    jobs, store = dirs
    write_job(jobs, "once", (T0 + timedelta(seconds=5)).isoformat())
    first = Life(jobs, store, T0)
    first.run_until(at(0.5))
    assert [e.job_id for e in first.executions] == ["once"]
    first.stop()
    # Restarted 10 s after it ran: within --misfire-grace, it would have run again.
    second = Life(jobs, store, T0 + timedelta(seconds=15))
    second.run_until(at(2))
    assert second.executions == []
    assert second.events("missed") == []


@pytest.mark.parametrize("crash", [False, True])
def test_a_one_time_job_reported_missed_is_not_reported_again(dirs, crash):
    jobs, store = dirs
    write_job(jobs, "late", (T0 - timedelta(minutes=5)).isoformat())
    first = Life(jobs, store, T0)
    first.run_until(at(0.1))
    assert len(first.events("missed")) == 1
    first.stop(crash=crash)
    second = Life(jobs, store, at(1))
    second.run_until(at(1.5))
    assert second.executions == [] and second.events("missed") == []


def test_a_new_instant_in_the_same_file_is_a_new_one_time_run(dirs):
    jobs, store = dirs
    write_job(jobs, "once", (T0 + timedelta(seconds=5)).isoformat())
    first = Life(jobs, store, T0)
    first.run_until(at(0.5))
    first.stop()
    write_job(jobs, "once", (T0 + timedelta(minutes=2)).isoformat())
    second = Life(jobs, store, at(1))
    second.run_until(at(3))
    assert [e.scheduled_for for e in second.executions] == [at(2).isoformat()]


# Every minute; taskd stopped at 12:03:10 and started again at 12:13:10: the occurrences
# 12:04 .. 12:13 (ten) fell while it was down.
CATCH_UP_TABLE = [
    # fields, runs of the second life's first second (scheduled minute), missed count
    ({}, [], 0),
    ({"catch_up": "none", "starting_deadline_s": 3600}, [], 0),
    ({"catch_up": "latest", "starting_deadline_s": 3600}, [13], 9),
    ({"catch_up": "all", "starting_deadline_s": 3600}, list(range(4, 14)), 0),
    ({"catch_up": "all", "max_catch_up": 3, "starting_deadline_s": 3600}, [11, 12, 13], 7),
    # The deadline: only what is at most 330 s old may still start (12:08 .. 12:13).
    ({"catch_up": "all", "starting_deadline_s": 330}, [8, 9, 10, 11, 12, 13], 4),
    # The default deadline is --misfire-grace (60 s): 12:13 is 10 s old, 12:12 too old.
    ({"catch_up": "latest"}, [13], 9),
    ({"catch_up": "all"}, [13], 9),
    ({"catch_up": "latest", "starting_deadline_s": 5}, [], 10),
]


@pytest.mark.parametrize(("fields", "minutes", "missed"), CATCH_UP_TABLE)
def test_catch_up_of_what_fell_while_taskd_was_stopped(dirs, fields, minutes, missed):
    jobs, store = dirs
    write_job(jobs, "minutely", "* * * * *", **fields)
    first = Life(jobs, store, T0)
    first.run_until(at(3) + timedelta(seconds=10))
    assert len(first.executions) == 3  # 12:01, 12:02, 12:03
    first.stop()
    second = Life(jobs, store, at(13) + timedelta(seconds=10))
    second.run_until(at(13) + timedelta(seconds=40))  # one at a time: a step each
    catch_up = [e for e in second.executions if e.catch_up]
    assert [datetime.fromisoformat(e.scheduled_for).minute for e in catch_up] == minutes
    assert [r.get("catch_up") for r in second.records] == [True] * len(minutes)
    reported = second.events("missed")
    assert sum(e["count"] for e in reported) == missed
    assert all(e["catch_up"] for e in reported)
    # Nothing of the catch-up is repeated by a third life.
    second.stop()
    third = Life(jobs, store, at(13) + timedelta(seconds=45))
    third.run_until(at(13) + timedelta(seconds=50))
    assert third.executions == [] and third.events("missed") == []


def test_catch_up_runs_of_one_job_run_one_after_another(dirs):
    jobs, store = dirs
    write_job(jobs, "minutely", "* * * * *", catch_up="all", starting_deadline_s=3600)
    Life(jobs, store, T0).stop()
    second = Life(jobs, store, at(5) + timedelta(seconds=10))
    queue, step = second.coordinator.queue, second.coordinator.step
    no_wait = lambda objects, timeout: []  # noqa: E731
    step(wait=no_wait)
    assert [datetime.fromisoformat(e.scheduled_for).minute for e in queue.put_log] == [1]
    step(wait=no_wait)  # still running: none more is handed out
    assert len(queue.put_log) == 1
    second.finish_runs()
    step(wait=no_wait)  # its record arrives: the next one goes
    assert [datetime.fromisoformat(e.scheduled_for).minute for e in queue.put_log] == [1, 2]


def test_catch_up_knows_only_jobs_the_store_has_seen(dirs):
    jobs, store = dirs
    write_job(jobs, "old", "* * * * *", catch_up="all", starting_deadline_s=3600)
    Life(jobs, store, T0).stop()
    # Added while taskd was stopped: it missed nothing, it did not exist.
    write_job(jobs, "new", "* * * * *", catch_up="all", starting_deadline_s=3600)
    second = Life(jobs, store, at(3) + timedelta(seconds=10))
    second.run_until(at(3) + timedelta(seconds=11))
    assert {e.job_id for e in second.executions if e.catch_up} == {"old"}


def test_a_job_disabled_while_taskd_ran_does_not_catch_up_that_time(dirs):
    jobs, store = dirs
    write_job(jobs, "j", "* * * * *", catch_up="all", starting_deadline_s=3600,
              enabled=False)
    first = Life(jobs, store, T0)
    first.run_until(at(10))
    first.stop()
    write_job(jobs, "j", "* * * * *", catch_up="all", starting_deadline_s=3600)
    second = Life(jobs, store, at(10) + timedelta(seconds=5))
    second.run_until(at(10) + timedelta(seconds=6))
    assert second.executions == []


def test_runs_lost_with_their_daemon_get_one_failure_record(dirs):
    jobs, store = dirs
    write_job(jobs, "j", "* * * * *")
    first = Life(jobs, store, T0)
    first.run_until(at(2) + timedelta(seconds=1))  # 12:01 and 12:02 handed out
    lost = {e.run_id for e in first.executions}
    first.stop(crash=True)
    second = Life(jobs, store, at(3) + timedelta(seconds=30))
    records = [r for r in second.records if r["error"] == "daemon lost"]
    assert {r["run_id"] for r in records} == lost
    assert {(r["status"], r["job_id"]) for r in records} == {("FAILURE", "j")}
    assert second.executions == []  # never re-run
    second.run_until(at(3) + timedelta(seconds=35))
    second.stop()
    third = Life(jobs, store, at(3) + timedelta(seconds=40))
    assert [r for r in third.records if r["error"] == "daemon lost"] == []


def test_last_success_and_failure_survive_a_restart(dirs):
    jobs, store = dirs
    write_job(jobs, "good", "* * * * *")
    write_job(jobs, "bad", "* * * * *")
    first = Life(jobs, store, T0, fail={"bad"})
    first.run_until(at(1) + timedelta(seconds=5))
    first.stop()
    second = Life(jobs, store, at(1) + timedelta(seconds=30))
    status = {job["job_id"]: job for job in second.coordinator.status()["jobs"]}
    minute = at(1).replace(second=0, microsecond=0).isoformat(timespec="microseconds")
    assert (status["good"]["last_success"], status["good"]["last_failure"]) == (minute, None)
    assert (status["bad"]["last_success"], status["bad"]["last_failure"]) == (None, minute)
    assert status["bad"]["last_status"] == "FAILURE"
    assert second.coordinator.status()["state"] == str(store)


def test_pause_holds_across_a_restart_and_resume_makes_up_nothing(dirs):
    jobs, store = dirs
    write_job(jobs, "j", "* * * * *", catch_up="all", starting_deadline_s=3600)
    first = Life(jobs, store, T0)
    first.run_until(at(1) + timedelta(seconds=5))
    assert first.coordinator.set_paused("j", True)["changed"]
    first.run_until(at(3) + timedelta(seconds=5))
    assert len(first.executions) == 1  # 12:01 only
    first.stop()
    second = Life(jobs, store, at(6) + timedelta(seconds=5))
    second.run_until(at(8) + timedelta(seconds=5))
    assert second.executions == []  # still paused, and no catch-up of its pause
    status = {job["job_id"]: job for job in second.coordinator.status()["jobs"]}
    assert status["j"]["paused"] is True and status["j"]["next_run"] is None
    result = second.coordinator.set_paused("j", False)
    assert result["next_run"] == at(9).replace(second=0, microsecond=0).isoformat()
    second.run_until(at(9) + timedelta(seconds=5))
    assert [datetime.fromisoformat(e.scheduled_for).minute for e in second.executions] == [9]
    assert not any(e.catch_up for e in second.executions)
    assert [e["event"] for e in second.events("job_resumed")] == ["job_resumed"]
    assert second.coordinator.set_paused("nope", True) is None


def test_a_one_time_instant_older_than_the_history_never_runs(dirs):
    # Its memory may have been pruned with the history: with a store, no deadline reaches
    # further back than --history-days (30), whatever starting_deadline_s says.
    jobs, store = dirs
    write_job(jobs, "ancient", (T0 - timedelta(days=31)).isoformat(),
              starting_deadline_s=10**9)
    write_job(jobs, "recent", (T0 - timedelta(days=29)).isoformat(),
              starting_deadline_s=10**9)
    life = Life(jobs, store, T0)
    life.run_until(T0 + timedelta(seconds=2))
    assert [e.job_id for e in life.executions] == ["recent"]
    assert [e["job_id"] for e in life.events("missed")] == ["ancient"]


def test_what_falls_during_the_shutdown_grace_is_caught_up_next_time(dirs):
    jobs, store = dirs
    write_job(jobs, "j", "* * * * *", catch_up="all", starting_deadline_s=3600)
    first = Life(jobs, store, T0)
    first.run_until(at(0.5))
    first.coordinator.request_stop("test")  # scheduling stops at 12:00:30.5
    first.clock.sleep(70)  # a long run's grace period: 12:01 falls meanwhile, unrun
    first.stop()
    second = Life(jobs, store, at(2) - timedelta(seconds=20))
    second.run_until(at(2) - timedelta(seconds=15))
    assert [(datetime.fromisoformat(e.scheduled_for).minute, e.catch_up)
            for e in second.executions] == [(1, True)]


def test_a_retry_waiting_at_stop_runs_after_the_next_start(dirs):
    jobs, store = dirs
    write_job(jobs, "hourly", "0 * * * *", retry={"attempts": 3, "delay_s": 600})
    first = Life(jobs, store, at(-1), fail={"hourly"})
    first.run_until(at(5))  # 12:00 failed; attempt 2 is due about 12:10
    assert [e.attempt for e in first.executions] == [1]
    first.stop()
    second = Life(jobs, store, at(20))
    second.run_until(at(21))
    assert [(e.attempt, e.scheduled_for) for e in second.executions] == [
        (2, first.executions[0].scheduled_for)]
    assert second.events("retry_restored")[0]["in_s"] == 0
    second.stop()
    third = Life(jobs, store, at(30))  # it succeeded: nothing left to retry
    third.run_until(at(31))
    assert third.executions == [] and third.events("retry_restored") == []


def test_a_retry_is_cancelled_when_its_next_occurrence_came_meanwhile(dirs):
    jobs, store = dirs
    write_job(jobs, "hourly", "0 * * * *", retry={"attempts": 3, "delay_s": 600})
    first = Life(jobs, store, at(-1), fail={"hourly"})
    first.run_until(at(5))
    first.stop(crash=True)  # the retry's mark was stored before the crash
    second = Life(jobs, store, at(70))  # 13:00 passed while no taskd ran
    second.run_until(at(71))
    assert second.executions == []  # catch_up "none": 13:00 is not made up either
    cancelled = second.events("retry_cancelled")[0]
    assert (cancelled["attempt"], cancelled["scheduled_for"]) == (2, at(0).replace(
        microsecond=0).isoformat())
    second.stop()
    assert SQLiteStore(str(store)).load_memory().pending_retries == []


def test_a_retry_of_a_job_that_lost_its_retry_key_is_forgotten(dirs):
    jobs, store = dirs
    write_job(jobs, "hourly", "0 * * * *", retry={"attempts": 3, "delay_s": 600})
    first = Life(jobs, store, at(-1), fail={"hourly"})
    first.run_until(at(5))
    first.stop()
    write_job(jobs, "hourly", "0 * * * *")
    second = Life(jobs, store, at(20))
    second.run_until(at(21))
    assert second.executions == []
    second.stop()
    assert SQLiteStore(str(store)).load_memory().pending_retries == []
