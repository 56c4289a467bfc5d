"""Cluster mode's database side: N nodes on one PostgreSQL, each occurrence run once.

Only cluster mode imports this package (it needs psycopg 3, the ``taskd[cluster]``
extra). Every decision that must agree between nodes is taken by the database, on its
own clock, in one transaction:

- ``database``: ``ClusterDatabase``, the shared state store (``PostgresStore``) and the
  one-round-trip batches the modules below send through it.
- ``claims``: occurrences offered by every node, claimed by one (``FOR UPDATE SKIP
  LOCKED``), finished, or expired as missed by exactly one node.
- ``nodes``: join, heartbeat, leave; ``reap`` declares silent nodes dead and records
  each of their claimed runs once as ``node lost``.
- ``specs``: the hash of each job's version on each node (what a node may claim, and
  the conflicts ``taskd status`` shows).
- ``db_clock``: this node's clock against the database's (the skew warning).
- ``pending``: a node's offers not sent yet, coalesced while the database is away
  (no database: the agent's bookkeeping).
"""
