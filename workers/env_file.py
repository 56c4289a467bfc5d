"""A job's ``env_file``: ``KEY=VALUE`` lines in systemd's ``EnvironmentFile=`` syntax.

The same file can serve a systemd unit and a taskd job, so it reads the same way:

- one assignment per line, ``KEY=VALUE``; blank lines and lines whose first
  non-blank character is ``#`` or ``;`` are comments (a comment never continues);
- whitespace around the key and around the value is dropped, interior whitespace kept;
- unquoted, a backslash keeps the next character as it is (``\\ `` is a kept space) and a
  backslash at the end of a line continues the value on the next one;
- ``'...'`` keeps everything verbatim up to the next ``'``, newlines included;
- ``"..."`` may span lines too; ``\\"``, ``\\\\``, ``\\``` and ``\\$`` stand for the character,
  a backslash before a newline continues the line, any other backslash stays as it is;
- quoted and unquoted pieces next to each other join (``A="x"'y'`` is ``xy``);
- values are literal: ``$OTHER`` is not expanded (systemd does not either).

Where systemd skips a line it cannot use with a warning nobody reads, taskd refuses the
file and names ``path:line``: a line without ``=``, a name that is not
``[A-Za-z_][A-Za-z0-9_]*``, an unterminated quote, a NUL. ``export KEY=VALUE`` is shell,
not this syntax (systemd ignores such a line): it is refused with a message saying so,
rather than read differently from the unit that shares the file.

``-/path`` (as in systemd) means the file may be missing; any other problem with it
still counts.
"""

from __future__ import annotations

import os
import re
import stat

from workers.params import show

#: Larger than this is refused: the whole environment of a command must fit in ARG_MAX
#: (2 MiB with the default stack limit) together with the command itself.
MAX_ENV_FILE_BYTES = 1024 * 1024

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NEWLINES = "\n\r"
_BLANKS = " \t\n\r"
# What a backslash unescapes inside double quotes, as in the shell.
_DOUBLE_QUOTE_ESCAPES = '"\\`$'


class EnvFileError(ValueError):
    """The env file cannot be used; the message is one line starting with ``env_file``."""


def split_optional(path: str) -> tuple[str, bool]:
    """``-/etc/default/x`` -> (``/etc/default/x``, True): a missing file is no error."""
    if path.startswith("-"):
        return path[1:], True
    return path, False


def check_env_file_path(path: str) -> None:
    """What a job file's ``env_file`` must be, checked when the job is loaded (the file
    itself is read at each run, so it need not exist yet)."""
    name, _ = split_optional(path)
    if not name or not name.isprintable():
        raise EnvFileError(f"env_file: must be a path, got {show(path)}")
    if not name.startswith("/"):
        raise EnvFileError(f"env_file {name}: must be an absolute path")


def read_env_file(path: str) -> dict[str, str]:
    """The variables of the file at ``path`` (``-`` prefix: ``{}`` when it is missing)."""
    check_env_file_path(path)
    name, optional = split_optional(path)
    try:
        # O_NONBLOCK: a FIFO put there must not hang the run (it is refused below).
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if optional and isinstance(error, FileNotFoundError | NotADirectoryError):
            return {}
        raise EnvFileError(f"env_file {name}: cannot read: {error.strerror or error}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EnvFileError(f"env_file {name}: not a regular file")
        data = _read_at_most(fd, MAX_ENV_FILE_BYTES + 1)
    except OSError as error:
        raise EnvFileError(f"env_file {name}: cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_ENV_FILE_BYTES:
        raise EnvFileError(f"env_file {name}: larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise EnvFileError(f"env_file {name}:{line}: not valid UTF-8 text") from None
    return parse_env_file(text.removeprefix("\ufeff"), name)  # an editor's byte-order mark


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks = []
    while limit > 0 and (chunk := os.read(fd, min(limit, 65536))):
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def parse_env_file(text: str, path: str) -> dict[str, str]:
    """The assignments in ``text`` (read from ``path``, which messages name); a later
    assignment of the same name wins."""
    return _Parser(text, path).parse()


class _Parser:
    """systemd's own state machine (``parse_env_file_internal`` in
    ``src/basic/env-file.c``) read character by character, strict where it is lax."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.at = 0
        self.line = 1  # of the character at ``at``

    def fail(self, line: int, problem: str) -> EnvFileError:
        return EnvFileError(f"env_file {self.path}:{line}: {problem}")

    def parse(self) -> dict[str, str]:
        if "\0" in self.text:
            line = self.text.count("\n", 0, self.text.index("\0")) + 1
            raise self.fail(line, "contains a NUL character")
        found: dict[str, str] = {}
        while self.at < len(self.text):
            c = self.text[self.at]
            if c in _BLANKS:
                self._next()
            elif c in "#;":
                while self.at < len(self.text) and self.text[self.at] not in _NEWLINES:
                    self.at += 1
            else:
                name, value = self._assignment()
                found[name] = value
        return found

    def _next(self) -> str:
        c = self.text[self.at]
        self.at += 1
        if c == "\n":
            self.line += 1
        return c

    def _peek(self) -> str | None:
        return self.text[self.at] if self.at < len(self.text) else None

    def _assignment(self) -> tuple[str, str]:
        line = self.line
        start = self.at
        while (c := self._peek()) is not None and c != "=" and c not in _NEWLINES:
            self.at += 1
        key = self.text[start:self.at].rstrip(" \t")
        if key.startswith("export") and key[6:7] in (" ", "\t"):
            name = key[6:].strip(" \t")
            hint = f": write {name}=... without it" if c == "=" else ""
            raise self.fail(line, f'"export" is shell syntax, not for an env file{hint}')
        if c != "=":
            raise self.fail(line, f"expected KEY=VALUE, got {_shown(key)}")
        if not _NAME.fullmatch(key):
            raise self.fail(line, f"invalid variable name {_shown(key)}")
        self.at += 1  # the "="
        return key, self._value()

    def _value(self) -> str:
        """From after the ``=`` to the end of the line (of the last continued one)."""
        value: list[str] = []
        # Before the value and after each quoted piece: blanks are skipped, and a quote
        # opens a quoted piece. Once an unquoted character came, quotes are just text.
        while (c := self._peek()) is not None and c not in _NEWLINES:
            self._next()
            if c in " \t":
                continue
            if c == "'":
                value.append(self._single_quoted())
            elif c == '"':
                value.append(self._double_quoted())
            else:
                self.at -= 1
                value.append(self._unquoted())
                break
        return "".join(value)

    def _unquoted(self) -> str:
        piece: list[str] = []
        kept = 0  # length of piece without its droppable trailing blanks
        while (c := self._peek()) is not None and c not in _NEWLINES:
            self._next()
            if c == "\\":
                if (escaped := self._peek()) is not None:
                    self._next()
                    if escaped not in _NEWLINES:  # backslash-newline: a continuation
                        piece.append(escaped)
                kept = len(piece)
            else:
                piece.append(c)
                if c not in " \t":
                    kept = len(piece)
        return "".join(piece[:kept])

    def _single_quoted(self) -> str:
        line = self.line
        end = self.text.find("'", self.at)
        if end < 0:
            raise self.fail(line, "unterminated ' quote")
        piece = self.text[self.at:end]
        self.line += piece.count("\n")
        self.at = end + 1
        return piece

    def _double_quoted(self) -> str:
        line = self.line
        piece: list[str] = []
        while self.at < len(self.text):
            c = self._next()
            if c == '"':
                return "".join(piece)
            if c == "\\" and self.at < len(self.text):
                escaped = self._next()
                if escaped in _DOUBLE_QUOTE_ESCAPES:
                    piece.append(escaped)
                elif escaped != "\n":  # backslash-newline: a continuation
                    piece.append("\\" + escaped)
            else:
                piece.append(c)
        raise self.fail(line, 'unterminated " quote')


def _shown(text: str) -> str:
    """A key as it appeared, quoted, on one line and not too long."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return '"' + (shown if len(shown) <= 40 else shown[:37] + "...") + '"'
