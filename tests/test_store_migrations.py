"""Schema migrations of the SQLite store: from every earlier version, one step at a time.

A store built at each version below the current one (0: a new, empty file) is opened by
this taskd and must come up at the current version with what it held still readable.
When the schema changes, the new step goes into migrations.STEPS and a sample of the
old version's rows into SAMPLES, so the upgrade is tested with data in it.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from supervisor.store import migrations
from supervisor.store.abc import HistoryQuery, StoreError, StoreTooNew
from supervisor.store.sqlite import SQLiteStore

# Rows written the way taskd at that version wrote them, and what must read back.
SAMPLES: dict[int, list[str]] = {
    1: [
        "INSERT INTO executions (run_id, job_id, started, status, record) VALUES "
        "('r1', 'backup', 1795694400.0, 'FAILURE', '{\"run_id\": \"r1\", \"job_id\": "
        "\"backup\", \"status\": \"FAILURE\", \"timestamp\": \"2026-11-26T12:00:00+00:00\"}')",
        "INSERT INTO jobs (job_id, last_scheduled, last_started, last_status, last_failure, "
        "records) VALUES ('backup', 1795694400.0, '2026-11-26T12:00:00+00:00', 'FAILURE', "
        "'2026-11-26T12:00:00+00:00', 1)",
        "INSERT INTO one_time_done (job_id, at) VALUES ('once', 1795694400.0)",
        "INSERT INTO daemon (key, value) VALUES ('last_alive', 1795694500.0)",
    ],
    2: [
        "INSERT INTO pending_retries (job_id, scheduled_for, attempt, due_at, manual) "
        "VALUES ('backup', '2026-11-26T12:00:00+00:00', 2, 1795694410.0, 0)",
    ],
}


def build(path, version: int) -> None:
    """A store at ``version`` holding each version's sample, written as it was reached."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for step in range(version + 1):
            migrations.upgrade(db, str(path), target=step)
            for statement in SAMPLES.get(step, []):
                db.execute(statement)


@pytest.mark.parametrize("version", range(migrations.CURRENT))
def test_a_store_of_every_earlier_version_is_upgraded(tmp_path, version):
    path = tmp_path / "state.db"
    build(path, version)
    store = SQLiteStore(str(path))
    try:
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT version FROM taskd_schema").fetchone() == (
                migrations.CURRENT,)
        memory = store.load_memory()
        if version >= 1:  # what the sample held reads back
            assert memory.jobs["backup"].last_failure == "2026-11-26T12:00:00+00:00"
            assert memory.one_time_done == {("once", 1795694400.0)}
            assert memory.last_alive == 1795694500.0
            assert [r["run_id"] for r in store.history(HistoryQuery())] == ["r1"]
        if version >= 2:
            assert [r["attempt"] for r in memory.pending_retries] == [2]
    finally:
        store.close()


def test_a_store_at_the_current_version_opens_with_nothing_to_do(tmp_path):
    path = tmp_path / "state.db"
    build(path, migrations.CURRENT)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert migrations.upgrade(db, str(path)) == migrations.CURRENT  # no step ran
    store = SQLiteStore(str(path), read_only=True)
    try:
        memory = store.load_memory()
        assert memory.jobs["backup"].last_status == "FAILURE"
        assert memory.pending_retries[0]["due_at"] == 1795694410.0
    finally:
        store.close()


def test_a_failing_step_leaves_the_store_at_the_last_complete_version(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    SQLiteStore(str(path)).close()
    broken = [*migrations.STEPS, "ALTER TABLE jobs ADD COLUMN note TEXT; "
                                 "CREATE TABLE jobs (x INTEGER)"]  # its second statement fails
    monkeypatch.setattr(migrations, "STEPS", broken)
    monkeypatch.setattr(migrations, "CURRENT", len(broken))
    with pytest.raises(StoreError):
        SQLiteStore(str(path))
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM taskd_schema").fetchone() == (len(broken) - 1,)
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        assert "note" not in columns  # the step's first statement was rolled back too
    fixed = [*broken[:-1], "ALTER TABLE jobs ADD COLUMN note TEXT"]
    monkeypatch.setattr(migrations, "STEPS", fixed)
    SQLiteStore(str(path)).close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM taskd_schema").fetchone() == (len(fixed),)


def test_a_newer_store_is_refused_read_only_too_and_left_as_it_is(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStore(str(path)).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE taskd_schema SET version = ?", (migrations.CURRENT + 5,))
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(StoreTooNew, match=f"schema version {migrations.CURRENT + 5}"):
            SQLiteStore(str(path), read_only=read_only)
    assert path.read_bytes() == before
