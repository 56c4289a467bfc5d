"""Metrics: driven directly, read back the way Prometheus reads them (HTTP + text parser)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.control.metrics import SECONDS_BUCKETS, Metrics


def record(job_id: str = "report", status: str = "SUCCESS", *, duration_ms: float = 250.0,
           scheduled_for: str = "2026-11-26T21:00:00+00:00",
           timestamp: str = "2026-11-26T21:00:00.500000+00:00", **extra: Any) -> dict:
    return {"event": "execution", "job_id": job_id, "run_id": "r", "timestamp": timestamp,
            "status": status, "scheduled_for": scheduled_for, "finished_at": "x",
            "duration_ms": duration_ms, "exit_code": 0, "error": None, "worker": 1,
            "output_tail": "", **extra}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} for every sample of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


# Each stop_http() takes up to 0.5 s: prometheus_client's server thread polls for
# shutdown at that interval. Few tests start a server; the rest read the registry.
@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    port = metrics.start_http(0)
    try:
        yield metrics, port
    finally:
        metrics.stop_http()


def test_scraped_counts_histograms_gauges_and_restarts(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    metrics.record_execution(record("report", duration_ms=250.0))
    metrics.record_execution(record("report", duration_ms=750.0,
                                    timestamp="2026-11-26T21:00:02+00:00"))
    metrics.record_execution(record("report", "FAILURE", duration_ms=1500.0))
    metrics.record_execution(record("backup", "FAILURE", duration_ms=0.5,
                                    timestamp="2026-11-26T21:00:00Z"))
    metrics.set_gauges(queue_depth=3, busy_workers=2, workers=8, invalid_files=1, jobs=42)
    metrics.worker_restarted()
    metrics.worker_restarted()
    metrics.logger_restarted()

    got = samples(scrape(port))

    def execs(job_id: str, status: str) -> float:
        return got[("taskd_executions_total", (("job_id", job_id), ("status", status)))]

    assert execs("report", "SUCCESS") == 2
    assert execs("report", "FAILURE") == 1
    assert execs("backup", "FAILURE") == 1
    assert ("taskd_executions_total", (("job_id", "backup"), ("status", "SUCCESS"))) not in got

    assert got[("taskd_execution_duration_seconds_count", ())] == 4
    assert got[("taskd_execution_duration_seconds_sum", ())] == pytest.approx(2.5005)
    assert got[("taskd_execution_duration_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("taskd_execution_duration_seconds_bucket", (("le", "0.5"),))] == 2
    assert got[("taskd_execution_duration_seconds_bucket", (("le", "1.0"),))] == 3
    assert got[("taskd_execution_duration_seconds_bucket", (("le", "+Inf"),))] == 4

    # Lags 0.5 s, 2 s, 0.5 s and 0 s ("Z" is read as UTC, like +00:00).
    assert got[("taskd_dispatch_lag_seconds_count", ())] == 4
    assert got[("taskd_dispatch_lag_seconds_sum", ())] == pytest.approx(3.0)
    assert got[("taskd_dispatch_lag_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("taskd_dispatch_lag_seconds_bucket", (("le", "0.5"),))] == 3

    assert got[("taskd_queue_depth", ())] == 3
    assert got[("taskd_workers_busy", ())] == 2
    assert got[("taskd_workers", ())] == 8
    assert got[("taskd_invalid_job_files", ())] == 1
    assert got[("taskd_jobs", ())] == 42
    assert got[("taskd_worker_restarts_total", ())] == 2
    assert got[("taskd_logger_restarts_total", ())] == 1


def test_gauges_follow_the_latest_call() -> None:
    metrics = Metrics()
    metrics.set_gauges(queue_depth=5, busy_workers=8, workers=8, invalid_files=2, jobs=10)
    metrics.set_gauges(queue_depth=0, busy_workers=1, workers=8, invalid_files=0, jobs=9)
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("taskd_queue_depth", ())] == 0
    assert got[("taskd_workers_busy", ())] == 1
    assert got[("taskd_invalid_job_files", ())] == 0
    assert got[("taskd_jobs", ())] == 9


def test_lag_skips_manual_runs_and_runs_that_never_started() -> None:
    metrics = Metrics()
    metrics.record_execution(record(manual=True, timestamp="2026-11-26T22:00:00+00:00"))
    # Still queued at shutdown: worker 0, never handed to a worker.
    metrics.record_execution(record("report", "FAILURE", worker=0, error="shutdown"))
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("taskd_dispatch_lag_seconds_count", ())] == 0
    assert got[("taskd_execution_duration_seconds_count", ())] == 2
    assert got[("taskd_executions_total", (("job_id", "report"), ("status", "FAILURE")))] == 1


@pytest.mark.parametrize("odd", [
    {"timestamp": "not a time"},
    {"scheduled_for": None},
    {"timestamp": "2026-11-26T21:00:00"},  # naive minus aware
    {"duration_ms": None},
    {"duration_ms": float("nan")},
])
def test_odd_records_are_counted_and_never_raise(odd: dict) -> None:
    metrics = Metrics()
    metrics.record_execution(record(**odd))
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("taskd_executions_total", (("job_id", "report"), ("status", "SUCCESS")))] == 1


def test_record_with_missing_keys_never_raises() -> None:
    metrics = Metrics()
    metrics.record_execution({})
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("taskd_executions_total", (("job_id", ""), ("status", "UNKNOWN")))] == 1


def test_lag_before_the_fire_time_counts_as_zero() -> None:
    metrics = Metrics()
    metrics.record_execution(record(timestamp="2026-11-26T20:59:59+00:00"))
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("taskd_dispatch_lag_seconds_sum", ())] == 0
    assert got[("taskd_dispatch_lag_seconds_count", ())] == 1


def test_per_job_false_drops_the_job_label() -> None:
    metrics = Metrics(per_job=False)
    for job_id in ("a", "b", "c"):
        metrics.record_execution(record(job_id))
    metrics.record_execution(record("a", "FAILURE"))
    got = samples(generate_latest(metrics.registry).decode())
    assert got[("taskd_executions_total", (("status", "SUCCESS"),))] == 3
    assert got[("taskd_executions_total", (("status", "FAILURE"),))] == 1
    assert not any("job_id" in dict(labels) for _, labels in got)


def test_own_registry_never_the_global_one() -> None:
    first, second = Metrics(), Metrics()  # a second one must not clash on names
    first.worker_restarted()
    assert samples(generate_latest(second.registry).decode())[
        ("taskd_worker_restarts_total", ())] == 0
    assert b"taskd_" not in generate_latest(REGISTRY)


def test_buckets_span_milliseconds_to_minutes() -> None:
    assert SECONDS_BUCKETS[0] <= 0.001
    assert SECONDS_BUCKETS[-1] >= 600
    assert list(SECONDS_BUCKETS) == sorted(SECONDS_BUCKETS)


def test_stop_http_closes_the_port_and_is_idempotent() -> None:
    metrics = Metrics()
    port = metrics.start_http(0, address="127.0.0.1")
    assert port > 0
    assert "taskd_jobs" in scrape(port)
    with pytest.raises(RuntimeError):
        metrics.start_http(0)
    metrics.stop_http()
    metrics.stop_http()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    assert metrics.start_http(0) > 0  # can be started again
    metrics.stop_http()


def test_a_port_in_use_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = Metrics()
        with pytest.raises(OSError):
            metrics.start_http(taken.getsockname()[1])
        metrics.stop_http()  # nothing started: a no-op


@pytest.mark.slow
def test_daemon_serves_metrics_when_asked(tmp_path):
    from tests.daemon_harness import Daemon, wait_until

    daemon = Daemon(tmp_path, args=("--metrics-port", "0"))
    daemon.write_job("ok.json", command="true")
    daemon.write_job("bad.json", command="exit 1")
    daemon.write_raw("broken.json", "{")
    daemon.start()
    try:
        port = daemon.events("starting")[0]["metrics_port"]
        daemon.wait_records("bad", count=2)

        def scraped() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text) for s in family.samples}

        samples = wait_until(lambda: (s := scraped()) and s.get(
            ("taskd_executions_total", (("job_id", "bad"), ("status", "FAILURE"))), 0) >= 2
            and s)
        assert samples[("taskd_invalid_job_files", ())] == 1
        assert samples[("taskd_jobs", ())] == 2
        executions = sum(value for (name, _), value in samples.items()
                         if name == "taskd_executions_total")
        assert executions >= 2
        assert samples[("taskd_execution_duration_seconds_count", ())] == executions
        assert samples[("taskd_dispatch_lag_seconds_count", ())] == executions
    finally:
        daemon.kill()


def test_last_success_and_failure_per_job_and_none_without_job_labels() -> None:
    metrics = Metrics()
    metrics.record_execution(record("report", timestamp="2026-11-26T21:00:00+00:00"))
    metrics.record_execution(record("report", "FAILURE", timestamp="2026-11-26T22:00:00Z"))
    metrics.record_execution(record("report", timestamp="2026-11-26T21:30:00+00:00",
                                    hook="on_failure"))  # a hook is not its job's run
    metrics.job_ran("backup", "SUCCESS", "2026-11-25T03:00:00+00:00")  # from the store
    metrics.job_ran("backup", "FAILURE", None)  # never failed: no series
    got = samples(generate_latest(metrics.registry).decode())
    success = "taskd_job_last_success_timestamp_seconds"
    failure = "taskd_job_last_failure_timestamp_seconds"
    assert got[(success, (("job_id", "report"),))] == 1795726800.0
    assert got[(failure, (("job_id", "report"),))] == 1795730400.0
    assert got[(success, (("job_id", "backup"),))] == 1795575600.0
    assert (failure, (("job_id", "backup"),)) not in got
    quiet = Metrics(per_job=False)
    quiet.record_execution(record("report"))
    assert success not in generate_latest(quiet.registry).decode()
