"""The state store: what happened, kept across restarts.

The job files stay the only source of what is scheduled; the store only remembers what
happened (execution records, occurrences run or missed, when the daemon was last alive,
paused jobs), so losing it only loses history and catch-up, never a job.

- ``abc``: the interface every implementation has (SQLite here, PostgreSQL for a
  cluster) and the shapes that cross it: ``Memory`` read at start, ``Mark`` written as
  things happen.
- ``sqlite``: the single-node implementation (the standard library's ``sqlite3``, WAL).
- ``migrations``: the SQLite schema, one step per version.
- ``postgres``: the cluster's implementation (PostgreSQL through psycopg 3, the
  ``taskd[cluster]`` extra; the only module that imports psycopg).
- ``pg_migrations``: the PostgreSQL schema, one step per version, under an advisory lock.
- ``state_dir``: the state directory, its lock (one daemon per directory) and the
  store's path in it.
"""
