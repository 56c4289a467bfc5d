"""Occurrences offered by every node and claimed by one, against a real PostgreSQL
(tests/postgres_server.py, a database per test): exactly once under concurrent
claimers, never before the database's now(), finishes that a lost run refuses, misses
reported once, one round trip per batch, and a dropped connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from supervisor.cluster.claims import Claim, Offer
from supervisor.store.abc import HistoryQuery, StoreError
from tests.cluster_harness import (
    MESSAGE,
    Node,
    db_now,
    idle_in_transaction,
    offers_at,
    protocol_trace,
    record_for,
    round_trips,
    rows,
    wait_for,
)

# -- exactly once -----------------------------------------------------------------------


def test_three_nodes_claim_1000_occurrences_each_exactly_once(cluster):
    jobs = [f"job-{i:04d}" for i in range(1000)]
    nodes = [Node(cluster(), jobs) for _ in range(3)]
    at = db_now(nodes[0].db) - timedelta(seconds=1)
    offers = offers_at(at, 1000)
    got: dict[str, list[Claim]] = {node.id: [] for node in nodes}
    batches: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run(node: Node) -> None:
        try:
            start.wait()
            # Every node offers every occurrence (as each computes the same schedule),
            # 50 at a time with its claims, then claims until nothing is left for it.
            for i in range(0, len(offers), 50):
                claimed = node.claim(offers[i:i + 50])
                batches.append(len(claimed))
                got[node.id] += claimed
            while claimed := node.claim([]):
                batches.append(len(claimed))
                got[node.id] += claimed
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    claimed = [(c.job_id, c.scheduled_for) for claims in got.values() for c in claims]
    assert sorted(claimed) == [(job, at) for job in jobs]  # each once, none missing
    assert all(got.values()), {node: len(claims) for node, claims in got.items()}
    assert max(batches) <= 8
    run_ids = [c.run_id for claims in got.values() for c in claims]
    assert len(set(run_ids)) == 1000
    by_node = dict(rows(nodes[0].db, "SELECT node_id, count(*) FROM taskd_occurrences "
                                     "WHERE state = 'claimed' GROUP BY node_id"))
    assert by_node == {node: len(claims) for node, claims in got.items()}


def test_an_occurrence_once_claimed_is_never_due_again(cluster):
    a, b = Node(cluster(), ["a", "b", "c"]), Node(cluster(), ["a", "b", "c"])
    at = db_now(a.db) - timedelta(seconds=1)
    (first,) = a.claim([("a", at, "v1")])
    assert b.claim([("a", at, "v1")]) == []  # offered again by another node: nothing
    assert a.claim([("a", at, "v1")]) == []
    assert a.claims.finish(first.run_id, a.id, record_for(first, a.id))
    assert b.claim([("a", at, "v1")]) == []  # done: still nothing
    # A later instant of the same job is another occurrence.
    (later,) = b.claim([("a", at + timedelta(microseconds=1), "v1")])
    assert later.run_id != first.run_id
    states = rows(a.db, "SELECT state, count(*) FROM taskd_occurrences GROUP BY state")
    assert sorted(states) == [("claimed", 1), ("done", 1)]


def test_nothing_is_claimed_before_the_databases_now(cluster):
    node = Node(cluster(), ["soon", "later"])
    now = db_now(node.db)
    later, soon = now + timedelta(seconds=5), now + timedelta(seconds=0.3)
    assert node.claim([("later", later, "v1"), ("soon", soon, "v1")]) == []
    (claim,) = wait_for(lambda: node.claim([]), "the occurrence 0.3 s ahead to be claimable")
    assert claim.job_id == "soon" and claim.claimed_at >= soon
    assert rows(node.db, "SELECT state FROM taskd_occurrences WHERE job_id = 'later'") == [
        ("due",)]


def test_the_limit_is_respected_oldest_first(cluster):
    jobs = [f"job-{i:04d}" for i in range(20)]
    node = Node(cluster(), jobs)
    base = db_now(node.db) - timedelta(seconds=60)
    offers = [Offer(job, base + timedelta(seconds=i), "v1") for i, job in enumerate(jobs)]
    assert node.claim(list(reversed(offers)), limit=0) == []  # offered, none taken
    assert rows(node.db, "SELECT count(*) FROM taskd_occurrences WHERE state = 'due'") == [
        (20,)]
    first = node.claim([], limit=3)
    assert [c.job_id for c in first] == jobs[:3]
    assert [c.job_id for c in node.claim([], limit=100)] == jobs[3:]


def test_a_node_claims_only_the_jobs_it_has(cluster):
    has_a, has_b = Node(cluster(), ["a"]), Node(cluster(), ["b"])
    at = db_now(has_a.db) - timedelta(seconds=1)
    assert [c.job_id for c in has_a.claim([("a", at, "v1"), ("b", at, "v1")])] == ["a"]
    has_b.specs.publish(has_b.id, {"b": "v2"})
    assert [c.job_id for c in has_b.claim([])] == ["b"]
    # The occurrence records the version run: the claimer's.
    assert rows(has_a.db, "SELECT job_id, spec_hash FROM taskd_occurrences ORDER BY 1") == [
        ("a", "v1"), ("b", "v2")]


# -- finish -------------------------------------------------------------------------------


def test_finish_records_the_run_once_and_only_for_its_claimer(cluster):
    a, b = Node(cluster(), ["job"]), Node(cluster(), ["job"])
    at = db_now(a.db) - timedelta(seconds=1)
    (claim,) = a.claim([("job", at, "v1")])
    record = record_for(claim, a.id, "FAILURE")
    assert not b.claims.finish(claim.run_id, b.id, record)  # not b's claim
    assert a.db.history(HistoryQuery()) == []
    assert a.claims.finish(claim.run_id, a.id, record)
    assert a.claims.finish(claim.run_id, a.id, record)  # sent again: still one record
    assert a.db.history(HistoryQuery()) == [record]
    job = a.db.load_memory().jobs["job"]  # the store's own bookkeeping, as for any record
    assert (job.last_status, job.last_error, job.last_failure) == (
        "FAILURE", "exit code 1", record["timestamp"])
    assert rows(a.db, "SELECT state FROM taskd_occurrences") == [("done",)]
    with pytest.raises(ValueError, match="not the record"):
        a.claims.finish("another-run", a.id, record)


def test_a_late_finish_after_node_lost_writes_nothing(cluster):
    dying, peer = Node(cluster(), ["job"], lease_s=0.3), Node(cluster(), ["job"])
    at = db_now(dying.db) - timedelta(seconds=1)
    (claim,) = dying.claim([("job", at, "v1")])
    (lost,) = wait_for(lambda: peer.nodes.reap(peer.id), "the silent node to be reaped")
    assert lost.run_id == claim.run_id
    assert not dying.claims.finish(claim.run_id, dying.id, record_for(claim, dying.id))
    history = dying.db.history(HistoryQuery())
    assert [(r["run_id"], r["error"], r["node"]) for r in history] == [
        (claim.run_id, "node lost", dying.id)]
    assert dying.db.load_memory().jobs["job"].last_error == "node lost"


def test_finishing_a_batch_is_one_round_trip(cluster):
    jobs = [f"job-{i:04d}" for i in range(50)]
    node = Node(cluster(), jobs)
    claims = node.claim(offers_at(db_now(node.db) - timedelta(seconds=1), 50), limit=50)
    finished = [(c.run_id, node.id, record_for(c, node.id)) for c in claims]
    finished.append(("ghost", node.id, {**finished[0][2], "run_id": "ghost"}))
    with protocol_trace(node.db) as trace:
        assert node.claims.finish_many(finished) == [True] * 50 + [False]
    assert round_trips(trace) == 1
    assert len(node.db.history(HistoryQuery(limit=100))) == 50


def test_which_finishes_were_kept_is_asked_by_run_id(cluster):
    """Each finish's row by its run id (the unique index), whatever the planner makes of
    the table: a join read every done row at each batch while the table was small (the
    first minutes of a burst), for a tenth of a millisecond of the server's per batch."""
    from supervisor.cluster.claims import _FINISHED

    node = Node(cluster(), [])
    with node.db.session() as db:
        db.execute("INSERT INTO taskd_occurrences (job_id, scheduled_for, state, offered_at, "
                   "node_id, run_id) SELECT 'job', now() - i * interval '1 second', 'done', now(), "
                   "%s, 'run-' || i FROM generate_series(1, 500) i", (node.id,))
        plan = db.execute("EXPLAIN " + _FINISHED, {"run_ids": ["run-7", "run-9"],
                                                   "node_ids": [node.id] * 2}).fetchall()
    assert not any("Seq Scan" in line for (line,) in plan), plan
    assert rows(node.db, _FINISHED, {"run_ids": ["run-7", "nope"],
                                     "node_ids": [node.id] * 2}) == [("run-7",)]


def test_a_large_batch_of_offers_gets_the_table_analyzed_for_the_claims_after_it(cluster):
    """Without statistics the planner sorts every due row at each claim; the node that
    offered a burst has them made at once, not a minute later by autovacuum."""
    from supervisor.cluster.claims import ANALYZE_AFTER_OFFERS

    count = ANALYZE_AFTER_OFFERS + 100
    node = Node(cluster(), [f"job-{i:04d}" for i in range(count)])

    def known_rows():
        return rows(node.db, "SELECT reltuples FROM pg_class "
                             "WHERE relname = 'taskd_occurrences'")[0][0]

    assert known_rows() < 0  # never analyzed
    node.claim(offers_at(db_now(node.db) - timedelta(seconds=1), count), limit=8)
    assert known_rows() == count


def test_a_batch_with_several_runs_of_a_job_keeps_its_last_run_as_the_store_would(
        cluster):
    """One statement finishes a batch: a job's last run is its latest record there, its
    last success and failure the latest of each, its count all of them."""
    node = Node(cluster(), ["job", "other"])
    start = db_now(node.db) - timedelta(seconds=5)
    claims = node.claim([("job", start + timedelta(seconds=i), "v1") for i in range(3)]
                        + [("other", start, "v1")], limit=4)
    statuses = {0: "SUCCESS", 1: "FAILURE", 2: "SUCCESS"}
    records = []
    for claim in claims:
        second = round((claim.scheduled_for - start).total_seconds())
        record = record_for(claim, node.id, statuses[second] if claim.job_id == "job"
                            else "FAILURE")
        record["timestamp"] = (claim.scheduled_for + timedelta(seconds=0.5)).isoformat()
        records.append(record)
    finished = [(r["run_id"], node.id, r) for r in reversed(records)]  # any order
    assert node.claims.finish_many(finished) == [True] * 4
    jobs = node.db.load_memory().jobs
    by_second = {round((datetime.fromisoformat(r["scheduled_for"]) - start)
                       .total_seconds()): r for r in records if r["job_id"] == "job"}
    job = jobs["job"]
    assert (job.last_status, job.last_error) == ("SUCCESS", None)
    assert job.last_success == by_second[2]["timestamp"]
    assert job.last_failure == by_second[1]["timestamp"]
    assert job.last_scheduled == (start + timedelta(seconds=2)).timestamp()
    assert rows(node.db, "SELECT job_id, records FROM taskd_jobs ORDER BY job_id") == [
        ("job", 3), ("other", 1)]
    assert jobs["other"].last_status == "FAILURE" and jobs["other"].last_success is None
    assert node.claims.finish_many(finished) == [True] * 4  # sent again: nothing twice
    assert rows(node.db, "SELECT sum(records) FROM taskd_jobs") == [(4,)]


# -- misses -------------------------------------------------------------------------------


def test_each_stale_offer_is_expired_exactly_once_across_concurrent_callers(cluster):
    jobs = [f"job-{i:04d}" for i in range(300)]
    nodes = [Node(cluster(), jobs) for _ in range(3)]
    now = db_now(nodes[0].db)
    stale = [Offer(job, now - timedelta(seconds=120), "v1") for job in jobs[:200]]
    # Past their own deadline (5 s late, 1 s allowed): missed whatever older_than_s says.
    stale += [Offer(job, now - timedelta(seconds=5), "v1", 1.0) for job in jobs[200:250]]
    fresh = [Offer(job, now - timedelta(seconds=5), "v1", 3600) for job in jobs[250:]]
    nodes[0].claim(stale + fresh, limit=0)
    got: list[list[tuple[str, datetime]]] = [[] for _ in nodes]
    start = threading.Barrier(3)

    def run(i: int) -> None:
        start.wait()
        while expired := nodes[i].claims.expire(60, limit=7):
            got[i] += expired

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    reported = [item for items in got for item in items]
    assert sorted(reported) == sorted((o.job_id, o.scheduled_for) for o in stale)
    # Missed is final: neither claimable nor due again when offered anew.
    assert [c.job_id for c in nodes[1].claim(stale + fresh, limit=1000)] == jobs[250:]
    assert nodes[2].claims.expire(60) == []


# -- round trips, connections, transactions -----------------------------------------------


def test_a_claim_is_one_round_trip_for_a_batch_of_50_offers(cluster):
    jobs = [f"job-{i:04d}" for i in range(50)]
    node = Node(cluster(), jobs)
    offers = offers_at(db_now(node.db) - timedelta(seconds=1), 50)
    node.claim([], limit=1)  # the connection is open: the trace sees only the claim
    with protocol_trace(node.db) as trace:
        claims = node.claim(offers, limit=8)
    assert len(claims) == 8
    assert round_trips(trace) == 1, "\n".join(trace)
    # ... and it was one transaction: statements, one Sync after the last of them, then
    # the answers (psycopg may or may not send a Flush after the Sync: timing, not taskd).
    sent = [m.group(2) for m in map(MESSAGE.match, trace) if m and m.group(1) == "F"]
    assert sent.count("Sync") == 1 and "Execute" not in sent[sent.index("Sync"):], sent
    assert "BEGIN" not in "\n".join(trace)


def test_a_dropped_connection_fails_one_call_names_the_database_and_reconnects(
        postgres_server, postgres_url, cluster):
    dbname = urlsplit(postgres_url).path.lstrip("/")
    url = postgres_server.url(dbname, password="s3cret-pw")
    node = Node(cluster(url), ["job"])
    at = db_now(node.db) - timedelta(seconds=1)
    postgres_server.execute("postgres", (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'taskd'"), (dbname,))
    with pytest.raises(StoreError) as raised:
        node.claim([("job", at, "v1")])
    message = str(raised.value)
    assert message.startswith(postgres_server.url(dbname) + ": ") and "s3cret" not in message
    (claim,) = node.claim([("job", at, "v1")])  # the next call reconnects: nothing was lost
    assert claim.job_id == "job"
    assert idle_in_transaction(node.db, dbname) == []


def test_an_error_inside_a_batch_commits_nothing_and_leaves_no_transaction_open(
        postgres_url, cluster):
    dbname = urlsplit(postgres_url).path.lstrip("/")
    node = Node(cluster(), ["a", "b"])
    at = db_now(node.db) - timedelta(seconds=1)
    with pytest.raises(RuntimeError), node.db.batch() as db:
        db.execute("INSERT INTO taskd_occurrences (job_id, scheduled_for, state, offered_at) "
                   "VALUES ('a', %s, 'due', now())", (at,))
        raise RuntimeError("a bug between two statements")
    # A statement the server refuses rolls back the whole batch, the offer included.
    with pytest.raises(StoreError, match="taskd_occurrences_state_check"), \
            node.db.batch() as db:
        db.execute("INSERT INTO taskd_occurrences (job_id, scheduled_for, state, offered_at) "
                   "VALUES ('a', %s, 'due', now())", (at,))
        db.execute("INSERT INTO taskd_occurrences (job_id, scheduled_for, state, offered_at) "
                   "VALUES ('b', %s, 'bogus', now())", (at,))
    assert rows(node.db, "SELECT count(*) FROM taskd_occurrences") == [(0,)]
    assert idle_in_transaction(node.db, dbname) == []
    assert [c.job_id for c in node.claim([("a", at, "v1"), ("b", at, "v1")])] == ["a", "b"]


def test_the_cluster_database_is_the_shared_state_store(cluster):
    from supervisor.store import pg_migrations

    db = cluster()
    assert rows(db, "SELECT version FROM taskd_schema") == [(pg_migrations.CURRENT,)]
    assert db.history(HistoryQuery()) == [] and db.load_memory().jobs == {}


def test_a_claim_whose_answer_was_lost_comes_back_with_the_next_call(cluster, monkeypatch):
    jobs = [f"job-{i:04d}" for i in range(12)]
    node = Node(cluster(), jobs)
    offers = offers_at(db_now(node.db) - timedelta(seconds=1), 12)
    real_batch = node.db.batch

    @contextmanager
    def batch_whose_answer_is_lost() -> Iterator[Any]:
        with real_batch() as db:  # sent and committed...
            yield db
        raise StoreError("the connection broke before the answer came")  # ... unseen

    monkeypatch.setattr(node.db, "batch", batch_whose_answer_is_lost)
    with pytest.raises(StoreError):
        node.claim(offers, limit=5)
    monkeypatch.undo()
    assert rows(node.db, "SELECT count(*) FROM taskd_occurrences WHERE state = 'claimed'"
                ) == [(5,)]
    again = node.claim([], limit=8)  # the 5 it holds, and 3 more: 8 in all
    assert [c.job_id for c in again] == jobs[:8]
    assert len({c.run_id for c in again}) == 8
    assert [c.job_id for c in node.claim([], limit=8)] == jobs[8:]  # nothing twice


def test_running_claims_are_listed_and_pruned_ones_are_never_offered_again(cluster):
    a, b = Node(cluster(), ["old", "new"]), Node(cluster(), ["old", "new"])
    now = db_now(a.db)
    old, new = now - timedelta(seconds=120), now - timedelta(seconds=1)
    (claim_old,) = a.claim([("old", old, "v1")])
    (claim_new,) = b.claim([("new", new, "v1")])
    running = a.claims.running()
    assert sorted((r["node"], r["run_id"]) for r in running) == sorted(
        [(a.id, claim_old.run_id), (b.id, claim_new.run_id)])
    a.claims.retention_s = 60.0  # "old" is 120 s old
    assert a.claims.prune() == 0  # still running: kept
    assert a.claims.finish(claim_old.run_id, a.id, record_for(claim_old, a.id))
    assert a.claims.prune() == 1 and a.claims.prune() == 0
    # Older than the retention: refused as an offer, so never due (and run) again.
    assert a.claim([("old", old, "v1")]) == []
    assert rows(a.db, "SELECT job_id FROM taskd_occurrences") == [("new",)]
