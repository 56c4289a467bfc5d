"""Occurrences offered by every node and claimed by one: each runs at most once, ever.

An occurrence is ``(job_id, scheduled_for)``, one row of ``taskd_occurrences``:

    due --claim--> claimed --finish--> done
     |                |
     |                +--reap/leave (its node is gone)--> lost   (one "node lost" record)
     +--expire (nobody claimed it in time)--> missed
     +--claim (at its job's limit: overlap, max_concurrent)--> skipped

No transition leads back to ``due``, and offering a row that exists does nothing, so an
occurrence is claimed at most once however often it is offered. Every node computes the
same schedule and offers what came due by its own clock; whether a row can be claimed is
decided by the database's ``now()`` (``scheduled_for <= now()``), so a node whose clock
runs ahead offers early but never claims early.

``claim`` sends the offers and the claim in one round trip (one implicit transaction, see
``ClusterDatabase.batch``): the offers in one statement (arrays, whatever their number),
a share lock on the claimer's node row (the reaper cannot declare it dead while the claim
is in flight, and a node already declared dead claims nothing), and the claim itself
(``FOR UPDATE SKIP LOCKED``: concurrent claimers take disjoint rows, and no one waits).
A node only claims jobs it has published (``SpecHashes.publish``): it runs its own
version of the job, recorded in the row's ``spec_hash``.

The claimer's version of a job also sets its limits (``specs.JobVersion``), held over the
runs every node has claimed: see ``_CLAIM``.

``finish`` writes the run's record only while the row is still claimed by that node: a
late finish from a node declared dead is refused, and its ``node lost`` record stands.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from supervisor.cluster.database import ClusterDatabase
from supervisor.store.abc import StoreError
from supervisor.store.postgres import JOB_LAST_RUN, record_statement
from workers.execution import new_run_id

# How long a finished row is kept (``prune``); an offer older than this is refused, so a
# pruned occurrence can never be offered again as new.
RETENTION_S = 7 * 86400.0


class Offer(NamedTuple):
    """An occurrence that came due by the offering node's clock."""

    job_id: str
    scheduled_for: datetime  # aware
    spec_hash: str | None = None  # the offering node's version of the job
    deadline_s: float | None = None  # not claimed this long after its instant: missed


@dataclass(frozen=True, slots=True)
class Claim:
    """An occurrence this node now owns: run it once, then ``finish`` it."""

    job_id: str
    scheduled_for: datetime
    run_id: str
    claimed_at: datetime  # the database's clock


class Skipped(NamedTuple):
    """An occurrence a claim skipped at its job's limit (it is never run)."""

    job_id: str
    scheduled_for: datetime
    reason: str


class StopRequest(NamedTuple):
    """A claimed run its node is asked to stop (``overlap: "replace"``)."""

    run_id: str
    node_id: str
    reason: str = "replaced"


@dataclass(slots=True)
class ClaimBatch:
    """What one claim round trip decided."""

    claims: list[Claim]
    skipped: list[Skipped]
    stops: list[StopRequest]  # runs of any node; each node also polls its own
    finished: list[bool] = field(default_factory=list)  # the finishes sent with it: kept?


_OFFER = """
INSERT INTO taskd_occurrences (job_id, scheduled_for, state, offered_at, expires_at,
                               spec_hash)
SELECT job_id, scheduled_for, 'due', now(),
       scheduled_for + deadline_s * interval '1 second', spec_hash
FROM unnest(%(job_ids)s::text[], %(times)s::timestamptz[], %(deadlines)s::float8[],
            %(hashes)s::text[]) AS offer (job_id, scheduled_for, deadline_s, spec_hash)
WHERE scheduled_for >= now() - %(retention_s)s * interval '1 second'
ON CONFLICT DO NOTHING
"""

# A claim walks the due rows' index oldest first and stops at its window, but only with
# statistics that know the due rows are many: a table that just took a large batch of
# offers (a burst, a catch-up) has none until autovacuum analyzes it, a minute or so
# later, and meanwhile each claim sorted every due row (168 ms a claim with 50,000 due,
# 0.4 ms with statistics). The node that offered them has the table analyzed at once
# (at most once a minute; a lock held by another ANALYZE or a VACUUM: left to it).
ANALYZE_AFTER_OFFERS = 500
ANALYZE_EVERY_S = 60.0
_ANALYZE = ("SET LOCAL lock_timeout = '100ms'", "ANALYZE taskd_occurrences")

# Held until the claim commits; the reaper's FOR UPDATE SKIP LOCKED passes it by.
_LOCK_ALIVE = ("SELECT FROM taskd_nodes WHERE node_id = %(node_id)s AND state = 'alive' "
               "FOR SHARE")

# Claims of jobs with limits take turns (a transaction-level advisory lock, a statement
# before the claim's, so the claim's snapshot sees every claim committed before it): the
# running runs each limit counts cannot change under it. Claims of jobs without limits
# never wait for it.
CLAIM_LOCK = 0x7461736B65
CLAIM_LOCK_TIMEOUT = "5s"  # a claimer stuck holding it fails the others' claims, briefly
_TAKE_TURN = (f"SET LOCAL lock_timeout = '{CLAIM_LOCK_TIMEOUT}'",
              f"SELECT pg_advisory_xact_lock({CLAIM_LOCK})")
LIMITED_WINDOW = 256  # due rows looked at beyond the capacity: the skipped and waiting

# The claim is a statement of its own after _LOCK_ALIVE, so its snapshot is taken once
# the lock is held (or, if the reaper held it first, once the node is seen dead). It is
# made of the pieces below: the due rows (each with the claimer's version of its job),
# the verdicts of the limits, the rows to claim, and the updates.
_DUE = """
    SELECT o.job_id, o.scheduled_for, j.spec_hash, j.run_limit, j.replace,
           j.concurrency_group
    FROM taskd_occurrences o
    -- LATERAL: the due rows drive (in the order of their index, up to the window) and
    -- each looks up the claimer's version; never a scan of all the node's jobs, which a
    -- planner with fresh statistics would otherwise pick.
    CROSS JOIN LATERAL (SELECT spec_hash, run_limit, replace, concurrency_group
                        FROM taskd_node_jobs
                        WHERE node_id = %(node_id)s AND job_id = o.job_id
                        LIMIT 1) j  -- (one row: its key) LIMIT keeps it a subquery
    WHERE o.state = 'due' AND o.scheduled_for <= now()
      AND (o.expires_at IS NULL OR o.expires_at > now())
      AND EXISTS (SELECT FROM taskd_nodes n
                  WHERE n.node_id = %(node_id)s AND n.state = 'alive')
    ORDER BY o.scheduled_for, o.job_id
    LIMIT %(window)s
    FOR UPDATE OF o SKIP LOCKED
"""

# The claimer's version of each job decides its limits, as its version decides what runs:
# - run_limit (overlap skip: 1, max_concurrent N): an occurrence that finds that many
#   runs of its job claimed, or waiting before it, is skipped;
# - replace: the latest due occurrence runs, the older due ones are skipped, and the
#   oldest claimed runs beyond the limit are asked to stop (``stop_reason``);
# - concurrency_group: one claimed run per group; the others stay due and wait (one per
#   job: a later one while one waits is skipped), until their deadline.
_VERDICTS = """
ranked AS (
    SELECT due.*,
           row_number() OVER (PARTITION BY job_id ORDER BY scheduled_for) AS nth,
           count(*) OVER (PARTITION BY job_id) AS of_job,
           CASE WHEN run_limit IS NULL THEN 0 ELSE (
               SELECT count(*) FROM taskd_occurrences r
               WHERE r.job_id = due.job_id AND r.state = 'claimed') END AS running,
           CASE WHEN concurrency_group IS NULL THEN false ELSE EXISTS (
               SELECT FROM taskd_occurrences r
               WHERE r.state = 'claimed' AND r.concurrency_group = due.concurrency_group)
           END AS group_busy
    FROM due
), limited AS (
    SELECT ranked.*, CASE
        WHEN replace AND nth < of_job THEN 'replaced by a later occurrence before it ran'
        WHEN run_limit IS NOT NULL AND NOT replace AND running + nth > run_limit THEN
            CASE WHEN run_limit = 1 THEN 'previous run still in progress'
                 ELSE format('max_concurrent %%s runs still in progress', run_limit) END
        END AS skip_reason
    FROM ranked
), grouped AS (
    SELECT limited.*, skip_reason IS NULL AND concurrency_group IS NOT NULL AND (
        group_busy OR row_number() OVER (PARTITION BY concurrency_group, skip_reason IS NULL
                                         ORDER BY scheduled_for, job_id) > 1) AS waits
    FROM limited
), judged AS (
    SELECT grouped.*, CASE
        WHEN skip_reason IS NOT NULL THEN skip_reason
        WHEN waits AND row_number() OVER (PARTITION BY job_id, waits
                                          ORDER BY scheduled_for) > 1
        THEN format('concurrency_group %%L: a run of this job is already waiting',
                    concurrency_group)
        END AS skipped
    FROM grouped
)
"""

_CLAIMED = """
    UPDATE taskd_occurrences o
    SET state = 'claimed', node_id = %(node_id)s,
        run_id = (%(run_ids)s::text[])[c.n::integer], claimed_at = now(),
        spec_hash = c.spec_hash, concurrency_group = c.concurrency_group
    FROM to_claim c
    WHERE o.job_id = c.job_id AND o.scheduled_for = c.scheduled_for
    RETURNING o.job_id, o.scheduled_for, o.run_id, o.claimed_at
"""

# What the verdicts end besides claims: skipped occurrences, stop requests.
_OTHER_ENDS = """
skipped AS (
    UPDATE taskd_occurrences o SET state = 'skipped', finished_at = now()
    FROM judged s
    WHERE s.skipped IS NOT NULL AND o.job_id = s.job_id AND o.scheduled_for = s.scheduled_for
    RETURNING o.job_id, o.scheduled_for, s.skipped AS reason
), stops AS (
    UPDATE taskd_occurrences o SET stop_reason = 'replaced'
    FROM (SELECT r.job_id, r.scheduled_for, c.running, c.run_limit,
                 row_number() OVER (PARTITION BY r.job_id ORDER BY r.scheduled_for) AS oldest
          FROM taskd_occurrences r JOIN to_claim c ON c.job_id = r.job_id AND c.replace
          WHERE r.state = 'claimed') old
    WHERE old.oldest <= old.running + 1 - old.run_limit
      AND o.job_id = old.job_id AND o.scheduled_for = old.scheduled_for
    RETURNING o.job_id, o.scheduled_for, o.run_id, o.node_id
)
"""


def _to_claim(runnable: str) -> str:
    """The runnable due rows, numbered, up to the limit less the claims answered again."""
    return f"""
    SELECT * FROM (SELECT r.*, row_number() OVER (ORDER BY scheduled_for, job_id) AS n
                   FROM {runnable}) runnable
    WHERE n <= greatest(0, %(limit)s - (SELECT count(*) FROM taskd_occurrences
                                        WHERE run_id = ANY(%(unanswered)s::text[])
                                          AND node_id = %(node_id)s AND state = 'claimed'))
"""


_CLAIMED_ROWS = ("SELECT 'claimed', job_id, scheduled_for, run_id, claimed_at, NULL::text "
                 "FROM claimed")
_CLAIM = (f"WITH due AS MATERIALIZED ({_DUE}), {_VERDICTS}, "
          f"to_claim AS ({_to_claim('judged r WHERE skipped IS NULL AND NOT waits')}), "
          f"claimed AS ({_CLAIMED}), {_OTHER_ENDS}\n{_CLAIMED_ROWS}\n"
          "UNION ALL SELECT 'skipped', job_id, scheduled_for, NULL, NULL, reason FROM skipped\n"
          "UNION ALL SELECT 'stop', job_id, scheduled_for, run_id, NULL, node_id FROM stops")
# A node none of whose versions has limits claims with the due rows alone: the verdicts
# would all be "run it" (its versions decide), and planning them was most of the claim's
# cost (PostgreSQL plans the claim anew each time once it has statistics).
_CLAIM_PLAIN = (f"WITH due AS MATERIALIZED ({_DUE}), to_claim AS ({_to_claim('due r')}), "
                f"claimed AS ({_CLAIMED})\n{_CLAIMED_ROWS}")

_STOP_REQUESTS = ("SELECT run_id, stop_reason FROM taskd_occurrences "
                  "WHERE node_id = %(node_id)s AND state = 'claimed' "
                  "AND stop_reason IS NOT NULL ORDER BY run_id")

# The store's record statement with its insert guarded: written only while the
# occurrence is this node's claim (or already its done run: a finish sent again after
# a connection broke). The rest, the job's last run, is the store's own SQL.
_FINISH = """
WITH done AS (
    UPDATE taskd_occurrences SET state = 'done', finished_at = coalesce(finished_at, now())
    WHERE run_id = %(run_id)s AND node_id = %(node_id)s AND state IN ('claimed', 'done')
    RETURNING job_id
), new AS (
    INSERT INTO taskd_executions (run_id, job_id, started, status, record)
    SELECT %(run_id)s::text, %(job_id)s::text, %(started)s::float8, %(status)s::text,
           %(record)s::text FROM done
    ON CONFLICT (run_id) DO NOTHING
    RETURNING job_id
), finished AS (
    DELETE FROM taskd_unfinished WHERE run_id = %(run_id)s AND EXISTS (SELECT FROM done)
)
""" + JOB_LAST_RUN

_UNANSWERED = ("SELECT job_id, scheduled_for, run_id, claimed_at FROM taskd_occurrences "
               "WHERE run_id = ANY(%(run_ids)s::text[]) AND node_id = %(node_id)s "
               "AND state = 'claimed'")

# LATERAL: each finish looks its row up by run id (the unique index); a join read every
# done row while the table was small (a burst's first minutes), at each batch.
_FINISHED = """
SELECT o.run_id
FROM unnest(%(run_ids)s::text[], %(node_ids)s::text[]) AS f (run_id, node_id)
CROSS JOIN LATERAL (SELECT run_id FROM taskd_occurrences
                    WHERE run_id = f.run_id AND node_id = f.node_id AND state = 'done'
                    LIMIT 1) o
"""

_EXPIRE = """
WITH stale AS MATERIALIZED (
    SELECT job_id, scheduled_for FROM taskd_occurrences
    WHERE state = 'due'
      AND (expires_at <= now()
           OR scheduled_for < now() - %(older_than_s)s::float8 * interval '1 second')
    ORDER BY scheduled_for, job_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE taskd_occurrences o SET state = 'missed', finished_at = now()
FROM stale WHERE o.job_id = stale.job_id AND o.scheduled_for = stale.scheduled_for
RETURNING o.job_id, o.scheduled_for
"""

_PRUNE = """
DELETE FROM taskd_occurrences WHERE (job_id, scheduled_for) IN (
    SELECT job_id, scheduled_for FROM taskd_occurrences
    WHERE scheduled_for < now() - %(retention_s)s * interval '1 second'
      AND state IN ('done', 'lost', 'missed', 'skipped')
    LIMIT %(budget)s)
"""

_RUNNING = ("SELECT node_id, job_id, scheduled_for, run_id, claimed_at "
            "FROM taskd_occurrences WHERE state = 'claimed' ORDER BY node_id, claimed_at, "
            "job_id")


class Claims:
    """Offering, claiming, finishing and expiring occurrences, over one connection."""

    def __init__(self, db: ClusterDatabase, *, retention_s: float = RETENTION_S) -> None:
        self.db = db
        self.retention_s = retention_s
        self._unanswered: list[str] = []  # run ids of claims sent whose answer was lost
        self._next_analyze = 0.0  # monotonic

    def claim(self, offers: Sequence[Offer | tuple[Any, ...]], limit: int, *,
              node_id: str, limited: bool = False) -> list[Claim]:
        """``claim_batch``'s claims."""
        return self.claim_batch(offers, limit, node_id=node_id, limited=limited).claims

    def claim_batch(self, offers: Sequence[Offer | tuple[Any, ...]], limit: int, *,
                    node_id: str, limited: bool = False,
                    finished: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> ClaimBatch:
        """Offer ``offers`` (each ``(job_id, scheduled_for, spec_hash[, deadline_s])``),
        then claim up to ``limit`` due occurrences (anyone's offers, oldest first) for
        ``node_id``: one round trip. ``limited``: the node has published jobs with limits
        (run_limit, concurrency_group), so its claims take turns with other such claims
        and look past the capacity for the occurrences to skip. ``finished``: claimed
        runs that ended (``finish_many``'s), finished first in the same round trip (the
        workers they free are in ``limit``); their answers are ``ClaimBatch.finished``.

        A claim whose answer was lost (the connection broke after the commit) is not
        lost: its run ids were chosen here, so the next call asks for them too, in the
        same round trip, and returns those still ``node_id``'s beside the new ones (as
        many fewer new ones, so the total stays within ``limit``)."""
        # Every parameter is built before anything is sent (see ClusterDatabase.batch);
        # offers in one order everywhere, so two nodes inserting the same rows at once
        # wait for each other in the same order and never deadlock.
        ends = _finish_statements(finished)
        rows = sorted({(o.job_id, o.scheduled_for): o for o in map(_offer, offers)}.values(),
                      key=lambda o: (o.job_id, o.scheduled_for))
        offer = {"job_ids": [o.job_id for o in rows], "times": [o.scheduled_for for o in rows],
                 "deadlines": [o.deadline_s for o in rows],
                 "hashes": [o.spec_hash for o in rows], "retention_s": self.retention_s}
        unanswered = list(self._unanswered)
        limit = max(0, int(limit))
        claim = {"node_id": node_id, "limit": limit, "unanswered": unanswered,
                 "window": limit + (LIMITED_WINDOW if limited else 0),
                 "run_ids": [new_run_id() for _ in range(limit)]}
        if not rows and not limit and not unanswered and not ends:
            return ClaimBatch([], [], [])
        try:
            with self.db.batch() as db:
                done = _send_finishes(db, ends)
                if rows:
                    db.execute(_OFFER, offer)
                answered = None
                if unanswered:
                    answered = db.execute(_UNANSWERED, {"run_ids": unanswered,
                                                        "node_id": node_id})
                decided = None
                if limit:
                    if limited:
                        for statement in _TAKE_TURN:
                            db.execute(statement)
                    db.execute(_LOCK_ALIVE, claim)
                    decided = db.cursor().execute(_CLAIM if limited else _CLAIM_PLAIN,
                                                  claim)
        except BaseException:
            self._unanswered += claim["run_ids"]
            raise
        self._unanswered = []
        if len(rows) >= ANALYZE_AFTER_OFFERS:
            self._analyze()
        batch = _batch(answered.fetchall() if answered else [],
                       decided.fetchall() if decided else [])
        batch.finished = _finish_answers(ends, done)
        return batch

    def _analyze(self) -> None:
        now = time.monotonic()
        if now < self._next_analyze:
            return
        self._next_analyze = now + ANALYZE_EVERY_S
        try:
            with self.db.transaction() as db:
                for statement in _ANALYZE:
                    db.execute(statement)
        except StoreError:
            # Another ANALYZE or a VACUUM has the table (its statistics come anyway), or
            # the connection broke: the next call finds out. Never raised from here: the
            # claims just committed must reach their node.
            pass

    def stop_requests(self, node_id: str) -> list[StopRequest]:
        """This node's claimed runs that later claims asked it to stop."""
        with self.db.session() as db:
            rows = db.execute(_STOP_REQUESTS, {"node_id": node_id}).fetchall()
        return [StopRequest(run_id, node_id, reason) for run_id, reason in rows]

    def finish(self, run_id: str, node_id: str, record: dict[str, Any]) -> bool:
        """Record a claimed run's end and mark its occurrence done, in one transaction;
        False (and nothing written) when it is no longer ``node_id``'s claim."""
        return self.finish_many([(run_id, node_id, record)]) == [True]

    def finish_many(self, finished: Sequence[tuple[str, str, dict[str, Any]]]) -> list[bool]:
        """``finish`` for each ``(run_id, node_id, record)``, all in one round trip."""
        ends = _finish_statements(finished)
        if not ends:
            return []
        with self.db.batch() as db:
            done = _send_finishes(db, ends)
        return _finish_answers(ends, done)

    def expire(self, older_than_s: float | None = None, *,
               limit: int = 10_000) -> list[tuple[str, datetime]]:
        """Mark ``missed`` the due occurrences nobody claimed in time (past their own
        deadline, or more than ``older_than_s`` late): each is returned to exactly one
        caller, however many nodes expire at once, so one node reports each miss."""
        older = self.retention_s if older_than_s is None else older_than_s
        with self.db.session() as db:
            rows = db.execute(_EXPIRE, {"older_than_s": older, "limit": limit}).fetchall()
        return sorted(rows, key=lambda row: (row[1], row[0]))

    def running(self) -> list[dict[str, Any]]:
        """The claimed occurrences not finished yet, node by node (for status)."""
        with self.db.session() as db:
            rows = db.execute(_RUNNING).fetchall()
        return [{"node": node, "job_id": job_id, "scheduled_for": scheduled,
                 "run_id": run_id, "claimed_at": claimed}
                for node, job_id, scheduled, run_id, claimed in rows]

    def prune(self, *, budget: int = 10_000) -> int:
        """Forget up to ``budget`` finished occurrences older than the retention."""
        with self.db.session() as db:
            return db.execute(_PRUNE, {"retention_s": self.retention_s,
                                       "budget": budget}).rowcount


def _finish_statements(finished: Sequence[tuple[str, str, dict[str, Any]]]
                       ) -> list[dict[str, Any]]:
    """Each finish's parameters, in the order the records were given."""
    statements = []
    for run_id, node_id, record in finished:
        if record.get("run_id") != run_id or record.get("hook") or record.get("manual"):
            raise ValueError(f"run {run_id}: not the record of that claimed occurrence")
        params = record_statement(record)[1]
        statements.append({**params, "node_id": node_id})
    return statements


def _send_finishes(db: Any, statements: list[dict[str, Any]]) -> Any:
    """Queue the finishes in an open batch; the cursor that will say which were kept."""
    if not statements:
        return None
    # One order for every writer of taskd_jobs rows (by job: fewer lock waits, no
    # deadlock between two nodes finishing runs of the same jobs); a job's runs oldest
    # first, so that its last run is its latest.
    for params in sorted(statements, key=lambda p: (p["job_id"], p["started"], p["run_id"])):
        db.execute(_FINISH, params)
    return db.cursor().execute(_FINISHED, {"run_ids": [p["run_id"] for p in statements],
                                           "node_ids": [p["node_id"] for p in statements]})


def _finish_answers(statements: list[dict[str, Any]], done: Any) -> list[bool]:
    ours = {run_id for (run_id,) in done.fetchall()} if done is not None else set()
    return [params["run_id"] in ours for params in statements]


def _batch(answered: list[tuple[Any, ...]], decided: list[tuple[Any, ...]]) -> ClaimBatch:
    claims = [Claim(*row) for row in answered]
    skipped, stops = [], []
    for kind, job_id, scheduled_for, run_id, claimed_at, extra in decided:
        if kind == "claimed":
            claims.append(Claim(job_id, scheduled_for, run_id, claimed_at))
        elif kind == "skipped":
            skipped.append(Skipped(job_id, scheduled_for, extra))
        else:
            stops.append(StopRequest(run_id, extra))
    return ClaimBatch(sorted(claims, key=lambda c: (c.scheduled_for, c.job_id)),
                      sorted(skipped, key=lambda s: (s.scheduled_for, s.job_id)), stops)


def _offer(offer: Offer | tuple[Any, ...]) -> Offer:
    offer = offer if isinstance(offer, Offer) else Offer(*offer)
    if offer.scheduled_for.tzinfo is None:
        raise ValueError(f"job {offer.job_id}: scheduled_for {offer.scheduled_for} "
                         "has no time zone")
    if offer.deadline_s is not None:
        offer = offer._replace(deadline_s=float(offer.deadline_s))  # one array type
    return offer
