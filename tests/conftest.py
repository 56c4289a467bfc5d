"""Test-session setup shared by every test module."""

import pytest

import tests.property_settings  # loads the hypothesis profile first
from tests.daemon_harness import Daemon

# postgres_server, postgres_url: a throwaway PostgreSQL server for the store tests;
# user: an account made with useradd.
pytest_plugins = ["tests.postgres_server", "tests.accounts"]


def pytest_configure(config):
    # A deep hunt runs each property test for many minutes: no per-test timeout then.
    if tests.property_settings.PROFILE == "deep":
        config.option.timeout = 0


@pytest.fixture
def cluster(postgres_url):
    """Connections to the test's own database, each a ClusterDatabase: ``cluster()``
    opens one (``cluster(url)`` to another URL); all closed after the test."""
    from tests.cluster_harness import open_databases  # psycopg: only where used

    yield from open_databases(postgres_url)


@pytest.fixture
def cleanup():
    """Daemons started by a test are killed at its end, whatever happened:
    ``cleanup(daemon)`` once it is made."""
    started: list[Daemon] = []
    yield started.append
    for daemon in started:
        daemon.kill()
