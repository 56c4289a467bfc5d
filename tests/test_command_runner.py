"""run_command with real processes: output, outcomes, timeouts, stop and process cleanup.

Waits are bounded polls, never fixed sleeps. Processes a test leaves behind on purpose
are killed by the test itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from workers import command_runner
from workers.command_runner import (
    KILL_GRACE_S,
    LINGER_S,
    format_seconds,
    run_command,
)
from workers.run_processes import find_processes_with_env
from workers.task_type import OUTPUT_TAIL_BYTES, TaskOutcome


def run(
    command: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float | None = 10,
    run_id: str | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> TaskOutcome:
    extra_env = {
        "TASKD_JOB_ID": "job-x",
        "TASKD_RUN_ID": run_id or uuid.uuid4().hex,
        "TASKD_SCHEDULED_FOR": "2026-11-26T21:00:00+00:00",
    }
    return run_command(
        command,
        env=env or {},
        cwd=cwd,
        timeout_s=timeout_s,
        extra_env=extra_env,
        stop_requested=stop_requested,
    )


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def zombie_children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state = proc_state(int(entry))
            if state is not None and state[0] == "Z" and state[1] == me:
                found.append(int(entry))
    return found


def read_pid(path: Path) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "")
    return int(path.read_text().split()[0])


@pytest.fixture
def leftovers() -> list[int]:
    """Pids a test expects to survive; killed at teardown so nothing is left behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- outcomes -----------------------------------------------------------------------


def test_success_with_output() -> None:
    assert run("echo hello") == TaskOutcome(True, 0, None, "hello\n")


def test_stderr_is_combined_with_stdout() -> None:
    outcome = run("echo out; echo err >&2; echo out2")
    assert outcome.output_tail == "out\nerr\nout2\n"


def test_non_zero_exit_is_a_failure() -> None:
    assert run("echo partial; exit 3") == TaskOutcome(False, 3, "exit code 3", "partial\n")


def test_killed_by_a_signal_has_no_exit_code() -> None:
    outcome = run("kill -9 $$")
    assert outcome == TaskOutcome(False, None, "killed by signal SIGKILL", "")


def test_command_not_found_is_exit_code_127() -> None:
    outcome = run("no-such-command-taskd-test")
    assert (outcome.success, outcome.exit_code, outcome.error) == (False, 127, "exit code 127")
    assert "not found" in outcome.output_tail


def test_stdin_is_dev_null() -> None:
    started = time.monotonic()
    outcome = run('cat; read line; echo "read=$?"', timeout_s=5)
    assert outcome == TaskOutcome(True, 0, None, "read=1\n")
    assert time.monotonic() - started < 2


def test_runs_in_a_session_and_process_group_of_its_own() -> None:
    outcome = run('read -r pid comm state ppid pgrp sid rest < /proc/$$/stat; '
                  'echo "$pid $pgrp $sid"')
    pid, pgrp, sid = outcome.output_tail.split()
    assert pid == pgrp == sid


def test_signals_python_ignores_are_reset_for_the_command() -> None:
    # Python ignores SIGPIPE and SIGXFSZ; an ignored signal would stay ignored across exec.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    outcome = run("grep SigIgn /proc/self/status")
    ignored = int(outcome.output_tail.split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), sig.name


def test_a_worker_command_inherits_only_stdin_stdout_and_stderr(tmp_path: Path) -> None:
    # A child process marks what it inherited close-on-exec (posix_spawn closes nothing).
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys\n"
        "from workers.child_process import close_inherited_on_exec\n"
        "from workers.command_runner import run_command\n"
        "read_end, write_end = os.pipe()\n"
        "os.set_inheritable(read_end, True)  # as the fork server hands a channel down\n"
        "close_inherited_on_exec()\n"
        "outcome = run_command('ls /proc/$$/fd', env={}, cwd=None, timeout_s=10,\n"
        "                      extra_env={}, stop_requested=lambda: False)\n"
        "print(' '.join(sorted(outcome.output_tail.split())))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30, check=True, cwd=Path(__file__).parent.parent)
    assert done.stdout.split() == ["0", "1", "2"]


def test_works_without_a_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels before 5.3: exit is found by polling waitid instead.
    monkeypatch.setattr(command_runner, "_open_pidfd", lambda pid: None)
    assert run("echo a; exit 4") == TaskOutcome(False, 4, "exit code 4", "a\n")


# -- output tail ----------------------------------------------------------------------


def test_flood_keeps_the_last_4_kib_with_bounded_memory() -> None:
    tracemalloc.start()
    try:
        outcome = run("yes | head -c 50000000; printf END")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome.success
    tail = outcome.output_tail
    assert len(tail.encode()) == OUTPUT_TAIL_BYTES
    assert tail.endswith("y\ny\nEND")
    assert peak < 1_000_000, peak


def test_one_long_line_without_newline() -> None:
    outcome = run("head -c 10000000 /dev/zero | tr '\\0' a")
    assert outcome.output_tail == "a" * OUTPUT_TAIL_BYTES


def test_invalid_utf8_gives_a_valid_str() -> None:
    outcome = run("printf 'ok\\377\\376abc\\200'")
    assert outcome.output_tail == "ok\ufffd\ufffdabc\ufffd"


def test_tail_does_not_start_inside_a_utf8_sequence() -> None:
    # 3000 two-byte characters and "x": the 4096-byte cut falls on a continuation byte.
    outcome = run("i=0; while [ $i -lt 3000 ]; do printf 'é'; i=$((i+1)); done; printf x")
    assert outcome.output_tail == "é" * 2047 + "x"


def test_tail_of_invalid_bytes_stays_within_4_kib_once_encoded() -> None:
    outcome = run("head -c 10000 /dev/zero | tr '\\0' '\\377'")
    tail = outcome.output_tail
    assert set(tail) == {"\ufffd"}
    assert OUTPUT_TAIL_BYTES - 3 < len(tail.encode()) <= OUTPUT_TAIL_BYTES


# -- environment and cwd --------------------------------------------------------------


def test_taskd_variables_are_set() -> None:
    outcome = run('echo "$TASKD_JOB_ID|$TASKD_RUN_ID|$TASKD_SCHEDULED_FOR"', run_id="r-1")
    assert outcome.output_tail == "job-x|r-1|2026-11-26T21:00:00+00:00\n"


def test_env_is_merged_over_the_daemon_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKD_T_BASE", "base")
    monkeypatch.setenv("TASKD_T_OVER", "daemon")
    outcome = run(
        'echo "$TASKD_T_BASE $TASKD_T_OVER $TASKD_T_NEW $TASKD_JOB_ID"',
        env={"TASKD_T_OVER": "job", "TASKD_T_NEW": "new", "TASKD_JOB_ID": "not-this"},
    )
    # The TASKD_* variables win over the job's env.
    assert outcome.output_tail == "base job new job-x\n"


def test_cwd(tmp_path: Path) -> None:
    outcome = run("pwd -P", cwd=str(tmp_path))
    assert outcome.output_tail == f"{tmp_path.resolve()}\n"


def test_missing_cwd_fails_to_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    outcome = run("true", cwd=missing)
    assert outcome == TaskOutcome(False, None, f"failed to start: cwd {missing} does not exist")


def test_cwd_that_is_a_file_fails_to_start(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    outcome = run("true", cwd=str(file))
    assert outcome.error == f"failed to start: cwd {file} is not a directory"


def test_oversized_environment_fails_to_start() -> None:
    # Linux caps one environment string at 128 KiB (MAX_ARG_STRLEN): execve gives E2BIG.
    outcome = run("true", env={"BIG": "x" * 300 * 1024})
    assert outcome == TaskOutcome(False, None, "failed to start: argument list too long")


# -- leftovers, timeouts and stop -----------------------------------------------------


def test_background_process_holding_stdout_does_not_hold_the_run(
    tmp_path: Path, leftovers: list[int]
) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    outcome = run(f"sleep 30 & echo $! > {pidfile}; echo done; exit 0")
    elapsed = time.monotonic() - started
    assert outcome == TaskOutcome(True, 0, None, "done\n")
    assert LINGER_S * 0.9 <= elapsed < 5
    # As cron does, what a finished job left in the background is left alone.
    leftovers.append(read_pid(pidfile))
    assert alive(leftovers[0])


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    outcome = run(f"echo start; sleep 30 & echo $! > {pidfile}; wait", timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert (outcome.success, outcome.error) == (False, "timeout after 0.5s")
    assert outcome.exit_code is None  # the shell died of SIGTERM
    assert outcome.output_tail == "start\n"
    assert 0.5 <= elapsed < 0.5 + KILL_GRACE_S
    grandchild = read_pid(pidfile)
    assert wait_until(lambda: not alive(grandchild)), "grandchild survived the timeout"
    assert zombie_children() == []


@pytest.mark.slow
def test_task_ignoring_sigterm_is_killed_after_the_grace() -> None:
    started = time.monotonic()
    outcome = run("trap '' TERM; sleep 30; echo not-reached", timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert outcome == TaskOutcome(False, None, "timeout after 0.3s", "")
    assert 0.3 + KILL_GRACE_S * 0.9 <= elapsed < 0.3 + KILL_GRACE_S + 2
    assert zombie_children() == []


@pytest.mark.slow
def test_grandchild_ignoring_sigterm_is_killed_after_the_shell_died(tmp_path: Path) -> None:
    # The shell dies of TERM at once; a grandchild that ignores TERM and holds the pipe
    # must still get the KILL.
    pidfile = tmp_path / "pid"
    script = f'trap "" TERM; echo $$ > {pidfile}; exec sleep 30'
    outcome = run(f"sh -c '{script}' & wait", timeout_s=0.3)
    assert outcome.error == "timeout after 0.3s"
    grandchild = read_pid(pidfile)
    assert wait_until(lambda: not alive(grandchild)), "grandchild survived the KILL"


def test_setsid_escaper_is_killed_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The escaper records its pid and its process group, then sleeps with the pipe closed.
    inner = f'echo $$ $(cut -d" " -f5 /proc/$$/stat) > {pidfile}; exec sleep 30'
    command = f"setsid sh -c '{inner}' >/dev/null 2>&1 & sleep 30"
    outcome = run(command, timeout_s=0.5)
    assert outcome.error == "timeout after 0.5s"
    pid, pgid = map(int, pidfile.read_text().split())
    assert pgid == pid  # it really had left the task's process group
    assert wait_until(lambda: not alive(pid)), "setsid escaper survived the timeout"


def test_stop_request_kills_the_run() -> None:
    calls = 0

    def stop_requested() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3  # polled even while the task is silent

    started = time.monotonic()
    outcome = run("echo begun; sleep 30", stop_requested=stop_requested, timeout_s=None)
    assert outcome.error == "shutdown"
    assert not outcome.success
    assert time.monotonic() - started < 2
    assert zombie_children() == []


def test_timeout_does_not_apply_once_the_shell_has_exited(leftovers: list[int]) -> None:
    # The shell exits at once; the leftover holds the pipe past the timeout.
    outcome = run("sleep 30 & echo $!", timeout_s=0.2)
    leftovers.append(int(outcome.output_tail))
    assert (outcome.success, outcome.error) == (True, None)


# -- helpers --------------------------------------------------------------------------


def test_find_processes_with_env() -> None:
    run_id = uuid.uuid4().hex
    env = {**os.environ, "TASKD_RUN_ID": run_id}
    proc = subprocess.Popen(["sleep", "30"], env=env)
    try:
        assert wait_until(lambda: find_processes_with_env("TASKD_RUN_ID", run_id) != [])
        assert find_processes_with_env("TASKD_RUN_ID", run_id) == [proc.pid]
        assert find_processes_with_env("TASKD_RUN_ID", run_id[:-1]) == []
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (5.0, "5s"), (0.5, "0.5s"), (1.25, "1.25s"), (90, "90s")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
