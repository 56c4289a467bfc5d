"""The coordinator's non-blocking end of a pipe to a child process (worker or logger).

The coordinator must never block on a child: a child SIGSTOPped or SIGKILLed in the
middle of writing a message would otherwise hang ``Connection.recv()`` forever, and a
child that stops reading would hang ``send()``. So the coordinator's end of each
``multiprocessing.Pipe`` is driven here without blocking: bytes are read as they come,
frames are assembled in a buffer, and outgoing bytes wait in a buffer until the socket
takes them. The child keeps a plain blocking ``Connection``; the frames are the same as
``multiprocessing.connection``'s (4-byte big-endian length, or -1 and an 8-byte length),
and the payload is UTF-8 JSON.
"""

from __future__ import annotations

import json
import os
import select
import struct
from multiprocessing.connection import Connection
from typing import Any

# A message larger than this is a protocol violation (results carry 4 KiB of output).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 256 * 1024
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


class Channel:
    """Message-framed, non-blocking I/O on the coordinator's end of a Pipe."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn  # owns the descriptor; keep it alive
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        self._in = bytearray()
        self._out = bytearray()
        self._write_waiter: select.epoll | None = None
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    @property
    def unsent_bytes(self) -> int:
        return len(self._out)

    def write_waiter(self) -> Any | None:
        """While bytes wait to be sent: an object ``wait()`` sees ready once we can write.

        ``multiprocessing.connection.wait`` only waits for reading, but an epoll instance
        reads as ready when a descriptor it watches is: here, when the socket takes more.
        A message larger than the socket buffer (a job with a big environment) then goes
        out as fast as the child reads it, not one piece per loop wake-up. None when
        nothing waits, or without epoll (the loop still flushes each time it wakes).
        """
        if not self._out or self.closed:
            return None
        if self._write_waiter is None:
            try:
                waiter = select.epoll()
            except (AttributeError, OSError):
                return None
            waiter.register(self._fd, select.EPOLLOUT)
            self._write_waiter = waiter
        return self._write_waiter

    def send(self, message: Any) -> int:
        """Queue one message and push out as much as the socket takes now; its size."""
        payload = json.dumps(message, separators=(",", ":")).encode()
        if len(payload) >= 0x7FFFFFFF:
            self._out += _SHORT.pack(-1) + _LONG.pack(len(payload))
        else:
            self._out += _SHORT.pack(len(payload))
        self._out += payload
        self.flush()
        return len(payload)

    def flush(self) -> bool:
        """Write what the socket accepts without blocking; True when nothing is left."""
        while self._out and not self.closed:
            try:
                written = os.write(self._fd, self._out)
            except BlockingIOError:
                return False
            except OSError:
                self.closed = True  # the child is gone; its death is handled elsewhere
                return False
            del self._out[:written]
        return not self._out

    def receive(self) -> list[Any]:
        """Every complete message that has arrived; sets ``closed`` at end of stream."""
        for _ in range(16):  # bounded, so one chatty child cannot starve the loop
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._in += chunk
        return self._complete_messages()

    def _complete_messages(self) -> list[Any]:
        messages = []
        while True:
            if len(self._in) < _SHORT.size:
                return messages
            (size,) = _SHORT.unpack_from(self._in)
            header = _SHORT.size
            if size == -1:
                if len(self._in) < header + _LONG.size:
                    return messages
                (size,) = _LONG.unpack_from(self._in, header)
                header += _LONG.size
            if size < 0 or size > MAX_MESSAGE_BYTES:
                self.closed = True  # garbage on the wire: treat the child as lost
                self._in.clear()
                return messages
            if len(self._in) < header + size:
                return messages
            payload = bytes(self._in[header:header + size])
            del self._in[:header + size]
            try:
                messages.append(json.loads(payload))
            except ValueError:
                self.closed = True
                return messages

    def close(self) -> None:
        self.closed = True
        if self._write_waiter is not None:
            self._write_waiter.close()
        self._conn.close()


def send_message(conn: Connection, message: Any) -> None:
    """The child's side: one blocking, framed JSON message."""
    conn.send_bytes(json.dumps(message, separators=(",", ":")).encode())


def receive_message(conn: Connection) -> Any:
    """The child's side: block for one framed JSON message (EOFError when closed)."""
    return json.loads(conn.recv_bytes())
