"""The job policies against a real daemon: retries, max_concurrent, concurrency groups,
jitter, @reboot, replace and hooks. Every wait polls with a deadline."""

from __future__ import annotations

import itertools
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon, pid_alive, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path, workers=4)
    yield daemon
    daemon.kill()


def soon(seconds: float = 1.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def spans(records):
    return sorted((datetime.fromisoformat(r["timestamp"]),
                   datetime.fromisoformat(r["finished_at"])) for r in records)


def most_at_once(records) -> int:
    edges = sorted([(start, 1) for start, _ in spans(records)]
                   + [(end, -1) for _, end in spans(records)], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_a_failing_run_is_retried_until_its_attempts_are_used(daemon):
    daemon.write_job("flaky.json", schedule=soon(), command="exit 3",
                     retry={"attempts": 3, "delay_s": 0.2, "backoff": 1})
    daemon.start()
    records = daemon.wait_records("flaky", count=3)
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert {r["scheduled_for"] for r in records} == {records[0]["scheduled_for"]}
    assert {(r["status"], r["error"]) for r in records} == {("FAILURE", "exit code 3")}
    scheduled = daemon.wait_event("retry_scheduled", count=2)
    assert [e["attempt"] for e in scheduled] == [2, 3]
    for earlier, later in itertools.pairwise(records):
        gap = (datetime.fromisoformat(later["timestamp"])
               - datetime.fromisoformat(earlier["finished_at"])).total_seconds()
        assert gap >= 0.2 * 0.9  # never before its delay
    daemon.write_job("probe.json", schedule=soon())
    daemon.wait_records("probe")
    assert len(daemon.records("flaky")) == 3  # and no fourth


def test_a_retry_that_succeeds_ends_the_attempts(daemon, tmp_path):
    counter = tmp_path / "count"
    command = (f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; '
               f'[ "$n" -ge 2 ]')
    daemon.write_job("second-time.json", schedule=soon(), command=command,
                     retry={"attempts": 5, "delay_s": 0.1})
    daemon.write_job("timeouts.json", schedule=soon(), command="sleep 30", timeout_s=0.3,
                     retry={"attempts": 2, "delay_s": 0.1})
    daemon.start()
    records = daemon.wait_records("second-time", count=2)
    assert [(r["attempt"], r["status"]) for r in records] == [(1, "FAILURE"), (2, "SUCCESS")]
    timeouts = daemon.wait_records("timeouts", count=2)
    assert [(r["attempt"], r["error"]) for r in timeouts] == [(1, "timeout after 0.3s"),
                                                              (2, "timeout after 0.3s")]
    daemon.write_job("probe.json", schedule=soon())
    daemon.wait_records("probe")
    assert len(daemon.records("second-time")) == 2


def test_max_concurrent_bounds_the_runs_of_a_job(daemon):
    daemon.write_job("wide.json", command="sleep 2.2", max_concurrent=2)
    daemon.start()
    records = daemon.wait_records("wide", count=3, timeout=30)
    assert most_at_once(records) == 2  # two at once, never three
    skipped = daemon.wait_event("skipped", where=lambda e: e["job_id"] == "wide")
    assert "max_concurrent 2" in skipped[0]["reason"]


def test_jobs_of_one_concurrency_group_never_overlap(daemon):
    for name in ("a", "b", "c"):
        daemon.write_job(f"{name}.json", command="sleep 0.4", concurrency_group="db",
                         overlap="skip")
    daemon.start()
    records = daemon.wait_records(count=6, timeout=30)
    assert most_at_once(records) == 1
    assert {r["job_id"] for r in records} >= {"a", "b"}
    assert daemon.events("queued")


def test_jitter_starts_a_run_after_its_instant_and_says_by_how_much(daemon):
    daemon.write_job("spread.json", command="true", jitter_s=0.8)
    daemon.start()
    records = daemon.wait_records("spread", count=3)
    delays = [r["delayed_s"] for r in records if "delayed_s" in r]
    # Fresh each run: the log line keeps milliseconds, so two of three draws from 800
    # values can meet (0.4 %); all three alike would take one chance in 640,000.
    # test_policies checks every draw is new at full precision.
    assert len(delays) == len(records) >= 3 and len(set(delays)) > 1
    for r in records:
        assert 0 <= r.get("delayed_s", 0) < 0.8
        started = datetime.fromisoformat(r["timestamp"]).timestamp()
        not_before = datetime.fromisoformat(r["scheduled_for"]).timestamp() + r.get(
            "delayed_s", 0)
        assert started >= not_before - 0.001  # never before its delayed instant


def test_reboot_jobs_run_once_per_daemon_start(tmp_path):
    marks = tmp_path / "marks"
    with Daemon(tmp_path) as daemon:
        daemon.write_job("boot.json", schedule="@reboot", command=f"echo run >> {marks}")
        daemon.stop()
    for start in (1, 2):
        daemon = Daemon(tmp_path).start()
        try:
            daemon.wait_records("boot", count=start)
            status = daemon.client_json("status", "boot")
            assert status["schedule"] == "@reboot" and status["next_run"] is None
            if start == 1:  # added while it runs: not run until the next start
                daemon.write_job("later.json", schedule="@start",
                                 command=f"echo late >> {marks}")
                daemon.wait_event("runs_at_start", where=lambda e: e["job_id"] == "later")
        finally:
            daemon.stop()
    assert marks.read_text().count("run\n") == 2
    # later.json was there at the second start: it ran then, once.
    assert marks.read_text().count("late\n") == 1


def test_status_shows_the_policy_keys(daemon):
    daemon.write_job("pol.json", schedule="0 3 * * *", retry={"attempts": 4},
                     on_failure={"type": "execute_command", "command": "true"},
                     max_concurrent=3, concurrency_group="nightly", jitter_s=600,
                     jitter_fixed=True)
    daemon.start()
    status = daemon.client_json("status", "pol")
    assert status["retry"] == {"attempts": 4, "delay_s": 10.0, "backoff": 2.0,
                               "max_delay_s": 300.0, "on_lost": False}
    assert status["hooks"] == {"on_failure": "execute_command"}
    assert (status["max_concurrent"], status["concurrency_group"]) == (3, "nightly")
    assert (status["jitter_s"], status["jitter_fixed"]) == (600.0, True)
    text = daemon.client("status", "pol").stdout
    for shown in ("retry        4 attempts", "hooks        on_failure (execute_command)",
                  "max_concurrent 3, concurrency_group nightly",
                  "jitter       up to 600s (fixed offset)"):
        assert shown in text, text


def test_replace_stops_the_running_run_and_its_grandchild(daemon, tmp_path):
    pids = tmp_path / "pids"
    daemon.write_job("rep.json", schedule="*/3 * * * * *", overlap="replace",
                     command=f"sleep 60 & echo $! >> {pids}; wait")
    daemon.start()
    replaced = daemon.wait_records("rep", timeout=30)[0]
    assert (replaced["status"], replaced["error"]) == ("FAILURE", "replaced")
    first_grandchild = int(pids.read_text().split()[0])
    wait_until(lambda: not pid_alive(first_grandchild), message="grandchild gone")
    assert daemon.client_json("status", "rep")["running"] == 1  # the new one runs


class _Hooks(BaseHTTPRequestHandler):
    bodies: list[tuple[str, dict, str]] = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        self.bodies.append((self.path, body, self.headers.get("Content-Type")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hooks.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Hooks.bodies
    server.shutdown()
    server.server_close()


def test_hooks_get_the_record_on_stdin_and_as_a_request_body(daemon, tmp_path, webhook):
    url, bodies = webhook
    out = tmp_path / "hook-out"
    daemon.write_job(
        "hooked.json", schedule=soon(), command="echo boom; exit 4",
        retry={"attempts": 2, "delay_s": 0.1},
        on_failure={"type": "execute_command",
                    "command": f'cat > {out}.$TASKD_ATTEMPT; echo "$TASKD_STATUS '
                               f'$TASKD_RUN_ID" >> {out}.env'},
        on_give_up={"type": "http_request", "url": f"{url}/give-up", "method": "POST"})
    daemon.start()
    failures = daemon.wait_records("hooked", count=2, where=lambda r: not r.get("hook"))
    hook_records = daemon.wait_records("hooked", count=3, where=lambda r: r.get("hook"))
    assert sorted(r["hook"] for r in hook_records) == ["on_failure", "on_failure",
                                                       "on_give_up"]
    assert all(r["status"] == "SUCCESS" for r in hook_records)
    for failure in failures:
        given = json.loads(Path(f"{out}.{failure['attempt']}").read_text())
        assert given == failure  # the record exactly as logged
    assert Path(f"{out}.env").read_text().split("\n")[:2] == [
        f"FAILURE {failures[0]['run_id']}", f"FAILURE {failures[1]['run_id']}"]
    wait_until(lambda: bodies, message="webhook called")
    path, body, content_type = bodies[0]
    assert (path, body, content_type) == ("/give-up", failures[1], "application/json")


def test_recovery_and_a_failing_hook_sets_off_nothing_more(daemon, tmp_path):
    flag = tmp_path / "fail"
    flag.write_text("")
    calls = tmp_path / "calls"
    daemon.write_job(
        "recover.json", schedule="* * * * * *", overlap="skip",
        command=f"test ! -e {flag}",
        on_failure={"type": "execute_command", "command": f"echo failure >> {calls}; exit 9"},
        on_recovery={"type": "execute_command", "command": f"echo recovery >> {calls}"})
    daemon.start()
    daemon.wait_records("recover", where=lambda r: r.get("hook") == "on_failure")
    os.unlink(flag)
    daemon.wait_records("recover", where=lambda r: r.get("hook") == "on_recovery")
    hooks = [r for r in daemon.records("recover") if r.get("hook")]
    assert {r["status"] for r in hooks if r["hook"] == "on_failure"} == {"FAILURE"}
    # A failing on_failure hook sets off no hook: one hook record per failed run.
    failed_runs = [r for r in daemon.records("recover")
                   if not r.get("hook") and r["status"] == "FAILURE"]
    wait_until(lambda: len([r for r in daemon.records("recover")
                            if r.get("hook") == "on_failure"]) >= len(failed_runs))
    assert len([r for r in daemon.records("recover") if r.get("hook") == "on_recovery"]) == 1


def test_a_root_daemon_runs_a_job_as_its_user_with_its_env_file(daemon, user, tmp_path):
    """``user`` as cron's per-user crontabs: uid, groups, HOME/USER/LOGNAME, its files."""
    env_file = tmp_path / "job.env"
    env_file.write_text("# comment\nGREETING='hello there'\nSHARED=from-file\n")
    out = user.home / "out"
    daemon.write_job("as-user.json", schedule=soon(), user=user.name, env_file=str(env_file),
                     command=f'id -u > {out}; id -G >> {out}; echo "$HOME $USER $LOGNAME" '
                             f'>> {out}; echo "$GREETING/$SHARED" >> {out}; pwd >> {out}; '
                             f'touch {out}.made')
    daemon.start()
    record = daemon.wait_records("as-user")[0]
    assert record["status"] == "SUCCESS", record
    uid, groups, names, env, cwd = out.read_text().splitlines()
    assert int(uid) == user.uid
    assert {int(g) for g in groups.split()} == {user.gid, user.extra_gid}
    assert names == f"{user.home} {user.name} {user.name}"
    assert env == "hello there/from-file"
    assert cwd == str(user.home)
    made = os.stat(f"{out}.made")
    assert (made.st_uid, made.st_gid) == (user.uid, user.gid)
    assert daemon.client_json("status", "as-user")["user"] == user.name


def test_the_daemon_wide_on_failure_covers_jobs_without_their_own(tmp_path):
    out = tmp_path / "mailto"
    own = tmp_path / "own"
    daemon = Daemon(tmp_path, args=("--on-failure", f'cat >> {out}; echo >> {out}'))
    try:
        daemon.write_job("plain.json", schedule=soon(), command="exit 2")
        daemon.write_job("fine.json", schedule=soon(), command="true")
        daemon.write_job("own.json", schedule=soon(), command="exit 3",
                         on_failure={"type": "execute_command", "command": f"cat > {own}"})
        daemon.start()
        hooks = daemon.wait_records(count=2, where=lambda r: r.get("hook"))
        assert sorted(r["job_id"] for r in hooks) == ["own", "plain"]
        wait_until(lambda: out.exists() and out.read_text().endswith("\n"))
        given = [json.loads(line) for line in out.read_text().splitlines() if line]
        assert [g["job_id"] for g in given] == ["plain"]  # never the job with its own
        assert json.loads(own.read_text())["error"] == "exit code 3"
    finally:
        daemon.kill()


def test_a_bad_on_failure_is_a_usage_error(tmp_path):
    daemon = Daemon(tmp_path, args=("--on-failure", '{"type": "http_request"}'))
    daemon.start(wait_ready=False)
    assert daemon.process.wait(timeout=30) == 2
    assert "--on-failure: on_failure.url: required key is missing" in (
        daemon.stderr_path.read_text())
