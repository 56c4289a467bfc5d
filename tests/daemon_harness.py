"""Start a real taskd daemon on a temporary jobs directory and watch what it writes.

Every wait polls with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 20.0


def wait_until(predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S,
               interval: float = 0.02, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(errors="replace").split("\n"):  # not splitlines(): U+2028
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"event": "unparsable", "line": line})
    return lines


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent links in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def run_client(*args: str, timeout: float = 30.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``taskd ARGS...`` in a process of its own: exit code, stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


class Daemon:
    def __init__(self, base: Path, *, workers: int = 2, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, wrapper: list[str] | None = None) -> None:
        """``env`` is added to the test's environment; ``wrapper`` is a command prefix
        (``setpriv ...``, ``unshare ...``) the daemon is started under."""
        self.base = base
        self.wrapper = wrapper or []
        self.jobs = base / "jobs.d"
        self.jobs.mkdir(exist_ok=True)
        self.log = base / "executions.jsonl"
        self.stderr_path = base / "diagnostics.jsonl"
        self.stdout_path = base / "stdout.txt"
        self.workers = workers
        self.args = args
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.socket = base / "taskd.sock"
        if "--socket" in args:
            self.socket = Path(args[args.index("--socket") + 1])
        elif len(str(self.socket)) > 100:  # AF_UNIX paths are limited to 107 bytes
            self.socket = Path(tempfile.mkdtemp(prefix="taskd-")) / "taskd.sock"

    # -- jobs ----------------------------------------------------------------------

    def write_job(self, name: str, job_id: str | None = None, schedule: str = "* * * * * *",
                  command: str = "true", **fields: Any) -> Path:
        document = {"job_id": job_id or name.removesuffix(".json"), "schedule": schedule,
                    "task": {"type": "execute_command", "command": command}, **fields}
        return self.write_raw(name, json.dumps(document))

    def write_raw(self, name: str, text: str) -> Path:
        path = self.jobs / name
        temporary = self.jobs / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, path)  # atomic, like most editors and config tools
        return path

    # -- process -------------------------------------------------------------------

    def start(self, wait_ready: bool = True) -> Daemon:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # a test run under systemd never talks to the real one
        env.update(self.env or {})  # unless a test gives its own (a fake systemd)
        command = [*self.wrapper, sys.executable, "-m", "supervisor", "start",
                   "--workers", str(self.workers), "--jobs-dir", str(self.jobs),
                   "--log-file", str(self.log), "--timezone", "UTC", *self.args]
        if "--socket" not in self.args:
            command += ["--socket", str(self.socket)]
        with open(self.stderr_path, "ab") as err, open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL, env=env)
        if wait_ready:
            self.wait_event("ready")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a client command (``status``, ``run JOB``...) against this daemon's socket."""
        return run_client(*args, "--socket", str(self.socket), timeout=timeout)

    def client_json(self, command: str, *args: str) -> Any:
        """A client command's ``--json`` answer, parsed; fails the test if it failed."""
        result = self.client(command, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # -- what it wrote -------------------------------------------------------------

    def records(self, job_id: str | None = None) -> list[dict[str, Any]]:
        records = [r for r in read_json_lines(self.log) if r.get("event") == "execution"]
        return [r for r in records if job_id is None or r["job_id"] == job_id]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events = read_json_lines(self.stderr_path)
        return [e for e in events if name is None or e.get("event") == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = DEFAULT_TIMEOUT_S,
                   where: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[dict]:
        def found() -> list[dict] | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}; "
                                     f"stderr: {self.stderr_path.read_text()[-3000:]}")
            matching = [e for e in self.events(name) if where(e)]
            return matching if len(matching) >= count else None

        return wait_until(found, timeout, message=f"{count} x event {name!r}")

    def wait_records(self, job_id: str | None = None, count: int = 1,
                     timeout: float = DEFAULT_TIMEOUT_S,
                     where: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[dict]:
        def found() -> list[dict] | None:
            matching = [r for r in self.records(job_id) if where(r)]
            return matching if len(matching) >= count else None

        return wait_until(found, timeout, message=f"{count} records of {job_id}")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.kill()
