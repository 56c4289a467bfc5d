"""Run one shell command the way the contract says, and say how it ended.

``/bin/sh -c COMMAND`` in a session (and so a process group) of its own, stdin from
``/dev/null`` (or a pipe fed with a hook's input), stdout and stderr combined into one pipe
that is drained continuously into a tail buffer of ``OUTPUT_TAIL_BYTES``. A timeout or a
stop request kills the whole group (TERM, then KILL after ``KILL_GRACE_S``), plus any
descendant that left the group with ``setsid`` but still carries this run's id
(``TASKD_EXECUTION_ID``, else ``TASKD_RUN_ID``).

Input: it is written from the same loop that drains the output, never blocking, so a
command that does not read it (or exits first) costs nothing: the rest is dropped when
the command closes its end (EPIPE) or when the run ends.

Leftover processes: when the shell exits on its own, whatever it left running in the
background is left alone, as cron does (``sleep 30 &`` in a job is not our business once
the job has ended); we only stop waiting for the pipe after ``LINGER_S``. Only a timeout
or a stop request kills the group.

The shell is detected as exited with ``waitid(..., WNOWAIT)`` and reaped only at the very
end, so its pid stays reserved as the group id while we may still ``killpg`` it: with
``pid_max`` as small as 32768 a reaped group id can be reused by an unrelated process.

The shell is started with ``os.posix_spawn`` (a ``vfork``-style clone, about a third of
``subprocess.Popen``'s CPU in the worker); only a run with a ``cwd`` or with credentials
to switch to (a job's ``user``/``group``) goes through ``Popen``, since ``posix_spawn``
can change neither directory nor uid. (``Popen`` changes directory before it drops
privileges: a ``cwd`` is entered with the daemon's rights.) ``posix_spawn`` closes nothing: every
descriptor a worker inherited is made close-on-exec when it starts
(``become_child_process``), and Python opens its own that way.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from workers.run_as import Credentials
from workers.run_processes import (
    EXECUTION_ID_VARIABLE,
    RUN_ID_VARIABLE,
    find_processes_with_env,
    signal_processes,
)
from workers.task_type import OUTPUT_TAIL_BYTES, TaskOutcome

#: Between SIGTERM and SIGKILL to the group on a timeout.
KILL_GRACE_S = 2.0
#: The same on a stop request: the daemon's own --grace-period has already been waited
#: for, and everything must be gone within about a second of it.
STOP_KILL_GRACE_S = 0.5
#: How long to keep reading after the shell exited while something still holds the pipe.
LINGER_S = 1.0
#: Upper bound between two checks of the timeout and of ``stop_requested``.
POLL_INTERVAL_S = 0.1
_READ_CHUNK = 65536
#: What ``subprocess`` resets too: Python ignores SIGPIPE and SIGXFSZ, and an ignored
#: signal stays ignored across exec.
_RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                       if hasattr(signal, name))


def run_command(
    command: str,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout_s: float | None,
    extra_env: Mapping[str, str],
    stop_requested: Callable[[], bool],
    stdin: bytes | None = None,
    credentials: Credentials | None = None,
) -> TaskOutcome:
    """Run ``command`` to completion; task-caused problems come back as a FAILURE.

    ``extra_env`` goes over ``env``, which goes over the daemon's environment. ``stdin``:
    what the command reads (None: ``/dev/null``). ``credentials``: switch to them in the
    child (root only).
    """
    try:
        shell = start_shell(command, env={**os.environ, **env, **extra_env}, cwd=cwd,
                            stdin=stdin is not None, credentials=credentials)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
        return TaskOutcome(success=False, error=f"failed to start: {_spawn_error(exc, cwd)}")
    if EXECUTION_ID_VARIABLE in extra_env:
        tracked = (EXECUTION_ID_VARIABLE, extra_env[EXECUTION_ID_VARIABLE])
    else:
        tracked = (RUN_ID_VARIABLE, extra_env.get(RUN_ID_VARIABLE, ""))
    watch = _Watch(shell, tracked, timeout_s, stop_requested, stdin or b"")
    return watch.run()


class Shell(NamedTuple):
    """A started ``/bin/sh``: its pid (and group id), the read end of its combined
    stdout and stderr, the write end of its stdin (None: it reads ``/dev/null``), and
    how to reap it (returns its return code, -N for signal N)."""

    pid: int
    output: int
    reap: Callable[[], int]
    input: int | None = None


def start_shell(
    command: str,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stdin: bool = False,
    credentials: Credentials | None = None,
) -> Shell:
    """``/bin/sh -c command`` in a new session, stdin from ``/dev/null`` or, with
    ``stdin``, from a pipe whose write end the caller gets (``Shell.input``)."""
    argv = ["/bin/sh", "-c", command]
    input_read = input_write = None
    if stdin:
        input_read, input_write = os.pipe()
    read_end, write_end = os.pipe()
    try:
        if cwd is None and credentials is None:
            stdin_action = ((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
                            if input_read is None else (os.POSIX_SPAWN_DUP2, input_read, 0))
            pid = os.posix_spawn(argv[0], argv, env, setsid=True, setsigdef=_RESET_SIGNALS,
                                 file_actions=[stdin_action,
                                               (os.POSIX_SPAWN_DUP2, write_end, 1),
                                               (os.POSIX_SPAWN_DUP2, write_end, 2)])
            reap = _reaper(pid)
        else:
            switch = credentials.popen_arguments() if credentials is not None else {}
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL if input_read is None else input_read,
                stdout=write_end, stderr=write_end, cwd=cwd, env=env,
                start_new_session=True, **switch)  # type: ignore[call-overload]
            pid, reap = proc.pid, proc.wait
    except BaseException:
        os.close(read_end)
        if input_write is not None:
            os.close(input_write)
        raise
    finally:
        os.close(write_end)
        if input_read is not None:
            os.close(input_read)  # the command's end only: EPIPE once it is closed there
    return Shell(pid, read_end, reap, input_write)


def _reaper(pid: int) -> Callable[[], int]:
    def reap() -> int:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return reap


class _Watch:
    """Drains one started shell's output until it ends, enforcing timeout and stop."""

    def __init__(
        self,
        shell: Shell,
        tracked: tuple[str, str],
        timeout_s: float | None,
        stop_requested: Callable[[], bool],
        stdin: bytes = b"",
    ) -> None:
        self.shell = shell
        self.tracked = tracked  # (variable, value) that marks the run's processes
        self.input = shell.input  # the command's stdin while there is more to write
        self.pending = memoryview(stdin)
        self.timeout_s = timeout_s
        self.stop_requested = stop_requested
        self.started = time.monotonic()
        self.tail = TailBuffer(OUTPUT_TAIL_BYTES)
        self.eof = False
        self.exited_at: float | None = None  # when the shell was seen exited
        self.kill_reason: str | None = None  # set once we decided to kill the group
        self.term_sent_at = 0.0
        self.kill_grace = KILL_GRACE_S
        self.kill_sent_at: float | None = None
        self.pidfd: int | None = None

    def run(self) -> TaskOutcome:
        fd = self.shell.output
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        pidfd = self.pidfd = _open_pidfd(self.shell.pid)
        if pidfd is not None:  # wakes the poll the moment the shell exits
            poller.register(pidfd, select.POLLIN)
        if self.input is not None:
            os.set_blocking(self.input, False)
            if self._feed():  # mostly all of it: a pipe takes 64 KiB before it blocks
                poller.register(self.input, select.POLLOUT)
        # A stop request that comes as a message (a worker's channel) wakes the poll too:
        # the run's group gets its TERM at once, not at the next check.
        wake = getattr(self.stop_requested, "fileno", None)
        wake_fd = wake() if wake is not None else None
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        try:
            while True:
                now = time.monotonic()
                self._check_exit(now)
                self._enforce_limits(now)
                if self._finished(now):
                    break
                if wake_fd is not None and (self.kill_reason is not None
                                            or self.exited_at is not None):
                    poller.unregister(wake_fd)  # decided: later messages wait for the end
                    wake_fd = None
                for ready, _ in poller.poll(self._poll_ms()):
                    if ready == fd and not self._read(fd):
                        poller.unregister(fd)
                    elif ready == pidfd:
                        poller.unregister(pidfd)  # level-triggered: once is enough
                    elif ready == self.input and not self._feed():
                        poller.unregister(ready)
        except BaseException:  # e.g. KeyboardInterrupt: do not leave the task running
            self._signal_all(signal.SIGKILL)
            self.shell.reap()
            raise
        finally:
            if pidfd is not None:
                os.close(pidfd)
            os.close(fd)  # a leftover holding the pipe gets SIGPIPE/EPIPE
            self._close_input()
        return self._outcome(self.shell.reap())  # no zombie left behind

    def _poll_ms(self) -> int:
        # Without a pidfd, exit is only noticed by checking, so check often once the
        # pipe is closed (that is when the shell is about to exit).
        if self.pidfd is None and self.eof and self.exited_at is None:
            return 10
        return int(POLL_INTERVAL_S * 1000)

    def _read(self, fd: int) -> bool:
        """Read what is there; False at end of file."""
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            self.eof = True
            return False
        self.tail.add(chunk)
        return True

    def _feed(self) -> bool:
        """Write what the stdin pipe takes now; False once it is all written or the
        reader has gone (the input is then closed)."""
        assert self.input is not None
        try:
            written = os.write(self.input, self.pending)
        except BlockingIOError:
            return True
        except OSError:  # EPIPE: the command closed its stdin (or exited) unread
            written = len(self.pending)
        self.pending = self.pending[written:]
        if self.pending:
            return True
        self._close_input()
        return False

    def _close_input(self) -> None:
        if self.input is not None:
            os.close(self.input)  # end of file for the command
            self.input = None

    def _check_exit(self, now: float) -> None:
        if self.exited_at is None and _has_exited(self.shell.pid):
            self.exited_at = now

    def _enforce_limits(self, now: float) -> None:
        if self.kill_reason is None:
            if self.exited_at is not None:
                return  # the run ended on its own; a late limit does not apply
            if self.stop_requested():
                self.kill_grace = STOP_KILL_GRACE_S
                self._start_kill(now, "shutdown")
            elif self.timeout_s is not None and now - self.started >= self.timeout_s:
                self._start_kill(now, f"timeout after {format_seconds(self.timeout_s)}")
        elif self.kill_sent_at is None:
            all_done = self.exited_at is not None and self.eof
            if all_done or now - self.term_sent_at >= self.kill_grace:
                # Even when all looks done: a process that closed its stdout may live on.
                self._signal_all(signal.SIGKILL)
                self.kill_sent_at = now

    def _start_kill(self, now: float, reason: str) -> None:
        self.kill_reason = reason
        self.term_sent_at = now
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.shell.pid, sig)  # start_new_session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass
        variable, value = self.tracked
        if value:
            signal_processes(find_processes_with_env(variable, value), sig)

    def _finished(self, now: float) -> bool:
        if self.exited_at is None:
            return False
        if self.kill_reason is not None and self.kill_sent_at is None:
            return False  # the grace period decides; see _enforce_limits
        if self.eof:
            return True
        linger_from = max(self.exited_at, self.kill_sent_at or 0.0)
        return now - linger_from >= LINGER_S

    def _outcome(self, returncode: int) -> TaskOutcome:
        output = self.tail.text()
        exit_code = returncode if returncode >= 0 else None
        if self.kill_reason is not None:
            return TaskOutcome(False, exit_code, self.kill_reason, output)
        if returncode == 0:
            return TaskOutcome(True, 0, None, output)
        if returncode > 0:
            return TaskOutcome(False, returncode, f"exit code {returncode}", output)
        # Killed by a signal: there is no exit code; the signal is named instead.
        return TaskOutcome(False, None, f"killed by signal {_signal_name(-returncode)}", output)


class TailBuffer:
    """Keeps the last ``limit`` bytes of everything added; memory stays bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.truncated = True

    def text(self) -> str:
        """The tail decoded as UTF-8; still at most ``limit`` bytes once re-encoded."""
        data = bytes(self.data)
        if self.truncated:
            data = _drop_leading_continuation(data)
        text = data.decode("utf-8", errors="replace")
        encoded = text.encode("utf-8")
        if len(encoded) > self.limit:  # each U+FFFD takes 3 bytes for the 1 it replaced
            text = _drop_leading_continuation(encoded[-self.limit :]).decode("utf-8")
        return text


def _drop_leading_continuation(data: bytes) -> bytes:
    """Skip the rest of a UTF-8 sequence that the cut went through (at most 3 bytes)."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] <= 0xBF:
        start += 1
    return data[start:]


def format_seconds(seconds: float) -> str:
    """``5`` -> ``5s``, ``0.5`` -> ``0.5s`` (no trailing ``.0``)."""
    value = float(seconds)
    return f"{int(value)}s" if value.is_integer() else f"{value!r}s"


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place, keeping its pid (our group id) reserved.
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped by someone else
        return True


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernel before 5.3, or not Linux
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _spawn_error(exc: OSError | ValueError, cwd: str | None) -> str:
    if isinstance(exc, ValueError):
        return str(exc)
    if cwd is not None and exc.filename == cwd:  # subprocess names cwd when chdir failed
        if isinstance(exc, FileNotFoundError):
            return f"cwd {cwd} does not exist"
        if isinstance(exc, NotADirectoryError):
            return f"cwd {cwd} is not a directory"
        if isinstance(exc, PermissionError):
            return f"cwd {cwd}: permission denied"
    if exc.errno == errno.E2BIG:
        return "argument list too long"  # the environment or the command is too large
    reason = (exc.strerror or str(exc)).lower()
    return f"{exc.filename}: {reason}" if exc.filename else reason
