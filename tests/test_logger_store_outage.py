"""The logger's PostgreSQL store rides out an outage, against a real server
(tests/postgres_server.py): a restarted server or a terminated backend costs no entry
and duplicates none, "stored" waits until the entries really are stored, the log goes
on meanwhile, each way is said once, and an outage that outlasts the bound gives up as
any store failure does. The writer's waiting rules (room, backoff) are checked in-process
with a stand-in store.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from supervisor.processes.logger_process import LoggerLink
from supervisor.store import writer as writer_module
from supervisor.store.writer import Outage, Retention, StoreWriter
from tests.postgres_server import PostgresServer
from tests.test_logger_process import drive, make_record, read_log

# Spawned, not forked by the shared fork server: the logger's stderr (its diagnostics)
# is then this test's, which capfd reads.
SPAWN = multiprocessing.get_context("spawn")
AFTER_OUTAGE_S = 40.0  # the writer's next try comes at most 10 s after the server is back


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class Watched:
    """A logger link to ``url``'s store, with the time of every "stored" it was given."""

    def __init__(self, tmp_path: Path, url: str, outage: Outage | None = None) -> None:
        self.log = tmp_path / "executions.log"
        self.failures: list[str] = []
        self.link = LoggerLink(SPAWN, str(self.log), store=(url, Retention()),
                               on_store_failed=self.failures.append, outage=outage)
        self.stored: list[tuple[int, float]] = []
        take = self.link._stored_up_to

        def stored_up_to(seq: int) -> None:
            self.stored.append((seq, time.monotonic()))
            take(seq)

        self.link._stored_up_to = stored_up_to  # type: ignore[method-assign]
        self.link.start()
        self.next = 0

    def run(self, count: int) -> list[dict[str, Any]]:
        """``count`` runs, each a dispatch mark then its record; and one dispatch of a run
        that never ends (it stays ``unfinished``)."""
        records = []
        for _ in range(count):
            record = make_record(self.next)
            self.next += 1
            self.link.mark(dispatched(record["run_id"], record["job_id"]))
            self.link.submit(record)
            records.append(record)
        self.link.mark(dispatched(f"open-{self.next}", "job-open"))
        self.next += 1
        self.link.pump()
        return records

    def drive(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        drive(self.link, until, timeout)

    def all_stored(self) -> bool:
        return not self.link._records


def stop(server: PostgresServer) -> None:
    """Stop the server as a restart does (``-m fast``): every backend is told to go, and
    what committed is on disk. (``kill``, a crash, would lose the last commits: the test
    server runs with ``synchronous_commit`` off.)"""
    server._run("pg_ctl", "-D", str(server.data), "-m", "fast", "-w", "stop")


def dispatched(run_id: str, job_id: str) -> dict[str, Any]:
    return {"mark": "dispatched", "job_id": job_id, "run_id": run_id,
            "scheduled_for": "2026-11-26T21:00:00+00:00", "at": 1.0, "one_time": False,
            "manual": False}


def diagnostics(capfd: pytest.CaptureFixture[str], seen: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Every JSON line on stderr so far (``seen`` keeps what earlier calls read)."""
    seen += [json.loads(line) for line in capfd.readouterr().err.splitlines()
             if line.startswith("{")]
    return seen


def events(seen: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in seen if event["event"] == name]


def stored_once(server: PostgresServer, url: str) -> tuple[list[tuple], list[tuple]]:
    """(run_id, copies) of the history, and of the unfinished runs."""
    db = dbname(url)
    return (server.execute(db, "SELECT run_id, count(*) FROM taskd_executions "
                               "GROUP BY run_id ORDER BY run_id"),
            server.execute(db, "SELECT run_id, count(*) FROM taskd_unfinished "
                               "GROUP BY run_id ORDER BY run_id"))


def expected(records: list[dict[str, Any]], opened: list[str]) -> tuple[list, list]:
    return (sorted((record["run_id"], 1) for record in records),
            sorted((run_id, 1) for run_id in opened))


def test_a_restarted_server_costs_no_entry_and_stores_each_once(
        postgres_server, postgres_url, capfd, tmp_path):
    watched = Watched(tmp_path, postgres_url)
    seen: list[dict[str, Any]] = []
    try:
        records = watched.run(20)
        watched.drive(watched.all_stored)
        before = watched.link._next_seq - 1  # every entry up to here is stored
        stop(postgres_server)
        down_at = time.monotonic()
        try:
            for _ in range(5):
                records += watched.run(40)
            # The lines are written and the writer has met the outage, but nothing
            # after the restart's start is stored.
            watched.drive(lambda: watched.link.unacked == 0 and events(
                diagnostics(capfd, seen), "state_store_unavailable"))
            held = len(watched.link._records)
            assert held == 5 * (40 + 1)  # entries: a record with its mark, and a mark
            assert len(read_log(watched.log)) == len(records)
        finally:
            up_at = time.monotonic()
            postgres_server.run()
        watched.drive(watched.all_stored, timeout=AFTER_OUTAGE_S)
    finally:
        assert watched.link.close(10.0)
    acks_while_down = [seq for seq, at in watched.stored if down_at <= at <= up_at]
    assert all(seq <= before for seq in acks_while_down), acks_while_down
    assert max(seq for seq, _ in watched.stored) == watched.link._next_seq - 1
    opened = [f"open-{n}" for n in (20, 61, 102, 143, 184, 225)]
    assert stored_once(postgres_server, postgres_url) == expected(records, opened)
    diagnostics(capfd, seen)
    assert [len(events(seen, name)) for name in (
        "state_store_unavailable", "state_store_reconnected")] == [1, 1], seen
    down, = events(seen, "state_store_unavailable")
    assert down["database"] == postgres_url and down["level"] == "warning"
    back, = events(seen, "state_store_reconnected")
    assert back["waiting"] == 5 * (2 * 40 + 1) and back["unavailable_s"] > 0  # items
    assert watched.failures == []


def test_a_terminated_backend_is_replaced_and_nothing_is_stored_twice(
        postgres_server, postgres_url, capfd, tmp_path):
    watched = Watched(tmp_path, postgres_url)
    seen: list[dict[str, Any]] = []
    try:
        records = watched.run(30)
        watched.drive(watched.all_stored)
        # The logger's connection is idle: the next batch finds it gone.
        terminated = postgres_server.execute("postgres", (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'taskd'"), (dbname(postgres_url),))
        assert terminated == [(True,)]
        records += watched.run(100)
        watched.drive(watched.all_stored, timeout=AFTER_OUTAGE_S)
    finally:
        assert watched.link.close(10.0)
    assert stored_once(postgres_server, postgres_url) == expected(
        records, ["open-30", "open-131"])
    diagnostics(capfd, seen)
    assert [len(events(seen, name)) for name in (
        "state_store_unavailable", "state_store_reconnected")] == [1, 1], seen
    assert "terminat" in events(seen, "state_store_unavailable")[0]["error"]
    assert watched.failures == []


def test_an_outage_past_the_bound_gives_up_naming_the_database(
        postgres_server, postgres_url, capfd, tmp_path):
    watched = Watched(tmp_path, postgres_url, Outage(max_waiting=50))
    seen: list[dict[str, Any]] = []
    try:
        watched.run(5)
        watched.drive(watched.all_stored)
        stop(postgres_server)
        try:
            records = watched.run(10)  # 21 items wait: within the bound
            watched.drive(lambda: events(diagnostics(capfd, seen), "state_store_unavailable"))
            assert watched.link.storing and watched.link._records
            records += watched.run(20)  # 41 more: past it
            watched.drive(lambda: watched.failures != [] and watched.all_stored())
        finally:
            postgres_server.run()
        assert not watched.link.storing  # in memory from now on
        records += watched.run(3)
        watched.drive(watched.all_stored)
    finally:
        assert watched.link.close(10.0)
    failure, = watched.failures
    assert failure.startswith(postgres_url + ": unreachable for ")
    assert "more than 50 records and marks" in failure and "last error:" in failure
    assert len(read_log(watched.log)) == 5 + len(records)
    diagnostics(capfd, seen)
    assert len(events(seen, "state_store_unavailable")) == 1
    assert events(seen, "state_store_reconnected") == []


def test_a_stop_during_an_outage_waits_only_its_timeout_and_every_line_is_written(
        postgres_server, postgres_url, capfd, tmp_path):
    watched = Watched(tmp_path, postgres_url)
    seen: list[dict[str, Any]] = []
    before = watched.run(3)
    watched.drive(watched.all_stored)
    stop(postgres_server)
    try:
        records = watched.run(10)
        watched.drive(lambda: watched.link.unacked == 0 and events(
            diagnostics(capfd, seen), "state_store_unavailable"))
        began = time.monotonic()
        assert not watched.link.close(1.0)  # not all stored, and it says so
        assert time.monotonic() - began < 5.0
    finally:
        postgres_server.run()
    assert [line["run_id"] for line in read_log(watched.log)] == [
        record["run_id"] for record in before + records]
    assert stored_once(postgres_server, postgres_url) == expected(before, ["open-3"])


# -- the writer's rules, in-process with a stand-in store -------------------------------


class StandIn:
    """A store whose ``apply`` waits for ``go`` and fails while ``down`` says so."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.go.set()
        self.down: Exception | None = None
        self.applied: list[dict[str, Any]] = []
        self.tries: list[float] = []

    def apply(self, items: list[dict[str, Any]]) -> None:
        self.tries.append(time.monotonic())
        self.go.wait()
        if self.down is not None:
            raise self.down
        self.applied += items

    def prune(self, **kwargs: Any) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def stand_in(monkeypatch) -> StandIn:
    store = StandIn()
    monkeypatch.setattr(writer_module, "open_store", lambda location: store)
    return store


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_a_slow_store_that_answers_holds_the_reader_back_and_never_gives_up(stand_in):
    stand_in.go.clear()
    writer = StoreWriter("postgresql://db/taskd", Retention(), outage=Outage(max_waiting=10))
    try:
        writer.add(1, [{"record": 1}])
        writer.commit()
        poll(lambda: stand_in.tries)  # the first batch is being committed, slowly
        for seq in range(2, 13):
            writer.add(seq, [{"record": seq}])  # not sealed: having no room seals them
        assert not writer.has_room() and writer.failed is None
        stand_in.go.set()
        poll(lambda: writer.stored_up_to == 12)
        assert writer.has_room() and writer.failed is None
        assert stand_in.applied == [{"record": seq} for seq in range(1, 13)]
    finally:
        writer.close()


def test_a_server_that_never_answers_counts_as_away_for_the_bound(stand_in):
    stand_in.go.clear()  # takes the batch, never answers, never fails
    writer = StoreWriter("postgresql://db/taskd", Retention(),
                         outage=Outage(max_waiting=5, stuck_s=0.3))
    try:
        writer.add(1, [{"record": 1}])
        writer.commit()
        poll(lambda: stand_in.tries)
        for seq in range(2, 10):
            writer.add(seq, [{"record": seq}])
        assert not writer.has_room()  # not for long enough yet: the reader waits
        poll(writer.has_room)
        assert writer.failed is not None
        assert writer.failed.startswith("postgresql://db/taskd: no answer for ")
        assert "more than 5 records and marks" in writer.failed
    finally:
        stand_in.go.set()
        writer.close()


def test_the_writer_retries_with_doubling_waits_and_keeps_the_order(stand_in):
    from supervisor.store.postgres import StoreUnreachable

    events: list[dict[str, Any]] = []
    stand_in.down = StoreUnreachable("postgresql://db/taskd: server closed the connection")
    writer = StoreWriter("postgresql://u:pw@db/taskd", Retention(), on_event=events.append,
                         outage=Outage(first_retry_s=0.05, max_retry_s=0.2))
    try:
        for seq in range(1, 4):
            writer.add(seq, [{"record": seq}])
            writer.commit()
        poll(lambda: len(stand_in.tries) >= 6)
        waits = [later - earlier
                 for earlier, later in zip(stand_in.tries, stand_in.tries[1:], strict=False)]
        assert all(due * 0.9 <= wait < due + 0.5
                   for wait, due in zip(waits, [0.05, 0.1, 0.2, 0.2, 0.2], strict=False)), waits
        assert writer.stored_up_to == 0 and writer.has_room()
        stand_in.down = None
        poll(lambda: writer.stored_up_to == 3)
        assert stand_in.applied == [{"record": seq} for seq in range(1, 4)]
    finally:
        writer.close()
    assert [event["event"] for event in events] == [
        "state_store_unavailable", "state_store_reconnected"]
    assert events[0]["database"] == "postgresql://u@db/taskd"  # no password
