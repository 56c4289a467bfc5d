"""A short run of ``scripts/soak``: job churn, worker and logger kills, then the invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
