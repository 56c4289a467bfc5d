"""The client side of the control socket: where it is, and one blocking request."""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
from typing import Any

from supervisor.control.control_server import HEADER, encode_frame

ROOT_SOCKET = "/run/taskd/taskd.sock"
MAX_RESPONSE_BYTES = 1 << 30  # a full status of a very large daemon is tens of MB


class ControlError(Exception):
    """No answer from a daemon, or an answer that is not one."""


def default_socket_path() -> str:
    """``$TASKD_SOCKET``, else the root path, else ``$XDG_RUNTIME_DIR``, else under /tmp."""
    explicit = os.environ.get("TASKD_SOCKET")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return ROOT_SOCKET
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "taskd.sock")
    return os.path.join(tempfile.gettempdir(), f"taskd-{os.getuid()}", "taskd.sock")


_REASONS = {errno.ECONNREFUSED: "connection refused", errno.ENOENT: "no such socket",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOTSOCK: "not a socket", errno.ENOTDIR: "no such socket"}


def request(path: str, message: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request and return the daemon's response object."""
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.settimeout(remaining())
            sock.connect(path)
        except TimeoutError:
            raise ControlError(f"no taskd daemon answers at {path} (timed out)") from None
        except OSError as error:
            reason = _REASONS.get(error.errno or 0) or error.strerror or str(error)
            raise ControlError(f"no taskd daemon answers at {path} ({reason})") from None
        try:
            sock.settimeout(remaining())
            sock.sendall(encode_frame(message))
            (length,) = HEADER.unpack(_read_exactly(sock, HEADER.size, remaining))
            if length > MAX_RESPONSE_BYTES:
                raise ControlError(f"the daemon at {path} sent a {length}-byte response")
            payload = _read_exactly(sock, length, remaining)
        except TimeoutError:
            raise ControlError(f"the daemon at {path} did not answer in time "
                               f"({timeout_s:g}s)") from None
        except (ConnectionError, EOFError):
            raise ControlError(f"the daemon at {path} closed the connection without "
                               "answering") from None
        except OSError as error:
            raise ControlError(f"talking to the daemon at {path}: {error.strerror}") from None
    finally:
        sock.close()
    try:
        response = json.loads(payload.decode("utf-8"))
    except ValueError:
        raise ControlError(f"the daemon at {path} sent an unreadable response") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise ControlError(f"the daemon at {path} sent an unexpected response")
    return response


def _read_exactly(sock: socket.socket, size: int, remaining) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        sock.settimeout(remaining())
        data = sock.recv(min(size - len(chunks), 1 << 20))
        if not data:
            raise EOFError
        chunks += data
    return bytes(chunks)
