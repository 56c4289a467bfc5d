"""The logger process and LoggerLink with real processes: exact lines, stdout, logrotate,
SIGKILL and SIGSTOP of the logger, clean shutdown.

Waits are bounded polls, never fixed sleeps. Every link a test makes is closed (and its
logger killed if need be) by the ``make_link`` fixture.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

from supervisor.processes.channel import receive_message, send_message
from supervisor.processes.logger_process import LoggerLink, _drop_torn_line, logger_main
from workers.execution import Execution, execution_record
from workers.task_type import TaskOutcome

CONTEXT = multiprocessing.get_context("forkserver")
START = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)


def make_record(n: int, *, tail: str = "done\n", manual: bool = False) -> dict[str, Any]:
    execution = Execution(
        run_id=f"run-{n:06d}",
        job_id=f"job-{n % 7}",
        scheduled_for=START.isoformat(),
        task_type="execute_command",
        manual=manual,
    )
    return execution_record(
        execution,
        started=START + timedelta(microseconds=n),
        finished=START + timedelta(seconds=1, microseconds=n),
        outcome=TaskOutcome(success=n % 3 != 0, exit_code=n % 3, error="exit 2",
                            output_tail=tail),
        worker=n % 4,
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every line of the log, strictly: valid UTF-8, newline-terminated, one JSON object."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def drive(link: LoggerLink, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the coordinator's side of the loop until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"stuck: unacked={link.unacked}"
        link.pump()
        wait(link.wait_objects(), timeout=0.05)
        link.handle_readable()
        link.check()


def logger_process(link: LoggerLink) -> multiprocessing.process.BaseProcess:
    assert link._process is not None
    return link._process


@pytest.fixture
def make_link() -> Iterator[Callable[..., LoggerLink]]:
    links: list[LoggerLink] = []

    def make(log_file: Path | None, **kwargs: Any) -> LoggerLink:
        link = LoggerLink(CONTEXT, str(log_file) if log_file else None, **kwargs)
        links.append(link)
        link.start()
        return link

    yield make
    for link in links:
        if link.pid is not None:
            try:
                os.kill(link.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        link.close(2.0)


def test_records_are_exact_json_lines(tmp_path: Path, make_link: Callable[..., LoggerLink]):
    log = tmp_path / "sub" / "executions.log"
    log.parent.mkdir()
    tails = ["", "plain\n", "héllo ✓ 日本語 🚀", "bad bytes \ufffd\ufffd end",
             "ctl \x00\x1b[31m\t\r\n\"quoted\" \\ back", "x" * 4096]
    records = [make_record(n, tail=tails[n % len(tails)], manual=n == 3) for n in range(60)]
    link = make_link(log)
    process = logger_process(link)
    for record in records:
        link.submit(record)

    assert link.close(10.0)
    assert process.exitcode == 0
    assert link.unacked == 0
    written = read_log(log)
    assert written == records
    assert [list(line) for line in written] == [list(record) for record in records]
    assert len(log.read_bytes().splitlines()) == len(records)
    assert list(written[0]) == ["event", "job_id", "run_id", "timestamp", "status",
                                "scheduled_for", "finished_at", "duration_ms", "exit_code",
                                "error", "worker", "output_tail"]
    assert written[3]["manual"] is True
    assert "日本語" in log.read_text(encoding="utf-8")  # readable, not \u-escaped


def test_lines_go_to_file_descriptor_1_without_log_file(tmp_path: Path):
    # The coordinator's own sys.stdout points elsewhere: the lines must come from the
    # logger process writing to the fd 1 it inherited.
    script = textwrap.dedent("""
        import json, multiprocessing, sys
        from supervisor.processes.logger_process import LoggerLink
        if __name__ == "__main__":
            sys.stdout = sys.stderr
            link = LoggerLink(multiprocessing.get_context("forkserver"), None)
            link.start()
            for n in range(50):
                link.submit({"event": "execution", "run_id": f"r{n}", "output_tail": "é"})
            sys.exit(0 if link.close(10.0) else 3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": "execution", "run_id": f"r{n}", "output_tail": "é"} for n in range(50)
    ]


def test_logrotate_move_and_delete_reopen_the_path(
    tmp_path: Path, make_link: Callable[..., LoggerLink]
):
    log = tmp_path / "executions.log"
    rotated = tmp_path / "executions.log.1"
    link = make_link(log, max_in_flight_bytes=8 * 1024)  # keep records flowing in steps
    records = [make_record(n) for n in range(3000)]
    for record in records[:2000]:
        link.submit(record)
    drive(link, lambda: link.unacked <= 1500)
    log.rename(rotated)  # logrotate's default: move, then the writer reopens the path
    drive(link, lambda: link.unacked == 0 and log.exists())

    for record in records[2000:]:
        link.submit(record)
    drive(link, lambda: link.unacked <= 500)
    log.unlink()  # deleted outright: the next records start a new file
    assert link.close(10.0)

    first, second = read_log(rotated), read_log(log)
    # Before the move: the rotated file; after the delete: the new one; in between, the
    # file that was deleted. Nothing is out of order, nothing is repeated.
    assert len(first) >= 500 and second
    assert first == records[: len(first)]
    assert second == records[-len(second):]
    assert len(first) + len(second) < len(records)


def test_sigkilled_logger_is_replaced_and_nothing_is_lost(
    tmp_path: Path, make_link: Callable[..., LoggerLink]
):
    log = tmp_path / "executions.log"
    restarts: list[tuple[int, int | None]] = []
    link = make_link(log, on_restart=lambda pid, code: restarts.append((pid, code)))
    records = [make_record(n, tail="t" * (n % 500)) for n in range(1000)]
    for record in records:
        link.submit(record)
    assert link.unacked == 1000

    chooser = random.Random(20261126)
    kills = 0
    for _ in range(6):
        # Kill once some random share of the rest is acknowledged (0: right after restart).
        target = link.unacked - int(link.unacked * chooser.choice([0, 0.1, 0.3, 0.5]))
        drive(link, lambda target=target: link.unacked <= target)
        if link.unacked == 0:
            break
        victim = link.pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        kills += 1
        drive(link, lambda victim=victim: link.pid != victim)
        assert restarts[-1] == (victim, -signal.SIGKILL)
    assert kills >= 3
    assert len(restarts) == kills

    assert link.close(10.0)
    run_ids = [line["run_id"] for line in read_log(log)]
    submitted = [record["run_id"] for record in records]
    assert set(run_ids) == set(submitted)
    # A duplicate is only the record written but not yet acknowledged when the logger
    # died: at most one per kill, right after its first copy.
    assert len(run_ids) - len(submitted) <= kills
    collapsed = [r for i, r in enumerate(run_ids) if i == 0 or run_ids[i - 1] != r]
    assert collapsed == submitted


def test_stopped_logger_never_blocks_the_coordinator(
    tmp_path: Path, make_link: Callable[..., LoggerLink]
):
    log = tmp_path / "executions.log"
    link = make_link(log)
    pid = link.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        records = [make_record(n, tail="o" * 1000) for n in range(5000)]
        slowest = 0.0
        began = time.monotonic()
        for record in records:
            before = time.monotonic()
            link.submit(record)
            slowest = max(slowest, time.monotonic() - before)
        link.pump()
        link.handle_readable()
        assert not link.check()
        elapsed = time.monotonic() - began
        # A blocking write to the stopped logger would never return; these bounds are far
        # above what a loaded machine takes (milliseconds) and far below "blocked".
        assert elapsed < 10.0 and slowest < 1.0, (elapsed, slowest)
        assert link.unacked == 5000
        assert link.queued > 4000  # held in memory, waiting for the logger
    finally:
        os.kill(pid, signal.SIGCONT)

    assert link.close(15.0)
    assert read_log(log) == records


def test_logger_ends_cleanly_on_eof_stop_and_sigterm(tmp_path: Path):
    log = tmp_path / "executions.log"

    def start() -> tuple[Any, multiprocessing.process.BaseProcess]:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        process = CONTEXT.Process(target=logger_main, args=(child_end, os.getpid(), str(log)),
                                  name="taskd-logger")
        process.start()
        child_end.close()
        return parent_end, process

    # EOF: the coordinator's end is closed.
    conn, process = start()
    send_message(conn, {"seq": 1, "record": make_record(1)})
    assert receive_message(conn) == {"ack": 1, "stored": 1}  # no store: both at once
    conn.close()
    process.join(10)
    assert process.exitcode == 0

    # An explicit stop.
    conn, process = start()
    send_message(conn, {"seq": 2, "record": make_record(2)})
    send_message(conn, {"stop": True})
    assert receive_message(conn) == {"ack": 2, "stored": 2}  # no store: both at once
    process.join(10)
    assert process.exitcode == 0
    conn.close()

    # SIGTERM while idle: exits at once, what it wrote is in the file.
    conn, process = start()
    send_message(conn, {"seq": 3, "record": make_record(3)})
    assert receive_message(conn) == {"ack": 3, "stored": 3}  # no store: both at once
    assert process.pid is not None
    os.kill(process.pid, signal.SIGTERM)
    process.join(10)
    assert process.exitcode == 0
    conn.close()

    assert [line["run_id"] for line in read_log(log)] == ["run-000001", "run-000002",
                                                          "run-000003"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_record_that_cannot_be_written_is_not_acknowledged():
    parent_end, child_end = multiprocessing.Pipe(duplex=True)
    process = CONTEXT.Process(target=logger_main, args=(child_end, os.getpid(), "/dev/full"))
    process.start()
    child_end.close()
    send_message(parent_end, {"seq": 1, "record": make_record(1)})
    with pytest.raises(EOFError):  # no ack: the process exits instead
        receive_message(parent_end)
    process.join(10)
    assert process.exitcode == 1
    parent_end.close()


def test_restart_after_clean_exit_and_closed_channel(
    tmp_path: Path, make_link: Callable[..., LoggerLink]
):
    log = tmp_path / "executions.log"
    link = make_link(log)
    assert not link.check()
    first = link.pid
    assert first is not None
    os.kill(first, signal.SIGTERM)  # not asked for by us: still a logger to replace
    drive(link, lambda: link.pid != first)
    link.submit(make_record(1))
    drive(link, lambda: link.unacked == 0)
    assert read_log(log) == [make_record(1)]


def test_torn_last_line_is_cut_and_foreign_tail_kept(tmp_path: Path):
    ours = tmp_path / "ours.log"
    ours.write_bytes(b'{"event": "execution", "run_id": "a"}\n{"event": "execution", "ru')
    _drop_torn_line(str(ours))
    assert ours.read_bytes() == b'{"event": "execution", "run_id": "a"}\n'

    torn_only = tmp_path / "torn_only.log"
    torn_only.write_bytes(b'{"event": "exec')
    _drop_torn_line(str(torn_only))
    assert torn_only.read_bytes() == b""

    foreign = tmp_path / "foreign.log"
    foreign.write_bytes(b"some header without newline")
    _drop_torn_line(str(foreign))
    assert foreign.read_bytes() == b"some header without newline\n"

    _drop_torn_line(str(tmp_path / "missing.log"))  # nothing to do, no error
