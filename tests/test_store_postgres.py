"""What only the PostgreSQL store has to get right: many starters on one database, a
newer schema, passwords, and a server that dies or hangs. Against a real server
(tests/postgres_server.py); the contract every store keeps is tests/test_store_contract.py.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from supervisor.store.abc import HistoryQuery, StoreError, StoreTooNew
from tests.postgres_server import PostgresServer
from tests.test_store_contract import T0, dispatched, iso, record

ROOT = Path(__file__).resolve().parent.parent


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def version_rows(server: PostgresServer, url: str) -> list[tuple]:
    return server.execute(dbname(url), "SELECT version FROM taskd_schema")


def test_only_the_postgres_store_and_cluster_mode_import_psycopg():
    # Single-node taskd never needs psycopg, nor the cluster extra installed.
    importers = []
    for path in [*ROOT.glob("supervisor/**/*.py"), *ROOT.glob("workers/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "psycopg" for name in names):
                importers.append(str(path.relative_to(ROOT)))
    allowed = {"supervisor/store/pg_migrations.py",  # type hints only
               "supervisor/store/postgres.py"}
    assert sorted(path for path in set(importers)
                  if path not in allowed and not path.startswith("supervisor/cluster/")) == []
    assert allowed <= set(importers)


@pytest.mark.parametrize(("url", "location"), [
    ("postgresql://taskd:s3cret@db.example:5432/taskd", "postgresql://taskd@db.example:5432/taskd"),
    ("postgres://:s3cret@db/taskd", "postgres://db/taskd"),
    ("postgresql://taskd@db/taskd?password=s3cret&sslmode=require",
     "postgresql://taskd@db/taskd?sslmode=require"),
    ("postgresql://u:p%40ss@h1:5432,h2:5433/db", "postgresql://u@h1:5432,h2:5433/db"),
    ("postgresql://taskd@/taskd?host=/run/pg", "postgresql://taskd@/taskd?host=/run/pg"),
    ("host=db user=taskd password=s3cret dbname=taskd", "host=db user=taskd dbname=taskd"),
    ("host=db password='s3 cret' dbname=taskd", "host=db dbname=taskd"),
])
def test_the_location_is_the_url_without_its_password(url, location):
    from supervisor.store.postgres import redact_url

    assert redact_url(url) == location


def test_concurrent_starters_create_the_schema_once(postgres_server, postgres_url):
    from supervisor.store.postgres import PostgresStore

    starters = 6
    barrier = threading.Barrier(starters)
    stores, errors = [], []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PostgresStore(postgres_url))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == [] and len(stores) == starters
        from supervisor.store.pg_migrations import CURRENT

        assert version_rows(postgres_server, postgres_url) == [(CURRENT,)]
        # Every starter writes to the one schema; the same record from two is stored once.
        for store in stores:
            store.apply([{"record": record("a", 0)}])
        assert len(stores[0].history(HistoryQuery())) == 1
    finally:
        for store in stores:
            store.close()


def test_a_newer_schema_is_refused_and_left_as_it_is(postgres_server, postgres_url):
    from supervisor.store import pg_migrations
    from supervisor.store.postgres import PostgresStore

    store = PostgresStore(postgres_url)
    store.apply([{"record": record("a", 0)}])
    store.close()
    newer = pg_migrations.CURRENT + 5
    db = dbname(postgres_url)
    postgres_server.execute(db, "UPDATE taskd_schema SET version = %s", (newer,))
    postgres_server.execute(db, "ALTER TABLE taskd_jobs ADD COLUMN from_the_future TEXT")

    def snapshot() -> list[tuple]:
        return postgres_server.execute(db, (
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_name LIKE 'taskd%%' ORDER BY 1, 2")) + postgres_server.execute(
            db, "SELECT (SELECT count(*) FROM taskd_executions), version FROM taskd_schema")

    before = snapshot()
    for read_only in (False, True):
        with pytest.raises(StoreTooNew, match=f"schema version {newer}; this taskd knows"):
            PostgresStore(postgres_url, read_only=read_only)
    assert snapshot() == before


def test_a_failing_step_leaves_the_store_at_the_last_complete_version(
        postgres_server, postgres_url, monkeypatch):
    from supervisor.store import pg_migrations
    from supervisor.store.postgres import PostgresStore

    PostgresStore(postgres_url).close()
    broken = [*pg_migrations.STEPS, "ALTER TABLE taskd_jobs ADD COLUMN note TEXT; "
                                    "CREATE TABLE taskd_jobs (x INTEGER)"]  # 2nd fails
    monkeypatch.setattr(pg_migrations, "STEPS", broken)
    monkeypatch.setattr(pg_migrations, "CURRENT", len(broken))
    with pytest.raises(StoreError, match="already exists"):
        PostgresStore(postgres_url)
    assert version_rows(postgres_server, postgres_url) == [(len(broken) - 1,)]
    columns = postgres_server.execute(dbname(postgres_url), (
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'taskd_jobs'"))
    assert ("note",) not in columns  # the step's first statement was rolled back too
    fixed = [*broken[:-1], "ALTER TABLE taskd_jobs ADD COLUMN note TEXT"]
    monkeypatch.setattr(pg_migrations, "STEPS", fixed)
    PostgresStore(postgres_url).close()
    assert version_rows(postgres_server, postgres_url) == [(len(fixed),)]


def test_read_only_reads_and_never_creates(postgres_server, postgres_url):
    from supervisor.store.postgres import PostgresStore, StoreUnreachable

    with pytest.raises(StoreError, match="not a taskd state store"):
        PostgresStore(postgres_url, read_only=True)
    assert postgres_server.execute(dbname(postgres_url),
                                   "SELECT to_regclass('taskd_schema')") == [(None,)]
    writer = PostgresStore(postgres_url)
    writer.apply([{"record": record("a", 0)}])
    writer.close()
    reader = PostgresStore(postgres_url, read_only=True)
    try:
        assert [r["run_id"] for r in reader.history(HistoryQuery())] == ["a-0"]
        with pytest.raises(StoreError, match="read-only transaction") as refused:
            reader.apply([{"record": record("a", 60)}])
        # About the data, not the connection: the logger gives up instead of retrying.
        assert not isinstance(refused.value, StoreUnreachable)
    finally:
        reader.close()


def test_the_password_is_never_in_a_message(postgres_server, postgres_url):
    from supervisor.store.postgres import PostgresStore

    # Trust auth: the password is accepted and unused, so it can be any string.
    good = postgres_server.url(dbname(postgres_url), password="s3cret-pw")
    store = PostgresStore(good)
    assert "s3cret" not in store.location and dbname(postgres_url) in store.location
    store.close()
    missing = postgres_server.url("no_such_db", password="s3cret-pw")
    with pytest.raises(StoreError) as raised:
        PostgresStore(missing)
    message = str(raised.value)
    assert message.startswith(postgres_server.url("no_such_db") + ": ")
    assert "no_such_db" in message and "does not exist" in message
    assert "s3cret" not in message
    # Even a driver message that echoes it (here: a database named like the password).
    with pytest.raises(StoreError) as raised:
        PostgresStore(postgres_server.url("s3cret-pw", password="s3cret-pw"))
    reason = str(raised.value).removeprefix(postgres_server.url("s3cret-pw") + ": ")
    assert "s3cret" not in reason and 'database "***" does not exist' in reason


def test_an_error_text_with_nul_is_stored(postgres_url):
    from supervisor.store.postgres import PostgresStore

    # PostgreSQL's text type cannot hold NUL (SQLite's can): the record keeps it (JSON
    # escapes it); the job's last error shows a replacement character for it.
    store = PostgresStore(postgres_url)
    try:
        failed = record("a", 0, "FAILURE", error="exit code 1: bad\x00name",
                        output_tail="a\x00b")
        store.apply([{"record": failed}])
        assert store.history(HistoryQuery()) == [failed]
        assert store.load_memory().jobs["a"].last_error == "exit code 1: bad\ufffdname"
    finally:
        store.close()


def test_a_dropped_connection_fails_one_call_and_the_next_reconnects(
        postgres_server, postgres_url):
    from supervisor.store.postgres import PostgresStore, StoreUnreachable

    store = PostgresStore(postgres_url)
    try:
        store.apply([{"record": record("a", 0)}])
        postgres_server.execute("postgres", (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'taskd'"), (dbname(postgres_url),))
        with pytest.raises(StoreUnreachable, match=r"terminat|closed|lost"):
            store.apply([{"record": record("a", 60)}])
        store.apply([{"record": record("a", 60)}, {"record": record("a", 0)}])  # a replay
        assert [r["run_id"] for r in store.history(HistoryQuery())] == ["a-60", "a-0"]
    finally:
        store.close()


def test_a_hung_stopped_or_restarted_server(postgres_server, postgres_url):
    from supervisor.store.postgres import PostgresStore, StoreUnreachable

    store = PostgresStore(postgres_url)
    try:
        store.apply([{"record": record("a", 0)}])
        postgres_server.pause()  # accepts at the socket, never answers: the connect timeout
        try:
            began = time.monotonic()
            with pytest.raises(StoreUnreachable, match="timeout"):
                PostgresStore(postgres_server.url(dbname(postgres_url), connect_timeout="1"))
            assert time.monotonic() - began < 10
        finally:
            postgres_server.resume()
        postgres_server.kill()  # -m immediate: every backend goes at once, as in a crash
        try:
            began = time.monotonic()
            with pytest.raises(StoreUnreachable, match="server closed the connection"):
                store.apply([{"record": record("a", 60)}])
            with pytest.raises(StoreUnreachable, match="No such file"):  # its socket is gone
                store.history(HistoryQuery())
            with pytest.raises(StoreUnreachable, match="No such file"):
                PostgresStore(postgres_url)
            assert time.monotonic() - began < 10
        finally:
            postgres_server.run()
        # Back up: the same store reconnects; what failed was not applied, and comes again.
        store.apply([{"record": record("a", 60)}])
        assert [r["run_id"] for r in store.history(HistoryQuery())] == ["a-60", "a-0"]
    finally:
        store.close()


# -- a batch: one round trip, and safe to send again ----------------------------------


def every_kind_of_item() -> tuple[list[dict], list[dict]]:
    """Two batches that hold every kind of item (store/abc.py), the second after the
    first: runs handed out and finished, a hook, misses, catch-up, pause, retries."""
    first = [
        {"mark": "known", "job_ids": ["a", "b"], "at": T0.timestamp()},
        dispatched("a", 0, "a-0", one_time=True),
        dispatched("b", 0, "b-manual", manual=True),
        {"record": record("a", 0, run_id="a-0")},
        {"record": record("a", 1, run_id="a-0-hook", hook="on_success")},
        {"mark": "missed", "job_id": "c", "scheduled_for": iso(30), "one_time": True},
        {"mark": "alive", "at": T0.timestamp() + 1},
        {"mark": "paused", "job_id": "b", "paused": True},
        {"mark": "retry", "job_id": "a", "scheduled_for": iso(0), "attempt": 2,
         "due_at": T0.timestamp() + 5, "manual": False},
    ]
    second = [
        {"mark": "retry_done", "job_id": "a"},
        dispatched("a", 60, "a-60"),
        {"record": record("a", 60, "FAILURE", run_id="a-60")},
        {"mark": "retry", "job_id": "a", "scheduled_for": iso(60), "attempt": 2,
         "due_at": T0.timestamp() + 65, "manual": False},
        {"mark": "known", "job_ids": ["a", "d"], "at": T0.timestamp() + 60},
        {"mark": "alive", "at": T0.timestamp() + 61},
        {"mark": "paused", "job_id": "b", "paused": False},
        {"record": record("b", 62, run_id="b-manual", manual=True)},
        dispatched("d", 70, "d-70"),  # still running
    ]
    return first, second


def contents(server: PostgresServer, url: str) -> dict[str, list[tuple]]:
    """Every row of the store's tables, without the columns that say when or in which
    order rows were written (an execution's identity, which a conflicting insert
    advances; a job's ``changed_at``)."""
    db = dbname(url)
    return {table: server.execute(db, f"SELECT {columns} FROM {table} ORDER BY 1, 2")
            for table, columns in (
                ("taskd_executions", "run_id, job_id, started, status, record"),
                ("taskd_jobs", "job_id, known_since, last_scheduled, last_started, "
                               "last_status, last_error, last_success, last_failure, "
                               "records, paused"),
                ("taskd_one_time_done", "*"), ("taskd_unfinished", "*"),
                ("taskd_pending_retries", "*"), ("taskd_daemon", "*"))}


def test_a_batch_sent_again_changes_nothing(postgres_server, postgres_url):
    from supervisor.store.postgres import PostgresStore

    # A commit whose answer was lost is sent again by the logger's writer, alone or at
    # the head of a longer batch; either way the store ends as if it came once.
    first, second = every_kind_of_item()
    once = postgres_server.url(postgres_server.create_database())
    replayed = PostgresStore(postgres_url)
    reference = PostgresStore(once)
    try:
        reference.apply(first)
        reference.apply(second)
        replayed.apply(first)
        replayed.apply(first)
        replayed.apply([*first, *second])
        changed = postgres_server.execute(dbname(postgres_url), (
            "SELECT job_id, changed_at FROM taskd_jobs ORDER BY 1"))
        replayed.apply(second)
        # ... and a replay that changes nothing is not a change the nodes' status sees.
        assert postgres_server.execute(dbname(postgres_url), (
            "SELECT job_id, changed_at FROM taskd_jobs ORDER BY 1")) == changed
        expected = contents(postgres_server, once)
        assert contents(postgres_server, postgres_url) == expected
        assert [row[0] for row in expected["taskd_executions"]] == [
            "a-0", "a-0-hook", "a-60", "b-manual"]
        assert [row[0] for row in expected["taskd_unfinished"]] == ["d-70"]
        assert {row[0]: row[-2] for row in expected["taskd_jobs"]} == {
            "a": 3, "b": 1, "c": 0, "d": 0}  # each record counted once
    finally:
        replayed.close()
        reference.close()
        postgres_server.drop_database(dbname(once))


def test_a_batch_is_one_round_trip_and_one_transaction(postgres_url):
    from supervisor.store.postgres import PostgresStore
    from tests.cluster_harness import MESSAGE, protocol_trace, round_trips

    store = PostgresStore(postgres_url)
    try:
        first, second = every_kind_of_item()
        store.apply(first)  # the connection is open: the trace sees only the batch
        with protocol_trace(store) as trace:
            store.apply(second)
        assert round_trips(trace) == 1, "\n".join(trace)
        sent = [m.group(2) for m in map(MESSAGE.match, trace) if m and m.group(1) == "F"]
        assert sent.count("Sync") == 1 and "Execute" not in sent[sent.index("Sync"):], sent
        assert "BEGIN" not in "\n".join(trace)
        # All or nothing: a batch whose last statement fails leaves nothing of it.
        broken = [{"record": record("e", 0)}, {"mark": "retry", "job_id": "e",
                  "scheduled_for": iso(0), "attempt": "not a number", "due_at": 0.0}]
        with pytest.raises(StoreError, match="invalid input syntax"):
            store.apply(broken)
        assert [r["run_id"] for r in store.history(HistoryQuery(job_id="e"))] == []
        store.apply([{"record": record("e", 0)}])  # and the connection goes on
        assert [r["run_id"] for r in store.history(HistoryQuery(job_id="e"))] == ["e-0"]
    finally:
        store.close()
