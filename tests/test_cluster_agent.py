"""The cluster agent's bookkeeping without a database: offers coalesce while they cannot
be sent (the database is away), never while they wait for their instant."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from supervisor.processes.cluster_agent import ClusterAgent


def agent() -> ClusterAgent:
    return ClusterAgent("postgresql:///unused", workers=2)  # its thread never started


def test_offers_due_and_unsent_coalesce_into_the_latest():
    a = agent()
    now = datetime.now(UTC).replace(microsecond=0)
    for back in (3, 2, 1):  # a per-second job, three seconds the database missed
        a.offer("tick", now - timedelta(seconds=back), "h", 60.0)
    a.offer("other", now - timedelta(seconds=1), "h", 60.0)
    assert [(job, at) for job, at, _, _ in a._offers] == [
        ("tick", now - timedelta(seconds=1)), ("other", now - timedelta(seconds=1))]
    assert a._superseded == {"tick": (now - timedelta(seconds=3), 2)}


def test_offers_waiting_for_their_instant_are_never_coalesced():
    a = agent()
    a.offset_s = -5.0  # this clock runs 5 s ahead of the database's
    now = datetime.now(UTC)
    for ahead in (1, 2, 3):  # not due by the database's clock yet
        a.offer("tick", now + timedelta(seconds=ahead), "h", 60.0)
    assert len(a._offers) == 3 and a._superseded == {}


class FakeAgent:
    """What the coordinator asks of its cluster agent, recorded (no thread, no database)."""

    node_id = "node-a"
    offset_s = 0.0
    connected = True
    nodes: list = []
    conflicts: list = []

    def __init__(self) -> None:
        self.published: list[dict[str, str]] = []
        self.waker = object()

    def publish(self, hashes: dict[str, str]) -> None:
        self.published.append(dict(hashes))

    def wait_object(self) -> object:
        return self.waker

    def set_capacity(self, idle: int, busy: int) -> None:
        pass


def test_a_reload_publishes_the_versions_of_the_jobs_it_touched(tmp_path):
    from supervisor.control.diagnostics import Diagnostics
    from supervisor.processes.coordinator import Coordinator, DaemonOptions, spec_version
    from tests.test_coordinator_step import (
        FakeClock,
        FakeLogger,
        FakeNotifier,
        FakeQueue,
        FakeWatcher,
        write_job,
    )

    agent = FakeAgent()
    clock = FakeClock()
    coordinator = Coordinator(
        DaemonOptions(jobs_dir=str(tmp_path), timezone="UTC", misfire_grace_s=60),
        queue=FakeQueue(), logger=FakeLogger(), watcher=FakeWatcher(), clock=clock,
        diagnostics=Diagnostics(io.StringIO()), notifier=FakeNotifier(), cluster=agent)
    for name in ("a.json", "b.json", "same.json"):
        write_job(tmp_path, name, schedule="0 3 * * *")
    coordinator.load()
    first = agent.published[-1]
    assert sorted(first) == ["a", "b", "same"]
    write_job(tmp_path, "a.json", schedule="0 4 * * *")  # a new version
    (tmp_path / "b.json").unlink()
    write_job(tmp_path, "c.json", schedule="0 3 * * *")
    coordinator.request_reload("test")
    coordinator.step(wait=lambda objects, timeout: clock.sleep(timeout) or [])
    latest = agent.published[-1]
    assert latest == {job_id: spec_version(state.spec)
                      for job_id, state in coordinator.schedule.jobs.items()}
    assert sorted(latest) == ["a", "c", "same"]
    assert latest["a"] != first["a"] and latest["same"] == first["same"]
