"""ControlServer on its own: a fake handler, a fake clock, service() driven in a loop.

Every service() call is timed: whatever a client does, it must never block the loop.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import struct
import time
import tracemalloc
from multiprocessing.connection import wait

import pytest

from supervisor.control.control_client import ControlError, request
from supervisor.control.control_server import WRITE_POLL_S, ControlServer, ControlSocketError

QUICK_S = 0.5


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def echo(request: dict) -> dict:
    return {"ok": True, "result": {"echo": request}}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "run" / "taskd.sock")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def server(path, clock):
    server = ControlServer(path, echo, clock=clock)
    server.open()
    yield server
    server.close()


def serve(server: ControlServer) -> None:
    started = time.monotonic()
    server.service()
    assert time.monotonic() - started < QUICK_S, "service() blocked"


def frame(message: object) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">I", len(payload)) + payload


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def read_until_closed(server: ControlServer, sock: socket.socket, timeout: float = 5.0,
                      chunk_size: int = 1 << 20) -> bytes:
    """Drive the server until the connection ends; everything it sent."""
    sock.setblocking(False)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serve(server)
        try:
            chunk = sock.recv(chunk_size)
        except BlockingIOError:
            select.select([sock], [], [], 0.005)
            continue
        except ConnectionResetError:  # closed with our unread bytes in its buffer
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError("the server never closed the connection")


def response_of(data: bytes) -> dict:
    (length,) = struct.unpack(">I", data[:4])
    assert len(data) == 4 + length
    return json.loads(data[4:])


def exchange(server: ControlServer, path: str, raw: bytes) -> dict | None:
    sock = connect(path)
    try:
        sock.sendall(raw)
        data = read_until_closed(server, sock)
    finally:
        sock.close()
    return response_of(data) if data else None


# -- opening -------------------------------------------------------------------------------


def test_a_request_is_answered_and_the_connection_closed(server, path):
    request = {"command": "status", "args": {"job_id": "x"}}
    assert exchange(server, path, frame(request)) == {"ok": True, "result": {"echo": request}}
    assert server.clients == []


def test_the_socket_is_born_0600_in_a_created_directory(server, path):
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert os.path.isdir(os.path.dirname(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
@pytest.mark.parametrize("group", ["nogroup", "65534", "root", "0"])
def test_a_socket_group_makes_it_0660_and_group_owned(path, group):
    server = ControlServer(path, echo, group=group)
    server.open()
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == (0 if group in ("root", "0") else 65534)
    finally:
        server.close()


def test_an_unknown_group_is_refused_and_nothing_is_left(path):
    with pytest.raises(ControlSocketError, match="unknown group 'no-such-group-x'"):
        ControlServer(path, echo, group="no-such-group-x").open()
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(path, clock):
    os.makedirs(os.path.dirname(path))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: a daemon that was SIGKILLed
    server = ControlServer(path, echo, clock=clock)
    server.open()
    try:
        assert exchange(server, path, frame({"command": "x"}))["ok"] is True
    finally:
        server.close()
    assert not os.path.exists(path)


def test_a_live_socket_is_not_taken_over(server, path):
    with pytest.raises(ControlSocketError, match=f"another taskd answers on {path}"):
        ControlServer(path, echo).open()
    assert exchange(server, path, frame({"command": "x"}))["ok"] is True


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "taskd.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="exists and is not a socket"):
        ControlServer(str(path), echo).open()
    assert path.read_text() == "precious"


def test_close_unlinks_only_its_own_socket(path):
    first = ControlServer(path, echo)
    first.open()
    os.unlink(path)  # someone removed it, and another daemon took the path
    second = ControlServer(path, echo)
    second.open()
    first.close()
    assert os.path.exists(path)
    second.close()
    assert not os.path.exists(path)


def test_wait_objects_wake_the_loop_on_a_connection(server, path):
    assert wait(server.wait_objects(), 0) == []
    sock = connect(path)
    assert wait(server.wait_objects(), 2.0)
    sock.close()


# -- hostile and slow clients ----------------------------------------------------------------


@pytest.mark.parametrize(("raw", "error"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "request too large"),  # "GET " is a length
    (struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc", "not UTF-8 JSON"),
    (struct.pack(">I", 5) + b"{oops", "not UTF-8 JSON"),
    (frame([1, 2, 3]), "expected an object with a command"),
    (frame({"args": {}}), "expected an object with a command"),
    (struct.pack(">I", 0), "not UTF-8 JSON"),
    (struct.pack(">I", 60000) + b"[" * 60000, "not UTF-8 JSON"),  # RecursionError
])
def test_garbage_is_answered_with_an_error_and_closed(server, path, raw, error):
    response = exchange(server, path, raw)
    assert response["ok"] is False and error in response["error"]
    assert server.clients == []


def test_a_100_mb_length_prefix_is_refused_without_allocating(server, path):
    sock = connect(path)
    sock.sendall(struct.pack(">I", 100 * 1024 * 1024) + b"x" * 1000)
    tracemalloc.start()
    try:
        data = read_until_closed(server, sock, chunk_size=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sock.close()
    assert "request too large" in response_of(data)["error"]
    assert peak < 256 * 1024


def test_an_idle_client_is_closed_after_the_timeout(server, path, clock):
    sock = connect(path)
    serve(server)
    assert len(server.clients) == 1
    assert server.next_deadline() == clock.t + 2.0
    clock.t += 1.9
    serve(server)
    assert len(server.clients) == 1
    clock.t += 0.2
    data = read_until_closed(server, sock)
    assert response_of(data) == {"ok": False, "error": "request timed out"}
    assert server.clients == [] and server.next_deadline() is None
    sock.close()


def test_a_half_sent_request_is_closed_after_the_timeout(server, path, clock):
    sock = connect(path)
    sock.sendall(frame({"command": "status"})[:10])
    for _ in range(5):
        serve(server)
    assert len(server.clients) == 1
    clock.t += 2.5
    assert response_of(read_until_closed(server, sock))["error"] == "request timed out"
    sock.close()
    assert exchange(server, path, frame({"command": "x"}))["ok"] is True


def test_a_client_that_leaves_early_is_forgotten(server, path):
    sock = connect(path)
    sock.sendall(frame({"command": "status"})[:10])
    serve(server)
    sock.close()
    serve(server)
    assert server.clients == []


def test_a_hundred_clients_at_once_are_all_answered(server, path):
    socks = [connect(path) for _ in range(100)]
    for number, sock in enumerate(socks):
        sock.sendall(frame({"command": "n", "args": {"n": number}}))
    for number, sock in enumerate(socks):
        response = response_of(read_until_closed(server, sock))
        assert response["result"]["echo"]["args"]["n"] == number
        sock.close()
    assert server.clients == []


def test_over_max_clients_the_newest_is_closed_at_once(path, clock):
    server = ControlServer(path, echo, clock=clock, max_clients=4)
    server.open()
    idle = [connect(path) for _ in range(4)]
    serve(server)
    extra = connect(path)
    response = response_of(read_until_closed(server, extra))
    assert response["ok"] is False and "too many" in response["error"]
    assert len(server.clients) == 4
    for sock in [*idle, extra]:
        sock.close()
    server.close()


def test_a_client_that_never_reads_its_response_is_closed(path, clock):
    big = {"ok": True, "result": {"blob": "x" * (8 * 1024 * 1024)}}
    server = ControlServer(path, lambda request: big, clock=clock)
    server.open()
    sock = connect(path)
    sock.sendall(frame({"command": "status"}))
    for _ in range(20):
        serve(server)
    assert len(server.clients) == 1  # the response does not fit the socket buffers
    assert server.next_deadline() <= clock.t + WRITE_POLL_S  # the loop polls the writer
    assert wait(server.wait_objects(), 0) == []  # and does not spin on it
    clock.t += 2.5
    serve(server)
    assert server.clients == []
    sock.close()
    server.close()


def test_a_large_response_reaches_a_client_that_reads(path, clock):
    big = {"ok": True, "result": {"blob": "x" * (8 * 1024 * 1024)}}
    server = ControlServer(path, lambda request: big, clock=clock)
    server.open()
    try:
        assert exchange(server, path, frame({"command": "status"})) == big
    finally:
        server.close()


def test_a_handler_exception_is_an_internal_error_and_the_server_goes_on(path, clock):
    calls = []

    def handler(request: dict) -> dict:
        calls.append(request)
        if len(calls) == 1:
            raise KeyError("boom")
        if len(calls) == 2:
            return {"ok": True, "result": {"not json": object()}}
        return {"ok": True}

    server = ControlServer(path, handler, clock=clock)
    server.open()
    try:
        first = exchange(server, path, frame({"command": "x"}))
        assert first == {"ok": False, "error": "internal error: KeyError: 'boom'"}
        second = exchange(server, path, frame({"command": "x"}))
        assert second["ok"] is False and second["error"].startswith("internal error:")
        assert exchange(server, path, frame({"command": "x"})) == {"ok": True}
    finally:
        server.close()


# -- the client against it ---------------------------------------------------------------------


def test_the_client_reports_a_missing_or_dead_socket(tmp_path):
    missing = str(tmp_path / "nothing.sock")
    with pytest.raises(ControlError, match=r"no taskd daemon answers at .* \(no such socket\)"):
        request(missing, {"command": "status"})
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(missing)
    dead.close()
    with pytest.raises(ControlError, match=r"\(connection refused\)"):
        request(missing, {"command": "status"})


def test_the_client_times_out_on_a_daemon_that_does_not_answer(server, path):
    with pytest.raises(ControlError, match="did not answer in time"):
        request(path, {"command": "status"}, timeout_s=0.3)  # nobody calls service()
