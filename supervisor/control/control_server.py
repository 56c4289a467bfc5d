"""The control socket: a non-blocking AF_UNIX server stepped by the coordinator's loop.

Protocol: one request per connection. A frame is a 4-byte big-endian length followed by
that many bytes of UTF-8 JSON; a request is an object ``{"command": str, "args": {...}}``,
the response an object with ``ok`` (see ``supervisor.control.commands``). After the response is
written the server closes the connection.

No threads: ``wait_objects()`` goes into the loop's ``wait``, ``service()`` does whatever
can be done without blocking, ``next_deadline()`` wakes the loop to enforce client
timeouts. A client gets ``client_timeout_s`` from its connection to complete its request,
and ``client_timeout_s`` without progress while its response is written; a frame longer
than ``max_request_bytes`` is refused from its length prefix alone, before any payload
is read.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct(">I")
ACCEPT_BATCH = 64  # connections accepted per service() call; the rest wait for the next
# A response that does not fit the socket buffer is written as the client reads it; the
# loop only wakes on readability, so it polls at this interval while output is pending.
WRITE_POLL_S = 0.01


class ControlSocketError(Exception):
    """The control socket cannot be opened (in use, bad group, bad path)."""


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(payload)) + payload


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: memoryview | None = None  # None while the request is still being read

    def fileno(self) -> int:
        return self.sock.fileno()


class ControlServer:
    def __init__(self, path: str, handler: Callable[[dict[str, Any]], dict[str, Any]], *,
                 group: str | None = None, clock: Callable[[], float] = time.monotonic,
                 max_request_bytes: int = 64 * 1024, client_timeout_s: float = 2.0,
                 max_clients: int = 32) -> None:
        self.path = path
        self.handler = handler
        self.group = group
        self.clock = clock
        self.max_request_bytes = max_request_bytes
        self.client_timeout_s = client_timeout_s
        self.max_clients = max_clients
        self.clients: list[_Client] = []
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file

    # -- life cycle ------------------------------------------------------------------

    def open(self) -> None:
        gid = _group_id(self.group) if self.group is not None else None
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as error:
            raise ControlSocketError(f"cannot create {parent}: {error.strerror}") from None
        owner = os.stat(parent).st_uid
        if owner not in (0, os.geteuid()):
            # Someone else's directory (e.g. a squatted /tmp/taskd-UID) could swap our socket.
            raise ControlSocketError(f"{parent} belongs to uid {owner}, not to us or root")
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # born 0600: never a moment when others may connect
        try:
            listener.bind(self.path)
        except OSError as error:
            listener.close()
            raise ControlSocketError(f"cannot bind {self.path}: {error.strerror or error}") \
                from None
        finally:
            os.umask(old_umask)
        try:
            if gid is not None:
                os.chown(self.path, -1, gid)
                os.chmod(self.path, 0o660)
            st = os.stat(self.path)
            listener.listen(min(128, socket.SOMAXCONN))
        except OSError as error:
            listener.close()
            os.unlink(self.path)
            raise ControlSocketError(f"cannot set up {self.path}: {error.strerror}") from None
        listener.setblocking(False)
        self._listener, self._identity = listener, (st.st_dev, st.st_ino)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except ConnectionRefusedError:  # a socket file left by a daemon that died
            os.unlink(self.path)
            return
        except TimeoutError:  # listening, but its backlog is full: alive all the same
            pass
        except OSError as error:
            raise ControlSocketError(f"cannot probe {self.path}: {error.strerror}") from None
        finally:
            probe.close()
        raise ControlSocketError(f"another taskd answers on {self.path}")

    def close(self) -> None:
        for client in self.clients:
            if client.outbuf:
                self._send(client)  # one last non-blocking try (a `stop` acknowledgement)
            client.sock.close()
        self.clients = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:  # not another daemon's socket
                    os.unlink(self.path)
            except OSError:
                pass

    # -- the loop's side -------------------------------------------------------------

    def wait_objects(self) -> list[Any]:
        """The listener and the clients still sending; writers are polled (WRITE_POLL_S)."""
        if self._listener is None:
            return []
        return [self._listener, *(c for c in self.clients if c.outbuf is None)]

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.clients]
        if any(c.outbuf for c in self.clients):
            deadlines.append(self.clock() + WRITE_POLL_S)
        return min(deadlines, default=None)

    def service(self) -> None:
        """Accept, read, answer and write whatever is possible now; never blocks."""
        if self._listener is None:
            return
        now = self.clock()
        for client in list(self.clients):
            self._service_client(client, now)
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except OSError:  # BlockingIOError: none pending; EMFILE and the like: later
                break
            sock.setblocking(False)
            if len(self.clients) >= self.max_clients:
                _send_once(sock, {"ok": False, "error": "busy: too many control connections"})
                sock.close()
                continue
            client = _Client(sock, deadline=now + self.client_timeout_s)
            self.clients.append(client)
            self._service_client(client, now)

    # -- one client ------------------------------------------------------------------

    def _service_client(self, client: _Client, now: float) -> None:
        if client.outbuf is None:
            self._read(client)
        if client.outbuf is not None:
            if client.outbuf and self._send(client):
                client.deadline = now + self.client_timeout_s  # progress: more time
            if not client.outbuf:
                self._drop(client)
                return
        if client in self.clients and now >= client.deadline:
            if client.outbuf is None:
                _send_once(client.sock, {"ok": False, "error": "request timed out"})
            self._drop(client)

    def _read(self, client: _Client) -> None:
        while client.outbuf is None:
            wanted = self._bytes_wanted(client)
            if wanted < 0:
                self._answer(client, encode_frame({"ok": False, "error": (
                    f"request too large (over {self.max_request_bytes} bytes)")}))
            elif wanted == 0:
                self._answer(client, self._handle(bytes(client.inbuf[HEADER.size:])))
            else:
                try:
                    data = client.sock.recv(min(wanted, 65536))
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:  # the client went away before finishing its request
                    self._drop(client)
                    return
                client.inbuf += data

    def _bytes_wanted(self, client: _Client) -> int:
        """How many more bytes complete the frame; -1 when its length is refused."""
        if len(client.inbuf) < HEADER.size:
            return HEADER.size - len(client.inbuf)
        (length,) = HEADER.unpack_from(client.inbuf)
        if length > self.max_request_bytes:
            return -1
        return HEADER.size + length - len(client.inbuf)

    def _handle(self, payload: bytes) -> bytes:
        """The response frame for one request payload; the handler's errors included."""
        try:
            request = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            return encode_frame({"ok": False, "error": "bad request: not UTF-8 JSON"})
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return encode_frame({"ok": False,
                                 "error": "bad request: expected an object with a command"})
        try:
            return encode_frame(self.handler(request))
        except Exception as error:
            return encode_frame({"ok": False,
                                 "error": f"internal error: {type(error).__name__}: {error}"})

    def _answer(self, client: _Client, frame: bytes) -> None:
        client.inbuf = bytearray()
        client.outbuf = memoryview(frame)
        client.deadline = self.clock() + self.client_timeout_s

    def _send(self, client: _Client) -> bool:
        """Write what the socket takes; True on progress. A dead client is dropped."""
        assert client.outbuf is not None
        sent_any = False
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except BlockingIOError:
                break
            except OSError:  # it went away: nothing more to say to it
                client.outbuf = memoryview(b"")
                break
            client.outbuf = client.outbuf[sent:]
            sent_any = True
        return sent_any

    def _drop(self, client: _Client) -> None:
        client.sock.close()
        if client in self.clients:
            self.clients.remove(client)


def _send_once(sock: socket.socket, message: dict[str, Any]) -> None:
    """Best effort, for a client about to be closed anyway."""
    try:
        sock.send(encode_frame(message))
    except OSError:
        pass


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"unknown group {group!r}") from None
