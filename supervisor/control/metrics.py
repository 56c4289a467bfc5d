"""Prometheus metrics: what the coordinator loop has seen, served as text on ``/metrics``.

The coordinator owns one ``Metrics`` and calls it from its loop: ``record_execution`` for
each finished record, ``set_gauges`` once per step, ``worker_restarted`` and
``logger_restarted`` when a child is replaced. ``start_http`` serves the registry from a
background thread (prometheus_client's own WSGI server); the loop never waits on a scrape,
and prometheus_client's metric objects lock internally, so a scrape in the middle of an
update reads consistent numbers.

Every metric lives in this object's own ``CollectorRegistry``, never in the library's
global one: two ``Metrics`` (tests) never collide, and nothing imported by a task type can
leak series into ours.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# From a millisecond to an hour, roughly x2.5 apart: a dispatch lag is usually a few ms
# (and at most --misfire-grace, 60 s by default), a run anything from an `echo` to a
# nightly report. 19 finite buckets per histogram; neither carries a job label.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class Metrics:
    """The daemon's metrics, in a registry of their own.

    Cardinality: ``taskd_executions_total`` carries ``job_id`` (when ``per_job``) and
    ``status``, so at most two series per job. A few thousand jobs cost nothing to speak
    of. With 100k jobs (measured, prometheus_client 0.26, CPython 3.11): 200k series plus
    as many ``_created`` lines (one per labelled counter series unless
    ``prometheus_client.disable_created_metrics()`` is called), ~145 MB held in the
    coordinator, a ~33 MB scrape body that takes ~3 s of CPU to render, and that render
    holds the GIL against the coordinator loop on every scrape. Prometheus itself then
    keeps 200k active series (a few KB of its memory each). At that size pass
    ``per_job=False``: the counter keeps only ``status``, and per-job history is read from
    the execution log (``jq``) or ``taskd status JOB_ID`` instead.
    """

    def __init__(self, *, per_job: bool = True) -> None:
        self.per_job = per_job
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        labels = ("job_id", "status") if per_job else ("status",)
        self.executions = Counter(
            "taskd_executions_total", "Finished executions, by outcome.", labels,
            registry=registry)
        self.duration = Histogram(
            "taskd_execution_duration_seconds", "How long executions ran.",
            buckets=SECONDS_BUCKETS, registry=registry)
        self.dispatch_lag = Histogram(
            "taskd_dispatch_lag_seconds",
            "How late scheduled executions started (start minus scheduled fire time).",
            buckets=SECONDS_BUCKETS, registry=registry)
        self.queue_depth = Gauge(
            "taskd_queue_depth", "Executions waiting for a free worker.", registry=registry)
        self.busy_workers = Gauge(
            "taskd_workers_busy", "Workers running an execution.", registry=registry)
        self.workers = Gauge(
            "taskd_workers", "Size of the worker pool.", registry=registry)
        self.invalid_files = Gauge(
            "taskd_invalid_job_files", "Job files that could not be used.", registry=registry)
        self.jobs = Gauge(
            "taskd_jobs", "Jobs loaded (enabled or not).", registry=registry)
        self.clock_offset = Gauge(
            "taskd_cluster_clock_offset_seconds",
            "Cluster mode: the database's clock minus this host's (measured as the node "
            "joins; more than 1 s either way is also a clock_skew diagnostic).",
            registry=registry)
        self.worker_restarts = Counter(
            "taskd_worker_restarts_total", "Worker processes replaced after dying.",
            registry=registry)
        # Per job, so only with per_job: alert on "no success for a day" across restarts.
        self.last_success = self.last_failure = None
        if per_job:
            self.last_success = Gauge(
                "taskd_job_last_success_timestamp_seconds",
                "Start of each job's last successful run (Unix time), across restarts "
                "with a state dir.", ("job_id",), registry=registry)
            self.last_failure = Gauge(
                "taskd_job_last_failure_timestamp_seconds",
                "Start of each job's last failed run (Unix time), across restarts "
                "with a state dir.", ("job_id",), registry=registry)
        self.logger_restarts = Counter(
            "taskd_logger_restarts_total", "Logger processes replaced after dying.",
            registry=registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- what the loop reports -------------------------------------------------------

    def record_execution(self, record: dict[str, Any]) -> None:
        """Count one execution record (the log line's dict). Never raises on odd input."""
        status = str(record.get("status", "UNKNOWN"))
        if self.per_job:
            self.executions.labels(job_id=str(record.get("job_id", "")), status=status).inc()
        else:
            self.executions.labels(status=status).inc()
        duration_ms = record.get("duration_ms")
        if isinstance(duration_ms, int | float) and math.isfinite(duration_ms):
            self.duration.observe(max(0.0, duration_ms / 1000))
        lag = _dispatch_lag_s(record)
        if lag is not None:
            self.dispatch_lag.observe(lag)
        if not record.get("hook"):
            self.job_ran(str(record.get("job_id", "")), status, record.get("timestamp"))

    def job_ran(self, job_id: str, status: str, started: Any) -> None:
        """Set a job's last-success or last-failure time (also from the state store)."""
        gauge = self.last_success if status == "SUCCESS" else self.last_failure
        if gauge is None or not isinstance(started, str):
            return
        try:
            gauge.labels(job_id=job_id).set(datetime.fromisoformat(started).timestamp())
        except ValueError:
            pass

    def set_gauges(self, queue_depth: int, busy_workers: int, workers: int,
                   invalid_files: int, jobs: int) -> None:
        self.queue_depth.set(queue_depth)
        self.busy_workers.set(busy_workers)
        self.workers.set(workers)
        self.invalid_files.set(invalid_files)
        self.jobs.set(jobs)

    def set_clock_offset(self, offset_s: float) -> None:
        self.clock_offset.set(offset_s)

    def worker_restarted(self) -> None:
        self.worker_restarts.inc()

    def logger_restarted(self) -> None:
        self.logger_restarts.inc()

    # -- serving ---------------------------------------------------------------------

    def start_http(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` from a daemon thread; returns the bound port (0 picks one).

        Raises ``OSError`` when the address cannot be bound (port in use, bad address).
        """
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        self._server, self._thread = start_http_server(port, addr=address,
                                                       registry=self.registry)
        return int(self._server.server_port)

    def stop_http(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        if thread is not None:
            thread.join(timeout)


def _dispatch_lag_s(record: dict[str, Any]) -> float | None:
    """Start time minus scheduled time, for scheduled runs that reached a worker.

    Manual runs (``taskd run``) have no schedule to be late for. Records with
    ``worker`` 0 never started: they were still waiting in the queue at shutdown.
    """
    if record.get("manual") or record.get("worker") == 0:
        return None
    try:
        started = datetime.fromisoformat(record["timestamp"])
        scheduled = datetime.fromisoformat(record["scheduled_for"])
        lag = (started - scheduled).total_seconds()
    except (KeyError, TypeError, ValueError):  # missing, not a string, naive vs aware
        return None
    return max(0.0, lag)
