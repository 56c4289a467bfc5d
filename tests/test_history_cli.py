"""``taskd history``: the state store read directly, with or without a daemon.

Cases go through click's CliRunner; one test runs the real ``taskd`` console script.
Records are placed relative to the real clock when each test starts, with half an hour
or more of margin, so ``--since 1h`` is tested without sleeping and without a bound that
a slow machine could break.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor import cli
from supervisor.cli import main
from supervisor.store import migrations
from supervisor.store.history_view import columns, duration_text, format_table, parse_since
from supervisor.store.sqlite import SQLiteStore
from tests.property_settings import examples

HOUR = 3600.0
TAIL = "x" * 4096


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def record(job_id: str, hours_ago: float, status: str = "SUCCESS", *, now: float | None = None,
           **extra: Any) -> dict[str, Any]:
    start = (time.time() if now is None else now) - hours_ago * HOUR
    return {"event": "execution", "job_id": job_id, "run_id": f"{job_id}@{hours_ago}",
            "timestamp": iso(start + 0.000123), "status": status, "scheduled_for": iso(start),
            "finished_at": iso(start + 1.5), "duration_ms": 1500.0,
            "exit_code": 0 if status == "SUCCESS" else 1,
            "error": None if status == "SUCCESS" else "exit code 1", "worker": 2,
            "output_tail": "", **extra}


# Newest first, as history must return them: (job, hours ago, status, other fields).
RUNS = [("backup", 0.1, "SUCCESS", {}),
        ("report", 0.5, "FAILURE", {}),
        ("backup", 2, "FAILURE", {"manual": True}),
        ("report", 5, "SUCCESS", {"catch_up": True}),
        ("backup", 30, "SUCCESS", {}),
        ("report", 50, "FAILURE", {"output_tail": TAIL})]
ALL = [f"{job}@{hours}" for job, hours, _, _ in RUNS]
B0, R1, B2, R5, B30, R50 = ALL


def build(directory: Path, records: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(str(directory / "state.db"))
    store.apply([{"record": r} for r in reversed(records)])  # oldest first, as a daemon
    store.close()
    return directory


@pytest.fixture
def records():
    now = time.time()
    return [record(job, hours, status, now=now, **extra) for job, hours, status, extra in RUNS]


@pytest.fixture
def state(tmp_path, monkeypatch, records):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return build(tmp_path / "state", records)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["history", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def run_ids(*args: str) -> list[str]:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    return [r["run_id"] for r in json.loads(out)]


# -- filters -------------------------------------------------------------------------------


def hours_ago(hours: float, offset_h: float | None = 0) -> str:
    """The instant ``hours`` before now as ISO 8601, at a UTC offset (None: "Z")."""
    moment = datetime.fromtimestamp(time.time() - hours * HOUR,
                                    timezone(timedelta(hours=offset_h or 0)))
    return moment.isoformat().replace("+00:00", "Z") if offset_h is None else moment.isoformat()


@pytest.mark.parametrize(("args", "expected"), [
    ([], ALL),
    (["backup"], [B0, B2, B30]),
    (["report", "--status", "FAILURE"], [R1, R50]),
    (["--status", "failure"], [R1, B2, R50]),
    (["--status", "Success"], [B0, R5, B30]),
    (["--since", "1h"], [B0, R1]),
    (["--since", "90m"], [B0, R1]),
    (["--since", "1h30m"], [B0, R1]),
    (["--since", "3h"], [B0, R1, B2]),
    (["--since", "7d"], ALL),
    (["--since", "1d", "--status", "SUCCESS"], [B0, R5]),
    (["--since", lambda: hours_ago(3)], [B0, R1, B2]),
    (["--since", lambda: hours_ago(3, None)], [B0, R1, B2]),
    (["--since", lambda: hours_ago(3, -5)], [B0, R1, B2]),
    (["--since", lambda: hours_ago(40, 5.5)], [B0, R1, B2, R5, B30]),
    (["--since", lambda: hours_ago(-1)], []),
    (["-n", "2"], [B0, R1]),
    (["-n", "1", "report"], [R1]),
    (["-n", "1000000"], ALL),
    (["nobody"], []),
])
def test_filters_newest_first(state, args, expected):
    args = [arg() if callable(arg) else arg for arg in args]
    assert run_ids(*args, "--state-dir", str(state)) == expected


def test_a_time_without_an_offset_is_the_hosts_local_time(state, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # +09:00 all year
    then = time.time() - 3 * HOUR
    wall = datetime.fromtimestamp(then, ZoneInfo("Asia/Tokyo")).replace(tzinfo=None)
    assert run_ids("--since", wall.isoformat(), "--state-dir", str(state)) == [B0, R1, B2]
    as_utc = datetime.fromtimestamp(then, UTC).replace(tzinfo=None)
    # Read in Tokyo, the UTC wall time is 9 hours earlier: more runs.
    assert run_ids("--since", as_utc.isoformat(), "--state-dir", str(state)) == [
        B0, R1, B2, R5]


def test_json_is_one_array_of_the_records_as_stored(state, records):
    code, out, err = run("--json", "--state-dir", str(state))
    assert code == 0, err
    assert json.loads(out) == records  # every field, the 4 KiB output tail included
    assert out.startswith("[\n") and out.endswith("]\n")
    assert len(out.splitlines()) == len(records) + 2  # one record per line


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 7])
def test_json_written_in_chunks_is_still_one_array(state, records, monkeypatch, chunk):
    monkeypatch.setattr(cli, "_echo_json_array", partial(cli._echo_json_array, chunk=chunk))
    code, out, err = run("--json", "--state-dir", str(state))
    assert code == 0, err
    assert json.loads(out) == records and len(out.splitlines()) == len(records) + 2


def test_json_of_nothing_is_an_empty_array(state):
    assert run("nobody", "--json", "--state-dir", str(state)) == (0, "[]\n", "")


def test_state_directory_is_the_default(state, tmp_path):
    other = build(tmp_path / "other", [record("other", 1)])
    env = {"STATE_DIRECTORY": f"{state}:{other}"}  # systemd's list: the first one
    code, out, _ = run("--json", env=env)
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == ALL
    code, out, _ = run("--json", "--state-dir", str(other), env=env)  # the option wins
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == ["other@1"]


def test_reads_while_a_daemon_holds_the_store_open_mid_write(state):
    writer = SQLiteStore(str(state / "state.db"))
    batch = sqlite3.connect(state / "state.db", isolation_level=None)
    try:
        writer.apply([{"record": record("live", 0.01)}])
        batch.execute("BEGIN IMMEDIATE")  # a batch under way, not committed yet
        batch.execute("DELETE FROM executions")
        assert run_ids("-n", "2", "--state-dir", str(state)) == ["live@0.01", B0]
        batch.execute("ROLLBACK")
    finally:
        batch.close()
        writer.close()


# -- the table -----------------------------------------------------------------------------


def test_table_has_a_header_and_a_line_per_run(state, records):
    code, out, err = run("--state-dir", str(state))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["STARTED", "JOB", "STATUS", "TOOK", "EXIT", "NOTES"]
    assert len(lines) == 1 + len(RUNS)
    started = datetime.fromisoformat(records[0]["timestamp"]).strftime("%Y-%m-%d %H:%M:%S") + "Z"
    assert lines[1].split() == [*started.split(), "backup", "SUCCESS", "1.5s", "0"]
    assert lines[3].split()[2:] == ["backup", "FAILURE", "1.5s", "1", "[manual]", "exit",
                                    "code", "1"]
    assert "[catch-up]" in lines[4]
    assert all(columns(line) <= 80 for line in lines)


def test_started_in_the_table_is_a_valid_since(state):
    _, out, _ = run("--state-dir", str(state))
    started = out.splitlines()[3][:20]  # B2's start, cut to the second: B2 is in
    assert run_ids("--since", started, "--state-dir", str(state)) == [B0, R1, B2]


def test_long_values_are_cut_to_80_columns(tmp_path):
    long_id = "j" * 128
    state = build(tmp_path, [record(long_id, 1, "FAILURE", error="é" * 200 + "\n" + "界" * 50,
                                    duration_ms=1e15, exit_code=-(10 ** 30))])
    code, out, err = run("--state-dir", str(state))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 and columns(line) <= 80 for line in lines)
    assert "jjjjjjjj…" in lines[1] and "éé…" in lines[1]


def test_nothing_recorded_says_so(state):
    assert run("nobody", "--state-dir", str(state)) == (
        0, "", "taskd history: no recorded runs of nobody\n")
    code, out, err = run("--status", "FAILURE", "--since", "1m", "--state-dir", str(state))
    assert (code, out) == (0, "") and "no recorded runs match" in err


# -- no readable store: exit 1, the file named ---------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.close()


def _too_new(path: Path) -> None:
    SQLiteStore(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE taskd_schema SET version = ?", (migrations.CURRENT + 1,))
    db.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(("make", "problem"), [
    (None, "no such file (no directory"),
    (lambda path: None, "no such file (no daemon has kept its state in"),
    (_garbage, "corrupt ("),
    (_foreign, "not a taskd state store"),
    (_too_new, f"written by a newer taskd (schema version {migrations.CURRENT + 1}"),
    (_empty, "empty (not a taskd state store)"),
    (_directory, "not a regular file"),
])
def test_no_readable_store_exits_1_naming_the_file(tmp_path, make, problem):
    directory = tmp_path / "state"
    path = directory / "state.db"
    if make is not None:
        directory.mkdir()
        make(path)
    before = path.read_bytes() if path.is_file() else None
    for args in ([], ["--json"], ["job", "--status", "SUCCESS", "--since", "1d"]):
        code, out, err = run(*args, "--state-dir", str(directory))
        assert (code, out) == (1, ""), err
        assert err.startswith(f"taskd history: {path}: {problem}"), err
        assert err.count("\n") == 1
    if before is not None:  # refused, never changed
        assert path.read_bytes() == before


def test_an_sqlite_database_with_no_tables_is_not_a_store(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")  # a header written, no table
    db.close()
    code, _, err = run("--state-dir", str(tmp_path))
    assert code == 1 and err.startswith(f"taskd history: {path}: not a taskd state store")


def test_no_state_directory_at_all(monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    code, out, err = run()
    assert (code, out) == (1, "")
    assert err.startswith("taskd history: no state directory: give --state-dir DIR or set "
                          "$STATE_DIRECTORY")


# -- usage errors: exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--status", "OK"], "'OK' is not one of 'success', 'failure'"),
    (["--since", "yesterday"], "'yesterday': expected an ISO 8601 instant"),
    (["--since", "90"], "a duration needs a unit, e.g. 90s or 90m"),
    (["--since", "1h 30m"], "expected an ISO 8601 instant"),
    (["--since", "30m1h"], "expected an ISO 8601 instant"),
    (["--since", ""], "expected an ISO 8601 instant"),
    (["--since", "9" * 400 + "d"], "that duration is too long"),
    (["-n", "0"], "0 is not in the range 1<=x<=1000000"),
    (["-n", "1000001"], "1000001 is not in the range 1<=x<=1000000"),
    (["-n", "many"], "'many' is not a valid integer"),
])
def test_bad_values_are_usage_errors(state, args, message):
    code, out, err = run(*args, "--state-dir", str(state))
    assert (code, out) == (2, "")
    assert "Invalid value for" in err and message in err, err


# -- the real command ------------------------------------------------------------------------


def test_the_taskd_console_script_reads_a_store(state, records, tmp_path):
    taskd = Path(sys.executable).with_name("taskd")
    env = {"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(state)}
    done = subprocess.run([str(taskd), "history", "report", "--status", "failure", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [records[1], records[5]]
    done = subprocess.run([str(taskd), "history", "--state-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"taskd history: {tmp_path}/none/state.db: no such file "
                           f"(no directory {tmp_path}/none)\n")


# -- parse_since, pure ---------------------------------------------------------------------

T = datetime(2026, 3, 29, 12, 0, tzinfo=UTC).timestamp()
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(("text", "zone", "expected"), [
    ("90s", UTC, T - 90),
    ("15m", UTC, T - 900),
    ("2h", UTC, T - 7200),
    ("7d", UTC, T - 7 * 86400),
    ("1w", UTC, T - 7 * 86400),
    ("1h30m", UTC, T - 5400),
    ("2d12h30m15s", UTC, T - (2 * 86400 + 12 * 3600 + 30 * 60 + 15)),
    ("0s", UTC, T),
    (" 5m ", UTC, T - 300),
    ("2026-12-03T17:00:00Z", BERLIN, datetime(2026, 12, 3, 17, tzinfo=UTC).timestamp()),
    ("2026-12-03T17:00:00+01:00", UTC, datetime(2026, 12, 3, 16, tzinfo=UTC).timestamp()),
    ("2026-12-03 17:57:31Z", UTC, datetime(2026, 12, 3, 17, 57, 31, tzinfo=UTC).timestamp()),
    ("2026-12-03T17:00:00", BERLIN, datetime(2026, 12, 3, 16, tzinfo=UTC).timestamp()),
    ("2026-12-03", BERLIN, datetime(2026, 12, 2, 23, tzinfo=UTC).timestamp()),
    # Spring forward in Berlin: 02:30 does not exist; the end of the gap (03:00 CEST).
    ("2026-03-29T02:30:00", BERLIN, datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()),
    # Fall back: 02:30 happens twice; its first pass (CEST).
    ("2026-10-25T02:30:00", BERLIN, datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()),
])
def test_parse_since(text, zone, expected):
    assert parse_since(text, T, zone) == expected


@pytest.mark.parametrize("text", ["", "h", "1x", "1M", "-5m", "1.5h", "1h 30m", "30m1h",
                                  "yesterday", "2026-13-01", "now", "9" * 400 + "s"])
def test_parse_since_refuses(text):
    with pytest.raises(ValueError, match=r"expected an ISO 8601|too long"):
        parse_since(text, T)


@settings(max_examples=examples(100))
@given(st.lists(st.integers(0, 10 ** 6), min_size=5, max_size=5),
       st.lists(st.booleans(), min_size=5, max_size=5))
def test_durations_add_up(amounts, present):
    units = zip("wdhms", (604800, 86400, 3600, 60, 1), strict=True)
    parts = [(f"{n}{unit}", n * size) for n, (unit, size), keep in
             zip(amounts, units, present, strict=True) if keep]
    if not parts:
        return
    assert parse_since("".join(p for p, _ in parts), T) == T - sum(s for _, s in parts)


@settings(max_examples=examples(100))
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.timezones()))
def test_an_iso_instant_is_that_instant(moment):
    assert parse_since(moment.isoformat(), T) == moment.timestamp()


# -- the table, pure -----------------------------------------------------------------------


@pytest.mark.parametrize(("ms", "text"), [
    (None, "-"), (-1, "-"), (float("nan"), "-"), (float("inf"), "-"), (True, "-"),
    (0, "<1ms"), (0.4, "<1ms"), (12.5, "12ms"), (999.4, "999ms"), (999.6, "1.0s"),
    (3400, "3.4s"), (9949, "9.9s"), (9960, "10s"), (59_499, "59s"), (59_600, "1m00s"),
    (302_000, "5m02s"), (3_599_499, "59m59s"), (7_380_000, "2h03m"),
    (86_400_000 * 3 + 4 * 3_600_000, "3d04h"),
])
def test_duration_text(ms, text):
    assert duration_text(ms) == text


def test_a_manual_retry_of_a_hook_is_marked():
    lines = format_table([{"timestamp": "2026-12-03T17:57:31.5+00:00", "job_id": "a",
                           "status": "FAILURE", "duration_ms": 5, "exit_code": 1,
                           "error": "exit code 1", "manual": True, "attempt": 2,
                           "hook": "on_failure", "catch_up": True}])
    assert lines[1] == ("2026-12-03 17:57:31Z  a    FAILURE     5ms     1  [manual, catch-up, "
                        "on_failure…")
    assert len(lines[1]) == 80


def test_times_are_shown_in_utc():
    lines = format_table([{"timestamp": "2026-12-03T18:57:31+01:00", "job_id": "a"}])
    assert lines[1].startswith("2026-12-03 17:57:31Z  a  ")


JOB_IDS = st.text(st.sampled_from("abcxyz019._-"), min_size=1, max_size=128)
ANY_TEXT = st.text(max_size=300) | st.text(st.characters(codec="utf-8"), max_size=300)
VALUES = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
TIMESTAMPS = st.datetimes(timezones=st.none() | st.timezones()).map(
    lambda moment: moment.isoformat()) | VALUES
RECORD_FIELDS = st.fixed_dictionaries(
    {"timestamp": TIMESTAMPS, "job_id": JOB_IDS | ANY_TEXT,
     "status": st.sampled_from(["SUCCESS", "FAILURE"]) | VALUES,
     "duration_ms": st.floats(0, 1e12) | VALUES, "exit_code": st.integers(-255, 255) | VALUES,
     "error": st.none() | ANY_TEXT},
    optional={"manual": VALUES, "catch_up": VALUES, "hook": VALUES, "attempt": VALUES})


@settings(max_examples=examples(100))
@given(st.lists(RECORD_FIELDS, max_size=12))
@example([{"timestamp": "x", "job_id": "界" * 100, "status": "\n\x1b[31m", "duration_ms": 1e300,
           "exit_code": 10 ** 50, "error": "\u0301" * 200, "hook": "\u2028" * 9}])
@example([{"timestamp": None, "job_id": "", "status": None, "duration_ms": None,
           "exit_code": None, "error": None}])
def test_every_line_fits_80_columns(records):
    lines = format_table(records)
    assert len(lines) == 1 + len(records)
    for line in lines:
        assert len(line) <= 80 and columns(line) <= 80, line
        assert line.isprintable() and line == line.rstrip(), line


@settings(max_examples=examples(100))
@given(st.lists(st.fixed_dictionaries({
    "timestamp": st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                              timezones=st.just(UTC)).map(datetime.isoformat),
    "job_id": JOB_IDS, "status": st.sampled_from(["SUCCESS", "FAILURE"]),
    "duration_ms": st.floats(0, 1e9), "exit_code": st.integers(-64, 255),
    "error": st.none() | st.text(max_size=100)}), min_size=1, max_size=12))
def test_columns_line_up_for_real_records(records):
    lines = format_table(records)
    status_at = lines[0].index("STATUS")
    for line, r in zip(lines[1:], records, strict=True):
        assert line[:20] == datetime.fromisoformat(r["timestamp"]).strftime(
            "%Y-%m-%d %H:%M:%S") + "Z"
        assert line[status_at:status_at + 7] == r["status"]
        shown = line[22:status_at].rstrip()
        assert shown == r["job_id"] or (shown.endswith("…") and
                                        r["job_id"].startswith(shown[:-1]))
