"""Cluster membership against a real PostgreSQL: join, heartbeat, leave, and the reaper
that declares a silent node dead and records each of its runs exactly once as
``node lost``, however many peers reap at once. Also the job versions each node
publishes (spec hashes) and the conflicts between live nodes.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg

from supervisor.cluster.nodes import LostRun, Nodes
from supervisor.cluster.specs import JobVersion, SpecHashes, version_of
from supervisor.store.abc import HistoryQuery
from tests.cluster_harness import (
    Node,
    db_now,
    offers_at,
    protocol_trace,
    record_for,
    round_trips,
    rows,
    wait_for,
)

SHORT_LEASE_S = 0.5



def silent_past_lease(node: Node, peer: Node) -> bool:
    listed = {n["id"]: n for n in peer.nodes.nodes()}[node.id]
    return listed["heartbeat_age_s"] > listed["lease_s"]


def test_join_heartbeat_and_the_status_list(cluster):
    node = Node(cluster(), ["a"], workers=4)
    beat = node.nodes.heartbeat(node.id, busy=3)
    assert beat.alive and beat.db_now.tzinfo is not None
    (listed,) = node.nodes.nodes()
    assert {key: listed[key] for key in ("id", "host", "pid", "workers", "busy", "state")} == {
        "id": node.id, "host": "host", "pid": 1000, "workers": 4, "busy": 3,
        "state": "alive"}
    assert 0 <= listed["heartbeat_age_s"] < 30  # by the database's clock
    assert node.nodes.reap(node.id) == []  # nobody is silent


def test_three_reapers_at_once_record_each_lost_run_exactly_once(cluster):
    jobs = [f"job-{i:04d}" for i in range(30)]
    reapers = [Node(cluster(), jobs) for _ in range(3)]
    dying = [Node(cluster(), jobs, lease_s=SHORT_LEASE_S) for _ in range(3)]
    at = db_now(reapers[0].db) - timedelta(seconds=1)
    claimed = {}
    for i, node in enumerate(dying):
        for claim in node.claim(offers_at(at, 30)[i * 10:(i + 1) * 10], limit=10):
            claimed[claim.run_id] = (node.id, claim)
    assert len(claimed) == 30
    for node in dying:
        wait_for(lambda node=node: silent_past_lease(node, reapers[0]), "silence past lease")
    got: list[list[LostRun]] = [[] for _ in reapers]
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                got[i] += reapers[i].nodes.reap(reapers[i].id)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    lost = [run for runs in got for run in runs]
    assert sorted(run.run_id for run in lost) == sorted(claimed)  # each exactly once
    for run in lost:
        node_id, claim = claimed[run.run_id]
        assert (run.node_id, run.job_id, run.scheduled_for) == (node_id, claim.job_id, at)
        assert run.record["timestamp"] == claim.claimed_at.isoformat()
    history = reapers[0].db.history(HistoryQuery(limit=100))
    assert len(history) == 30 and {r["run_id"] for r in history} == set(claimed)
    for record in history:
        node_id, claim = claimed[record["run_id"]]
        assert (record["status"], record["error"], record["node"], record["worker"]) == (
            "FAILURE", "node lost", node_id, 0)
        assert record["scheduled_for"] == at.isoformat()
    states = dict(rows(reapers[0].db, "SELECT node_id, state FROM taskd_nodes"))
    assert [states[node.id] for node in dying] == ["dead"] * 3
    assert [states[node.id] for node in reapers] == ["alive"] * 3
    assert rows(reapers[0].db, "SELECT DISTINCT state FROM taskd_occurrences") == [("lost",)]
    assert reapers[1].nodes.reap(reapers[1].id) == []  # buried once


def test_a_reaped_node_learns_it_claims_nothing_and_rejoins_as_a_new_node(cluster):
    dying, peer = Node(cluster(), ["job"], lease_s=SHORT_LEASE_S), Node(cluster(), ["job"])
    wait_for(lambda: silent_past_lease(dying, peer), "silence past lease")
    assert peer.nodes.reap(peer.id) == []  # dead, with no runs to account for
    beat = dying.nodes.heartbeat(dying.id, busy=0)
    assert not beat.alive
    at = db_now(peer.db) - timedelta(seconds=1)
    assert dying.claim([("job", at, "v1")]) == []  # a dead node cannot claim
    again = dying.nodes.join("host", 1000, 8, lease_s=SHORT_LEASE_S)
    assert again != dying.id and dying.nodes.heartbeat(again, busy=0).alive
    dying.specs.publish(again, {"job": "v1"})
    (claim,) = dying.claims.claim([], 1, node_id=again)
    assert claim.job_id == "job"


def test_a_claim_in_flight_holds_its_node_until_it_commits(postgres_url, cluster):
    # A claim takes its node row FOR SHARE: a reaper passes the node by meanwhile, and
    # once the claim commits, the reaper sees that claim and accounts for it.
    dying, peer = Node(cluster(), ["job"], lease_s=SHORT_LEASE_S), Node(cluster(), ["job"])
    at = db_now(peer.db) - timedelta(seconds=1)
    (claim,) = dying.claim([("job", at, "v1")])
    wait_for(lambda: silent_past_lease(dying, peer), "silence past lease")
    with psycopg.connect(postgres_url) as in_flight:
        in_flight.execute("SELECT FROM taskd_nodes WHERE node_id = %s FOR SHARE",
                          (dying.id,))
        assert peer.nodes.reap(peer.id) == []
    (lost,) = peer.nodes.reap(peer.id)
    assert lost.run_id == claim.run_id


def test_leave_is_a_clean_goodbye(cluster):
    leaving, peer = Node(cluster(), ["a", "b"]), Node(cluster(), ["a", "b"])
    at = db_now(peer.db) - timedelta(seconds=1)
    (done, left_running) = leaving.claim([("a", at, "v1"), ("b", at, "v1")])
    assert leaving.claims.finish(done.run_id, leaving.id, record_for(done, leaving.id))
    # A run still claimed at leave (normally none) is accounted for, not left hanging.
    (lost,) = leaving.nodes.leave(leaving.id)
    assert lost.run_id == left_running.run_id and lost.record["error"] == "node lost"
    assert not leaving.nodes.heartbeat(leaving.id, busy=0).alive
    assert leaving.nodes.leave(leaving.id) == []
    assert {n["id"]: n["state"] for n in peer.nodes.nodes()} == {
        leaving.id: "left", peer.id: "alive"}
    leaving.specs.publish(leaving.id, {"late": "v2"})  # a publish that came after leave

    def versions_of(node):
        return rows(peer.db, "SELECT job_id FROM taskd_node_jobs WHERE node_id = %s",
                    (node.id,))

    assert peer.nodes.forget(kept_s=3600) == 0
    assert versions_of(leaving) == [("late",)]
    assert peer.nodes.forget(kept_s=0) == 1
    assert [n["id"] for n in peer.nodes.nodes()] == [peer.id]
    assert versions_of(leaving) == [] and len(versions_of(peer)) == 2  # its versions too


def test_heartbeats_and_an_idle_reap_are_one_round_trip_each(cluster):
    node = Node(cluster(), ["a"])
    node.nodes.heartbeat(node.id, busy=0)  # the connection is open
    with protocol_trace(node.db) as trace:
        node.nodes.heartbeat(node.id, busy=1)
    assert round_trips(trace) == 1
    with protocol_trace(node.db) as trace:
        assert node.nodes.reap(node.id) == []
    assert round_trips(trace) == 1


# -- spec hashes --------------------------------------------------------------------------


def test_versions_and_their_limits_are_stored_as_published(cluster):
    node = Node(cluster(), [])
    first = {"plain": "h1", "skip": JobVersion("h2", run_limit=1),
             "replace": JobVersion("h3", run_limit=1, replace=True),
             "group": JobVersion("h4", concurrency_group='nächtlich "\\ backups'),
             "gone": "h5"}
    later = {**first, "plain": JobVersion("h6", run_limit=3), "skip": "h2", "new": "h7"}
    del later["gone"]

    def stored():
        return {job_id: JobVersion(*version) for job_id, *version in rows(
            node.db, "SELECT job_id, spec_hash, run_limit, replace, concurrency_group "
                     "FROM taskd_node_jobs WHERE node_id = %s", (node.id,))}

    specs = SpecHashes(node.db)  # as after a restart: its first publish replaces all
    for versions in (first, later):  # all rows replaced, then only what changed
        specs.publish(node.id, versions)
        assert stored() == {job_id: version_of(v) for job_id, v in versions.items()}


def test_specs_are_written_on_change_only(cluster):
    node = Node(cluster(), [])
    jobs = {f"job-{i:06d}": "h0" for i in range(20_000)}
    assert node.specs.publish(node.id, jobs) == 20_000  # one bulk write, at join
    with protocol_trace(node.db) as trace:
        assert node.specs.publish(node.id, jobs) == 0  # a reload that changed nothing
    assert round_trips(trace) == 0
    edited = {**jobs, "job-000007": "h1", "job-020000": "h0"}
    del edited["job-000008"]
    with protocol_trace(node.db) as trace:
        assert node.specs.publish(node.id, edited) == 3
    assert round_trips(trace) == 1
    assert rows(node.db, "SELECT count(*) FROM taskd_node_jobs") == [(20_000,)]
    assert rows(node.db, "SELECT spec_hash FROM taskd_node_jobs WHERE job_id = 'job-000007'"
                ) == [("h1",)]
    # Another object for the same node (a restarted coordinator): a full replace.
    assert SpecHashes(node.db).publish(node.id, {"only": "h"}) == 1
    assert rows(node.db, "SELECT job_id FROM taskd_node_jobs") == [("only",)]


def test_a_first_publish_copies_every_version_and_its_limits_as_given(cluster):
    """A node's first publish is a COPY, a later one an upsert from JSON: the same rows."""
    odd = "a\tgroup\\with \"odd\"\ncharacters, é"  # COPY's own escapes must not show
    versions = {"plain": JobVersion("h1"), "limited": JobVersion("h2", 3, False, odd),
                "replacing": JobVersion("h3", 1, True)}
    first, later = Node(cluster(), []), Node(cluster(), [])
    first.specs = SpecHashes(first.db)  # nothing published by this object yet
    first.specs.publish(first.id, versions)
    later.specs.publish(later.id, versions)  # after its empty first publish
    query = ("SELECT job_id, spec_hash, run_limit, replace, concurrency_group "
             "FROM taskd_node_jobs WHERE node_id = %s ORDER BY job_id")
    expected = [("limited", "h2", 3, False, odd), ("plain", "h1", None, False, None),
                ("replacing", "h3", 1, True, None)]
    assert rows(first.db, query, (first.id,)) == expected
    assert rows(later.db, query, (later.id,)) == expected


def test_conflicts_are_jobs_whose_version_differs_between_live_nodes(cluster):
    a, b = Node(cluster(), ["same", "edited"]), Node(cluster(), ["same", "edited"])
    dying = Node(cluster(), [], lease_s=SHORT_LEASE_S)
    dying.specs.publish(dying.id, {"same": "v9", "only-dying": "v9"})
    assert [c["job_id"] for c in a.specs.conflicts()] == ["same"]  # the silent one counts
    b.specs.publish(b.id, {"same": "v1", "edited": "v2", "only-b": "v1"})
    wait_for(lambda: silent_past_lease(dying, a), "silence past lease")
    a.nodes.reap(a.id)  # a dead node's versions are no longer anyone's
    assert a.specs.conflicts() == [{"job_id": "edited", "hashes": {a.id: "v1", b.id: "v2"}}]


def test_equal_sets_of_versions_skip_the_conflict_view(cluster):
    """Each node's set of versions has a digest, kept up to date by each publish: when
    every live node's is the same, nothing can conflict and the costly view is not read."""
    jobs = {f"job-{i}": "v1" for i in range(20)}
    a, b = Node(cluster(), []), Node(cluster(), [])
    a.specs.publish(a.id, jobs)
    b.specs.publish(b.id, {**jobs, "job-3": "v2"})
    assert [c["job_id"] for c in a.specs.conflicts()] == ["job-3"]
    b.specs.publish(b.id, jobs)  # edited back: the same set again
    digests = rows(a.db, "SELECT DISTINCT jobs_digest FROM taskd_nodes")
    assert len(digests) == 1 and digests[0][0] is not None
    fresh = Node(cluster(), [])  # a digest made from scratch is the one kept by edits
    fresh.specs.publish(fresh.id, jobs)
    assert rows(a.db, "SELECT count(DISTINCT jobs_digest) FROM taskd_nodes") == [(1,)]
    starting = Nodes(cluster()).join("host", 1001, 8, lease_s=30.0)  # nothing published
    assert rows(a.db, "SELECT jobs_digest FROM taskd_nodes WHERE node_id = %s",
                (starting,)) == [(None,)]
    with protocol_trace(a.db) as trace:
        assert a.specs.conflicts() == []
    assert not any("taskd_node_jobs" in line for line in trace)  # the view was not read
    b.specs.publish(b.id, {k: v for k, v in jobs.items() if k != "job-0"})  # one fewer
    assert a.specs.conflicts() == []  # sets differ, versions do not: read, nothing found
