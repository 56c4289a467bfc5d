"""Each job's last run wherever it ran, and its pause, as the shared store has them.

Every node writes its runs' records into the shared store, which keeps each job's last
run in ``taskd_jobs`` (the same row the single-node store keeps). ``JobView`` follows
that table for ``taskd status``: the first refresh reads every row, later ones only the
rows changed since (``changed_at``, set by a trigger, schema step 4), with a margin for
transactions that committed after a later one had started.

A pause (``taskd pause`` on any node) is in the same row: each refresh says which jobs'
pause the database changed since the previous refresh (a change, never the value at the
first read: what a node restored at start is its own), so every node follows a pause
made on one of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from supervisor.cluster.database import ClusterDatabase

COMMIT_MARGIN = timedelta(seconds=5)  # a change may commit this long after it was made

_ALL = """
SELECT job_id, last_started, last_status, last_error, last_success, last_failure, paused,
       changed_at
FROM taskd_jobs
"""
_CHANGED = _ALL + "WHERE changed_at > %(since)s"


class LastRun(NamedTuple):
    started: str | None
    status: str | None
    error: str | None
    success: str | None
    failure: str | None


class JobView:
    def __init__(self, db: ClusterDatabase) -> None:
        self.db = db
        self.last_runs: dict[str, LastRun] = {}
        self._paused: dict[str, bool] = {}
        self._since: datetime | None = None

    def refresh(self) -> dict[str, bool]:
        """Read what changed; the jobs whose pause changed since the last refresh
        (job_id -> paused)."""
        first = self._since is None
        with self.db.session() as db:
            if self._since is None:
                rows = db.execute(_ALL).fetchall()
            else:
                rows = db.execute(_CHANGED, {"since": self._since - COMMIT_MARGIN}).fetchall()
        flipped: dict[str, bool] = {}
        for job_id, started, status, error, success, failure, paused, changed in rows:
            if started is not None:
                self.last_runs[job_id] = LastRun(started, status, error, success, failure)
            if not first and self._paused.get(job_id, False) != paused:
                flipped[job_id] = paused
            self._paused[job_id] = paused
            self._since = changed if self._since is None else max(self._since, changed)
        if first and self._since is None:  # an empty table: from the database's now
            with self.db.session() as db:
                (self._since,) = db.execute("SELECT now()").fetchone()
        return flipped

    def last_run(self, job_id: str) -> dict[str, Any] | None:
        run = self.last_runs.get(job_id)
        if run is None:
            return None
        return {"last_run": run.started, "last_status": run.status, "last_error": run.error,
                "last_success": run.success, "last_failure": run.failure}
