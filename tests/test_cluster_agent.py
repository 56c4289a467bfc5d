"""The cluster agent's bookkeeping without a database: offers coalesce while they cannot
be sent (the database is away), never while they wait for their instant."""

from __future__ import annotations

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
