"""The cluster's state store: a PostgreSQL database, through psycopg 3 (``taskd[cluster]``).

The same semantics as ``SQLiteStore``, item for item (tests/test_store_contract.py runs
both). This is the only module that imports psycopg at run time, and only cluster mode
imports it.

- ``apply``: the items are first turned into statements (a malformed item fails before
  anything is sent), then sent through psycopg's pipeline mode with no BEGIN/COMMIT
  (``batch``): PostgreSQL runs them as one implicit transaction that ends at the one
  Sync, so a batch is one round trip, all or nothing. Each record is a single statement
  (insert-or-ignore, its ``unfinished`` row deleted, its job updated only if it was
  new), so nothing waits on a result before sending the next.
- Replays: every statement is idempotent (records ``ON CONFLICT (run_id) DO NOTHING``
  and their job counted only when new; marks are upserts that set the same values, a
  ``greatest``/``coalesce`` that a second time changes nothing, or deletes), so a batch
  that committed but whose answer was lost can be applied again without duplicates.
- Connections: ``connect_timeout``, TCP keepalives and ``tcp_user_timeout`` default to
  bounded values unless the URL sets them, so a dead or unreachable server is a
  StoreError, not a hang. A connection-level failure (psycopg's ``OperationalError``:
  the server restarting or unreachable, the backend terminated, a timeout) is
  ``StoreUnreachable``, which the logger's writer rides out; the connection is dropped
  and the next call opens a new one (what failed was not applied, or is replayed
  harmlessly).
- ``location``, named in every message, is the URL without its password, and the
  password is scrubbed from any message a driver error carries.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from supervisor.store import pg_migrations
from supervisor.store.abc import (
    HistoryQuery,
    JobMemory,
    Memory,
    StateStore,
    StoreError,
    history_filters,
)

# psycopg warns on stderr (logging's last resort) of errors it ignores while a failed
# pipeline unwinds; the StoreError says what failed, and stderr carries JSON lines only.
logging.getLogger("psycopg").addHandler(logging.NullHandler())

# Connection parameters used unless the URL (or the libpq environment variable) sets them.
CONNECT_DEFAULTS = {
    "connect_timeout": ("10", "PGCONNECT_TIMEOUT"),
    "keepalives": ("1", None),
    "keepalives_idle": ("10", None),
    "keepalives_interval": ("5", None),
    "keepalives_count": ("3", None),
    # Sent bytes unacknowledged this long (ms) break the connection: keepalives only
    # watch an idle one, and the kernel's own retries on a dead network take ~15 min.
    "tcp_user_timeout": ("30000", None),
    "application_name": ("taskd", "PGAPPNAME"),
}


class StoreUnreachable(StoreError):
    """The database did not answer or dropped the connection: worth trying again later
    (a failure that says something about the data or the schema is a plain StoreError)."""


class PostgresStore(StateStore):
    def __init__(self, url: str, *, read_only: bool = False) -> None:
        """Open (as a writer: create or upgrade, under the schema lock) the store at ``url``."""
        self.location = redact_url(url)
        self.read_only = read_only
        self._url = url
        self._secrets = _secrets(url)
        self._conn: psycopg.Connection | None = None
        self._closed = False
        try:
            with self._errors():
                connection = self._connection()
                if not read_only:  # the version is checked under the schema lock
                    pg_migrations.upgrade(connection, self.location)
                elif pg_migrations.check_readable(connection, self.location) == 0:
                    raise StoreError(f"{self.location}: not a taskd state store "
                                     "(it has no taskd tables)")
        except BaseException:
            self.close()
            raise

    # -- reading -----------------------------------------------------------------------

    def load_memory(self) -> Memory:
        memory = Memory()
        with self._errors(), self._snapshot() as db:
            for row in db.execute(
                    "SELECT job_id, known_since, last_scheduled, last_started, last_status, "
                    "last_error, last_success, last_failure, paused FROM taskd_jobs"):
                memory.jobs[row[0]] = JobMemory(*row[1:8], paused=row[8])
            memory.one_time_done = set(db.execute(
                "SELECT job_id, at FROM taskd_one_time_done"))
            row = db.execute("SELECT value FROM taskd_daemon WHERE key = 'last_alive'"
                             ).fetchone()
            memory.last_alive = row[0] if row else None
            memory.unfinished = [
                {"run_id": run_id, "job_id": job_id, "scheduled_for": scheduled,
                 "dispatched_at": at, "manual": manual}
                for run_id, job_id, scheduled, at, manual in db.execute(
                    "SELECT run_id, job_id, scheduled_for, dispatched_at, manual "
                    "FROM taskd_unfinished ORDER BY dispatched_at")]
            memory.pending_retries = [
                {"job_id": job_id, "scheduled_for": scheduled, "attempt": attempt,
                 "due_at": due_at, "manual": manual}
                for job_id, scheduled, attempt, due_at, manual in db.execute(
                    "SELECT job_id, scheduled_for, attempt, due_at, manual "
                    "FROM taskd_pending_retries ORDER BY due_at")]
        return memory

    def history(self, query: HistoryQuery) -> list[dict[str, Any]]:
        where, args = history_filters(query, "%s")
        sql = "SELECT record FROM taskd_executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, id DESC LIMIT %s"
        with self._errors():
            rows = self._connection().execute(sql, (*args, max(0, query.limit))).fetchall()
        return [json.loads(record) for (record,) in rows]

    # -- writing -----------------------------------------------------------------------

    def apply(self, items: Sequence[dict[str, Any]]) -> None:
        statements = [statement for item in items for statement in _statements(item)]
        with self.batch() as db:
            cursor = db.cursor()
            for sql, params in statements:
                cursor.execute(sql, params)

    @contextmanager
    def batch(self) -> Iterator[psycopg.Connection]:
        """Statements executed in the block go in one round trip, one transaction: an
        implicit one (no BEGIN/COMMIT in autocommit mode), ended by the pipeline's Sync.

        Results are read after the block. If the block raises, the connection is
        dropped, so that the Sync that would commit what it queued is never sent.
        """
        with self._errors():
            db = self._connection()
            if not psycopg.Pipeline.is_supported():  # libpq < 14: several round trips
                with db.transaction():
                    yield db
                return
            with db.pipeline():
                try:
                    yield db
                except BaseException:
                    self._conn = None
                    db.close()
                    raise

    def prune(self, *, now: float, max_age_s: float, per_job: int, budget: int) -> int:
        deleted = 0
        with self._errors():
            db = self._connection()
            with db.transaction():
                deleted += _delete_executions(
                    db, "started < %(before)s ORDER BY started",
                    {"before": now - max_age_s, "limit": max(0, budget)})
                # One-time instants older than the history: the schedule never runs an
                # instant that old when it has a store (see Schedule.max_deadline_s).
                deleted += db.execute(
                    "DELETE FROM taskd_one_time_done WHERE (job_id, at) IN (SELECT job_id, at "
                    "FROM taskd_one_time_done WHERE at < %s LIMIT %s)",
                    (now - max_age_s, max(0, budget - deleted))).rowcount
            over = db.execute("SELECT job_id, records - %s FROM taskd_jobs WHERE records > %s",
                              (per_job, per_job)).fetchall()
            for job_id, excess in over:
                if deleted >= budget:
                    break
                with db.transaction():
                    deleted += _delete_executions(
                        db, "job_id = %(job_id)s ORDER BY started, id",
                        {"job_id": job_id, "limit": min(excess, budget - deleted)})
        return deleted

    # -- connection --------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        connection, self._conn = self._conn, None
        if connection is not None:
            with self._errors():
                connection.close()

    def _connection(self) -> psycopg.Connection:
        """The open connection, or a new one if there is none or it broke."""
        if self._closed:
            raise StoreError(f"{self.location}: the store is closed")
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True,
                                         **_connect_defaults(self._url))
            if self.read_only:
                self._conn.execute("SET default_transaction_read_only = on")
        return self._conn

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection]:
        """One consistent read (other nodes may be writing)."""
        db = self._connection()
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield db

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as error:
            unreachable = isinstance(error, psycopg.OperationalError)
            if self._conn is not None and (unreachable or self._conn.broken):
                self._conn.close()  # the next call reconnects
                self._conn = None
            reason = " ".join(str(error).split()) or type(error).__name__
            for secret in self._secrets:
                reason = reason.replace(secret, "***")
            kind = StoreUnreachable if unreachable else StoreError
            raise kind(f"{self.location}: {reason}") from None


# -- items into statements -----------------------------------------------------------

Statement = tuple[str, dict[str, Any]]

# Every record: into the history (a replay is ignored, whole), its unfinished row gone.
_INSERT_RECORD = """
WITH new AS (
    INSERT INTO taskd_executions (run_id, job_id, started, status, record)
    VALUES (%(run_id)s, %(job_id)s, %(started)s, %(status)s, %(record)s)
    ON CONFLICT (run_id) DO NOTHING
    RETURNING job_id
), finished AS (
    DELETE FROM taskd_unfinished WHERE run_id = %(run_id)s
)
"""
# A new record is also its job's last run (success or failure; the occurrence accounted
# unless manual): the upsert reads the ``new`` CTE above (or any CTE of that name and
# shape, as the cluster's finish has).
JOB_LAST_RUN = """
INSERT INTO taskd_jobs AS j (job_id, records, last_started, last_status, last_error,
                             last_success, last_failure, last_scheduled)
SELECT job_id, 1, %(timestamp)s::text, %(status)s::text, %(error)s::text,
       %(success)s::text, %(failure)s::text, %(scheduled)s::double precision FROM new
ON CONFLICT (job_id) DO UPDATE SET
    records = j.records + 1,
    last_started = excluded.last_started,
    last_status = excluded.last_status,
    last_error = excluded.last_error,
    last_success = coalesce(excluded.last_success, j.last_success),
    last_failure = coalesce(excluded.last_failure, j.last_failure),
    last_scheduled = greatest(j.last_scheduled, excluded.last_scheduled)
"""
_RECORD = _INSERT_RECORD + JOB_LAST_RUN

# A hook's record is history, but not its job's last run.
_HOOK_RECORD = _INSERT_RECORD + """
INSERT INTO taskd_jobs AS j (job_id, records) SELECT job_id, 1 FROM new
ON CONFLICT (job_id) DO UPDATE SET records = j.records + 1
"""

_DISPATCHED = (
    "INSERT INTO taskd_unfinished (run_id, job_id, scheduled_for, dispatched_at, manual) "
    "VALUES (%(run_id)s, %(job_id)s, %(scheduled_for)s, %(at)s, %(manual)s) "
    "ON CONFLICT (run_id) DO UPDATE SET job_id = excluded.job_id, "
    "scheduled_for = excluded.scheduled_for, dispatched_at = excluded.dispatched_at, "
    "manual = excluded.manual")
# The latest occurrence run or missed never goes back.
_ACCOUNTED = (
    "INSERT INTO taskd_jobs AS j (job_id, last_scheduled) VALUES (%(job_id)s, %(at)s) "
    "ON CONFLICT (job_id) DO UPDATE SET "
    "last_scheduled = greatest(j.last_scheduled, excluded.last_scheduled)")
_ONE_TIME_DONE = ("INSERT INTO taskd_one_time_done (job_id, at) VALUES (%(job_id)s, %(at)s) "
                  "ON CONFLICT DO NOTHING")
_KNOWN = ("INSERT INTO taskd_jobs AS j (job_id, known_since) VALUES (%(job_id)s, %(at)s) "
          "ON CONFLICT (job_id) DO UPDATE SET "
          "known_since = coalesce(j.known_since, excluded.known_since)")
_ALIVE = ("INSERT INTO taskd_daemon (key, value) VALUES ('last_alive', %(at)s) "
          "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_PAUSED = ("INSERT INTO taskd_jobs (job_id, paused) VALUES (%(job_id)s, %(paused)s) "
           "ON CONFLICT (job_id) DO UPDATE SET paused = excluded.paused")


def _statements(item: dict[str, Any]) -> list[Statement]:
    record = item.get("record")
    if record is not None:
        return [record_statement(record)]
    return _MARKS[item["mark"]](item)


def record_statement(record: dict[str, Any]) -> Statement:
    """The statement that stores one execution record (a hook's, or a job's last run)."""
    params = {"run_id": record["run_id"], "job_id": record["job_id"],
              "started": _epoch(record["timestamp"]), "status": record["status"],
              "record": json.dumps(record, ensure_ascii=False)}
    if record.get("hook"):
        return _HOOK_RECORD, params
    success = record["status"] == "SUCCESS"
    params.update(
        timestamp=record["timestamp"], error=_text(record.get("error")),
        success=record["timestamp"] if success else None,
        failure=None if success else record["timestamp"],
        scheduled=None if record.get("manual") else _epoch(record["scheduled_for"]))
    return _RECORD, params


def _dispatched(mark: dict[str, Any]) -> list[Statement]:
    statements = [(_DISPATCHED, {"run_id": mark["run_id"], "job_id": mark["job_id"],
                                 "scheduled_for": mark["scheduled_for"], "at": mark["at"],
                                 "manual": bool(mark.get("manual"))})]
    if not mark.get("manual"):
        statements += _occurrence_done(mark)
    return statements


def _occurrence_done(mark: dict[str, Any]) -> list[Statement]:
    params = {"job_id": mark["job_id"], "at": _epoch(mark["scheduled_for"])}
    statements = [(_ACCOUNTED, params)]
    if mark.get("one_time"):
        statements.append((_ONE_TIME_DONE, params))
    return statements


def _known(mark: dict[str, Any]) -> list[Statement]:
    return [(_KNOWN, {"job_id": job_id, "at": mark["at"]}) for job_id in mark["job_ids"]]


def _alive(mark: dict[str, Any]) -> list[Statement]:
    return [(_ALIVE, {"at": mark["at"]})]


def _paused(mark: dict[str, Any]) -> list[Statement]:
    return [(_PAUSED, {"job_id": mark["job_id"], "paused": bool(mark["paused"])})]


_RETRY = (
    "INSERT INTO taskd_pending_retries (job_id, scheduled_for, attempt, due_at, manual) "
    "VALUES (%(job_id)s, %(scheduled_for)s, %(attempt)s, %(due_at)s, %(manual)s) "
    "ON CONFLICT (job_id) DO UPDATE SET scheduled_for = excluded.scheduled_for, "
    "attempt = excluded.attempt, due_at = excluded.due_at, manual = excluded.manual")
_RETRY_DONE = "DELETE FROM taskd_pending_retries WHERE job_id = %(job_id)s"


def _retry(mark: dict[str, Any]) -> list[Statement]:
    return [(_RETRY, {"job_id": mark["job_id"], "scheduled_for": mark["scheduled_for"],
                      "attempt": mark["attempt"], "due_at": mark["due_at"],
                      "manual": bool(mark.get("manual"))})]


def _retry_done(mark: dict[str, Any]) -> list[Statement]:
    return [(_RETRY_DONE, {"job_id": mark["job_id"]})]


_MARKS = {"dispatched": _dispatched, "missed": _occurrence_done, "known": _known,
          "alive": _alive, "paused": _paused, "retry": _retry, "retry_done": _retry_done}


def _delete_executions(db: psycopg.Connection, which: str, params: dict[str, Any]) -> int:
    """Delete up to ``params["limit"]`` executions chosen by ``which`` (a condition and
    an order), keeping each job's record count; how many were deleted."""
    (deleted,) = db.execute(f"""
        WITH doomed AS (
            SELECT id FROM taskd_executions WHERE {which} LIMIT %(limit)s
        ), gone AS (
            DELETE FROM taskd_executions e USING doomed WHERE e.id = doomed.id
            RETURNING e.job_id
        ), counts AS (
            SELECT job_id, count(*) AS n FROM gone GROUP BY job_id
        ), recounted AS (
            UPDATE taskd_jobs j SET records = greatest(0, j.records - counts.n)
            FROM counts WHERE j.job_id = counts.job_id
        )
        SELECT coalesce(sum(n), 0)::bigint FROM counts""", params).fetchone()
    return deleted


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _text(value: str | None) -> str | None:
    """PostgreSQL's text cannot hold NUL (SQLite's can): the one place a raw string from
    a run lands in a text column is its error."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


# -- URLs ----------------------------------------------------------------------------


# ``password=...`` in a libpq keyword string, its value quoted or not.
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def redact_url(url: str) -> str:
    """The URL (or libpq keyword string) without its password, to name the database."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        userinfo, at, hosts = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hosts}" if at and user else hosts
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(key, value) for key, value in pairs if key != "password"],
                              safe="/")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    try:
        conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unreadable PostgreSQL connection string)"
    return " ".join(_KEYWORD_PASSWORD.sub(" ", url).split())


def _secrets(url: str) -> list[str]:
    """Every spelling of the URL's password that a driver message could echo."""
    found = set()
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
        found.update(value for key, value in parse_qsl(parts.query, keep_blank_values=True)
                     if key == "password")
    else:
        found.update(match.group(1) for match in _KEYWORD_PASSWORD.finditer(url))
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        found.add(str(password))
    found.discard("")
    return sorted(found, key=len, reverse=True)  # a longer spelling first: no partial leak


def _connect_defaults(url: str) -> dict[str, str]:
    given = conninfo_to_dict(url)
    return {key: value for key, (value, env) in CONNECT_DEFAULTS.items()
            if key not in given and not (env and os.environ.get(env))}
