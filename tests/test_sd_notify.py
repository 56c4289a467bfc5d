"""systemd's notify protocol, against a fake ``$NOTIFY_SOCKET`` we bind ourselves.

Unit tests drive ``Notifier`` directly; the end-to-end tests start a real daemon with
``NOTIFY_SOCKET`` set and read what it sends, with the sender's credentials (systemd
with ``NotifyAccess=main`` drops datagrams that do not come from the main pid).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.control.sd_notify import Notifier
from tests.daemon_harness import Daemon, wait_until

_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class FakeSystemd:
    """A bound AF_UNIX datagram socket that collects (sender pid, message) pairs."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it goes into NOTIFY_SOCKET ("@name" for abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[int, str]] = []

    def drain(self) -> list[tuple[int, str]]:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(_CREDENTIALS.size))
            except TimeoutError:
                return self.received
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDENTIALS.unpack(payload[:_CREDENTIALS.size])[0]
            self.received.append((pid, data.decode()))

    def messages(self) -> list[str]:
        return [message for _, message in self.drain()]

    def lines(self) -> list[str]:
        return [line for message in self.messages() for line in message.split("\n")]

    def wait_for_line(self, line: str, timeout: float = 20.0) -> list[str]:
        return wait_until(lambda: line in self.lines() and self.lines(), timeout,
                          message=f"{line!r} on the notify socket")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can outgrow sun_path's 108 bytes; this stays short.
    with tempfile.TemporaryDirectory(prefix="sdn-") as name:
        yield Path(name)


@pytest.fixture
def systemd(short_dir: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(short_dir / "notify.sock"))
    yield fake
    fake.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@taskd-test-{uuid.uuid4().hex}")
    yield fake
    fake.close()


# -- Notifier alone -------------------------------------------------------------------


def test_sends_each_message_as_one_datagram(systemd: FakeSystemd,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    notifier = Notifier()
    assert notifier.enabled
    notifier.notify("READY=1", "STATUS=3 jobs, 0 invalid files")
    notifier.notify("WATCHDOG=1")
    notifier.notify("STATUS=stopping")
    notifier.notify("STOPPING=1")
    assert systemd.drain() == [
        (os.getpid(), "READY=1\nSTATUS=3 jobs, 0 invalid files"),
        (os.getpid(), "WATCHDOG=1"),
        (os.getpid(), "STATUS=stopping"),
        (os.getpid(), "STOPPING=1"),
    ]


def test_abstract_socket_name(abstract_systemd: FakeSystemd,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_systemd.address)
    notifier = Notifier()
    notifier.notify("READY=1")
    notifier.notify("STOPPING=1")
    assert abstract_systemd.messages() == ["READY=1", "STOPPING=1"]


def test_explicit_address_wins_over_the_environment(systemd: FakeSystemd,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/elsewhere.sock")
    Notifier(systemd.address).notify("READY=1")
    assert systemd.messages() == ["READY=1"]


@pytest.mark.parametrize("value", [None, ""])
def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
        value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.notify("READY=1")
    notifier.notify("STOPPING=1")
    assert notifier._socket is None  # not even a socket was made


def test_a_missing_or_dead_socket_never_raises(short_dir: Path) -> None:
    Notifier(str(short_dir / "missing" / "notify.sock")).notify("READY=1")  # ENOENT
    Notifier("@taskd-test-nobody-" + uuid.uuid4().hex).notify("READY=1")  # ECONNREFUSED
    gone = FakeSystemd(str(short_dir / "gone.sock"))
    notifier = Notifier(gone.address)
    notifier.notify("READY=1")
    gone.close()  # systemd went away: the path exists, nobody reads it
    notifier.notify("WATCHDOG=1")
    notifier.notify("STOPPING=1")
    Notifier(str(short_dir)).notify("READY=1")  # a directory, not a socket


def test_a_full_socket_never_blocks(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address)
    started = time.monotonic()
    for _ in range(2000):  # far more than the receive queue holds; nobody reads
        notifier.notify("WATCHDOG=1")
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    (None, None, None),
    ("200000", None, 0.1),
    ("30000000", "self", 15.0),
    ("30000000", "other", None),  # the watchdog is meant for another process
    ("", None, None),
    ("soon", None, None),
])
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("WATCHDOG_USEC", usec),
                        ("WATCHDOG_PID", {"self": str(os.getpid()),
                                          "other": str(os.getpid() + 1)}.get(pid or ""))):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Notifier().watchdog_interval_s() == expected


# -- a real daemon --------------------------------------------------------------------


def notified_daemon(tmp_path: Path, systemd: FakeSystemd, **env: str) -> Daemon:
    return Daemon(tmp_path, workers=1, env={"NOTIFY_SOCKET": systemd.address, **env})


@pytest.fixture
def patched_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon's environment is os.environ plus ours: keep the test process's own
    # notify and watchdog variables (pytest itself may run under systemd) out of it.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("patched_environ")
def test_daemon_sends_ready_after_the_ready_event_then_stopping(
        tmp_path: Path, systemd: FakeSystemd) -> None:
    daemon = notified_daemon(tmp_path, systemd)
    daemon.write_job("tick.json", schedule="* * * * * *")
    daemon.start(wait_ready=False)
    try:
        systemd.wait_for_line("READY=1")
        assert daemon.events("ready"), "READY=1 came before the ready diagnostic"
        assert systemd.messages()[0].startswith("READY=1\nSTATUS=1 jobs, 0 invalid files")

        daemon.signal(signal.SIGTERM)
        systemd.wait_for_line("STOPPING=1")
        assert daemon.process is not None
        assert daemon.process.wait(timeout=30) == 0
    finally:
        daemon.kill()

    received = systemd.drain()
    assert {pid for pid, _ in received} == {daemon.pid}  # NotifyAccess=main would drop others
    lines = [line for _, message in received for line in message.split("\n")]
    assert lines.count("READY=1") == 1
    assert lines.count("STOPPING=1") == 1
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert daemon.events("stopping")


@pytest.mark.usefixtures("patched_environ")
def test_daemon_with_a_missing_notify_socket_runs_normally(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, workers=1,
                            env={"NOTIFY_SOCKET": str(tmp_path / "no" / "such.sock")})
    daemon.write_job("tick.json", schedule="* * * * * *")
    with daemon:
        daemon.wait_records("tick", count=1)
    assert daemon.process is not None and daemon.process.returncode == 0


# -- keep-alives ------------------------------------------------------------------------


@pytest.mark.usefixtures("patched_environ")
def test_daemon_sends_watchdog_keepalives(tmp_path: Path, systemd: FakeSystemd) -> None:
    # WATCHDOG_USEC=200000: systemd would kill a daemon silent for 0.2 s, so pings are
    # due every 0.1 s (half, as sd_watchdog_enabled(3) advises), from the main pid only.
    daemon = notified_daemon(tmp_path, systemd, WATCHDOG_USEC="200000")
    # Taken before the daemon exists, so before its first ping can be sent (a time taken
    # on seeing READY=1 may come after some pings were sent: the bound would be luck).
    before = time.monotonic()
    daemon.start(wait_ready=False)
    try:
        systemd.wait_for_line("READY=1")
        wait_until(lambda: systemd.lines().count("WATCHDOG=1") >= 5, timeout=10.0,
                   message="5 x WATCHDOG=1")
        # Never faster than the interval: four intervals lie between five pings, all
        # sent after ``before`` and before now.
        assert time.monotonic() - before >= 0.4
    finally:
        daemon.stop()
    received = systemd.drain()
    assert {pid for pid, _ in received} == {daemon.pid}
    pings = [message for _, message in received if message.startswith("WATCHDOG=1")]
    assert all("\nSTATUS=" in message for message in pings)
    assert received[0][1].startswith("READY=1")


@pytest.mark.usefixtures("patched_environ")
def test_no_keepalives_without_watchdog_usec(tmp_path: Path, systemd: FakeSystemd) -> None:
    daemon = notified_daemon(tmp_path, systemd)
    daemon.write_job("tick.json", schedule="* * * * * *")
    daemon.start(wait_ready=False)
    try:
        systemd.wait_for_line("READY=1")
        daemon.wait_records("tick", count=1)  # the loop has surely gone round
    finally:
        daemon.stop()
    assert "WATCHDOG=1" not in systemd.lines()


# -- what a job inherits ----------------------------------------------------------------


@pytest.mark.usefixtures("patched_environ")
def test_jobs_do_not_inherit_the_notify_socket(tmp_path: Path, systemd: FakeSystemd) -> None:
    # A job that itself speaks sd_notify (or runs something that does) would otherwise
    # talk to systemd as if it were taskd; with NotifyAccess=main each such datagram is
    # rejected with a warning in the journal. sd_notify(3) unsets the variable for this.
    daemon = notified_daemon(tmp_path, systemd, WATCHDOG_USEC="30000000")
    daemon.write_job("env.json", schedule="* * * * * *",
                     command='echo "${NOTIFY_SOCKET-unset} ${WATCHDOG_USEC-unset}"')
    daemon.start(wait_ready=False)
    try:
        systemd.wait_for_line("READY=1")
        record = daemon.wait_records("env", count=1)[0]
    finally:
        daemon.stop()
    assert record["output_tail"].strip() == "unset unset"
