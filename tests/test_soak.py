"""Short runs of ``scripts/soak``: job churn and faults (worker and logger kills; in cluster
mode node kills and database restarts), then the invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres_server import require_postgres

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_short_soak_holds_every_invariant(tmp_path):
    work = tmp_path / "soak"
    result = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "20", "--workers", "2", "--jobs", "10",
         "--seed", "1", "--json", "--keep", str(work)],
        capture_output=True, text=True, timeout=75)
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, report
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"], report
    accounting = summary["accounting"]
    assert accounting["unaccounted"] == 0, report
    assert accounting["duplicated"] == 0, report
    assert accounting["expected"] > 0, report
    assert summary["leaks"]["leaked"] == 0, report
    assert summary["memory"]["verdict"] == "ok", report
    restarts = summary["restarts"]
    assert restarts["worker_kills"] > 0, report  # the faults did happen
    assert restarts["worker_restarts"] >= restarts["worker_kills"], report
    assert restarts["logger_restarts"] >= restarts["logger_kills"], report
    assert summary["exit"]["exit_code"] == 0, report


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_short_cluster_soak_holds_every_invariant(tmp_path):
    """``scripts/soak --cluster``: three nodes on a throwaway PostgreSQL under job churn,
    a node killed (and started again) and the database restarted or stopped a while."""
    require_postgres()  # skipped with TASKD_NO_POSTGRES=1, as the other PostgreSQL tests
    work = tmp_path / "cluster-soak"
    # --stop-phase 0.02: the final SIGTERM just after a second's claims went out, when
    # claims are in flight (each must end in one record, the same in the log and the
    # database: a claim landing after the drain once got two different ones).
    result = subprocess.run(
        [sys.executable, str(SOAK), "--cluster", "--duration", "20", "--nodes", "3",
         "--workers", "2", "--jobs", "10", "--seed", "1", "--stop-phase", "0.02", "--json",
         "--keep", str(work)],
        capture_output=True, text=True, timeout=160)
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, report
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"], report
    assert summary["records"] > 0, report
    accounting = summary["accounting"]
    assert accounting["expected"] > 0, report
    assert accounting["duplicated"] == 0, report
    assert accounting["unaccounted"] == 0, report
    assert summary["consistency"]["history_cli"] == summary["records"], report
    faults = summary["faults"]
    assert faults["node_kills"] >= 1, report  # the faults did happen
    assert faults["db_restarts"] >= 1, report
    assert summary["node_loss"]["in_flight_without_record"] == 0, report
    assert summary["lives"]["problems"] == [], report
