"""The fault matrix: crash, stop, flood and starve taskd's processes and tasks, and
assert a clean, bounded outcome for each (the idea of CPython's ``test_deadlock``).

What ``test_daemon_processes.py`` and ``test_pool.py`` already cover is not repeated here
(a worker SIGKILLed idle or busy three times, the logger SIGKILLed, graceful and forced
shutdown, the coordinator SIGKILLed, leftovers killed at stop). Every test runs real
processes; every wait polls with a deadline. The only pacing is that of the fault
injectors themselves (one kill per 100 ms) and sleeps inside job commands.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import struct
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.control.control_client import request
from supervisor.processes.channel import receive_message, send_message
from tests.daemon_harness import Daemon, descendants, pid_alive, wait_until
from workers.child_process import become_child_process
from workers.execution import Execution

pytestmark = pytest.mark.slow

# The random-kill storm: one worker SIGKILLed every KILL_EVERY_S for STORM_S seconds.
# The issue asks for 30 s; the suite's time budget allows 10 here. Run the long version
# with TASKD_FAULT_STORM_S=30 (scripts/soak covers hours of slower, mixed faults).
STORM_S = float(os.environ.get("TASKD_FAULT_STORM_S", "10"))
KILL_EVERY_S = 0.1


# -- helpers ---------------------------------------------------------------------------


def iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def at(instant: str) -> datetime:
    return datetime.fromisoformat(instant)


def write_task_job(daemon: Daemon, job_id: str, command: str, schedule: str,
                   task: dict[str, Any] | None = None, **fields: Any) -> Path:
    """A job file whose task has more than a command (``env``, ``cwd``)."""
    document = {"job_id": job_id, "schedule": schedule,
                "task": {"type": "execute_command", "command": command, **(task or {})},
                **fields}
    return daemon.write_raw(f"{job_id}.json", json.dumps(document))


def control(daemon: Daemon, command: str, **args: Any) -> dict[str, Any]:
    """One control request from this process (no client process: fast enough to poll)."""
    response = request(str(daemon.socket), {"command": command, "args": args}, timeout_s=10)
    assert response["ok"], response
    return response["result"]


def workers(daemon: Daemon) -> list[dict[str, Any]]:
    return control(daemon, "status")["workers"]


def full_pool(daemon: Daemon) -> list[int] | None:
    """The worker pids once every slot has a live process, else None."""
    pids = [w["pid"] for w in workers(daemon) if w["state"] != "down" and w["pid"]]
    return pids if len(pids) == daemon.workers and all(map(pid_alive, pids)) else None


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process, zombies included."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def zombies_under(root: int) -> list[int]:
    """``<defunct>`` processes whose parent is ``root`` or anything below it."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return [pid for pid, (ppid, state) in table.items() if state == "Z" and ppid in tree]


def process_state(pid: int) -> str | None:
    """``R``, ``S``, ``T`` (stopped), ``Z``...; None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def strict_log_lines(daemon: Daemon) -> list[dict[str, Any]]:
    """Every line of the execution log, decoded strictly: any bad byte or line fails.

    One record is one line for a byte-oriented reader (``\\n``) and for a Unicode-aware
    one (``str.splitlines`` also breaks at U+0085, U+2028 and U+2029).
    """
    text = daemon.log.read_bytes().decode("utf-8")
    assert text.endswith("\n")
    lines = text.removesuffix("\n").split("\n")
    assert text.splitlines() == lines
    return [json.loads(line) for line in lines]


def wait_for_jobs(daemon: Daemon, job_ids: set[str], timeout: float) -> list[dict[str, Any]]:
    """Wait for a record of each job; on timeout, say which are missing and why."""
    try:
        wait_until(lambda: job_ids <= {r["job_id"] for r in daemon.records()}, timeout,
                   message="a record of every job")
    except AssertionError:
        missing = job_ids - {r["job_id"] for r in daemon.records()}
        assert daemon.process is not None
        raise AssertionError(f"no record of {sorted(missing)}; daemon exit code "
                             f"{daemon.process.poll()}; diagnostics: "
                             f"{daemon.stderr_path.read_text()[-6000:]}") from None
    return daemon.records()


def diagnostics_are_clean(daemon: Daemon) -> None:
    """stderr holds JSON diagnostics only: no traceback, no warning, no fatal event."""
    text = daemon.stderr_path.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text and "Warning" not in text
    assert not [e for e in events if e["event"] == "fatal"]


def seconds_covered(records: list[dict[str, Any]], missed: list[dict[str, Any]]
                    ) -> tuple[list[datetime], list[datetime]]:
    """The occurrences that ran and those a ``missed`` diagnostic counted, per second."""
    ran = sorted(at(r["scheduled_for"]) for r in records)
    skipped = []
    for event in missed:
        first, last = at(event["scheduled_for"]), at(event["last"])
        assert (last - first).total_seconds() == event["count"], event
        skipped += [first + timedelta(seconds=i) for i in range(event["count"])]
    return ran, sorted(skipped)


def gaps(instants: list[datetime]) -> set[float]:
    """The distinct distances, in seconds, between successive sorted instants."""
    return {(b - a).total_seconds() for a, b in itertools.pairwise(sorted(instants))}


def sleep_until(deadline: float) -> None:
    """Pacing for a fault injector (never a wait for the daemon: those poll)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


# -- worker deaths ---------------------------------------------------------------------


def test_twenty_sigkills_in_a_row_every_worker_is_replaced(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=4)
    cleanup(daemon)
    daemon.write_job("tick.json")
    daemon.start()
    daemon.wait_records("tick")
    killed: list[int] = []
    began = datetime.now(UTC)
    for round_number in range(20):
        up = [w for w in workers(daemon) if w["state"] != "down"]
        victim = up[round_number % len(up)]
        os.kill(victim["pid"], signal.SIGKILL)
        killed.append(victim["pid"])

        def replaced(slot: int = victim["id"], old: int = victim["pid"]) -> bool:
            now = {w["id"]: w["pid"] for w in workers(daemon)}
            return now[slot] not in (None, old) and pid_alive(now[slot])

        # A slot paused by the flapping guard comes back by itself after its pause.
        wait_until(replaced, 10, message=f"replacement #{round_number + 1}")
    ended = datetime.now(UTC)

    died = daemon.wait_event("worker_died", count=20)
    assert sorted(e["pid"] for e in died) == sorted(killed)
    assert len(daemon.wait_event("worker_restarted", count=20)) == 20
    paused = [e for e in died if e["restart_in_s"] > 0]
    print(f"20 kills in {(ended - began).total_seconds():.1f}s; the flapping guard paused "
          f"a slot {len(paused)} times")
    pids = wait_until(lambda: full_pool(daemon), 10, message="pool at full size")
    assert not set(pids) & set(killed)
    # Jobs kept running: ticks succeeded during the storm and after the last kill.
    daemon.wait_records("tick", where=lambda r: at(r["scheduled_for"]) > ended
                        and r["status"] == "SUCCESS")
    ticks = daemon.records("tick")
    assert any(began < at(r["scheduled_for"]) < ended and r["status"] == "SUCCESS"
               for r in ticks)
    # What taskd promises for each second: it ran once, or it was reported missed. Not
    # that it ran: a coordinator starved of CPU for seconds (other tests beside this one
    # on two cores) coalesces what came due meanwhile, as after a suspend (README).
    ran, skipped = seconds_covered(ticks, daemon.events("missed"))
    assert len(ran) == len(set(ran)) and not set(ran) & set(skipped)
    assert gaps(ran + skipped) == {1.0}
    assert {r["error"] for r in ticks} <= {None, "worker lost"}
    assert daemon.stop() == 0


def test_sigstopped_workers_busy_and_idle_are_noticed_by_their_silence(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=2, args=("--heartbeat-timeout", "2"))
    cleanup(daemon)
    daemon.write_job("held.json", schedule="0 0 1 1 *", command="sleep 30")
    daemon.write_job("quick.json", schedule="0 0 1 1 *", command="echo quick")
    daemon.start()

    # Busy: stop the worker that runs "held", in the middle of its run.
    control(daemon, "run", job_id="held")
    first = wait_until(lambda: next((w for w in workers(daemon) if w["state"] == "busy"
                                     and descendants(w["pid"])), None), message="held running")
    task_pids = descendants(first["pid"])
    os.kill(first["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    # Meanwhile the coordinator answers and the other worker runs things.
    control(daemon, "run", job_id="quick")
    assert daemon.wait_records("quick")[0]["status"] == "SUCCESS"
    lost = daemon.wait_records("held", timeout=10)[0]
    noticed_after = time.monotonic() - stopped_at
    assert (lost["status"], lost["error"], lost["worker"]) == (
        "FAILURE", "worker lost", first["id"])
    # Silence counts from the last heartbeat, up to a second before the stop; then the
    # loop's wake-up and the record's way to the log.
    assert 1 <= noticed_after < 2 + 3, noticed_after
    unresponsive = daemon.wait_event("worker_unresponsive")[0]
    assert (unresponsive["pid"], unresponsive["job_id"]) == (first["pid"], "held")
    wait_until(lambda: not pid_alive(first["pid"]), message="stopped worker gone")
    wait_until(lambda: not any(map(pid_alive, task_pids)), message="its task gone")
    wait_until(lambda: full_pool(daemon), message="pool at full size")

    # Idle: stop worker 1 while it waits for work, then give it work (both are idle,
    # so the run goes to worker 1). It never answers: the run is lost, not stuck.
    idle = next(w for w in workers(daemon) if w["id"] == 1)
    assert idle["state"] == "idle"
    os.kill(idle["pid"], signal.SIGSTOP)
    control(daemon, "run", job_id="quick")
    records = daemon.wait_records("quick", count=2, timeout=10)
    assert (records[1]["error"], records[1]["worker"]) == ("worker lost", 1)
    wait_until(lambda: not pid_alive(idle["pid"]), message="stopped idle worker gone")
    wait_until(lambda: full_pool(daemon), message="pool at full size")
    control(daemon, "run", job_id="quick")
    assert daemon.wait_records("quick", count=3)[2]["status"] == "SUCCESS"
    assert len(daemon.events("worker_unresponsive")) == 2
    assert daemon.stop() == 0


def torn_result_worker(conn, worker_id: int, coordinator_pid: int) -> None:
    """A worker that stops itself in the middle of sending a large result frame.

    A real worker's result is at most ~25 KiB (4 KiB of output, JSON-escaped), and the
    socket takes ~200 KiB, so from outside a stop lands mid-frame only by luck; this
    writes the header and half the payload, then SIGSTOPs itself, every time.
    """
    become_child_process(coordinator_pid)
    message = receive_message(conn)
    execution = Execution.from_message(message["run"])
    send_message(conn, {"heartbeat": execution.run_id})
    record = {"event": "execution", "job_id": execution.job_id, "run_id": execution.run_id,
              "status": "SUCCESS", "output_tail": "\x01" * 4096}  # 6 bytes each in JSON
    payload = json.dumps({"result": record}).encode()
    frame = struct.pack("!i", len(payload)) + payload
    os.write(conn.fileno(), frame[:len(frame) // 2])
    os.kill(os.getpid(), signal.SIGSTOP)
    os.write(conn.fileno(), frame[len(frame) // 2:])  # only if someone sends SIGCONT


def test_worker_stopped_mid_result_frame_never_blocks_the_pool(monkeypatch):
    """Pool level, with the coordinator's loop in miniature: a torn frame, then SIGKILL."""
    import multiprocessing
    from multiprocessing.connection import wait

    from supervisor.processes import pool as pool_module
    from workers.execution import new_run_id

    def execution(command: str, job_id: str) -> Execution:
        return Execution(run_id=new_run_id(), job_id=job_id,
                         scheduled_for=datetime.now(UTC).isoformat(),
                         task_type="execute_command",
                         task_params={"command": command, "env": {}, "cwd": None})

    events: list[dict] = []
    pool = pool_module.WorkerPool(3, context=multiprocessing.get_context("forkserver"),
                                  monotonic=time.monotonic, on_event=events.append)
    monkeypatch.setattr(pool_module, "worker_main", torn_result_worker)
    pool._spawn(pool.slots[0])  # slot 1 runs the torn worker, the others are real
    monkeypatch.undo()
    for slot in pool.slots[1:]:
        pool._spawn(slot)
    records: list[dict] = []
    slowest_step = 0.0

    def pump(until, timeout: float = 20.0) -> None:
        nonlocal slowest_step
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"timed out; records: {records}"
            wait(pool.wait_objects(), 0.05)
            began = time.monotonic()
            records.extend(pool.service())
            slowest_step = max(slowest_step, time.monotonic() - began)

    try:
        torn = pool.slots[0]
        pool.put(execution("true", job_id="torn"))  # slot 1 is first in line
        pump(lambda: process_state(torn.process.pid) == "T")
        torn_pid = torn.process.pid
        # Stopped with half a frame in the pipe: other runs go on, one after another.
        for i in range(10):
            pool.put(execution(f"echo {i}", job_id=f"other{i}"))
            pump(lambda i=i: any(r["job_id"] == f"other{i}" for r in records))
        assert {r["job_id"] for r in records} == {f"other{i}" for i in range(10)}
        assert torn.execution is not None  # still waiting for the rest of the frame
        os.kill(torn_pid, signal.SIGKILL)
        pump(lambda: any(r["job_id"] == "torn" for r in records))
        lost = next(r for r in records if r["job_id"] == "torn")
        assert (lost["status"], lost["error"]) == ("FAILURE", "worker lost")
        pump(lambda: torn.process is not None and torn.process.pid != torn_pid)
        pool.put(execution("echo after", job_id="after"))
        pump(lambda: any(r["job_id"] == "after" for r in records))
        assert [r["status"] for r in records if r["job_id"] == "after"] == ["SUCCESS"]
        assert slowest_step < 0.5, slowest_step  # never blocked on the torn frame
    finally:
        pool.kill_all("test over")


def test_worker_stopped_on_its_way_to_a_large_result_does_not_stall_the_daemon(
        tmp_path, cleanup):
    """Through the real daemon: the task stops its own worker as it ends, with output
    that makes the largest result there is (4 KiB of control bytes, ~25 KiB of JSON).
    The coordinator keeps firing the other job on time; the test then SIGKILLs the
    stopped worker (before the 10 s heartbeat timeout would) and the run is lost."""
    daemon = Daemon(tmp_path, workers=2)
    cleanup(daemon)
    daemon.write_job("big.json", schedule="0 0 1 1 *",
                     command="head -c 8192 /dev/zero | tr '\\0' '\\1'; kill -STOP $PPID")
    daemon.write_job("tick.json")
    daemon.start()
    daemon.wait_records("tick")
    control(daemon, "run", job_id="big")

    def stopped_worker() -> int | None:
        for worker in workers(daemon):
            if worker["job_id"] == "big" and process_state(worker["pid"]) == "T":
                return worker["pid"]
        return None

    pid = wait_until(stopped_worker, message="worker stopped by its task")
    stopped = datetime.now(UTC)
    ticks = daemon.wait_records("tick", count=3, where=lambda r: at(r["scheduled_for"]) > stopped)
    for record in ticks:
        assert (at(record["timestamp"]) - at(record["scheduled_for"])).total_seconds() < 1
        assert record["status"] == "SUCCESS"
    os.kill(pid, signal.SIGKILL)
    lost = daemon.wait_records("big")[0]
    assert (lost["status"], lost["error"]) == ("FAILURE", "worker lost")
    daemon.wait_event("worker_restarted")
    wait_until(lambda: full_pool(daemon), message="pool at full size")
    assert daemon.stop() == 0


def test_random_worker_sigkilled_every_100ms_while_jobs_fire(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=8)
    cleanup(daemon)
    job_ids = [f"j{i:02}" for i in range(20)]  # fires average one every 50 ms
    for job_id in job_ids:
        daemon.write_job(f"{job_id}.json", command="true")
    daemon.start()
    daemon.wait_records(count=20)
    # Fixed unless asked otherwise, so a run can be replayed; which worker dies matters
    # less than when, and that the daemon's own timing decides.
    seed = int(os.environ.get("TASKD_KILL_STORM_SEED", "20261203"))
    print(f"kill storm seed {seed}, {STORM_S}s")
    rng = random.Random(seed)
    kills = idle_ticks = ticks = 0
    began = time.monotonic()
    tick = began
    while time.monotonic() - began < STORM_S:
        alive = [w["pid"] for w in workers(daemon) if w["pid"] and pid_alive(w["pid"])]
        if alive:  # every slot may be paused by the flapping guard
            try:
                os.kill(rng.choice(alive), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        else:
            idle_ticks += 1
        ticks += 1
        tick += KILL_EVERY_S
        sleep_until(tick)
    storm_over = datetime.now(UTC)
    print(f"{kills} kills, {ticks} ticks, {idle_ticks} with every slot paused")
    # The killer outpaces the flapping guard (five deaths in 10 s: a 2 s pause), so most
    # of the time every slot is paused and the victim is whichever slot just came back.
    assert kills >= STORM_S  # at least one a second
    assert [e for e in daemon.events("worker_died") if e["restart_in_s"] > 0]

    wait_until(lambda: full_pool(daemon), 10, message="pool back at full size")
    # Every job runs again after the storm, successfully.
    daemon.wait_records(count=len(job_ids), timeout=30, where=lambda r: r["status"] ==
                        "SUCCESS" and at(r["scheduled_for"]) > storm_over + timedelta(seconds=1))
    assert daemon.stop() == 0
    records = strict_log_lines(daemon)
    missed = daemon.events("missed")
    assert len({r["run_id"] for r in records}) == len(records)
    assert {r["error"] for r in records} <= {None, "worker lost", "shutdown"}
    errors = Counter(r["error"] for r in records)
    print(f"{len(records)} records: {dict(errors)}; {len(missed)} missed diagnostics")
    assert errors["worker lost"] > 0
    for job_id in job_ids:
        ran, skipped = seconds_covered([r for r in records if r["job_id"] == job_id],
                                       [e for e in missed if e["job_id"] == job_id])
        # Every fire ends in exactly one record: no duplicate, no hole. (A loop stalled
        # for over a second would coalesce and count the rest in a missed diagnostic;
        # those seconds are accounted for, but never by a second record.)
        assert len(ran) == len(set(ran)), job_id
        assert not set(ran) & set(skipped), job_id
        assert gaps(ran + skipped) == {1.0}, (job_id, gaps(ran + skipped))
    assert len(daemon.events("worker_died")) == len(daemon.events("worker_restarted"))


def test_deprecation_warnings_as_errors_while_workers_respawn(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=2, env={"PYTHONWARNINGS": "error::DeprecationWarning"})
    cleanup(daemon)
    daemon.write_job("tick.json")
    daemon.write_job("long.json", schedule="0 0 1 1 *", command="sleep 30")
    daemon.start()
    control(daemon, "run", job_id="long")
    busy = wait_until(lambda: next((w for w in workers(daemon) if w["job_id"] == "long"),
                                   None), message="long running")
    os.kill(busy["pid"], signal.SIGKILL)  # busy
    daemon.wait_event("worker_restarted")
    for count in (2, 3):  # idle or running a tick, whichever
        os.kill(workers(daemon)[count % 2]["pid"], signal.SIGKILL)
        daemon.wait_event("worker_restarted", count=count)
    wait_until(lambda: full_pool(daemon), message="pool at full size")
    seen = len(daemon.records("tick"))
    daemon.wait_records("tick", count=seen + 2)
    assert daemon.records("long")[0]["error"] == "worker lost"
    assert daemon.stop() == 0
    diagnostics_are_clean(daemon)
    assert not daemon.stdout_path.read_text()


# -- tasks that misbehave --------------------------------------------------------------


def test_misbehaving_tasks_each_end_in_the_right_record(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=4)
    cleanup(daemon)
    escaped = tmp_path / "escaped.pid"
    when = iso(2.5)  # all due together; four workers share them
    jobs = {
        "exit3": "echo out; exit 3",
        "sigkill-self": "kill -9 $$",
        "ignores-term": "trap '' TERM; echo stubborn; sleep 30",
        "grandchild": "sleep 30 & echo parent done",
        "setsid": f"setsid sleep 30 & echo $! > {escaped}; sleep 30",
        "binary": "head -c 1000000 /dev/urandom",
        "stderr-only": "echo to-stderr >&2",
        "long-line": "head -c 10000000 /dev/zero | tr '\\0' a",
        "closes-stdout": "exec >&-; sleep 0.2; echo x >&2",
        "reads-stdin": "cat; echo read-done",
        "unicode-breaks": r"printf 'a\302\205b\342\200\250c\342\200\251d'",
        "not-found": "no-such-command-taskd",
        "memory": f"{sys.executable} -c 'x = bytearray(500_000_000); print(len(x))'",
        "kills-worker": "kill -9 $PPID",
    }
    timeouts = {"ignores-term": 0.5, "setsid": 1}
    for job_id, command in jobs.items():
        extra = {"timeout_s": timeouts[job_id]} if job_id in timeouts else {}
        write_task_job(daemon, job_id, command, when, **extra)
    write_task_job(daemon, "no-cwd", "pwd", when, {"cwd": str(tmp_path / "missing")})
    write_task_job(daemon, "env-200k", "true", when, {"env": {"BIG": "x" * 200 * 1024}})
    # Larger than the socket buffer: the run message must still reach the worker whole.
    write_task_job(daemon, "env-900k", "true", when, {"env": {"BIG": "x" * 900 * 1024}})
    daemon.start()
    expected = {*jobs, "no-cwd", "env-200k", "env-900k"}
    records = {r["job_id"]: r for r in wait_for_jobs(daemon, expected, timeout=40)}

    def outcome(job_id: str) -> tuple:
        record = records[job_id]
        return record["status"], record["exit_code"], record["error"]

    assert outcome("exit3") == ("FAILURE", 3, "exit code 3")
    assert records["exit3"]["output_tail"] == "out\n"
    assert outcome("sigkill-self") == ("FAILURE", None, "killed by signal SIGKILL")
    assert outcome("ignores-term") == ("FAILURE", None, "timeout after 0.5s")
    # TERM is ignored: KILL comes after the 2 s grace.
    assert 2400 <= records["ignores-term"]["duration_ms"] < 4500
    assert records["ignores-term"]["output_tail"] == "stubborn\n"
    # The background child holds stdout: the run ends about LINGER_S after the shell.
    assert outcome("grandchild") == ("SUCCESS", 0, None)
    assert 900 <= records["grandchild"]["duration_ms"] < 3000
    assert records["grandchild"]["output_tail"] == "parent done\n"
    assert outcome("setsid") == ("FAILURE", None, "timeout after 1s")
    wait_until(lambda: not pid_alive(int(escaped.read_text())), 5,
               message="the process that left the group killed too")
    assert outcome("binary") == ("SUCCESS", 0, None)
    assert outcome("stderr-only") == ("SUCCESS", 0, None)
    assert records["stderr-only"]["output_tail"] == "to-stderr\n"
    assert records["long-line"]["output_tail"] == "a" * 4096
    assert outcome("closes-stdout") == ("SUCCESS", 0, None)
    assert records["closes-stdout"]["output_tail"] == "x\n"
    assert records["closes-stdout"]["duration_ms"] >= 200
    assert outcome("reads-stdin") == ("SUCCESS", 0, None)
    assert records["reads-stdin"]["output_tail"] == "read-done\n"
    assert records["reads-stdin"]["duration_ms"] < 2000
    assert records["unicode-breaks"]["output_tail"] == "a\u0085b\u2028c\u2029d"
    assert outcome("not-found") == ("FAILURE", 127, "exit code 127")
    assert "not found" in records["not-found"]["output_tail"]
    assert outcome("no-cwd") == (
        "FAILURE", None, f"failed to start: cwd {tmp_path / 'missing'} does not exist")
    assert outcome("env-200k") == ("FAILURE", None, "failed to start: argument list too long")
    assert outcome("env-900k") == ("FAILURE", None, "failed to start: argument list too long")
    assert outcome("memory") == ("SUCCESS", 0, None)
    assert records["memory"]["output_tail"] == "500000000\n"
    assert outcome("kills-worker") == ("FAILURE", None, "worker lost")

    # The log stays one valid JSON object per line, whatever the output was.
    lines = strict_log_lines(daemon)
    assert len(lines) == len(records)
    for record in lines:
        assert isinstance(record["output_tail"], str)
        assert len(record["output_tail"].encode("utf-8")) <= 4096
    # Only the worker killed by its task was lost and replaced; nothing else disturbed.
    assert [r["job_id"] for r in lines if r["error"] == "worker lost"] == ["kills-worker"]
    assert len(daemon.events("worker_died")) == 1
    daemon.wait_event("worker_restarted")
    wait_until(lambda: full_pool(daemon), message="pool at full size")
    assert daemon.stop() == 0


def test_two_hundred_timeouts_leave_no_defunct_process(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=10)
    cleanup(daemon)
    commands = ["sleep 5", "sleep 5; true", "sleep 5 & sleep 5", "(sleep 5; true)",
                "sleep 5 & wait"]
    when = iso(3)
    for i in range(200):
        daemon.write_job(f"t{i:03}.json", schedule=when, command=commands[i % len(commands)],
                         timeout_s=0.2)
    daemon.start()
    first_seen: dict[int, float] = {}
    oldest_zombie = 0.0

    def all_recorded() -> bool:
        nonlocal oldest_zombie
        now = time.monotonic()
        zombies = zombies_under(daemon.pid)
        for pid in zombies:
            first_seen.setdefault(pid, now)
        for pid in list(first_seen):
            if pid not in zombies:
                del first_seen[pid]
        oldest_zombie = max([oldest_zombie, *(now - t for t in first_seen.values())])
        return len(daemon.records()) >= 200

    wait_until(all_recorded, 60, interval=0.1, message="200 timed-out runs")
    records = daemon.records()
    assert len({r["job_id"] for r in records}) == 200 == len(records)
    assert {(r["status"], r["error"]) for r in records} == {("FAILURE", "timeout after 0.2s")}
    assert zombies_under(daemon.pid) == []
    # A shell is kept unreaped only while its run is being wound up (its pid is the group
    # id still to be signalled); none lingers.
    print(f"200 timeouts: the longest-lived transient zombie lasted {oldest_zombie:.2f}s")
    assert oldest_zombie < 3, oldest_zombie
    assert daemon.stop() == 0


# -- shutdown, bursts and stalls -------------------------------------------------------


def test_sigterm_stops_three_long_jobs_within_the_grace_period(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=3, args=("--grace-period", "1"))
    cleanup(daemon)
    when = iso(1.5)
    markers = [tmp_path / f"term{i}" for i in range(3)]
    for i, marker in enumerate(markers):
        # Two leave on TERM; the third carries on and needs the KILL that follows.
        tail = "exit 143" if i < 2 else "true"
        daemon.write_job(f"long{i}.json", schedule=when,
                         command=f"trap 'echo term > {marker}; {tail}' TERM; "
                                 "sleep 60 & wait; sleep 60")
    daemon.start()
    wait_until(lambda: sum(cmdline(p).startswith("sleep 60") for p in descendants(daemon.pid))
               == 3, message="three runs started")
    worker_pids = {w["pid"] for w in workers(daemon)}
    task_pids = descendants(daemon.pid) - worker_pids
    task_pids = {p for p in task_pids if cmdline(p).startswith(("sleep", "/bin/sh"))}
    assert len(task_pids) == 6  # three shells, three sleeps
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    wait_until(lambda: not any(map(pid_alive, task_pids)), 5, interval=0.01,
               message="every task process gone")
    gone_after = time.monotonic() - signalled
    assert gone_after < 1 + 1, gone_after
    assert daemon.process.wait(timeout=10) == 0
    print(f"tasks gone {gone_after:.2f}s after SIGTERM, daemon exited after "
          f"{time.monotonic() - signalled:.2f}s")
    assert [m.read_text() for m in markers] == ["term\n"] * 3
    records = daemon.records()
    assert sorted((r["job_id"], r["status"], r["error"]) for r in records) == [
        (f"long{i}", "FAILURE", "shutdown") for i in range(3)]


def test_burst_of_two_thousand_runs_due_in_the_same_second(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=2)
    cleanup(daemon)
    count = 2000
    when = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    for i in range(count):
        daemon.write_job(f"burst-{i:04}.json", schedule=when.isoformat(), command="true")
    daemon.start()
    records = daemon.wait_records(count=count, timeout=60)
    took = max(at(r["finished_at"]) for r in records) - when
    print(f"burst of {count} runs on 2 workers: {took.total_seconds():.2f}s after their "
          f"instant (first start {min(at(r['timestamp']) for r in records) - when})")
    assert len(records) == count
    assert sorted(r["job_id"] for r in records) == [f"burst-{i:04}" for i in range(count)]
    assert {r["status"] for r in records} == {"SUCCESS"}
    assert {at(r["scheduled_for"]) for r in records} == {when}
    assert not daemon.events("missed") and not daemon.events("skipped")
    # Scheduled order: all share one instant, so the queue order is the wheel's insertion
    # order, which is the order the files were loaded in (sorted paths, i.e. by index).
    # The queue is FIFO, so each worker takes its runs in that order (asserted). Across
    # the two workers the start times interleave: a run handed out just after another
    # may start a moment before it on the other worker, so the global start order is
    # only close to the queue order (printed, not asserted: it depends on CPU scheduling).
    for worker in (1, 2):
        mine = sorted((at(r["timestamp"]), int(r["job_id"][-4:])) for r in records
                      if r["worker"] == worker)
        indices = [index for _, index in mine]
        assert indices == sorted(indices), f"worker {worker} took runs out of queue order"
    by_start = [int(r["job_id"][-4:]) for r in sorted(records, key=lambda r: r["timestamp"])]
    displacement = max(abs(position - index) for position, index in enumerate(by_start))
    print(f"largest distance between start order and queue order: {displacement}")
    assert daemon.stop() == 0


def test_suspended_coordinator_runs_a_missed_span_once(tmp_path, cleanup):
    daemon = Daemon(tmp_path, workers=2)
    cleanup(daemon)
    started, done = tmp_path / "timer.started", tmp_path / "timer.done"
    daemon.write_job("tick.json", command="true")
    # The clock of the stall: a run that carries on while the coordinator is stopped.
    daemon.write_job("timer.json", schedule=iso(2.5),
                     command=f"touch {started}; sleep 3.3; touch {done}")
    daemon.start()
    wait_until(started.exists, message="timer running")
    os.kill(daemon.pid, signal.SIGSTOP)
    stopped = datetime.now(UTC)
    try:
        wait_until(done.exists, 10, message="timer done")
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    resumed = datetime.now(UTC)
    daemon.wait_records("tick", where=lambda r: at(r["scheduled_for"])
                        > resumed + timedelta(seconds=2))
    assert daemon.wait_records("timer")[0]["status"] == "SUCCESS"
    assert daemon.stop() == 0

    ticks = daemon.records("tick")
    missed = daemon.events("missed")
    # One diagnostic for the whole span (a loop stalled by a loaded machine elsewhere
    # would add its own, accounted for below all the same).
    span = [e for e in missed if stopped - timedelta(seconds=1) < at(e["last"]) <= resumed]
    assert len(span) == 1, missed
    event = span[0]
    assert event["reason"] == "coalesced: ran the latest occurrence"
    assert event["count"] >= 2  # 3.3 s stopped
    assert stopped - timedelta(seconds=1) < at(event["scheduled_for"]) <= resumed
    ran, skipped = seconds_covered(ticks, missed)
    assert len(ran) == len(set(ran))  # nothing fired twice
    assert not set(ran) & set(skipped)
    assert gaps(ran + skipped) == {1.0}
    # The span ran once, its latest occurrence; no storm of catch-up runs.
    in_span = [t for t in ran if at(event["scheduled_for"]) <= t <= at(event["last"])]
    assert in_span == [at(event["last"])]
    catch_up = [r for r in ticks if resumed <= at(r["timestamp"])
                < resumed + timedelta(seconds=0.9)]
    assert len(catch_up) <= 2, catch_up
