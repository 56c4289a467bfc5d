"""A throwaway PostgreSQL server for the tests, never a mock (a pytest plugin: conftest).

``postgres_server`` (session scope, so once per pytest-xdist worker) runs ``initdb`` and
``pg_ctl`` from Debian's ``postgresql`` package (or ``$TASKD_PG_BINDIR``, or PATH) in a
temp dir of its own, as the ``postgres`` OS user when the tests run as root (PostgreSQL
refuses to run as root). The server listens on a unix socket in that dir only, never on
TCP: no port to pick, and no clash with a cluster the package may have started on 5432.
Durability is off (``fsync``, ``full_page_writes``, ``synchronous_commit``): a test
database never outlives the session. ``postgres_url`` gives each test a database of its
own, dropped after it; the server is stopped (``-m immediate``) and its dir removed at
the end of the session, and a server left behind by a killed session is reaped by the
next one.

Without the binaries, the tests that use them fail and say to install ``postgresql``;
``TASKD_NO_POSTGRES=1`` skips them instead, with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_server import (
    MISSING,
    SKIP_VARIABLE,
    PostgresServer,
    find_bindir,
)


def require_postgres() -> Path:
    """The server binaries' dir; skips (opt-out) or fails (missing) with a clear reason."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: the PostgreSQL tests are skipped")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: `pip install -e .[test]` (scripts/setup-venv "
                    f"test) installs it; or set {SKIP_VARIABLE}=1 to skip the PostgreSQL "
                    "tests", pytrace=False)
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(MISSING, pytrace=False)
    return bindir


def start_server(label: str) -> PostgresServer:
    server = PostgresServer(require_postgres(), label)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """This test session's server (one per xdist worker)."""
    server = start_server(os.environ.get("PYTEST_XDIST_WORKER", "main"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL to a new, empty database of this test's own."""
    if not postgres_server.running():  # a test that killed it could not start it again
        postgres_server.run()
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
