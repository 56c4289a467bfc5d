"""The nodes of a cluster: joining, heartbeats, and a dead node's runs accounted for.

A node is one daemon's membership, a row of ``taskd_nodes`` with a fresh id each time it
joins. It heartbeats well within its lease; any node may ``reap``: nodes silent for their
lease (by the database's clock) are declared dead, and each occurrence they still had
claimed becomes ``lost`` with ONE FAILURE record ``node lost`` (the dead node's id, the
claim's run id, started at the claim) written by whichever reaper took that node. The
node row is taken with ``FOR UPDATE SKIP LOCKED`` and only while still ``alive``, so of
several reapers exactly one buries each node; the records go in the same transaction as
the node's death, so a reaper killed half-way leaves nothing half done.

A node declared dead learns it from its next heartbeat (``alive=False``): it must stop its
runs, and rejoin as a new node. It cannot claim meanwhile (claims check the node row),
and a late finish from it is refused (``Claims.finish``), so ``node lost`` stands.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from supervisor.cluster.database import ClusterDatabase
from supervisor.store.postgres import record_statement
from workers.execution import Execution, failure_record

NODE_LOST = "node lost"
LEASE_S = 15.0
GONE_KEPT_S = 86400.0  # a dead or departed node is still listed this long


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    alive: bool  # False: declared dead (or gone); stop its runs and rejoin
    db_now: datetime  # the database's clock at the heartbeat


@dataclass(frozen=True, slots=True)
class LostRun:
    """A claimed run of a node that is gone, and the record written for it."""

    node_id: str
    job_id: str
    scheduled_for: datetime
    run_id: str
    claimed_at: datetime
    record: dict[str, Any]


_JOIN = ("INSERT INTO taskd_nodes (node_id, host, pid, started_at, heartbeat_at, lease_s, "
         "workers, busy, state) VALUES (%(node_id)s, %(host)s, %(pid)s, now(), now(), "
         "%(lease_s)s, %(workers)s, 0, 'alive')")

_HEARTBEAT = """
WITH beat AS (
    UPDATE taskd_nodes SET heartbeat_at = now(), busy = %(busy)s
    WHERE node_id = %(node_id)s AND state = 'alive'
    RETURNING node_id
)
SELECT EXISTS (SELECT FROM beat), clock_timestamp()
"""

_SILENT = ("state = 'alive' AND heartbeat_at < now() - lease_s * interval '1 second'")
_ANY_SILENT = f"SELECT EXISTS (SELECT FROM taskd_nodes WHERE {_SILENT})"
_DECLARE_DEAD = f"""
WITH silent AS MATERIALIZED (
    SELECT node_id FROM taskd_nodes WHERE {_SILENT} ORDER BY node_id FOR UPDATE SKIP LOCKED
)
UPDATE taskd_nodes n SET state = 'dead', gone_at = now()
FROM silent WHERE n.node_id = silent.node_id
RETURNING n.node_id
"""
_LEAVE = ("UPDATE taskd_nodes SET state = 'left', gone_at = now(), busy = 0 "
          "WHERE node_id = %(node_id)s AND state = 'alive' RETURNING node_id")

# A statement after the node rows are locked: its snapshot holds every claim that
# committed before (a claim in flight holds the node row, so the reaper skipped it).
_LOSE_CLAIMS = """
UPDATE taskd_occurrences SET state = 'lost', finished_at = now()
WHERE node_id = ANY(%(node_ids)s) AND state = 'claimed'
RETURNING node_id, job_id, scheduled_for, run_id, claimed_at, finished_at
"""
_FORGET_JOBS = "DELETE FROM taskd_node_jobs WHERE node_id = ANY(%(node_ids)s)"

_NODES = """
SELECT node_id, host, pid,
       extract(epoch FROM clock_timestamp() - heartbeat_at)::float8,
       workers, busy, state, started_at, lease_s
FROM taskd_nodes ORDER BY started_at, node_id
"""
# The forgotten nodes' job versions with them (no foreign key: pg_migrations step 5).
_FORGET = """
WITH gone AS (
    DELETE FROM taskd_nodes WHERE state <> 'alive'
    AND gone_at < now() - %(kept_s)s * interval '1 second'
    RETURNING node_id
), versions AS (
    DELETE FROM taskd_node_jobs WHERE node_id IN (SELECT node_id FROM gone)
)
SELECT count(*) FROM gone
"""


class Nodes:
    """Cluster membership over one connection."""

    def __init__(self, db: ClusterDatabase) -> None:
        self.db = db

    def join(self, host: str, pid: int, workers: int, lease_s: float = LEASE_S) -> str:
        """A new node, alive from now; its id."""
        node_id = uuid.uuid4().hex
        with self.db.session() as db:
            db.execute(_JOIN, {"node_id": node_id, "host": host, "pid": pid,
                               "lease_s": float(lease_s), "workers": workers})
        return node_id

    def heartbeat(self, node_id: str, busy: int) -> HeartbeatResult:
        with self.db.session() as db:
            alive, db_now = db.execute(_HEARTBEAT, {"node_id": node_id,
                                                    "busy": busy}).fetchone()
        return HeartbeatResult(alive=alive, db_now=db_now)

    def reap(self, by_node_id: str) -> list[LostRun]:
        """Declare dead the nodes silent past their lease; their claimed runs lost, one
        ``node lost`` record each. ``by_node_id`` is the caller (who noticed)."""
        with self.db.session() as db:  # the usual answer, in one round trip: nobody
            (silent,) = db.execute(_ANY_SILENT).fetchone()
        if not silent:
            return []
        with self.db.transaction() as db:
            dead = [node_id for (node_id,) in db.execute(_DECLARE_DEAD).fetchall()]
            return _bury(db, dead) if dead else []

    def leave(self, node_id: str) -> list[LostRun]:
        """A clean shutdown: the node is ``left``. Its runs were finished before; any it
        still had claimed are accounted for as a reaper would (normally none)."""
        with self.db.transaction() as db:
            gone = db.execute(_LEAVE, {"node_id": node_id}).fetchall()
            return _bury(db, [node_id]) if gone else []

    def nodes(self) -> list[dict[str, Any]]:
        """Every node listed (alive, and gone within a day), oldest first; heartbeat ages
        by the database's clock."""
        with self.db.session() as db:
            rows = db.execute(_NODES).fetchall()
        return [{"id": node_id, "host": host, "pid": pid, "heartbeat_age_s": age,
                 "workers": workers, "busy": busy, "state": state,
                 "started_at": started.astimezone(UTC).isoformat(), "lease_s": lease_s}
                for node_id, host, pid, age, workers, busy, state, started, lease_s in rows]

    def forget(self, kept_s: float = GONE_KEPT_S) -> int:
        """Delete the rows of nodes gone longer than ``kept_s``; how many."""
        with self.db.session() as db:
            return db.execute(_FORGET, {"kept_s": kept_s}).fetchone()[0]


def _bury(db: psycopg.Connection, node_ids: Sequence[str]) -> list[LostRun]:
    """In the caller's transaction: the gone nodes' claims lost, a record for each."""
    rows = db.execute(_LOSE_CLAIMS, {"node_ids": list(node_ids)}).fetchall()
    lost = [LostRun(node_id, job_id, scheduled, run_id, claimed,
                    lost_record(node_id, job_id, scheduled, run_id, claimed, finished))
            for node_id, job_id, scheduled, run_id, claimed, finished in rows]
    lost.sort(key=lambda run: (run.job_id, run.run_id))  # the order finishes use
    # The store's own record statement (history, and the job's last run), all of them
    # in one round trip.
    statements = [record_statement(run.record) for run in lost]
    with db.pipeline():
        for sql, params in statements:
            db.execute(sql, params)
        db.execute(_FORGET_JOBS, {"node_ids": list(node_ids)})
    return lost


def lost_record(node_id: str, job_id: str, scheduled_for: datetime, run_id: str,
                claimed_at: datetime, finished_at: datetime) -> dict[str, Any]:
    """The FAILURE record of a run whose node died: started when it was claimed."""
    execution = Execution(run_id=run_id, job_id=job_id, task_type="",
                          scheduled_for=scheduled_for.astimezone(UTC).isoformat())
    record = failure_record(execution, started=claimed_at.astimezone(UTC),
                            finished=finished_at.astimezone(UTC), worker=0,
                            error=NODE_LOST)
    record["node"] = node_id
    return record
