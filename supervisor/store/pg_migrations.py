"""The PostgreSQL store's schema: one list of steps, each taking version N-1 to N.

The same rules as the SQLite schema (``migrations``): a step is never edited once
released, each step runs in its own transaction with its version bump (PostgreSQL's DDL
is transactional, so a failed step leaves the store at the last complete version), and
a store above ``CURRENT`` was written by a newer taskd: refused, never touched.

Several nodes may start at once on a new database: every step's transaction first takes
a transaction-level advisory lock (``pg_advisory_xact_lock``), then reads the version,
so one starter creates the schema and the others, once it commits, find it done.

Every table is named ``taskd_*``, so the database can be shared with other
applications. Epochs are ``double precision`` seconds (the floats of ``Memory``, exactly
as they were written); ISO timestamps are kept as the text the record had. This module
only talks to a connection it is given and imports nothing from psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.store.abc import StoreError, refuse_newer

if TYPE_CHECKING:
    import psycopg

STEPS: list[str] = [
    # 1: the first schema (the SQLite schema 1, tables prefixed).
    """
    CREATE TABLE taskd_executions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        started DOUBLE PRECISION NOT NULL,  -- epoch seconds of the record's "timestamp"
        status TEXT NOT NULL,
        record TEXT NOT NULL                -- the execution log line, JSON
    );
    CREATE INDEX taskd_executions_by_job ON taskd_executions (job_id, started, id);
    CREATE INDEX taskd_executions_by_start ON taskd_executions (started, id);
    CREATE INDEX taskd_executions_by_status ON taskd_executions (status, started, id);
    CREATE TABLE taskd_jobs (
        job_id TEXT PRIMARY KEY,
        known_since DOUBLE PRECISION,       -- first loaded (jobs that catch up)
        last_scheduled DOUBLE PRECISION,    -- latest occurrence run or reported missed
        last_started TEXT,
        last_status TEXT,
        last_error TEXT,
        last_success TEXT,
        last_failure TEXT,
        records BIGINT NOT NULL DEFAULT 0,
        paused BOOLEAN NOT NULL DEFAULT false
    );
    CREATE TABLE taskd_one_time_done (
        job_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_id, at)
    );
    CREATE INDEX taskd_one_time_done_by_time ON taskd_one_time_done (at);
    CREATE TABLE taskd_unfinished (          -- handed to a worker, not recorded yet
        run_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        scheduled_for TEXT NOT NULL,
        dispatched_at DOUBLE PRECISION NOT NULL,
        manual BOOLEAN NOT NULL
    );
    CREATE TABLE taskd_daemon (key TEXT PRIMARY KEY, value DOUBLE PRECISION);
    """,
    # 2: retries waiting (the SQLite schema 2).
    """
    CREATE TABLE taskd_pending_retries (
        job_id TEXT PRIMARY KEY,
        scheduled_for TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        manual BOOLEAN NOT NULL
    );
    """,
    # 3: cluster mode (supervisor/cluster): nodes, the job versions each has, and every
    # scheduled occurrence, claimed at most once. Times here are the database's clock.
    """
    CREATE TABLE taskd_nodes (
        node_id TEXT PRIMARY KEY,           -- a fresh id each time a daemon joins
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL,
        lease_s DOUBLE PRECISION NOT NULL,  -- silent this long: any peer declares it dead
        workers INTEGER NOT NULL,
        busy INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('alive', 'dead', 'left')),
        gone_at TIMESTAMPTZ                 -- declared dead, or left
    );
    CREATE INDEX taskd_nodes_alive ON taskd_nodes (heartbeat_at) WHERE state = 'alive';
    CREATE TABLE taskd_node_jobs (          -- written on change only, never per heartbeat
        node_id TEXT NOT NULL REFERENCES taskd_nodes ON DELETE CASCADE,
        job_id TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        PRIMARY KEY (node_id, job_id)
    );
    CREATE TABLE taskd_occurrences (
        job_id TEXT NOT NULL,
        scheduled_for TIMESTAMPTZ NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('due', 'claimed', 'done', 'lost', 'missed')),
        node_id TEXT,                       -- the claimer
        run_id TEXT UNIQUE,
        offered_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ,             -- due and not claimed by then: missed
        claimed_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        spec_hash TEXT,                     -- the version run (the claimer's)
        PRIMARY KEY (job_id, scheduled_for)
    );
    CREATE INDEX taskd_occurrences_due ON taskd_occurrences (scheduled_for, job_id)
        WHERE state = 'due';
    CREATE INDEX taskd_occurrences_claimed ON taskd_occurrences (node_id)
        WHERE state = 'claimed';
    CREATE INDEX taskd_occurrences_by_time ON taskd_occurrences (scheduled_for);
    """,
    # 4: limits held cluster-wide (claims.py): each node's version of a job says its
    # limits, a claimed occurrence its concurrency group; a claim may skip an occurrence
    # (overlap) or ask the node running an older one to stop it (overlap: replace).
    """
    ALTER TABLE taskd_node_jobs
        ADD COLUMN run_limit INTEGER,       -- overlap skip/replace: 1; max_concurrent: N
        ADD COLUMN replace BOOLEAN NOT NULL DEFAULT false,
        ADD COLUMN concurrency_group TEXT;
    ALTER TABLE taskd_occurrences
        DROP CONSTRAINT taskd_occurrences_state_check,
        ADD CONSTRAINT taskd_occurrences_state_check
            CHECK (state IN ('due', 'claimed', 'done', 'lost', 'missed', 'skipped')),
        ADD COLUMN concurrency_group TEXT,  -- the claimer's version's
        ADD COLUMN stop_reason TEXT;        -- claimed, and its node is asked to stop it
    CREATE INDEX taskd_occurrences_running ON taskd_occurrences (job_id)
        WHERE state = 'claimed';
    CREATE INDEX taskd_occurrences_group_running ON taskd_occurrences (concurrency_group)
        WHERE state = 'claimed' AND concurrency_group IS NOT NULL;
    ALTER TABLE taskd_nodes ADD COLUMN jobs_digest BIGINT;  -- of its set of job versions
    -- When each job's row last changed (its last run, its pause): what every node's
    -- status follows (cluster/job_view.py).
    ALTER TABLE taskd_jobs ADD COLUMN changed_at TIMESTAMPTZ NOT NULL DEFAULT now();
    CREATE INDEX taskd_jobs_by_change ON taskd_jobs (changed_at);
    CREATE FUNCTION taskd_jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.changed_at := OLD.changed_at;
        IF NEW IS DISTINCT FROM OLD THEN  -- an update that changes nothing leaves it
            NEW.changed_at := now();
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER taskd_jobs_changed BEFORE UPDATE ON taskd_jobs
        FOR EACH ROW EXECUTE FUNCTION taskd_jobs_changed();
    """,
    # 5: a node's job versions without the foreign key to its node: the key checked
    # every row of a join's 100,000 (a third of the server's time for that insert);
    # the rows go with their node as it is buried or forgotten (cluster/nodes.py).
    """
    ALTER TABLE taskd_node_jobs DROP CONSTRAINT taskd_node_jobs_node_id_fkey;
    DELETE FROM taskd_node_jobs j
    WHERE NOT EXISTS (SELECT 1 FROM taskd_nodes n WHERE n.node_id = j.node_id);
    """,
]
CURRENT = len(STEPS)
_MARKER = "taskd_schema"  # the version table: also how a taskd store is told apart
SCHEMA_LOCK = 0x7461736B64  # "taskd": the advisory lock key every schema change takes
LOCK_TIMEOUT = "60s"  # a starter stuck holding the lock fails the others, never hangs them


def version_of(connection: psycopg.Connection, location: str) -> int:
    """0 for a database without taskd's tables; StoreError if the version is unreadable."""
    # The catalog read through the statement's snapshot, not to_regclass(): its cached
    # "no such table" can predate a concurrent starter's commit seen since the lock.
    (exists,) = connection.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = current_schema())",
        (_MARKER,)).fetchone()
    if not exists:
        return 0
    rows = connection.execute(f"SELECT version FROM {_MARKER}").fetchall()
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreError(f"{location}: its schema version is unreadable")
    return rows[0][0]


def check_readable(connection: psycopg.Connection, location: str) -> int:
    """The version, if this taskd can read the store as it is (StoreTooNew if newer)."""
    return refuse_newer(version_of(connection, location), CURRENT, location)


def upgrade(connection: psycopg.Connection, location: str, target: int | None = None) -> int:
    """Bring the store to ``CURRENT`` (tests: to ``target``) on a connection in autocommit
    mode; the version it was at before (as first seen under the lock)."""
    target = CURRENT if target is None else target
    before: int | None = None
    while True:
        with connection.transaction():  # one per step, its version bump included
            connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            version = check_readable(connection, location)
            before = version if before is None else before
            if version >= target:
                return before
            if version == 0:
                connection.execute(f"CREATE TABLE {_MARKER} (version INTEGER NOT NULL)")
                connection.execute(f"INSERT INTO {_MARKER} VALUES (0)")
            connection.execute(STEPS[version])  # no parameters: several statements at once
            connection.execute(f"UPDATE {_MARKER} SET version = %s", (version + 1,))
