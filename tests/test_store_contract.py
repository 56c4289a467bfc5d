"""What every state store does, whatever it is built on (APScheduler 4's data-store tests
are the model): one suite, parametrized over every implementation in ``store_factories``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from supervisor.store.abc import HistoryQuery, StateStore, StoreError
from supervisor.store.sqlite import SQLiteStore

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def sqlite_store(request: pytest.FixtureRequest) -> StateStore:
    return SQLiteStore(str(request.getfixturevalue("tmp_path") / "state.db"))


def postgresql_store(request: pytest.FixtureRequest) -> StateStore:
    # A real server (tests/postgres_server.py), a new database per test; psycopg is
    # imported only here, so the SQLite half runs without it.
    from supervisor.store.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"))


# Each factory takes the test's request, to ask for the fixtures its store needs.
STORES: dict[str, Callable[[pytest.FixtureRequest], StateStore]] = {
    "sqlite": sqlite_store, "postgresql": postgresql_store}


@pytest.fixture(params=sorted(STORES))
def store(request):
    made = STORES[request.param](request)
    yield made
    made.close()


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def record(job_id: str, at: float, status: str = "SUCCESS", *, run_id: str | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"event": "execution", "job_id": job_id, "run_id": run_id or f"{job_id}-{at}",
            "timestamp": iso(at + 0.001), "status": status, "scheduled_for": iso(at),
            "finished_at": iso(at + 0.5), "duration_ms": 499.0,
            "exit_code": 0 if status == "SUCCESS" else 1,
            "error": None if status == "SUCCESS" else "exit code 1", "worker": 1,
            "output_tail": "", **extra}


def dispatched(job_id: str, at: float, run_id: str, **extra: Any) -> dict[str, Any]:
    return {"mark": "dispatched", "job_id": job_id, "run_id": run_id,
            "scheduled_for": iso(at), "at": T0.timestamp() + at, "one_time": False,
            "manual": False, **extra}


def test_a_new_store_remembers_nothing(store):
    memory = store.load_memory()
    assert memory.jobs == {} and memory.one_time_done == set()
    assert memory.last_alive is None and memory.unfinished == []
    assert store.history(HistoryQuery()) == []


def test_records_come_back_newest_first_with_every_field(store):
    first, second = record("a", 0), record("a", 60, "FAILURE", catch_up=True)
    store.apply([{"record": first}])
    store.apply([{"record": second}, {"record": record("b", 30)}])
    assert store.history(HistoryQuery(job_id="a")) == [second, first]
    assert [r["job_id"] for r in store.history(HistoryQuery())] == ["a", "b", "a"]


@pytest.mark.parametrize(("query", "expected"), [
    (HistoryQuery(job_id="a", status="FAILURE"), ["a-60"]),
    (HistoryQuery(status="SUCCESS"), ["b-30", "a-0"]),
    (HistoryQuery(since=T0.timestamp() + 30), ["a-60", "b-30"]),
    (HistoryQuery(limit=1), ["a-60"]),
    (HistoryQuery(limit=0), []),
    (HistoryQuery(job_id="nobody"), []),
])
def test_history_filters(store, query, expected):
    store.apply([{"record": record("a", 0)}, {"record": record("b", 30)},
                 {"record": record("a", 60, "FAILURE")}])
    assert [r["run_id"] for r in store.history(query)] == expected


def test_a_replayed_record_is_stored_once(store):
    # A replacement logger is sent what was written but not acknowledged as stored.
    store.apply([{"record": record("a", 0)}])
    store.apply([{"record": record("a", 0)}])
    assert len(store.history(HistoryQuery())) == 1


def test_last_success_and_failure_per_job(store):
    store.apply([{"record": record("a", 0)}, {"record": record("a", 60, "FAILURE")},
                 {"record": record("a", 120, "FAILURE")}])
    job = store.load_memory().jobs["a"]
    assert job.last_success == iso(0.001) and job.last_failure == iso(120.001)
    assert (job.last_status, job.last_error, job.last_started) == (
        "FAILURE", "exit code 1", iso(120.001))
    assert job.last_scheduled == T0.timestamp() + 120


def test_a_hook_record_is_history_but_not_its_jobs_last_run(store):
    store.apply([{"record": record("a", 0, "FAILURE")},
                 {"record": record("a", 0, run_id="hook-1", hook="on_failure")}])
    assert store.load_memory().jobs["a"].last_status == "FAILURE"
    assert store.load_memory().jobs["a"].last_success is None
    assert len(store.history(HistoryQuery(job_id="a"))) == 2


def test_a_manual_run_uses_up_no_occurrence(store):
    store.apply([{"record": record("a", 0)}, {"record": record("a", 500, manual=True)}])
    assert store.load_memory().jobs["a"].last_scheduled == T0.timestamp()


def test_dispatched_runs_are_unfinished_until_recorded(store):
    store.apply([dispatched("a", 0, "r1"), dispatched("b", 1, "r2", manual=True)])
    memory = store.load_memory()
    assert [u["run_id"] for u in memory.unfinished] == ["r1", "r2"]
    assert memory.unfinished[1]["manual"] is True
    assert memory.jobs["a"].last_scheduled == T0.timestamp()
    assert "b" not in memory.jobs or memory.jobs["b"].last_scheduled is None
    store.apply([{"record": record("a", 0, run_id="r1")}])
    assert [u["run_id"] for u in store.load_memory().unfinished] == ["r2"]


def test_one_time_occurrences_run_or_missed_are_remembered(store):
    store.apply([dispatched("once", 0, "r1", one_time=True),
                 {"mark": "missed", "job_id": "late", "scheduled_for": iso(10),
                  "one_time": True},
                 {"mark": "missed", "job_id": "cron", "scheduled_for": iso(20),
                  "one_time": False}])
    memory = store.load_memory()
    assert memory.one_time_done == {("once", T0.timestamp()), ("late", T0.timestamp() + 10)}
    assert memory.jobs["cron"].last_scheduled == T0.timestamp() + 20


def test_the_latest_occurrence_accounted_never_goes_back(store):
    store.apply([{"mark": "missed", "job_id": "a", "scheduled_for": iso(100),
                  "one_time": False}, {"record": record("a", 50)}])
    assert store.load_memory().jobs["a"].last_scheduled == T0.timestamp() + 100


def test_known_since_is_the_first_time(store):
    store.apply([{"mark": "known", "job_ids": ["a", "b"], "at": 10.0}])
    store.apply([{"mark": "known", "job_ids": ["a"], "at": 20.0}])
    jobs = store.load_memory().jobs
    assert (jobs["a"].known_since, jobs["b"].known_since) == (10.0, 10.0)


def test_alive_and_paused(store):
    store.apply([{"mark": "alive", "at": 5.0}, {"mark": "alive", "at": 6.0},
                 {"mark": "paused", "job_id": "a", "paused": True},
                 {"mark": "paused", "job_id": "b", "paused": True},
                 {"mark": "paused", "job_id": "b", "paused": False}])
    memory = store.load_memory()
    assert memory.last_alive == 6.0
    assert memory.jobs["a"].paused and not memory.jobs["b"].paused


def test_a_failed_batch_applies_nothing(store):
    with pytest.raises(KeyError):
        store.apply([{"record": record("a", 0)}, {"mark": "no such mark"}])
    assert store.history(HistoryQuery()) == []


def test_a_batch_the_store_refuses_applies_nothing_and_the_store_goes_on(store):
    refused = {**record("a", 60), "run_id": {"not": "text"}}  # a value no column takes
    with pytest.raises(StoreError):
        store.apply([{"record": record("a", 0)}, {"record": refused}])
    assert store.history(HistoryQuery()) == [] and store.load_memory().jobs == {}
    store.apply([{"record": record("a", 0)}])
    assert len(store.history(HistoryQuery())) == 1


def test_any_text_in_a_record_reads_back_as_it_was(store):
    odd = record("a", 0, output_tail="NUL \x00, tab \t, é, 雪, 🙂, \\ and \"quotes\"",
                 error=None, note={"nested": [1, 2.5, None, True]})
    store.apply([{"record": odd}])
    assert store.history(HistoryQuery()) == [odd]


def test_prune_by_age_and_per_job_within_a_budget(store):
    now = T0.timestamp() + 1000
    store.apply([{"record": record("old", 0)}, {"record": record("old", 1)}]
                + [{"record": record("busy", 500 + i)} for i in range(10)])
    assert store.prune(now=now, max_age_s=600, per_job=4, budget=3) == 3
    assert store.prune(now=now, max_age_s=600, per_job=4, budget=100) == 5
    assert store.prune(now=now, max_age_s=600, per_job=4, budget=100) == 0
    assert [r["run_id"] for r in store.history(HistoryQuery(job_id="busy"))] == [
        f"busy-{500 + i}" for i in (9, 8, 7, 6)]
    assert store.history(HistoryQuery(job_id="old")) == []


def test_prune_forgets_one_time_instants_older_than_the_history(store):
    now = T0.timestamp() + 1000
    for job_id, at in (("old", T0.timestamp()), ("recent", now - 10)):
        store.apply([{"mark": "missed", "job_id": job_id, "one_time": True,
                      "scheduled_for": datetime.fromtimestamp(at, UTC).isoformat()}])
    assert store.prune(now=now, max_age_s=600, per_job=4, budget=100) == 1
    assert store.load_memory().one_time_done == {("recent", now - 10)}


def test_pending_retries_one_per_job_until_done(store):
    retry = {"mark": "retry", "job_id": "a", "scheduled_for": "2026-11-26T12:00:00+00:00",
             "attempt": 2, "due_at": 1000.5, "manual": False}
    store.apply([retry, {**retry, "job_id": "b", "due_at": 900.0, "manual": True},
                 {**retry, "attempt": 3, "due_at": 1100.0}])  # a's newer one replaces it
    fields = {key: value for key, value in retry.items() if key != "mark"}
    assert store.load_memory().pending_retries == [
        {**fields, "job_id": "b", "due_at": 900.0, "manual": True},
        {**fields, "attempt": 3, "due_at": 1100.0}]
    store.apply([{"mark": "retry_done", "job_id": "b"},
                 {"mark": "retry_done", "job_id": "never-had-one"}])
    assert [r["job_id"] for r in store.load_memory().pending_retries] == ["a"]
