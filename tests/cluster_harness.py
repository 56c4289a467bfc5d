"""What the cluster tests share: connections to the test's own database (fixtures from
tests/postgres_server.py), a node as one daemon would be (joined, jobs published),
polling with a deadline, and libpq's protocol trace to count round trips.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from psycopg import pq

from supervisor.cluster.claims import Claim, Claims, Offer
from supervisor.cluster.database import ClusterDatabase
from supervisor.cluster.nodes import Nodes
from supervisor.cluster.specs import SpecHashes
from tests.daemon_harness import wait_until

DEADLINE_S = 20.0


def open_databases(postgres_url: str) -> Iterator[Callable[..., ClusterDatabase]]:
    """The body of each cluster test module's ``cluster`` fixture: it opens connections
    (each a ClusterDatabase) to the test's database (or to ``url``), closed after."""
    opened: list[ClusterDatabase] = []

    def open_db(url: str | None = None) -> ClusterDatabase:
        opened.append(ClusterDatabase(url or postgres_url))
        return opened[-1]

    yield open_db
    for db in opened:
        db.close()


class Node:
    """One node's view: its own connection, joined, with its jobs published."""

    def __init__(self, db: ClusterDatabase, job_ids: list[str], *, lease_s: float = 30.0,
                 workers: int = 8) -> None:
        self.db = db
        self.nodes = Nodes(db)
        self.claims = Claims(db)
        self.specs = SpecHashes(db)
        self.id = self.nodes.join("host", 1000, workers, lease_s=lease_s)
        self.specs.publish(self.id, dict.fromkeys(job_ids, "v1"))

    def claim(self, offers: list[Any], limit: int = 8) -> list[Claim]:
        return self.claims.claim(offers, limit, node_id=self.id)


def db_now(db: ClusterDatabase) -> datetime:
    with db.session() as connection:
        return connection.execute("SELECT clock_timestamp()").fetchone()[0]


def rows(db: ClusterDatabase, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with db.session() as connection:
        return connection.execute(sql, params).fetchall()


def record_for(claim: Claim, node_id: str, status: str = "SUCCESS") -> dict[str, Any]:
    return {"event": "execution", "job_id": claim.job_id, "run_id": claim.run_id,
            "timestamp": claim.claimed_at.isoformat(), "status": status,
            "scheduled_for": claim.scheduled_for.isoformat(),
            "finished_at": claim.claimed_at.isoformat(), "duration_ms": 0.0,
            "exit_code": 0 if status == "SUCCESS" else 1,
            "error": None if status == "SUCCESS" else "exit code 1", "worker": 1,
            "output_tail": "", "node": node_id}


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """``daemon_harness.wait_until`` with the cluster tests' argument order."""
    return wait_until(condition, deadline_s, message=what)


def idle_in_transaction(db: ClusterDatabase, dbname: str) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT pid, state FROM pg_stat_activity WHERE datname = %s "
                    "AND state LIKE 'idle in transaction%%'", (dbname,))


@contextmanager
def protocol_trace(db: ClusterDatabase) -> Iterator[list[str]]:
    """The frontend/backend messages of ``db``'s connection while the block runs (libpq's
    own trace), one line each: ``F <len> Sync``, ``B <len> ReadyForQuery I``..."""
    connection = db._connection()
    lines: list[str] = []
    with tempfile.TemporaryFile("w+") as trace:
        connection.pgconn.trace(trace.fileno())
        connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS
                                          | pq.Trace.REGRESS_MODE)
        try:
            yield lines
        finally:
            connection.pgconn.untrace()  # flushes the trace
            trace.seek(0)
            lines.extend(trace.read().splitlines())


MESSAGE = re.compile(r"([FB])\t\d+\t(\w+)")


def round_trips(lines: list[str]) -> int:
    """How many times the client asked the server for answers and waited: a Sync
    (extended protocol, pipelined or not), a Flush or a simple Query asks; without one
    the server owes the client nothing. Asks sent with no answer read in between (psycopg
    sends a Flush right after a pipeline's Sync) are one round trip."""
    trips, answered = 0, True
    for line in lines:
        message = MESSAGE.match(line)  # other lines continue a message's SQL text
        if message is None:
            continue
        direction, message = message.groups()
        if direction == "B":
            answered = True
        elif message in ("Sync", "Flush", "Query") and answered:
            trips, answered = trips + 1, False
    return trips


def offers_at(at: datetime, count: int, prefix: str = "job") -> list[Offer]:
    return [Offer(f"{prefix}-{i:04d}", at, "v1") for i in range(count)]
