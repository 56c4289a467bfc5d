"""The coordinator's loop step with every collaborator faked and time injected.

No process, no thread, no sleep: ``wait`` is a stub that advances the fake clock by the
timeout the coordinator asked for, so the tests also check how long it chose to sleep.
"""

from __future__ import annotations

import gc
import io
import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

import supervisor.processes.coordinator
from supervisor.control.diagnostics import Diagnostics
from supervisor.control.sd_notify import Notifier
from supervisor.processes.coordinator import (
    HANDOFF_LEAD_S,
    MAX_SLEEP_S,
    RESCAN_COST_FACTOR,
    Coordinator,
    DaemonOptions,
)

T0 = datetime(2026, 11, 26, 12, 0, 0, 500000, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


class FakeQueue:
    restarts = 0

    def __init__(self) -> None:
        self.put_log: list = []
        self.finished: list = []
        self.pending: list = []

    def put(self, execution) -> None:
        self.put_log.append(execution)
        self.pending.append(execution)

    def depth(self) -> int:
        return len(self.pending)

    def wait_objects(self) -> list:
        return []

    def service(self) -> list:
        finished, self.finished = self.finished, []
        return finished

    def worker_status(self) -> list:
        return [{"id": 1, "pid": 1, "state": "idle", "job_id": None, "run_id": None,
                 "since": None, "restarts": 0}]

    def worker_pids(self) -> list:
        return [1]

    def drop_pending(self, error: str) -> list:
        records = [record_for(e, "FAILURE", error) for e in self.pending]
        self.pending = []
        return records

    def stop_workers(self) -> None:
        pass

    def busy(self) -> list:
        return []

    def signal_busy(self, sig: int) -> None:
        pass

    def stopping_service(self) -> list:
        return []

    def alive(self) -> int:
        return 0

    def kill_all(self, error: str) -> list:
        return []


class FakeLogger:
    pid = None
    unacked = 0

    def __init__(self, *, storing: bool = False) -> None:
        self.submitted: list = []
        self.storing = storing
        self.marks: list = []  # with storing: what the store would be told, in order
        self.items: list = []  # marks and records, in the order the store gets them

    def submit(self, record, stored=False) -> None:
        self.submitted.append(record)
        self.items.append({"record": record})

    def mark(self, mark) -> None:
        if self.storing:
            self.marks.append(mark)
            self.items.append(mark)

    def handle_readable(self) -> None:
        pass

    def check(self) -> bool:
        return False

    def pump(self) -> None:
        pass

    def wait_objects(self) -> list:
        return []

    def close(self, timeout: float) -> bool:
        return True


class FakeWatcher:
    def __init__(self) -> None:
        self.changed: set[str] = set()

    def settled(self, now=None) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def next_deadline(self):
        return None

    def take_rescan_needed(self) -> bool:
        return False

    def health_check(self) -> bool:
        return False

    def drain_diagnostics(self) -> list:
        return []

    def stop(self) -> None:
        pass


def record_for(execution, status: str = "SUCCESS", error: str | None = None) -> dict:
    return {"event": "execution", "job_id": execution.job_id, "run_id": execution.run_id,
            "timestamp": execution.scheduled_for, "status": status,
            "scheduled_for": execution.scheduled_for, "error": error}


class FakeNotifier(Notifier):
    def __init__(self, keepalive_s: float | None = None) -> None:
        super().__init__("")
        self.sent: list[tuple[str, ...]] = []
        self.keepalive_s = keepalive_s

    def watchdog_interval_s(self):
        return self.keepalive_s

    def notify(self, *lines: str) -> None:
        self.sent.append(lines)


@pytest.fixture
def world(tmp_path):
    clock = FakeClock()
    stream = io.StringIO()
    coordinator = Coordinator(
        DaemonOptions(jobs_dir=str(tmp_path), timezone="UTC", misfire_grace_s=60),
        queue=FakeQueue(), logger=FakeLogger(), watcher=FakeWatcher(), clock=clock,
        diagnostics=Diagnostics(stream), notifier=FakeNotifier(keepalive_s=5.0))
    slept: list[float] = []

    def wait(objects, timeout):
        slept.append(timeout)
        clock.sleep(timeout)
        return []

    coordinator.test_wait = wait
    coordinator.slept = slept
    coordinator.stream = stream
    return coordinator


def write_job(directory, name, schedule="*/2 * * * * *", **fields):
    path = directory / name
    path.write_text(json.dumps({"job_id": name.removesuffix(".json"), "schedule": schedule,
                                "task": {"type": "execute_command", "command": "true"},
                                **fields}))
    return path


def events(coordinator, name=None):
    lines = [json.loads(line) for line in coordinator.stream.getvalue().splitlines()]
    return [e for e in lines if name is None or e["event"] == name]


def test_load_then_sleep_exactly_until_the_next_occurrence(world, tmp_path):
    write_job(tmp_path, "j.json")
    world.load()
    assert events(world, "ready")[0]["jobs"] == 1
    assert world.notifier.sent[0][0] == "READY=1"
    for _ in range(10):
        world.step(wait=world.test_wait)
        if world.queue.put_log:
            break
    # 12:00:00.5 -> the next even second is 1.5 s away, less the hand-out lead: no sleep
    # longer than 1 s, a few wake-ups where the wheel cascades, and no oversleep.
    assert world.slept[0] == MAX_SLEEP_S
    assert sum(world.slept) == pytest.approx(1.5 - HANDOFF_LEAD_S)
    assert len(world.slept) <= 4
    [execution] = world.queue.put_log
    assert execution.job_id == "j" and execution.scheduled_for == "2026-11-26T12:00:02+00:00"


def test_finished_runs_reach_the_logger_and_the_job_table(world, tmp_path):
    write_job(tmp_path, "j.json")
    world.load()
    while not world.queue.put_log:
        world.step(wait=world.test_wait)
    execution = world.queue.put_log[0]
    world.queue.pending.clear()
    world.queue.finished.append(record_for(execution, "FAILURE", "exit code 1"))
    world.step(wait=world.test_wait)
    assert [r["run_id"] for r in world.logger.submitted] == [execution.run_id]
    assert world.job_status("j")["last_status"] == "FAILURE"
    assert world.status()["counters"]["failure"] == 1


def test_wall_clock_jump_runs_once_and_reports_the_rest_missed(world, tmp_path):
    write_job(tmp_path, "j.json")
    world.load()
    world.clock.wall += timedelta(hours=1)  # NTP step or resume: monotonic did not move
    world.step(wait=lambda objects, timeout: [])
    assert len(world.queue.put_log) == 1
    missed = events(world, "missed")
    assert missed[0]["job_id"] == "j" and missed[0]["count"] == 1799


def test_settled_file_change_reschedules_without_a_rescan(world, tmp_path):
    path = write_job(tmp_path, "j.json", schedule="0 0 1 1 *")
    world.load()
    write_job(tmp_path, "j.json", schedule="* * * * * *")
    world.watcher.changed = {str(path)}
    world.step(wait=world.test_wait)
    assert events(world, "job_updated")[0]["job_id"] == "j"
    for _ in range(10):
        world.step(wait=world.test_wait)
    assert world.queue.put_log


def test_reload_request_rescans_what_the_watcher_missed(world, tmp_path):
    world.load()
    write_job(tmp_path, "late.json")  # no event reaches the (fake) watcher
    world.step(wait=world.test_wait)
    assert "late" not in world.schedule.jobs
    world.request_reload("test")
    world.step(wait=world.test_wait)
    assert "late" in world.schedule.jobs


def test_periodic_rescan_is_the_safety_net(world, tmp_path):
    world.load()
    write_job(tmp_path, "late.json")
    while world.clock.mono < 1000.0 + world.options.rescan_interval_s + 1:
        world.step(wait=world.test_wait)
    assert "late" in world.schedule.jobs


def slow_snapshots(monkeypatch, clock, seconds: float) -> None:
    """Every directory scan takes ``seconds`` of the fake monotonic clock."""
    real = supervisor.processes.coordinator.snapshot

    def snapshot(directory, **options):
        clock.mono += seconds
        return real(directory, **options)

    monkeypatch.setattr(supervisor.processes.coordinator, "snapshot", snapshot)


def test_a_slow_load_backs_the_first_safety_net_rescan_off(world, tmp_path, monkeypatch):
    slow_snapshots(monkeypatch, world.clock, 2.0)
    world.load()
    loaded_at = world.clock.mono
    write_job(tmp_path, "late.json", schedule="0 0 1 1 *")  # no event reaches the watcher
    back_off = RESCAN_COST_FACTOR * 2.0
    assert back_off > 10 * world.options.rescan_interval_s
    while world.clock.mono < loaded_at + back_off - 1:
        world.step(wait=world.test_wait)
    assert "late" not in world.schedule.jobs  # not at 30 s: the load said scans are dear
    while world.clock.mono < loaded_at + back_off + 5:
        world.step(wait=world.test_wait)
    assert "late" in world.schedule.jobs


def test_a_quick_load_keeps_the_rescan_interval(world, tmp_path):
    world.load()  # the fake clock does not move: the load took no time
    write_job(tmp_path, "late.json", schedule="0 0 1 1 *")
    while world.clock.mono < 1000.0 + world.options.rescan_interval_s - 1:
        world.step(wait=world.test_wait)
    assert "late" not in world.schedule.jobs
    while world.clock.mono < 1000.0 + world.options.rescan_interval_s + 1:
        world.step(wait=world.test_wait)
    assert "late" in world.schedule.jobs


def test_collector_on_after_load_and_rescans_even_when_they_fail(world, tmp_path):
    gc.enable()
    write_job(tmp_path, "j.json")
    try:
        world.load()
        assert gc.isenabled() and "j" in world.schedule.jobs
        shutil.rmtree(tmp_path)
        world.request_reload("test")
        world.step(wait=world.test_wait)
        assert events(world, "jobs_dir_unreadable")
        assert gc.isenabled()
        with pytest.raises(OSError):
            world.load()  # no directory at all: the daemon reports it and stops
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def test_manual_run_and_unknown_job(world, tmp_path):
    write_job(tmp_path, "j.json", schedule="0 0 1 1 *")
    world.load()
    execution = world.run_now("j")
    assert execution.manual and world.queue.put_log == [execution]
    assert world.run_now("nope") is None


def test_keepalives_come_from_the_loop(world, tmp_path):
    world.load()
    for _ in range(12):
        world.step(wait=world.test_wait)
    keepalives = [lines for lines in world.notifier.sent if lines[0] == "WATCHDOG=1"]
    assert 2 <= len(keepalives) <= 4  # every 5 s of (fake) time over about 12 s
    assert keepalives[0][1].startswith("STATUS=0 jobs, 0 invalid files, 0/8 workers busy")


def test_stop_request_ends_the_loop_and_shutdown_records_waiting_runs(world, tmp_path):
    write_job(tmp_path, "j.json")
    world.load()
    while not world.queue.put_log:
        world.step(wait=world.test_wait)
    world.request_stop("test")
    world.step(wait=world.test_wait)
    assert world.stopping
    world.shut_down(wait=world.test_wait)
    assert [(r["status"], r["error"]) for r in world.logger.submitted] == [
        ("FAILURE", "shutdown")]
    assert events(world, "stopped")[0]["records_flushed"] is True
    assert ("STOPPING=1",) in world.notifier.sent


def test_status_has_the_contract_keys(world, tmp_path):
    write_job(tmp_path, "j.json")
    (tmp_path / "bad.json").write_text("{")
    world.load()
    status = world.status()
    assert {"pid", "workers", "logger", "jobs", "errors", "queue_depth", "uptime_s"} <= set(status)
    assert {"id", "pid", "state"} <= set(status["workers"][0])
    assert {"job_id", "file", "next_run", "last_status"} <= set(status["jobs"][0])
    assert status["errors"][0]["file"].endswith("bad.json")
