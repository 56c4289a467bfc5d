"""The cluster's database: the shared state store, and the way to the cluster's tables.

``ClusterDatabase`` is a ``PostgresStore`` (the same URL, redaction, connection defaults,
schema upgrade under the advisory lock, and error mapping: a driver error is a
``StoreError`` naming the database without its password, and a broken connection is
dropped so the next call opens a new one), plus two ways to send statements:

- ``batch()`` (the store's own): statements queued through psycopg's pipeline mode with
  no BEGIN/COMMIT, so PostgreSQL runs them as one *implicit* transaction that ends at the
  single Sync the pipeline sends on exit: one round trip, all or nothing (an error rolls
  back what ran and skips the rest), and never an open transaction left behind. Results
  are read after the block, from the cursors the statements were executed on. Build
  every parameter before the block: if the block raises, the connection is dropped so
  that nothing it queued commits.
- ``transaction()``: an explicit transaction, for work that needs a result before it
  can send the next statement (several round trips; rare work only).

One instance holds one connection: one per thread or process that uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from supervisor.store.postgres import PostgresStore


class ClusterDatabase(PostgresStore):
    """The cluster database at ``url``, its schema brought up to date on open."""

    def __init__(self, url: str) -> None:
        super().__init__(url)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        with self._errors():
            db = self._connection()
            with db.transaction():
                yield db

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """The connection for statements that each commit on their own (autocommit)."""
        with self._errors():
            yield self._connection()
