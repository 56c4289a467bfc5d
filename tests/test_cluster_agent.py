"""The cluster agent's bookkeeping without a database: offers coalesce while they cannot
be sent (the database is away), never while they wait for their instant."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from supervisor.cluster.claims import Claim, Skipped, StopRequest
from supervisor.cluster.specs import JobVersion
from supervisor.processes.cluster_agent import AgentResults, ClusterAgent


def agent() -> ClusterAgent:
    return ClusterAgent("postgresql:///unused", workers=2)  # its thread never started


def test_offers_due_and_unsent_coalesce_into_the_latest():
    a = agent()
    now = datetime.now(UTC).replace(microsecond=0)
    for back in (3, 2, 1):  # a per-second job, three seconds the database missed
        a.offer("tick", now - timedelta(seconds=back), "h", 60.0)
    a.offer("other", now - timedelta(seconds=1), "h", 60.0)
    due, later = a._offers.due(now.timestamp())
    assert [(o.job_id, o.scheduled_for) for o in due] == [
        ("tick", now - timedelta(seconds=1)), ("other", now - timedelta(seconds=1))]
    assert later is None
    assert a._offers.take_superseded() == {"tick": (now - timedelta(seconds=3), 2)}


def test_offers_waiting_for_their_instant_are_never_coalesced():
    a = agent()
    a.offset_s = -5.0  # this clock runs 5 s ahead of the database's
    now = datetime.now(UTC)
    for ahead in (1, 2, 3):  # not due by the database's clock yet
        a.offer("tick", now + timedelta(seconds=ahead), "h", 60.0)
    assert len(a._offers) == 3 and a._offers.superseded == {}


class FakeAgent:
    """What the coordinator asks of its cluster agent, recorded (no thread, no database)."""

    node_id = "node-a"
    offset_s = 0.0
    connected = True
    nodes: list = []
    view = None
    conflicts: list = []

    def __init__(self) -> None:
        self.published: list[dict[str, JobVersion]] = []
        self.offered: list[tuple[str, datetime]] = []
        self.results = AgentResults()
        self.waker = object()

    def publish(self, hashes: dict[str, JobVersion]) -> None:
        self.published.append(dict(hashes))

    def offer(self, job_id, scheduled_for, spec_hash, deadline_s, keep=1) -> None:
        self.offered.append((job_id, scheduled_for))

    def take(self) -> AgentResults:
        results, self.results = self.results, AgentResults()
        return results

    def wait_object(self) -> object:
        return self.waker

    def set_capacity(self, busy: int, waiting: int) -> None:
        pass


def cluster_coordinator(tmp_path, queue=None):
    from supervisor.control.diagnostics import Diagnostics
    from supervisor.processes.coordinator import Coordinator, DaemonOptions
    from tests.test_coordinator_step import (
        FakeClock,
        FakeLogger,
        FakeNotifier,
        FakeQueue,
        FakeWatcher,
    )

    agent, clock, stream = FakeAgent(), FakeClock(), io.StringIO()
    coordinator = Coordinator(
        DaemonOptions(jobs_dir=str(tmp_path), timezone="UTC", misfire_grace_s=60),
        queue=queue or FakeQueue(), logger=FakeLogger(), watcher=FakeWatcher(),
        clock=clock, diagnostics=Diagnostics(stream), notifier=FakeNotifier(),
        cluster=agent)
    return coordinator, agent, clock, stream


def test_a_reload_publishes_the_versions_of_the_jobs_it_touched(tmp_path):
    from supervisor.cluster.specs import JobVersion
    from tests.test_coordinator_step import write_job

    coordinator, agent, clock, _ = cluster_coordinator(tmp_path)
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
    assert latest == {job_id: JobVersion.of(state.spec)
                      for job_id, state in coordinator.schedule.jobs.items()}
    assert all(v.spec_hash == coordinator.schedule.jobs[job_id].spec.version
               for job_id, v in latest.items())
    assert sorted(latest) == ["a", "c", "same"]
    assert latest["a"] != first["a"] and latest["same"] == first["same"]


def test_limits_are_the_claims_and_their_verdicts_reach_the_node(tmp_path):
    """In a cluster the node offers every occurrence of a limited job, even while it
    runs one itself (the claims count every node's runs); a claim's skipped occurrence
    is said as skipped, and a stop request stops the claimed run (replaced)."""
    import json

    from tests.test_coordinator_step import FakeQueue, write_job

    class CancellingQueue(FakeQueue):
        cancelled: list = []

        def cancel(self, run_id, error):
            self.cancelled.append((run_id, error))
            return True

    queue = CancellingQueue()
    coordinator, agent, clock, stream = cluster_coordinator(tmp_path, queue)
    write_job(tmp_path, "tick.json", schedule="* * * * * *", overlap="replace",
              concurrency_group="g")
    coordinator.load()
    assert agent.published[-1]["tick"] == JobVersion(
        agent.published[-1]["tick"].spec_hash, run_limit=1, replace=True,
        concurrency_group="g")

    def step(results=None):
        agent.results = results or AgentResults()
        coordinator.step(wait=lambda objects, timeout: clock.sleep(min(timeout or 1, 1))
                         or [agent.waker])

    step()
    step()
    first_job, first_at = agent.offered[0]
    claim = Claim(first_job, first_at, "run-1", first_at)
    step(AgentResults(claims=[claim]))
    assert [e.run_id for e in queue.put_log] == ["run-1"]
    offered = len(agent.offered)
    step()
    step()  # its run is still going: the next occurrences are offered all the same
    assert len(agent.offered) > offered
    step(AgentResults(skipped=[Skipped("tick", agent.offered[-1][1],
                                       "previous run still in progress")],
                      stops=[StopRequest("run-1", "node-a")]))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    skipped = [e for e in lines if e["event"] == "skipped"]
    assert [(e["job_id"], e["reason"]) for e in skipped] == [
        ("tick", "previous run still in progress")]
    assert queue.cancelled == [("run-1", "replaced")]
    assert not [e for e in lines if e["event"] == "queued"]  # no local group gate


def test_drain_returns_once_a_claim_in_flight_has_come_back():
    """A claim in flight when the daemon stops is the coordinator's before drain
    returns (its runs are recorded shutdown through their finish, never node lost)."""
    import threading

    from supervisor.cluster.claims import ClaimBatch

    a = agent()
    a.node_id = "node-a"
    a.set_capacity(busy=0, waiting=0)
    sent, release = threading.Event(), threading.Event()
    claim = Claim("job", datetime.now(UTC), "run-1", datetime.now(UTC))

    class SlowClaims:
        def claim_batch(self, offers, limit, **options):
            sent.set()
            release.wait(10)
            return ClaimBatch([claim], [], [])

    claimer = threading.Thread(target=a._claim, args=(SlowClaims(), 0.0, []))
    claimer.start()
    assert sent.wait(10)
    drained = threading.Thread(target=a.drain)
    drained.start()
    drained.join(0.2)
    assert drained.is_alive()  # still waiting for the claim's answer
    release.set()
    drained.join(10)
    claimer.join(10)
    assert not drained.is_alive()
    assert [c.run_id for c in a.take().claims] == ["run-1"]
    assert a._capacity() == 0  # and nothing more is claimed


def test_with_no_free_worker_the_agent_thread_sleeps():
    """No free worker, nothing due: the thread waits (for a worker, an offer or its
    heartbeat), never spins on the coordinator's GIL (it did, until the load ended)."""
    import threading
    import time

    a = agent()
    a.node_id = "node-a"
    a.set_capacity(busy=2, waiting=0)  # both workers busy

    class NoClaims:
        calls = 0

        def claim_batch(self, *args, **options):
            NoClaims.calls += 1
            raise AssertionError("nothing to claim with no free worker")

    used: list[float] = []

    def loop() -> None:  # the agent's loop, its database calls aside
        start, next_poll = time.thread_time(), 0.0
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            next_poll = a._claim(NoClaims(), next_poll, [])
            with a._lock:
                wait = next_poll - time.monotonic()
                if wait > 0 and not a._poke:
                    a._lock.wait(min(wait, until - time.monotonic(), 1.0))
        used.append(time.thread_time() - start)

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join(10)
    assert NoClaims.calls == 0 and used and used[0] < 0.05, used


class Backlog:
    """Claims that find as many due runs as they ask for, and keep every finish."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    def claim_batch(self, offers, limit, *, finished=(), **options):
        from supervisor.cluster.claims import ClaimBatch

        self.limits.append(limit)
        now = datetime.now(UTC)
        return ClaimBatch([Claim(f"job-{len(self.limits)}-{i}", now, f"run-{i}", now)
                           for i in range(limit)], [], [], finished=[True] * len(finished))

    def finish_many(self, finished):  # with nothing to claim
        return [True] * len(finished)


def ended(a: ClusterAgent, duration_ms: float, count: int = 1) -> list[dict]:
    """``count`` claimed runs of ``duration_ms`` ended: their records as the agent's
    thread takes them."""
    for n in range(count):
        a.finished({"run_id": f"done-{duration_ms}-{n}", "duration_ms": duration_ms})
    with a._lock:
        records, a._finished = a._finished, []
    return records


def test_without_short_runs_behind_it_a_node_claims_for_its_free_workers_only():
    """A backlog (the last claim took all it asked for) is claimed again as soon as a
    worker frees up, and not ahead of one until the node's runs have proved short: a
    run claimed ahead waits here for a worker, behind long runs while a peer's workers
    are idle."""
    a = agent()
    a.node_id = "node-a"
    backlog = Backlog()
    a.set_capacity(busy=0, waiting=0)
    a._claim(backlog, 0.0, [])
    assert backlog.limits == [2] and len(a.take().claims) == 2
    a.set_capacity(busy=2, waiting=0)  # both runs started: no worker free
    a._claim(backlog, 0.0, [])
    assert backlog.limits == [2]  # nothing claimed ahead
    a.set_capacity(busy=1, waiting=0)  # one ended
    a._claim(backlog, 0.0, ended(a, 60_000.0))
    assert backlog.limits == [2, 1]


def test_a_backlog_of_short_runs_is_claimed_one_ahead_per_worker_until_a_long_one():
    from supervisor.processes.cluster_agent import RECENT_RUNS, SHORT_RUN_MS

    a = agent()
    a.node_id = "node-a"
    backlog = Backlog()
    a.set_capacity(busy=0, waiting=0)
    a._claim(backlog, 0.0, ended(a, SHORT_RUN_MS / 2, RECENT_RUNS))
    a.take()
    a.set_capacity(busy=2, waiting=0)
    a._claim(backlog, 0.0, [])
    assert backlog.limits == [2, 2]  # one ahead for each busy worker
    a.take()
    a.set_capacity(busy=2, waiting=2)
    a._claim(backlog, 0.0, [])
    assert backlog.limits == [2, 2]  # never more than one ahead per worker
    a.set_capacity(busy=2, waiting=1)  # one ended (a long one), a waiting run started
    a._claim(backlog, 0.0, ended(a, SHORT_RUN_MS * 10))
    assert backlog.limits == [2, 2]  # no more ahead while a long run is among the last


def test_in_a_backlog_one_free_worker_waits_a_moment_for_others_to_claim_with():
    from supervisor.processes.cluster_agent import GATHER_S

    now = [100.0]
    a = ClusterAgent("postgresql:///unused", workers=8, monotonic=lambda: now[0])
    a.node_id = "node-a"
    backlog = Backlog()
    a.set_capacity(busy=0, waiting=0)
    a._claim(backlog, 0.0, [])
    a.take()
    a.set_capacity(busy=7, waiting=0)  # one run ended: a backlog, one worker free
    records = ended(a, 60_000.0)
    assert a._claim(backlog, 0.0, records) == 100.0 + GATHER_S  # wakes then
    assert backlog.limits == [8] and a._finished == records  # its finish waits too
    a.set_capacity(busy=4, waiting=0)  # half of them free: no more waiting
    a._claim(backlog, 0.0, ended(a, 60_000.0))
    assert backlog.limits == [8, 4] and a._finished == []
    a.take()
    a.set_capacity(busy=7, waiting=0)
    a._claim(backlog, 0.0, [])
    now[0] += GATHER_S  # nobody else freed up in time: the one goes alone
    a._claim(backlog, 0.0, [])
    assert backlog.limits == [8, 4, 1]
