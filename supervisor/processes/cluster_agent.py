"""The node's link to the cluster database, on a thread of its own.

The coordinator's loop never waits on the network: it hands the agent what came due
(``offer``), how many runs it can take (``capacity``) and what finished (``finished``),
and picks up what came back (``take``) when the agent's wake-up socket is readable.
The agent, on its thread:

- joins the cluster (after the workers are forked: no child inherits the connection),
  publishes the node's job versions, and heartbeats every ``lease_s / 3``;
- after each heartbeat reaps the nodes silent past their lease (their runs get one
  ``node lost`` record each, written in the reaping transaction) and expires offers
  nobody claimed in time (each reported ``missed`` by exactly one node);
- sends offers and claims together, one round trip per batch, no earlier than the
  offered instant by the database's clock (the measured offset), and polls for others'
  unclaimed offers every ``CLAIM_POLL_S`` while it has capacity;
- finishes claimed runs (their occurrence done; a late finish after ``node lost`` is
  refused by the database) and says which were kept: the coordinator logs a claimed
  run's record only once the database took it, so one occurrence is one record in the
  logs too.

A node that learns it was declared dead, or cannot heartbeat for a whole lease by its
own monotonic clock (it may be partitioned: its peers will declare it dead), is fenced:
``take`` says so once, the coordinator stops its claimed runs, and the agent rejoins as
a new node when the database answers again. While the database is away nothing is
claimed (an occurrence never runs unclaimed); the outage is said once, and the agent
reconnects with backoff.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from supervisor.cluster.pending import PendingOffer, PendingOffers

HEARTBEATS_PER_LEASE = 3
CLAIM_POLL_S = 1.0  # others' unclaimed offers, while there is capacity
# In a backlog a free worker waits up to GATHER_S for a GATHER_SHARE-th of the workers
# to be free before the claim goes out: a round trip's cost is mostly its own, not its
# runs', and one per worker that frees up was most of cluster mode's cost in a burst.
GATHER_S = 0.003
GATHER_SHARE = 2
# Runs are claimed ahead of free workers only while this node's last RECENT_RUNS claimed
# runs each took at most SHORT_RUN_MS: a run claimed ahead waits at most about that long.
RECENT_RUNS = 16
SHORT_RUN_MS = 100.0
CONFLICTS_EVERY_LEASES = 1.0  # the conflict view's refresh, and after each publish
RECONNECT_S = (0.5, 10.0)  # backoff: first wait, most
PRUNE_EVERY_S = 3600.0  # old occurrences and nodes gone for a day are forgotten


@dataclass
class AgentResults:
    """What the agent has for the coordinator since the last ``take``."""

    claims: list[Any] = field(default_factory=list)  # cluster.claims.Claim
    lost: list[Any] = field(default_factory=list)  # cluster.nodes.LostRun (peers' runs)
    missed: list[tuple[str, datetime]] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)  # cluster.claims.Skipped: at a limit
    stops: list[Any] = field(default_factory=list)  # cluster.claims.StopRequest: this node's
    paused: dict[str, bool] = field(default_factory=dict)  # a pause made on some node
    events: list[dict[str, Any]] = field(default_factory=list)
    # Claimed runs' records sent to the database: (record, kept). Not kept: the run was
    # recorded node lost by a peer first (this node had been declared dead).
    finished: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    fenced: bool = False  # this node must stop its claimed runs (declared dead)


class ClusterAgent:
    def __init__(self, url: str, *, workers: int, lease_s: float = 15.0,
                 host: str | None = None, monotonic: Callable[[], float] = time.monotonic
                 ) -> None:
        self.url = url
        self.workers = workers
        self.lease_s = lease_s
        self.host = host or socket.gethostname()
        self._monotonic = monotonic
        self._lock = threading.Condition()
        self._offers = PendingOffers()
        self._finished: list[dict[str, Any]] = []
        self._free = 0  # workers neither busy nor with a run waiting for them
        self._busy = 0
        self._waiting = 0  # runs handed to the pool, waiting for a worker
        self._poke = False  # something for the thread since it last looked
        self._hashes: dict[str, Any] | None = None  # to publish (None: nothing new)
        self._limited = False  # a published job has limits: claims take turns
        self._stops_delivered: set[str] = set()  # run ids asked to stop, said once
        self._results = AgentResults()
        self._stopping = False
        self._draining = False  # the daemon is stopping: claim nothing more
        self._more_due = False  # the last claim took all it could: claim again when free
        self._gather_until: float | None = None  # in a backlog: claim by then (monotonic)
        self._recent_runs_ms: deque[float] = deque(maxlen=RECENT_RUNS)  # claimed, ended
        self._claiming = False  # a claim is in flight (drain waits for its answer)
        self._thread: threading.Thread | None = None
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        # Read by the coordinator (status); written by the agent's thread.
        self.node_id: str | None = None
        self.connected = False
        self.offset_s = 0.0  # database clock minus ours
        self.nodes: list[dict[str, Any]] = []  # each with its running runs ("runs")
        self.view: Any = None  # cluster.job_view.JobView: each job's last run anywhere
        self.conflicts: list[dict[str, Any]] = []
        self.error: str | None = None
        self._published: dict[str, str] | None = None  # the last job versions published

    # -- the coordinator's side ---------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)
        self._thread.start()

    def wait_object(self) -> socket.socket:
        return self._reader

    def offer(self, job_id: str, scheduled_for: datetime, spec_hash: str | None,
              deadline_s: float | None, *, keep: int = 1) -> None:
        """Offer an occurrence. Those due and not sent yet (the database is away, or
        slow) coalesce into the job's latest ``keep`` (its catch_up "all": up to its
        max_catch_up), as a node falling behind does, never a storm when the database
        is back (cluster.pending)."""
        with self._lock:
            self._offers.add(PendingOffer(job_id, scheduled_for, spec_hash, deadline_s),
                             now_db=time.time() + self.offset_s, keep=keep)
            self._wake()

    def set_capacity(self, busy: int, waiting: int) -> None:
        """After each of the coordinator's steps (``busy`` workers, ``waiting`` runs
        handed out and not on a worker yet): the finishes it gave in the step go out
        now, with a claim for the workers they freed (one round trip)."""
        with self._lock:
            free = self.workers - busy - waiting
            changed = free > self._free
            self._free, self._busy, self._waiting = free, busy, waiting
            if changed or self._finished:
                self._wake()

    def finished(self, record: dict[str, Any]) -> None:
        """A claimed run's record (sent at the next ``set_capacity``)."""
        with self._lock:
            self._finished.append(record)
            self._stops_delivered.discard(record["run_id"])
            self._recent_runs_ms.append(record.get("duration_ms") or 0.0)

    def _wake(self) -> None:  # with the lock held
        self._poke = True
        self._lock.notify()

    def publish(self, hashes: dict[str, Any]) -> None:
        """This node's version of each job: a spec hash, or a cluster.specs.JobVersion
        (with its limits)."""
        limited = any(getattr(version, "limited", False) for version in hashes.values())
        with self._lock:
            self._hashes = dict(hashes)
            self._limited = limited
            self._wake()

    def take(self) -> AgentResults:
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            results, self._results = self._results, AgentResults()
            # What it claimed is being handed out: no more claims for them until the
            # coordinator says again how many it can take (set_capacity).
            self._free -= len(results.claims)
        return results

    def drain(self, timeout_s: float = 10.0) -> None:
        """Claim nothing more (the daemon is stopping); finishes still go out. Returns
        once a claim in flight has come back (its claims then wait in ``take``): every
        claim is the coordinator's before it stops its workers."""
        with self._lock:
            self._draining = True
            self._lock.wait_for(lambda: not self._claiming, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued, leave the cluster, end the thread."""
        with self._lock:
            self._stopping = True
            self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the agent's thread -------------------------------------------------------------

    def _run(self) -> None:
        from supervisor.cluster.claims import Claims
        from supervisor.cluster.database import ClusterDatabase
        from supervisor.cluster.job_view import JobView
        from supervisor.cluster.nodes import Nodes
        from supervisor.cluster.specs import SpecHashes
        from supervisor.store.abc import StoreError

        backoff = RECONNECT_S[0]
        db = None
        last_heartbeat = self._monotonic()
        next_heartbeat = next_poll = next_conflicts = 0.0
        next_prune = self._monotonic() + PRUNE_EVERY_S / 10
        while True:
            try:
                if db is None:
                    db = ClusterDatabase(self.url)
                    self._connected(True)
                    nodes, claims, specs = Nodes(db), Claims(db), SpecHashes(db)
                    self.view = self.view or JobView(db)
                    self.view.db = db
                if self.node_id is None:
                    self._join(nodes)
                    last_heartbeat = self._monotonic()
                    next_heartbeat = next_poll = 0.0
                backoff = RECONNECT_S[0]
                mono = self._monotonic()
                if mono >= next_heartbeat:
                    self._heartbeat(nodes, claims)
                    last_heartbeat = mono
                    next_heartbeat = mono + self.lease_s / HEARTBEATS_PER_LEASE
                with self._lock:
                    self._poke = False
                    hashes, self._hashes = self._hashes, None
                    finished, self._finished = self._finished, []
                if hashes is not None:
                    specs.publish(self.node_id, hashes)
                    self._published = hashes
                    next_conflicts = 0.0
                if mono >= next_prune:
                    claims.prune()
                    nodes.forget()
                    next_prune = mono + PRUNE_EVERY_S
                if mono >= next_conflicts:
                    self.conflicts = specs.conflicts()
                    next_conflicts = mono + self.lease_s * CONFLICTS_EVERY_LEASES
                next_poll = self._claim(claims, next_poll, finished)
                with self._lock:
                    if self._stopping and not self._finished:
                        break
                    wait = min(next_heartbeat, next_poll) - self._monotonic()
                    if wait > 0 and not self._poke:
                        self._lock.wait(min(wait, 1.0))
            except StoreError as error:
                self._lost_connection(db, str(error))
                db = None
                if self.node_id is not None and (self._monotonic() - last_heartbeat
                                                 >= self.lease_s):
                    self._fence("no heartbeat for a whole lease: the database is "
                                "unreachable, peers will declare this node dead")
                with self._lock:
                    if self._stopping:
                        break
                    self._lock.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_S[1])
        self._leave(db)

    def _connected(self, connected: bool, error: str | None = None) -> None:
        if connected != self.connected:
            self.connected, self.error = connected, error
            self._deliver(events=[{"event": "cluster_connected" if connected
                                   else "cluster_unavailable",
                                   "level": "info" if connected else "error",
                                   "database": _location(self.url),
                                   **({"error": error} if error else {}),
                                   **({} if connected else {
                                       "effect": "nothing is claimed (no occurrence runs "
                                                 "unclaimed) until it answers again"})}])

    def _lost_connection(self, db: Any, error: str) -> None:
        if db is not None:
            db.close()
        self._connected(False, error)

    def _join(self, nodes: Any) -> None:
        from supervisor.cluster.db_clock import measure, should_warn

        offset = measure(nodes.db)
        self.offset_s = offset.offset_s
        self.node_id = nodes.join(self.host, os.getpid(), self.workers, self.lease_s)
        events = [{"event": "cluster_joined", "level": "info", "node": self.node_id,
                   "host": self.host, "lease_s": self.lease_s,
                   "clock_offset_s": round(offset.offset_s, 3)}]
        if should_warn(offset):
            events.append({"event": "clock_skew", "level": "warning", "node": self.node_id,
                           "offset_s": round(offset.offset_s, 3),
                           "reason": "this host's clock differs from the database's by "
                                     "more than 1 s; due times and leases follow the "
                                     "database's clock, so nothing runs early or twice"})
        with self._lock:
            if self._hashes is None and self._published is not None:
                self._hashes = dict(self._published)
        self._deliver(events=events)

    def _heartbeat(self, nodes: Any, claims: Any) -> None:
        with self._lock:
            busy, limited = self._busy, self._limited
        beat = nodes.heartbeat(self.node_id, busy)
        if not beat.alive:
            self._fence("declared dead by a peer (silent past its lease: paused, or cut "
                        "off)")
            return
        lost = nodes.reap(self.node_id)
        missed = claims.expire()
        self.nodes = _with_runs(nodes.nodes(), claims.running())
        paused = self.view.refresh()
        # Runs of this node that a peer's claim replaced (overlap: replace).
        stops = self._new_stops(claims.stop_requests(self.node_id)) if busy and limited else []
        if lost or missed or stops or paused:
            self._deliver(lost=lost, missed=missed, stops=stops, paused=paused)

    def _new_stops(self, stops: list[Any]) -> list[Any]:
        with self._lock:
            new = [stop for stop in stops if stop.node_id == self.node_id
                   and stop.run_id not in self._stops_delivered]
            self._stops_delivered |= {stop.run_id for stop in new}
        return new

    def _fence(self, reason: str) -> None:
        old, self.node_id = self.node_id, None  # rejoins as a new node
        self._deliver(fenced=True, events=[{"event": "node_fenced", "level": "error",
                                            "node": old, "reason": reason}])

    def _claim(self, claims: Any, next_poll: float, finished: list[dict[str, Any]]) -> float:
        """Send the finishes, the offers that are due by the database's clock, and claim,
        in one round trip; the time of the next poll."""
        now_db = time.time() + self.offset_s
        with self._lock:
            due, later = self._offers.due(now_db)
            capacity = self._capacity()
            limited = self._limited
            self._claiming = capacity > 0
        try:
            return self._claim_now(claims, next_poll, finished, due, later, capacity,
                                   limited, now_db)
        finally:
            with self._lock:
                self._claiming = False
                self._lock.notify_all()

    def _claim_now(self, claims: Any, next_poll: float, finished: list[dict[str, Any]],
                   due: list[Any], later: float | None, capacity: int, limited: bool,
                   now_db: float) -> float:
        mono = self._monotonic()
        # With free workers: claim for new offers, when the last claim was full (more may
        # be due: a burst goes at the pace workers free up), and at each poll (others'
        # leftovers).
        if not due and (capacity <= 0 or (mono < next_poll and not self._more_due)):
            if finished:
                self._finish(claims, finished)
            if capacity <= 0:  # nothing to poll for until a worker is free (set_capacity
                next_poll = max(next_poll, mono + CLAIM_POLL_S)  # wakes the thread)
            if later is not None:  # wake when the first of them is due
                return min(next_poll, mono + max(0.0, later - now_db))
            return next_poll
        if not due and self._more_due and capacity < max(1, self.workers // GATHER_SHARE):
            # A backlog, and only a few workers free: wait a moment for more to free up,
            # so that one round trip claims (and finishes) for several of them.
            if self._gather_until is None:
                self._gather_until = mono + GATHER_S
            if mono < self._gather_until:
                with self._lock:
                    self._finished[:0] = finished
                return self._gather_until  # (the claim then is also the poll)
        self._gather_until = None
        from supervisor.cluster.claims import Offer

        batch = self._finishing(finished, lambda ends: claims.claim_batch(
            [Offer(*offer) for offer in due], capacity, node_id=self.node_id,
            limited=limited, finished=ends))
        got = batch.claims
        with self._lock:
            self._offers.sent(due)
            superseded = self._offers.take_superseded()
        events = [{"event": "missed", "level": "warning", "job_id": job_id,
                   "scheduled_for": first.isoformat(), "count": count,
                   "reason": "not offered while the cluster database was unreachable; "
                             "its later occurrences were offered instead"}
                  for job_id, (first, count) in sorted(superseded.items())]
        stops = self._new_stops(batch.stops)
        if got or events or batch.skipped or stops:
            self._deliver(claims=got, events=events, skipped=batch.skipped, stops=stops)
        # As many as it could take: more may be due, so claim again as soon as workers
        # are free; else look again for others' leftovers at the next poll.
        if capacity > 0:  # (a claim for nothing, offers only, says nothing of a backlog)
            self._more_due = len(got) >= capacity
        return mono + CLAIM_POLL_S

    def _capacity(self) -> int:
        """How many runs to claim now (with the lock held): one per free worker; in a
        backlog of short runs also one ahead per worker, so that a worker that ends a
        run finds the next one here instead of waiting a round trip for it. Only while
        this node's last runs were all short: a run claimed ahead waits for a worker
        here, and behind long runs it would wait while a peer's workers are idle.
        Claims delivered and not taken yet count as taken."""
        if self._draining:
            return 0
        ahead = self.workers if self._more_due and self._runs_are_short() else 0
        return max(0, self._free + ahead - len(self._results.claims))

    def _runs_are_short(self) -> bool:
        recent = self._recent_runs_ms
        return len(recent) == recent.maxlen and max(recent) <= SHORT_RUN_MS

    def _finish(self, claims: Any, finished: list[dict[str, Any]]) -> None:
        self._finishing(finished, lambda ends: _Answers(claims.finish_many(ends)))

    def _finishing(self, finished: list[dict[str, Any]], send: Callable[[list[Any]], Any]
                   ) -> Any:
        """``send`` the finishes (and whatever goes with them); their answers delivered.
        If it fails they are sent again once the database answers (a finish is
        idempotent)."""
        ends = [(record["run_id"], self._node_of(record), record) for record in finished]
        try:
            result = send(ends)
        except BaseException:
            with self._lock:
                self._finished[:0] = finished
            raise
        if finished:
            self._deliver(finished=list(zip(finished, result.finished, strict=True)))
        return result

    def _node_of(self, record: dict[str, Any]) -> str:
        return record.get("node") or self.node_id or ""

    def _leave(self, db: Any) -> None:
        if db is None or self.node_id is None:
            return
        from supervisor.cluster.nodes import Nodes
        from supervisor.store.abc import StoreError

        try:
            Nodes(db).leave(self.node_id)
        except StoreError:
            pass  # its peers will declare it dead after its lease
        finally:
            db.close()

    def _deliver(self, **results: Any) -> None:
        with self._lock:
            for key, value in results.items():
                if key == "fenced":
                    self._results.fenced = self._results.fenced or value
                elif key == "paused":
                    self._results.paused.update(value)
                else:
                    getattr(self._results, key).extend(value)
        try:
            self._writer.send(b"!")
        except (BlockingIOError, OSError):
            pass  # already readable


def _with_runs(nodes: list[dict[str, Any]], running: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """Each node with the runs it has claimed and not finished (for status)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in running:
        runs.setdefault(run["node"], []).append(
            {"job_id": run["job_id"], "run_id": run["run_id"],
             "scheduled_for": run["scheduled_for"].isoformat(),
             "claimed_at": run["claimed_at"].isoformat()})
    return [{**node, "runs": runs.get(node["id"], [])} for node in nodes]


@dataclass
class _Answers:
    finished: list[bool]  # finish_many's, in ClaimBatch's shape


def _location(url: str) -> str:
    from supervisor.store.postgres import redact_url

    return redact_url(url)
