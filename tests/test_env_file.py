"""The env_file parser: systemd's EnvironmentFile= syntax, and reading the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.property_settings import examples
from workers.env_file import (
    MAX_ENV_FILE_BYTES,
    EnvFileError,
    check_env_file_path,
    parse_env_file,
    read_env_file,
)

PARSED: list[tuple[str, dict[str, str]]] = [
    ("", {}),
    ("A=1", {"A": "1"}),
    ("A=1\nB=2\n", {"A": "1", "B": "2"}),
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),  # CRLF
    ("A=", {"A": ""}),
    ("A=1\nA=2", {"A": "2"}),  # the later one wins
    ("_x9=v", {"_x9": "v"}),
    # comments and blank lines
    ("# comment\n; also\n\n   \n\t# indented\nA=1", {"A": "1"}),
    ("#A=1\n", {}),
    ("# a comment ending in a backslash \\\nA=1", {"A": "1"}),  # as systemd since v254
    ("A=x # not a comment", {"A": "x # not a comment"}),
    # whitespace around key and value; interior whitespace kept
    ("  A = x  y \t", {"A": "x  y"}),
    ("A=\t  x", {"A": "x"}),
    # unquoted escapes and continuation
    ("A=x\\ ", {"A": "x "}),
    ("A=\\ \\ x", {"A": "  x"}),
    ("A=a\\\\b", {"A": "a\\b"}),
    ("A=a\\nb", {"A": "anb"}),
    ("A=a\\\nb", {"A": "ab"}),
    ("A=a \\\n  b\nB=2", {"A": "a   b", "B": "2"}),
    ("A=end\\", {"A": "end"}),
    # quotes after the first character are text
    ('A=x "y"', {"A": 'x "y"'}),
    ("A=it's", {"A": "it's"}),
    # single quotes: verbatim, may span lines
    ("A='a b '", {"A": "a b "}),
    ("A='a\\nb $X \"'", {"A": 'a\\nb $X "'}),
    ("A='one\ntwo'\nB=3", {"A": "one\ntwo", "B": "3"}),
    ("A=  'x'  ", {"A": "x"}),
    # double quotes: shell escapes
    ('A="a b"', {"A": "a b"}),
    ('A="q\\" b\\\\ t\\` d\\$"', {"A": 'q" b\\ t` d$'}),
    ('A="a\\nb"', {"A": "a\\nb"}),  # other escapes are kept as they are
    ('A="a\\\nb"', {"A": "ab"}),
    ('A="one\ntwo"', {"A": "one\ntwo"}),
    ('A="$HOME"', {"A": "$HOME"}),  # no expansion
    ("A=${B}", {"A": "${B}"}),
    # pieces join
    ("A=\"x\"'y'z", {"A": "xyz"}),
    ('A="x" "y"', {"A": "xy"}),
    ('A="x"y "z"', {"A": 'xy "z"'}),
    ("A=é\u00a0ü", {"A": "é\u00a0ü"}),
    ("A=a=b", {"A": "a=b"}),
]

INVALID: list[tuple[str, str]] = [
    ("A", 'env_file /e:1: expected KEY=VALUE, got "A"'),
    ("A=1\n\nnonsense\n", 'env_file /e:3: expected KEY=VALUE, got "nonsense"'),
    ("=1", 'env_file /e:1: invalid variable name ""'),
    ("1A=2", 'env_file /e:1: invalid variable name "1A"'),
    ("A B=1", 'env_file /e:1: invalid variable name "A B"'),
    ("A-B=1", 'env_file /e:1: invalid variable name "A-B"'),
    ("A\tB\x01=1", 'env_file /e:1: invalid variable name "A\\tB\\x01"'),
    ("export A=1", 'env_file /e:1: "export" is shell syntax, not for an env file: '
                   "write A=... without it"),
    ("export A", 'env_file /e:1: "export" is shell syntax, not for an env file'),
    ("A='x\nB=2", "env_file /e:1: unterminated ' quote"),
    ('A=1\nB="x\n\n', 'env_file /e:2: unterminated " quote'),
    ('A="x\\"', 'env_file /e:1: unterminated " quote'),
    ("A='one\ntwo'\nB", 'env_file /e:3: expected KEY=VALUE, got "B"'),  # lines still counted
    ("A=a\\\nb\nC", 'env_file /e:3: expected KEY=VALUE, got "C"'),
    ("A=1\nB=\0", "env_file /e:2: contains a NUL character"),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse(text: str, expected: dict[str, str]) -> None:
    assert parse_env_file(text, "/e") == expected


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_lines_are_errors_naming_path_and_line(text: str, message: str) -> None:
    with pytest.raises(EnvFileError) as caught:
        parse_env_file(text, "/e")
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_NAMES = st.builds(str.__add__, st.sampled_from(_FIRST),
                   st.text(_FIRST + "0123456789", max_size=12))
# Values as a plain KEY=VALUE line writes them: one line, no backslash, no blanks at the
# ends (dropped), and no quote first (it would open a quoted piece).
_PLAIN = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
                 max_size=30).map(str.strip).filter(lambda v: not v or v[0] not in "'\"")
_ANY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=30)


def _double_quoted(value: str) -> str:
    return '"' + "".join("\\" + c if c in '"\\`$' else c for c in value) + '"'


@settings(max_examples=examples(100), deadline=None)
@given(st.dictionaries(_NAMES, _PLAIN, max_size=8))
def test_plain_lines_round_trip(variables: dict[str, str]) -> None:
    text = "".join(f"{name}={value}\n" for name, value in variables.items())
    assert parse_env_file(text, "/e") == variables


@settings(max_examples=examples(100), deadline=None)
@given(st.dictionaries(_NAMES, _ANY, max_size=8))
def test_double_quoted_values_round_trip(variables: dict[str, str]) -> None:
    text = "# written by the test\n" + "".join(
        f"{name}={_double_quoted(value)}\n" for name, value in variables.items())
    assert parse_env_file(text, "/e") == variables


# -- reading the file --------------------------------------------------------------------


def test_read(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("# defaults\nA=1\nB='two words'\n")
    assert read_env_file(str(path)) == {"A": "1", "B": "two words"}


def test_read_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("A=1\nB\n")
    with pytest.raises(EnvFileError, match=f'^env_file {path}:2: expected KEY=VALUE, got "B"$'):
        read_env_file(str(path))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(EnvFileError) as caught:
        read_env_file(str(missing))
    assert str(caught.value) == f"env_file {missing}: cannot read: No such file or directory"


@pytest.mark.parametrize("missing", ["nope", "file/below"])
def test_missing_file_with_a_dash_is_empty(tmp_path: Path, missing: str) -> None:
    (tmp_path / "file").write_text("")
    assert read_env_file(f"-{tmp_path / missing}") == {}


def test_a_dash_does_not_excuse_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("bad line\n")
    with pytest.raises(EnvFileError, match=f"^env_file {path}:1: "):
        read_env_file(f"-{path}")


def test_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match=f"^env_file {tmp_path}: not a regular file$"):
        read_env_file(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened without a writer: must not hang
    with pytest.raises(EnvFileError, match=f"^env_file {fifo}: not a regular file$"):
        read_env_file(str(fifo))


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_bytes(b"A=" + b"x" * MAX_ENV_FILE_BYTES)
    with pytest.raises(EnvFileError, match=f"^env_file {path}: larger than 1 MiB$"):
        read_env_file(str(path))


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_bytes(b"A=1\nB=\xff\n")
    with pytest.raises(EnvFileError, match=f"^env_file {path}:2: not valid UTF-8 text$"):
        read_env_file(str(path))


def test_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_bytes("\ufeffA=1\n".encode())
    assert read_env_file(str(path)) == {"A": "1"}


@pytest.mark.parametrize(("path", "message"), [
    ("relative/env", "env_file relative/env: must be an absolute path"),
    ("-relative", "env_file relative: must be an absolute path"),
    ("", 'env_file: must be a path, got ""'),
    ("-", 'env_file: must be a path, got "-"'),
    ("/a\nb", 'env_file: must be a path, got "/a\\nb"'),
])
def test_check_env_file_path(path: str, message: str) -> None:
    with pytest.raises(EnvFileError) as caught:
        check_env_file_path(path)
    assert str(caught.value) == message


@pytest.mark.parametrize("path", ["/etc/default/x", "-/etc/default/x", "/no/such/file/yet"])
def test_check_env_file_path_accepts(path: str) -> None:
    assert check_env_file_path(path) is None  # no error: the file is read at each run
