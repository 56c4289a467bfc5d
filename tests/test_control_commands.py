"""The control commands: their views on their own, then against a real daemon.

Client commands run as ``python -m supervisor ...`` processes, as a user runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import traceback
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from supervisor.cli import main
from supervisor.control.commands import COMMANDS, STATUS_LIMIT, dispatch
from tests.daemon_harness import Daemon, descendants, run_client, wait_until

NOW = datetime(2026, 11, 26, 21, 0, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def fake_status(jobs: int, errors: int = 0) -> dict:
    return {
        "pid": 4242, "started_at": iso(NOW - timedelta(hours=3)), "uptime_s": 10_830.5,
        "jobs_dir": "/srv/jobs.d", "timezone": "UTC", "queue_depth": 7,
        "workers": [{"id": 1, "pid": 4300, "state": "busy", "job_id": "j" * 128,
                     "run_id": "ab" * 16, "since": iso(NOW - timedelta(seconds=75))},
                    {"id": 2, "pid": None, "state": "down", "job_id": None, "run_id": None,
                     "since": None}],
        "logger": {"pid": 4299, "unacknowledged": 0},
        "counters": {"executions": 12, "success": 10, "failure": 2, "worker_restarts": 1},
        "jobs": [{"job_id": f"job-{n:06d}-" + "x" * (n % 3) * 60,
                  "file": f"/srv/jobs.d/job-{n}.json",
                  "schedule": "*/5 * * * * *" if n % 2 else "30 2 * * 1-5",
                  "timezone": "America/Argentina/Buenos_Aires", "enabled": n % 7 != 3,
                  "next_run": iso(NOW + timedelta(seconds=(jobs - n) * 37)),
                  "last_run": iso(NOW - timedelta(minutes=n % 90)) if n % 5 else None,
                  "last_status": "SUCCESS" if n % 5 else None, "last_error": None,
                  "running": n % 11 == 0} for n in range(jobs)],
        "errors": [{"file": f"/srv/jobs.d/bad-{n}.json",
                    "error": f"/srv/jobs.d/bad-{n}.json: " + "a very long reason " * 12}
                   for n in range(errors)],
    }


def assert_fits(text: str) -> list[str]:
    lines = text.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, too_wide
    return lines


# -- the commands on their own -------------------------------------------------------------


def test_human_status_of_100000_jobs_is_short_and_fits_80_columns():
    status = COMMANDS["status"]
    text = status.console_msg(fake_status(100_000, errors=3), now=NOW, zone=UTC)
    lines = assert_fits(text)
    assert len(lines) < STATUS_LIMIT + 30
    assert f"  … and {100_000 - STATUS_LIMIT} more (use --json)" in lines
    assert lines[0] == ("taskd pid 4242, up 3h, queue depth 7, 100000 jobs, 3 file errors")
    assert "bad-0.json" in text and "…" in text  # long values are cut, not wrapped away
    # Soonest first: the last job listed first, 37 s from now.
    first_job = lines[lines.index(next(x for x in lines if x.startswith("  JOB ID"))) + 1]
    assert first_job.startswith("  job-099999-") and "21:00:37 in 37s" in first_job


def test_human_status_of_one_job_shows_last_success_failure_and_catch_up():
    job = {"job_id": "backup", "file": "/srv/jobs.d/backup.json", "schedule": "0 3 * * *",
           "timezone": "Europe/Berlin", "enabled": True, "task_type": "execute_command",
           "overlap": "skip", "timeout_s": None, "next_run": iso(NOW + timedelta(hours=6)),
           "last_run": iso(NOW - timedelta(hours=18)), "last_status": "FAILURE",
           "last_error": "exit code 2", "last_success": iso(NOW - timedelta(days=2)),
           "last_failure": iso(NOW - timedelta(hours=18)), "running": 0,
           "catch_up": "latest", "max_catch_up": 100, "starting_deadline_s": 43200.0,
           "history": []}
    lines = assert_fits(COMMANDS["status"].console_msg(job, now=NOW, zone=UTC))
    assert "  last success 2026-11-24 21:00:00 UTC 2d ago" in lines
    assert "  last failure 2026-11-26 03:00:00 UTC 18h ago" in lines
    assert "  catch-up     latest (at most 100, deadline 43200s)" in lines
    never = {**job, "last_success": None, "catch_up": "none"}
    lines = COMMANDS["status"].console_msg(never, now=NOW, zone=UTC)
    assert "  last success -" in lines.splitlines() and "catch-up" not in lines


def test_the_daemon_side_limit_keeps_the_soonest_jobs():
    status = fake_status(1000, errors=80)
    coordinator = SimpleNamespace(status=lambda: json.loads(json.dumps(status)))
    response = dispatch(coordinator, COMMANDS["status"].message(limit=5))
    result = response["result"]
    assert response["ok"] and result["jobs_total"] == 1000 and result["errors_total"] == 80
    assert [job["job_id"][:10] for job in result["jobs"]] == [  # 997 is disabled
        f"job-{n:06d}" for n in (999, 998, 996, 995, 994)]
    full = dispatch(coordinator, COMMANDS["status"].message())["result"]
    assert len(full["jobs"]) == 1000 and "jobs_total" not in full


@pytest.mark.parametrize(("request_", "error"), [
    ({"command": "frobnicate"},
     "unknown command 'frobnicate' (known: pause, reload, resume, run, status, stop)"),
    ({"command": "run", "args": {}}, "run: missing argument 'job_id'"),
    ({"command": "run", "args": {"job_id": 5}}, "run: argument 'job_id' must be a string"),
    ({"command": "status", "args": {"limit": True}}, "status: argument 'limit' must be an integer"),
    ({"command": "stop", "args": {"now": 1}}, "stop: unknown argument 'now'"),
    ({"command": "status", "args": []}, "bad request: args must be an object"),
    ({"command": "status", "args": {"job_id": "nope"}}, "no job with job_id 'nope'"),
    ({"command": "run", "args": {"job_id": "nope"}}, "no job with job_id 'nope'"),
])
def test_bad_requests_are_error_responses(request_, error):
    coordinator = SimpleNamespace(job_status=lambda job_id: None, run_now=lambda job_id: None,
                                  stopping=False)
    assert dispatch(coordinator, request_) == {"ok": False, "error": error}


def test_every_command_has_an_example_and_completion_and_version_work():
    for name in ("start", "status", "run", "reload", "stop"):
        result = run_client(name, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, name
    assert run_client("--version").stdout.startswith("taskd, version ")
    script = run_client(env={"_TASKD_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "_taskd_completion" in script.stdout
    assert "complete " in script.stdout


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["status", "x"],
                                  ["run", "x"], ["reload"], ["stop"]])
def test_every_client_command_exits_1_when_no_daemon_answers(tmp_path, args):
    path = tmp_path / "nothing.sock"
    result = run_client(*args, "--socket", str(path))
    assert result.returncode == 1
    assert result.stderr == f"taskd: no taskd daemon answers at {path} (no such socket)\n"


# -- against a real daemon -------------------------------------------------------------------

slow = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path, args=("--grace-period", "1"))
    yield daemon
    try:
        daemon.stop(timeout=20)
    finally:
        daemon.kill()


def status_json(daemon: Daemon, *args: str) -> dict:
    result = daemon.client("status", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@slow
def test_status_while_a_job_runs(daemon):
    daemon.write_job("long.json", command="sleep 30", overlap="skip")
    daemon.write_job("other.json", schedule="0 0 1 1 *", timezone="Europe/Berlin",
                     description="d" * 300)
    daemon.write_job("l.json", job_id="L" * 128, schedule="0 0 1 1 *")
    daemon.write_raw("bad.json", '{"job_id": "bad", "schedule": "61 * * * *"' + " " * 500)
    daemon.start()
    busy = wait_until(lambda: [w for w in status_json(daemon)["workers"]
                               if w["state"] == "busy"], message="a busy worker")
    status = status_json(daemon)
    assert status["pid"] == daemon.pid
    assert busy[0]["job_id"] == "long" and busy[0]["pid"] in daemon.events("ready")[0][
        "worker_pids"]
    assert {"id", "pid", "state"} <= set(status["workers"][0])
    assert status["logger"]["pid"] == daemon.events("ready")[0]["logger_pid"]
    assert {job["job_id"] for job in status["jobs"]} == {"long", "other", "L" * 128}
    for job in status["jobs"]:
        assert {"job_id", "file", "next_run", "last_status"} <= set(job)
    assert [error["file"] for error in status["errors"]] == [str(daemon.jobs / "bad.json")]
    assert status["errors"][0]["error"]

    human = daemon.client("status")
    assert human.returncode == 0, human.stderr
    lines = assert_fits(human.stdout)
    assert lines[0].startswith(f"taskd pid {daemon.pid}, up ")
    assert any("busy" in line and line.rstrip().endswith(" long") for line in lines)
    assert any(line.startswith("  other ") and "Berlin" in line for line in lines)
    assert any(line.startswith("  LLLL") and "…" in line for line in lines)
    assert "FILE ERRORS (1)" in lines and "  bad.json" in lines


@slow
def test_status_of_one_job_shows_its_history(daemon):
    daemon.write_job("tick.json", command="echo hi")
    daemon.start()
    records = daemon.wait_records("tick", count=3)
    result = daemon.client("status", "tick")
    assert result.returncode == 0, result.stderr
    lines = assert_fits(result.stdout)
    assert lines[0] == "job tick"
    assert any(line.startswith("RECENT RUNS (") for line in lines)
    for record in records[:3]:
        assert record["run_id"][:12] in result.stdout
    history = status_json(daemon, "tick")["history"]
    assert len(history) >= 3 and {r["run_id"] for r in records[:3]} <= {
        r["run_id"] for r in history}


@slow
def test_run_a_job_now_and_an_unknown_one(daemon):
    daemon.write_job("yearly.json", schedule="0 0 1 1 *", command="echo manual")
    daemon.start()
    result = daemon.client("run", "yearly")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split("run_id ")[1].strip()
    record = daemon.wait_records("yearly")[0]
    assert record["run_id"] == run_id and record["manual"] is True
    assert record["status"] == "SUCCESS" and record["output_tail"] == "manual\n"
    missing = daemon.client("run", "nosuchjob")
    assert missing.returncode == 1
    assert missing.stderr == "taskd: no job with job_id 'nosuchjob'\n"
    assert daemon.client("status", "nosuchjob").returncode == 1


@slow
def test_reload_rescans_and_stop_shuts_down(daemon):
    daemon.start()
    result = daemon.client("reload")
    assert result.returncode == 0 and "rescans" in result.stdout
    daemon.wait_event("reload_requested", where=lambda e: e.get("via") == "control")
    stopped = daemon.client("stop")
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    assert daemon.process.wait(timeout=20) == 0
    assert daemon.events("stopping")[0]["via"] == "control"
    assert not daemon.socket.exists()
    assert daemon.client("status").returncode == 1


@slow
def test_a_second_daemon_on_the_same_socket_exits_2_at_once(daemon):
    daemon.start()
    second = run_client("start", "--jobs-dir", str(daemon.jobs), "--socket",
                        str(daemon.socket))
    assert second.returncode == 2
    assert second.stderr == (f"taskd: cannot open the control socket: another taskd answers "
                             f"on {daemon.socket}\n")
    assert daemon.client("status").returncode == 0


@slow
def test_status_answers_while_a_worker_is_replaced(daemon):
    daemon.write_job("tick.json")
    daemon.start()
    before = status_json(daemon)["workers"][0]["pid"]
    os.kill(before, signal.SIGKILL)

    def replaced() -> bool:
        pid = status_json(daemon)["workers"][0]["pid"]  # answers every time
        return pid is not None and pid != before

    wait_until(replaced, message="a new worker pid in status")
    assert daemon.client("status").returncode == 0


@slow
def test_hostile_clients_do_not_delay_a_seconds_job(daemon):
    daemon.write_job("tick.json")
    daemon.start()
    daemon.wait_records("tick")
    started = datetime.now(UTC)
    garbage, huge, idle = (socket.socket(socket.AF_UNIX) for _ in range(3))
    for sock in (garbage, huge, idle):
        sock.settimeout(10)
        sock.connect(str(daemon.socket))
    garbage.sendall(b"\xde\xad\xbe\xef" + os.urandom(20000))  # "length" 3.7 GB
    huge.sendall(struct.pack(">I", 100 * 1024 * 1024) + b"x" * 4096)
    for sock in (garbage, huge):
        assert b"request too large" in sock.recv(4096)
    assert daemon.client("status").returncode == 0  # while the idle one is held open
    late = daemon.wait_records("tick", count=4, where=lambda r: datetime.fromisoformat(
        r["scheduled_for"]) > started)
    assert idle.recv(4096).endswith(b"request timed out\"}")  # closed after 2 s
    for record in late:
        lateness = (datetime.fromisoformat(record["timestamp"])
                    - datetime.fromisoformat(record["scheduled_for"])).total_seconds()
        assert lateness < 0.5, record
    for sock in (garbage, huge, idle):
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@slow
def test_another_user_is_refused_by_the_0600_socket(tmp_path):
    # A directory anyone may enter, so only the socket's own mode stands in the way.
    directory = tempfile.mkdtemp(prefix="taskd-perm-")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "taskd.sock")
    daemon = Daemon(tmp_path, args=("--socket", path, "--grace-period", "1"))
    try:
        daemon.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        code, output = run_cli_as_nobody("status", "--socket", path)
        assert code == 1
        assert output == f"taskd: no taskd daemon answers at {path} (permission denied)\n"
    finally:
        daemon.stop(timeout=20)
        shutil.rmtree(directory, ignore_errors=True)


def run_cli_as_nobody(*args: str) -> tuple[int, str]:
    """The CLI in a forked process whose uid and gid are 65534 (nobody).

    Forked rather than exec'd: this interpreter may live where nobody cannot read it.
    """
    # Import everything the command needs while the stdlib is still readable.
    CliRunner().invoke(main, [args[0], "--socket", "/nonexistent/taskd.sock"])
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 98
        try:
            os.close(reader)
            stream = open(writer, "w", closefd=False)
            sys.stdout = sys.stderr = stream
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                main.main(args=list(args), prog_name="taskd")
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            stream.flush()
        except BaseException as error:
            os.write(writer, f"child failed: {error!r}\n".encode())
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)
    os.close(writer)
    with open(reader, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_status_answers_during_the_grace_period(tmp_path):
    from datetime import UTC, datetime, timedelta

    daemon = Daemon(tmp_path, args=("--grace-period", "30"))
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    daemon.write_job("long.json", schedule=soon, command="sleep 3")
    daemon.start()
    try:
        # The command itself running, not only a worker busy: a worker holds a run it
        # was handed early until its instant, and a stop before the instant drops it.
        wait_until(lambda: any(_cmdline(pid) == "sleep 3" for pid in descendants(daemon.pid)),
                   message="the run started")
        daemon.signal(signal.SIGTERM)
        daemon.wait_event("stopping")
        status = daemon.client_json("status")
        assert [w["job_id"] for w in status["workers"] if w["state"] == "busy"] == ["long"]
        refused = daemon.client("run", "long")
        assert refused.returncode == 1 and "shutting down" in refused.stderr
        assert daemon.process.wait(timeout=30) == 0
        assert daemon.records("long")[0]["status"] == "SUCCESS"
    finally:
        daemon.kill()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
