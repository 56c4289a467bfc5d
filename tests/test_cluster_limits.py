"""Limits held cluster-wide by the claims, against a real PostgreSQL: ``overlap`` (skip,
replace), ``max_concurrent`` and ``concurrency_group`` count the runs claimed by every
node, and claims of jobs with limits take turns so that two nodes claiming at once
cannot both take the last place.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from supervisor.cluster import claims as claims_module
from supervisor.cluster.claims import Offer
from supervisor.cluster.specs import JobVersion
from supervisor.store.abc import StoreError
from tests.cluster_harness import Node, db_now, record_for, rows

SKIP = JobVersion("v1", run_limit=1)
REPLACE = JobVersion("v1", run_limit=1, replace=True)


def limited_node(db, versions: dict[str, JobVersion]) -> Node:
    node = Node(db, [])
    node.specs.publish(node.id, versions)
    return node


def claim(node: Node, offers, limit: int = 8):
    return node.claims.claim_batch(offers, limit, node_id=node.id, limited=True)


def state_of(db, job_id: str) -> list[tuple[str, str | None]]:
    return rows(db, "SELECT state, stop_reason FROM taskd_occurrences WHERE job_id = %s "
                    "ORDER BY scheduled_for", (job_id,))


def instants(db, count: int) -> list:
    start = db_now(db) - timedelta(seconds=count + 1)
    return [start + timedelta(seconds=i) for i in range(count)]


# What one claim decides for the due occurrences of one job, given how many of its runs
# another node holds: (version, claimed elsewhere, due now) -> (claimed, skipped).
LIMIT_CASES = [
    (SKIP, 0, 1, 1, 0),
    (SKIP, 0, 3, 1, 2),  # the first is running (or waiting): the later ones are skipped
    (SKIP, 1, 2, 0, 2),
    (JobVersion("v1", run_limit=2), 0, 3, 2, 1),
    (JobVersion("v1", run_limit=2), 1, 3, 1, 2),
    (JobVersion("v1", run_limit=3), 3, 1, 0, 1),
    (JobVersion("v1"), 2, 3, 3, 0),  # no limit
    (REPLACE, 1, 1, 1, 0),  # runs; the other node is asked to stop its run
    (REPLACE, 0, 3, 1, 2),  # the latest runs, the older never started: skipped
]


@pytest.mark.parametrize(("version", "elsewhere", "due", "claimed", "skipped"), LIMIT_CASES)
def test_a_claim_counts_the_runs_of_every_node(cluster, version, elsewhere, due, claimed,
                                               skipped):
    other = limited_node(cluster(), {"job": version})
    node = limited_node(cluster(), {"job": version})
    at = instants(other.db, elsewhere + due)
    held = claim(other, [Offer("job", t, "v1") for t in at[:elsewhere]], limit=elsewhere)
    assert len(held.claims) == elsewhere
    batch = claim(node, [Offer("job", t, "v1") for t in at[elsewhere:]])
    assert (len(batch.claims), len(batch.skipped)) == (claimed, skipped)
    if skipped:
        assert all(s.job_id == "job" and s.reason for s in batch.skipped)
        # the later ones are skipped (replace: the older ones)
        chosen = {c.scheduled_for for c in batch.claims}
        assert all((s.scheduled_for < min(chosen)) == version.replace
                   for s in batch.skipped) if chosen else True
    states = [state for state, _ in state_of(node.db, "job")]
    assert states.count("claimed") == elsewhere + claimed
    assert states.count("skipped") == skipped
    if version.replace and elsewhere:
        assert {(s.run_id, s.node_id) for s in batch.stops} == {
            (c.run_id, other.id) for c in held.claims}
        assert [r.run_id for r in other.claims.stop_requests(other.id)] == [
            c.run_id for c in held.claims]
        assert node.claims.stop_requests(node.id) == []
    else:
        assert batch.stops == [] and other.claims.stop_requests(other.id) == []


def test_a_finished_run_frees_its_place(cluster):
    node = limited_node(cluster(), {"job": SKIP})
    first, second, third = instants(node.db, 3)
    (run,) = claim(node, [Offer("job", first, "v1")]).claims
    assert claim(node, [Offer("job", second, "v1")]).skipped[0].reason == (
        "previous run still in progress")
    assert node.claims.finish(run.run_id, node.id, record_for(run, node.id))
    assert len(claim(node, [Offer("job", third, "v1")]).claims) == 1


def test_concurrent_claimers_on_three_nodes_never_exceed_the_limit(cluster, monkeypatch):
    # 40 due occurrences of a skip job and of a max_concurrent 2 job, offered first;
    # then three nodes claim at once, each looking at a few rows. SKIP LOCKED gives
    # each claimer other rows: without the turn taking, two claims would each count no
    # run and both claim one.
    monkeypatch.setattr(claims_module, "LIMITED_WINDOW", 3)
    nodes = [limited_node(cluster(), {"job": SKIP, "pair": JobVersion("v1", run_limit=2)})
             for _ in range(3)]
    at = instants(nodes[0].db, 40)
    claim(nodes[0], [Offer(job, t, "v1") for t in at for job in ("job", "pair")], limit=0)
    barrier = threading.Barrier(len(nodes))
    per_node: dict[str, list] = {node.id: [] for node in nodes}

    def run(node: Node) -> None:
        barrier.wait()
        for _ in range(100):  # until nothing is left to decide
            batch = claim(node, [], limit=1)
            per_node[node.id].append(batch)
            if not batch.claims and not batch.skipped:
                break

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(not got[-1].claims and not got[-1].skipped for got in per_node.values())
    batches = [batch for got in per_node.values() for batch in got]
    claimed = [c.job_id for batch in batches for c in batch.claims]
    assert sorted(claimed) == ["job", "pair", "pair"]
    for job, limit in (("job", 1), ("pair", 2)):
        states = [state for state, _ in state_of(nodes[0].db, job)]
        assert states.count("claimed") == limit
        assert states.count("skipped") == 40 - limit  # each decided once, by one node


def test_a_concurrency_group_runs_one_at_a_time_across_nodes(cluster):
    group = {job: JobVersion("v1", concurrency_group="backups") for job in ("a", "b", "c")}
    one, two = (limited_node(cluster(), group) for _ in range(2))
    first, second = instants(one.db, 2)
    (running,) = claim(one, [Offer(j, first, "v1") for j in "abc"]).claims
    waiting = [j for j in "abc" if j != running.job_id]
    # The other node sees the group busy: the two others wait, still due; a later
    # occurrence of a job that already waits is skipped.
    later = claim(two, [Offer(j, second, "v1") for j in "abc"])
    assert later.claims == []
    assert sorted(s.job_id for s in later.skipped) == sorted(waiting)
    assert all("already waiting" in s.reason for s in later.skipped)
    assert [state_of(one.db, j)[0][0] for j in waiting] == ["due", "due"]
    assert state_of(one.db, running.job_id)[1][0] == "due"  # its own next one waits
    # Finished: the oldest waiting run goes next, on whichever node claims.
    assert one.claims.finish(running.run_id, one.id, record_for(running, one.id))
    (following,) = claim(two, []).claims
    assert (following.job_id, following.scheduled_for) == (waiting[0], first)


def test_an_ungrouped_job_is_not_held_by_a_busy_group(cluster):
    node = limited_node(cluster(), {"grouped": JobVersion("v1", concurrency_group="g"),
                                    "other": JobVersion("v1", concurrency_group="g"),
                                    "free": JobVersion("v1")})
    (at,) = instants(node.db, 1)
    batch = claim(node, [Offer(j, at, "v1") for j in ("grouped", "other", "free")])
    assert sorted(c.job_id for c in batch.claims) == ["free", "grouped"]
    assert state_of(node.db, "other") == [("due", None)]


def test_claims_without_limits_do_not_wait_for_a_limited_claim(cluster, monkeypatch):
    monkeypatch.setattr(claims_module, "_TAKE_TURN",
                        ("SET LOCAL lock_timeout = '300ms'",
                         f"SELECT pg_advisory_xact_lock({claims_module.CLAIM_LOCK})"))
    holder = cluster()
    node = limited_node(cluster(), {"job": SKIP, "free": JobVersion("v1")})
    (at,) = instants(node.db, 1)
    with holder.transaction() as db:  # a claimer stuck while it holds the turn
        db.execute("SELECT pg_advisory_xact_lock(%s)", (claims_module.CLAIM_LOCK,))
        started = time.monotonic()
        free = node.claims.claim([Offer("free", at, "v1")], 1, node_id=node.id)
        assert [c.job_id for c in free] == ["free"]
        with pytest.raises(StoreError):  # bounded: fails, never hangs
            claim(node, [Offer("job", at, "v1")])
        assert time.monotonic() - started < 10
    # The failed claim was rolled back, its offer too: offered again (as the agent
    # does with what it could not send), it is claimed.
    assert [c.job_id for c in claim(node, [Offer("job", at, "v1")]).claims] == ["job"]
