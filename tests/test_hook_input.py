"""A hook's input and variables: the payload on a command's stdin or as a request's body,
the TASKD_* variables, and finding a hook's processes when its TASKD_RUN_ID names
another run.

Waits are bounded polls, never fixed sleeps; a command that hung on its input would end
by the job's timeout and fail the test with that error.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.test_command_runner import alive, wait_until
from workers.execute_command import ExecuteCommand
from workers.http_request import HttpRequest
from workers.task_type import RunContext, TaskOutcome

RECORD = {"event": "execution", "job_id": "backup", "run_id": "r-parent",
          "status": "FAILURE", "error": "exit code 3", "output_tail": "disk full\n"}
PAYLOAD = json.dumps(RECORD)


def context(run_id: str | None = None, **fields: Any) -> RunContext:
    fields.setdefault("timeout_s", 20)
    return RunContext(job_id="backup", run_id=run_id or uuid.uuid4().hex,
                      scheduled_for="2026-11-26T21:00:00+00:00", **fields)


def run(command: str, **fields: Any) -> TaskOutcome:
    return ExecuteCommand.run(ExecuteCommand.validate({"command": command}), context(**fields))




# -- the payload on stdin ---------------------------------------------------------------


def test_the_command_reads_the_payload_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    outcome = run(f"cat > {out}", payload=PAYLOAD)
    assert outcome == TaskOutcome(True, 0, None, "")
    assert json.loads(out.read_text()) == RECORD


@pytest.mark.parametrize("size", [60 * 1024, 200 * 1024])
def test_a_command_that_ignores_stdin_and_exits_succeeds(size: int) -> None:
    outcome = run("echo done", payload="x" * size)
    assert outcome == TaskOutcome(True, 0, None, "done\n")


def test_a_payload_larger_than_a_pipe_arrives_whole() -> None:
    payload = "é" * (150 * 1024)  # 300 KiB of UTF-8, several pipe buffers
    outcome = run("wc -c", payload=payload)
    assert outcome.success, outcome
    assert int(outcome.output_tail) == len(payload.encode())


def test_a_command_that_stops_reading_early_succeeds() -> None:
    outcome = run("head -c 5; echo; sleep 0.2; echo after", payload="y" * (200 * 1024))
    assert outcome == TaskOutcome(True, 0, None, "yyyyy\nafter\n")


def test_a_command_that_never_reads_but_runs_on_is_not_held_up() -> None:
    # The payload fills the pipe and waits; the run still ends when the command does.
    outcome = run("sleep 0.3; echo end", payload="z" * (200 * 1024))
    assert outcome == TaskOutcome(True, 0, None, "end\n")


def test_an_empty_payload_is_an_empty_stdin() -> None:
    assert run('cat; echo "[$?]"', payload="") == TaskOutcome(True, 0, None, "[0]\n")


def test_no_payload_is_dev_null() -> None:
    assert run("readlink /proc/self/fd/0").output_tail == "/dev/null\n"


def test_the_payload_reaches_a_command_with_a_cwd(tmp_path: Path) -> None:
    params = ExecuteCommand.validate({"command": "cat; pwd -P", "cwd": str(tmp_path)})
    outcome = ExecuteCommand.run(params, context(payload=PAYLOAD))
    assert outcome.output_tail == f"{PAYLOAD}{tmp_path.resolve()}\n"


def test_a_timeout_while_the_payload_is_unread() -> None:
    outcome = run("sleep 30", payload="w" * (200 * 1024), timeout_s=0.3)
    assert (outcome.success, outcome.error) == (False, "timeout after 0.3s")


# -- variables --------------------------------------------------------------------------


HOOK_VARIABLES = {"TASKD_STATUS": "FAILURE", "TASKD_HOOK": "on_failure",
                  "TASKD_RUN_ID": "r-parent"}


def test_taskd_variables_reach_the_command() -> None:
    outcome = run('echo "$TASKD_STATUS $TASKD_HOOK $TASKD_RUN_ID $TASKD_JOB_ID '
                  '$TASKD_EXECUTION_ID"', run_id="r-hook", variables=HOOK_VARIABLES)
    assert outcome.output_tail == "FAILURE on_failure r-parent backup r-hook\n"


def test_variables_go_over_the_task_env_and_cannot_move_the_execution_id() -> None:
    params = ExecuteCommand.validate({"command": 'echo "$TASKD_STATUS $TASKD_EXECUTION_ID"',
                                      "env": {"TASKD_STATUS": "from-env"}})
    outcome = ExecuteCommand.run(params, context(
        run_id="r-own", variables={"TASKD_STATUS": "SUCCESS", "TASKD_EXECUTION_ID": "x"}))
    assert outcome.output_tail == "SUCCESS r-own\n"


def test_an_ordinary_run_has_its_own_id_twice() -> None:
    outcome = run('echo "$TASKD_RUN_ID $TASKD_EXECUTION_ID"', run_id="r-1")
    assert outcome.output_tail == "r-1 r-1\n"


def test_a_hooks_processes_are_told_apart_from_the_run_that_set_it_off(
    tmp_path: Path,
) -> None:
    # TASKD_RUN_ID names the run that set the hook off; what that run left running in the
    # background is none of the hook's business. The hook's own processes, a setsid escaper
    # among them, are found by TASKD_EXECUTION_ID.
    parent_env = {**os.environ, "TASKD_RUN_ID": "r-parent", "TASKD_EXECUTION_ID": "r-parent"}
    parent_leftover = subprocess.Popen(["sleep", "30"], env=parent_env)
    try:
        pidfile = tmp_path / "pid"
        inner = f"echo $$ > {pidfile}; exec sleep 30"
        command = (f"setsid sh -c '{inner}' >/dev/null 2>&1 & "
                   f"while ! [ -s {pidfile} ]; do sleep 0.01; done; echo ready; sleep 30")
        outcome = run(command, variables=HOOK_VARIABLES, timeout_s=2)
        assert (outcome.error, outcome.output_tail) == ("timeout after 2s", "ready\n")
        escaper = int(pidfile.read_text())
        assert wait_until(lambda: not alive(escaper)), "the hook's setsid escaper survived"
        assert parent_leftover.poll() is None, "the hook's timeout killed another run's process"
    finally:
        parent_leftover.kill()
        parent_leftover.wait()


# -- http_request: the payload as the body ----------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    server: RecordingServer

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, dict[str, str], bytes]]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingServer]:
    monkeypatch.setenv("no_proxy", "*")  # never send 127.0.0.1 through a configured proxy
    srv = RecordingServer(("127.0.0.1", 0), Recorder)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(srv: RecordingServer, payload: str | None, **task: Any) -> TaskOutcome:
    params = HttpRequest.validate({"url": f"http://127.0.0.1:{srv.server_port}/hook", **task})
    return HttpRequest.run(params, context(payload=payload, variables=HOOK_VARIABLES))


def test_the_payload_is_the_body_as_json(server: RecordingServer) -> None:
    outcome = request(server, PAYLOAD, method="POST")
    assert outcome.success, outcome
    [(method, headers, body)] = server.seen
    assert (method, json.loads(body)) == ("POST", RECORD)
    assert headers["Content-Type"] == "application/json"


def test_the_method_stays_the_tasks(server: RecordingServer) -> None:
    assert request(server, PAYLOAD).success  # no method: GET, the payload still its body
    [(method, _, body)] = server.seen
    assert (method, body) == ("GET", PAYLOAD.encode())


def test_the_tasks_content_type_is_kept(server: RecordingServer) -> None:
    assert request(server, PAYLOAD, method="PUT",
                   headers={"content-type": "application/vnd.alert+json"}).success
    [(_, headers, body)] = server.seen
    assert headers["Content-Type"] == "application/vnd.alert+json"
    assert body == PAYLOAD.encode()


def test_the_tasks_own_body_wins(server: RecordingServer) -> None:
    assert request(server, PAYLOAD, method="POST", body="text=alert",
                   headers={"Content-Type": "application/x-www-form-urlencoded"}).success
    [(_, headers, body)] = server.seen
    assert (body, headers["Content-Type"]) == (b"text=alert",
                                               "application/x-www-form-urlencoded")


def test_without_a_payload_there_is_no_body(server: RecordingServer) -> None:
    assert request(server, None).success
    [(method, headers, body)] = server.seen
    assert (method, body, "Content-Type" in headers) == ("GET", b"", False)
