"""The logger process, which writes the execution log, and the coordinator's link to it.

Execution records go from the coordinator to a process of their own, which writes each
one as one JSON line to stdout or to ``--log-file``. A slow or stopped disk, a reader
that stops reading our stdout, or a stalled NFS mount can block that process, but not
the coordinator: ``LoggerLink`` never blocks, keeps every record until the logger
acknowledges it, and sends a replacement logger everything unacknowledged, in order.

With a state store (``--state-dir``) the logger is also the store's one writer: after
a record's line is written it goes into the store in batched transactions, together with
the coordinator's *marks* (runs handed out, occurrences missed; see store/abc.py). The
link then keeps each entry until it is stored, not only written, and a replacement
logger is sent the written-but-unstored ones again with ``store_only`` (stored, not
logged twice). A PostgreSQL store is written from a thread of the logger's own
(store/writer.py), so the log never waits for the database: while it is unreachable the
entries wait there and "stored" is held back, the lines go on, and the writer says so
once each way (``state_store_unavailable``, ``state_store_reconnected``, on stderr from
here). An SQLite file is written between records, as it always was.

Protocol on the pipe: coordinator -> logger ``{"seq": n, "record": {...}}`` (with
``"store_only": true`` on a resend; ``"log_only": true`` for a record already in the
store), ``{"seq": n, "marks": [...]}`` or ``{"stop": true}``;
logger -> coordinator ``{"ack": n}``: "entry n arrived and its record's line is
written", ``{"stored": n}``: "every entry up to n is stored" (without a store, every ack
is both), and once, if the store fails for good, ``{"store_failed": "<file>: <problem>"}``
before the first "stored" of the entries it dropped. The link sends at most
``max_in_flight_bytes`` of entries not yet acknowledged: acks come whether or not the
store keeps up, so a store that is away never holds back the log.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import multiprocessing
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from pythonjsonlogger.json import JsonFormatter

from supervisor.control.json_line import one_line
from supervisor.processes.channel import Channel, receive_message, send_message
from workers.child_process import become_child_process

if TYPE_CHECKING:
    from supervisor.store.writer import Outage, Retention, StoreWriter

_TAIL_PROBE = 64 * 1024  # how far back to look for a torn last line
# A logger that dies this many times within the window is restarted only after a pause.
FLAP_DEATHS = 5
FLAP_WINDOW_S = 10.0
FLAP_PAUSE_S = 2.0
# How long the logger lets written records wait for more before it commits them to the
# store (a burst's records come one loop step apart): at most this much of the newest
# history is only in the log when the logger dies, and it is resent to the next one.
COMMIT_DELAY_S = 0.05


class _LineStream:
    """A text stream that hands each line to the kernel in one ``os.write``.

    Nothing is ever buffered in the process, so a record is in the file (or the pipe)
    before it is acknowledged, and a dying logger has nothing left to flush.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> None:
        # A lone surrogate cannot be UTF-8; "\udcff" is also its JSON escape.
        data = memoryview(one_line(text).encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(self._fd, data):]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)


class _LogFileHandler(logging.handlers.WatchedFileHandler):
    """Appends to the log file; reopens the path when logrotate moves or deletes it."""

    def _open(self) -> _LineStream:  # type: ignore[override]
        _drop_torn_line(self.baseFilename)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return _LineStream(os.open(self.baseFilename, flags, 0o640))

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # a record that was not written must not be acknowledged: let it fail


class _StdoutHandler(logging.StreamHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        raise  # as above


def _drop_torn_line(path: str) -> None:
    """Cut off a partial last line left by a logger killed in the middle of a write.

    That record was never acknowledged, so it is about to be written again in full.
    A tail that does not look like ours is kept and only terminated.
    """
    try:
        with open(path, "rb+") as log:
            size = log.seek(0, os.SEEK_END)
            if size == 0:
                return
            start = max(0, size - _TAIL_PROBE)
            log.seek(start)
            tail = log.read()
            if tail.endswith(b"\n"):
                return
            cut = tail.rfind(b"\n") + 1
            if (cut or start == 0) and tail[cut:].startswith(b'{"event"'):
                log.truncate(start + cut)
            else:
                log.write(b"\n")
    except OSError:
        pass  # missing, or unreadable but perhaps writable: the open that follows decides


def _execution_logger(log_file: str | None) -> logging.Logger:
    # A logger of our own, outside the logging tree: no root handlers, no propagation.
    logger = logging.Logger("taskd.execution_log", logging.INFO)
    handler = _LogFileHandler(log_file) if log_file else _StdoutHandler(_LineStream(1))
    # No fields of its own ([]): a dict logged as the message becomes the whole line,
    # keys in the dict's order.
    handler.setFormatter(JsonFormatter([], json_ensure_ascii=False))
    logger.addHandler(handler)
    return logger


class _Termination:
    """SIGTERM ends the logger at once while it waits for a record, else after it."""

    def __init__(self) -> None:
        self.requested = False
        self.waiting = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.waiting:
            raise SystemExit(0)  # nothing half-written: we are blocked reading the pipe


def logger_main(conn: Connection, coordinator_pid: int, log_file: str | None,
                store: tuple[str, Retention] | None = None,
                outage: Outage | None = None) -> None:
    """The logger process: write each record received, acknowledge it, store it."""
    become_child_process(coordinator_pid)
    termination = _Termination()
    try:
        logger = _execution_logger(log_file)
    except OSError as error:
        _fail(error, log_file)
    writer = None
    if store is not None:
        from supervisor.control.diagnostics import Diagnostics
        from supervisor.store.writer import Outage, StoreWriter  # sqlite3: with a store only

        # The writer's outage diagnostics go to stderr from here, as logger_error does.
        writer = StoreWriter(*store, outage=outage or Outage(), on_event=Diagnostics().emit)
    acks = _StoreAcks(writer)
    while True:
        if writer is not None:
            writer.take_news()
            if not _send_news(conn, acks.reply({})):
                break
            # A burst arrives one record per coordinator step, with the pipe empty in
            # between: let the oldest wait a moment for more before sealing the batch,
            # so a burst is a few transactions, not one per record.
            if writer.pending and writer.pending_for() >= COMMIT_DELAY_S and not conn.poll(0):
                writer.commit()
                continue  # (inline, that took a while: news, and perhaps more to read)
            writer.idle(busy=lambda: conn.poll(0))
        termination.waiting = True
        try:
            if termination.requested:
                break
            if writer is not None and not _readable(conn, writer):
                continue  # the writer has news, or the batch's wait is over
            message = receive_message(conn)
        except (EOFError, OSError):
            break  # the coordinator is gone or closed the link
        finally:
            termination.waiting = False
        if message.get("stop"):
            break
        seq = message["seq"]
        record = message.get("record")
        if record is not None and not message.get("store_only"):
            try:
                logger.info(record)
            except OSError as error:
                _fail(error, log_file)  # without the ack: the next logger writes it again
        # One ack per entry, right after its line's write (marks: on arrival): a logger
        # killed now repeats at most this one record. Batching acks would widen that
        # window, and a logger holding unacknowledged entries while blocked on a
        # half-sent frame would stall the link: the coordinator only pushes the rest of
        # a frame when an ack wakes it.
        reply: dict[str, Any] = {"ack": seq}
        if writer is None:
            reply["stored"] = seq
        else:
            items = message.get("marks") or []
            if record is not None and not message.get("log_only"):
                items = [*items, {"record": record}]
            writer.add(seq, items)
            acks.received = seq
            reply = acks.reply(reply)
        if not _send(conn, reply):
            break
    if writer is not None:
        writer.close()  # commits what waits, unless the database does not answer
        _send_news(conn, acks.reply({}))


class _StoreAcks:
    """What the logger tells the link of the store: "stored" up to which entry, and
    once, with (so before) the first "stored" it explains, that the store failed: the
    link must know those entries were dropped, not stored."""

    def __init__(self, writer: StoreWriter | None) -> None:
        self.writer = writer
        self.received = 0  # the last seq received
        self._said = 0  # the last "stored" sent
        self._told_failure = False

    def reply(self, reply: dict[str, Any]) -> dict[str, Any]:
        if self.writer is None:
            return reply
        stored = self.writer.stored_up_to
        if self.writer.failed is not None:
            stored = self.received  # dropped: the log has them
            if not self._told_failure:
                reply = {"store_failed": self.writer.failed, **reply}
                self._told_failure = True
        if stored > self._said:
            reply["stored"] = self._said = stored
        return reply


def _readable(conn: Connection, writer: StoreWriter) -> bool:
    """Wait for a message, the writer's news, or the end of the batch's wait; True if a
    message is there. While the writer has no room, wait for it alone."""
    if not writer.has_room():
        wait([writer])  # the database answers, but slower than records come
        return False
    if conn.poll(0):
        return True  # the usual case in a burst: no selector to build
    timeout = max(0.0, COMMIT_DELAY_S - writer.pending_for()) if writer.pending else None
    return conn in wait([conn, writer], timeout)


def _send_news(conn: Connection, reply: dict[str, Any]) -> bool:
    return not reply or _send(conn, reply)


def _send(conn: Connection, message: dict[str, Any]) -> bool:
    try:
        send_message(conn, message)
    except OSError:
        return False
    return True


def _fail(error: OSError, log_file: str | None) -> NoReturn:
    diagnostic = {"event": "logger_error", "level": "error", "error": str(error)}
    if log_file:
        diagnostic["file"] = log_file
    print(json.dumps(diagnostic), file=sys.stderr, flush=True)
    sys.exit(1)


class _Entry:
    """One message to the logger, kept until the logger has stored it (or, without a
    store, written it)."""

    __slots__ = ("marks", "record", "seq", "size", "stored", "written")

    def __init__(self, seq: int, record: dict[str, Any] | None,
                 marks: list[dict[str, Any]] | None, *, stored: bool = False) -> None:
        self.seq = seq
        self.record = record
        self.marks = marks
        self.stored = stored  # the record is in the store already: only its line
        self.size = 0  # encoded bytes, once sent
        self.written = record is None  # marks have no line to write

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"seq": self.seq}
        if self.marks:  # stored before the record (a run's dispatch, then its end)
            message["marks"] = self.marks
        if self.record is not None:
            message["record"] = self.record
            if self.stored:
                message["log_only"] = True
            if self.written:
                message["store_only"] = True
        return message


class LoggerLink:
    """The coordinator's side: a non-blocking, lossless queue to the logger process."""

    def __init__(
        self,
        context: BaseContext,
        log_file: str | None,
        *,
        coordinator_pid: int | None = None,
        max_in_flight_bytes: int = 256 * 1024,
        on_restart: Callable[[int, int | None], None] | None = None,
        store: tuple[str, Retention] | None = None,
        on_store_failed: Callable[[str], None] | None = None,
        outage: Outage | None = None,
    ) -> None:
        self._context = context
        self._log_file = log_file
        self._coordinator_pid = coordinator_pid or os.getpid()
        self._max_in_flight_bytes = max_in_flight_bytes
        self._on_restart = on_restart
        self._store = store
        self._on_store_failed = on_store_failed
        self._outage = outage  # how the writer rides out an outage (None: its defaults)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._channel: Channel | None = None
        self._exit_poll = select.poll()  # the current logger's sentinel (see start)
        self._next_seq = 1
        # Entries not yet stored (without a store: not yet written), oldest first; the
        # first _in_flight of them have been handed to the current channel, and the
        # first _acked of those acknowledged by the current logger (whose size is no
        # longer counted in _in_flight_bytes).
        self._records: deque[_Entry] = deque()
        self._in_flight = 0
        self._acked = 0
        self._in_flight_bytes = 0
        self._unwritten = 0  # records among them whose line is not written yet
        self._marks: list[dict[str, Any]] = []  # for the store, not yet in an entry
        self._deaths: deque[float] = deque(maxlen=FLAP_DEATHS)
        self._restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def unacked(self) -> int:
        """Records whose line is not written yet: sent and waiting alike."""
        return self._unwritten

    @property
    def queued(self) -> int:
        """Entries not yet sent to the current logger process."""
        return len(self._records) - self._in_flight

    @property
    def storing(self) -> bool:
        """Whether marks and records go to a state store (not after it failed)."""
        return self._store is not None

    def start(self) -> None:
        """Start the logger (or replace the current one) and resend what it has not
        stored (what was written, for the store only)."""
        self._discard_process()
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        process = self._context.Process(
            target=logger_main,
            args=(child_end, self._coordinator_pid, self._log_file, self._store,
                  self._outage),
            name="taskd-logger",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()  # the child has its copy; ours would hide EOF from it
        self._process = process
        self._channel = Channel(parent_end)
        # Asking process.exitcode builds a selector each time; the loop asks every step.
        self._exit_poll = select.poll()
        self._exit_poll.register(process.sentinel, select.POLLIN)
        self._in_flight = self._acked = 0
        self._in_flight_bytes = 0
        self.pump()

    def submit(self, record: dict[str, Any], *, stored: bool = False) -> None:
        """Write ``record`` (and store it, unless it is ``stored`` already: a cluster's
        claimed run, written with its claim's finish)."""
        # What happened before this record rides with it, stored before it.
        marks, self._marks = self._marks or None, []
        self._append(record, marks, stored=stored)
        self._unwritten += 1
        self.pump()

    def mark(self, mark: dict[str, Any]) -> None:
        """Something for the store only (see store/abc.py); sent with the next pump."""
        if self._store is not None:
            self._marks.append(mark)

    def _seal_marks(self) -> None:
        if self._marks:
            self._append(None, self._marks)
            self._marks = []

    def _append(self, record: dict[str, Any] | None,
                marks: list[dict[str, Any]] | None, *, stored: bool = False) -> None:
        self._records.append(_Entry(self._next_seq, record, marks, stored=stored))
        self._next_seq += 1

    def pump(self) -> None:
        self._seal_marks()
        channel = self._channel
        if channel is None or channel.closed:
            return
        channel.flush()
        while self._in_flight < len(self._records) and (
            self._in_flight_bytes < self._max_in_flight_bytes
        ):
            entry = self._records[self._in_flight]
            entry.size = channel.send(entry.message())
            self._in_flight += 1
            self._in_flight_bytes += entry.size

    def handle_readable(self) -> None:
        if self._channel is None:
            return
        self._take_acks()
        if self._channel.closed:
            self.check()
        else:
            self.pump()

    def check(self) -> bool:
        process = self._process
        now = time.monotonic()
        if process is None:
            if self._restart_at is None or now < self._restart_at:
                return False
            self._restart_at = None  # the pause after a crash loop is over
            self.start()
            return True
        channel_closed = self._channel is not None and self._channel.closed
        if not channel_closed and not self._exit_poll.poll(0):
            return False
        old_pid = process.pid
        self._take_acks()  # what the dead logger acknowledged need not be written again
        self._deaths.append(now)
        if len(self._deaths) == self._deaths.maxlen and now - self._deaths[0] < FLAP_WINDOW_S:
            # Dying as fast as it starts (say the log file's directory is gone): pause
            # instead of forking in a tight loop. Records wait here meanwhile.
            self._discard_process()
            self._restart_at = now + FLAP_PAUSE_S
        else:
            self.start()
        exitcode = process.exitcode
        if self._on_restart is not None and old_pid is not None:
            self._on_restart(old_pid, exitcode)
        return True

    def kill(self) -> None:
        """Stop the logger at once (the coordinator is failing); unwritten records are lost."""
        self._discard_process()

    def wait_objects(self) -> list[Any]:
        """Objects for ``multiprocessing.connection.wait``; they change on restart."""
        if self._process is None or self._channel is None:
            return []
        return [self._channel, self._process.sentinel]

    def close(self, timeout: float) -> bool:
        """Drain to the logger within ``timeout`` seconds, then stop it; True if all written."""
        if self._process is None and self._restart_at is not None:
            self._restart_at = None  # paused after a crash loop: one last try to drain
            self.start()
        if self._process is None:
            return not self._records
        deadline = time.monotonic() + timeout
        while self._records and (remaining := deadline - time.monotonic()) > 0:
            self.pump()
            wait(self.wait_objects(), timeout=min(remaining, 0.5))
            self.handle_readable()
            self.check()
        drained = not self._records
        channel = self._channel
        if channel is not None and not channel.closed:
            channel.send({"stop": True})
            while not channel.flush() and not channel.closed and time.monotonic() < deadline:
                wait([self._process.sentinel], timeout=0.01)
        # A stopped logger exits at once; give it a moment even when the drain used it all.
        self._process.join(max(0.2, deadline - time.monotonic()))
        self._discard_process()
        return drained

    def _take_acks(self) -> None:
        assert self._channel is not None
        for message in self._channel.receive():
            if not isinstance(message, dict):
                continue
            acked = message.get("ack")
            if isinstance(acked, int):
                self._acked_up_to(acked)
            failure = message.get("store_failed")
            if isinstance(failure, str) and self._store is not None:
                self._store = None  # in memory from now on; replacement loggers too
                self._marks = []
                if self._on_store_failed is not None:
                    self._on_store_failed(failure)
            stored = message.get("stored")
            if isinstance(stored, int):
                self._stored_up_to(stored)

    def _acked_up_to(self, seq: int) -> None:
        # Entries are handled in order: the acknowledged ones are a prefix of the sent
        # ones, and an acknowledged record's line is written.
        index = self._acked
        while index < self._in_flight and self._records[index].seq <= seq:
            entry = self._records[index]
            self._in_flight_bytes -= entry.size
            if not entry.written:
                entry.written = True
                self._unwritten -= 1
            index += 1
        self._acked = index

    def _stored_up_to(self, seq: int) -> None:
        while self._in_flight and self._records[0].seq <= seq:
            entry = self._records.popleft()
            self._in_flight -= 1
            if self._acked:
                self._acked -= 1
            else:
                self._in_flight_bytes -= entry.size
            if not entry.written:  # stored implies written (a record's line comes first)
                self._unwritten -= 1

    def _discard_process(self) -> None:
        """Make sure the current logger process is gone (killing it if need be)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        process = self._process
        if process is not None:
            if process.exitcode is None:
                process.kill()
                process.join(1.0)  # SIGKILL is quick; a process stuck in D state is left
            self._process = None
