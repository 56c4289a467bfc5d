"""Offers a node has made and not sent yet, and what they coalesce into.

An offer waits here until the database's clock reaches its instant and the agent sends
it. While the database is away (or slow), offers that are already due pile up; each job
keeps at most ``keep`` of them, the newest (its ``catch_up``: ``"all"`` keeps up to
``max_catch_up``, anything else only the latest, as a node falling behind coalesces),
and the older ones are counted as superseded, reported once as one ``missed`` line per
job. An offer still waiting for its instant (this clock runs ahead) is never superseded:
it is not behind.

Pure bookkeeping (no database, no thread): the agent holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import NamedTuple

MAX_PENDING_OFFERS = 100_000  # held while the database is away; the oldest go first


class PendingOffer(NamedTuple):
    job_id: str
    scheduled_for: datetime  # aware
    spec_hash: str | None
    deadline_s: float | None

    @property
    def key(self) -> tuple[str, datetime]:
        return self.job_id, self.scheduled_for


class PendingOffers:
    def __init__(self, limit: int = MAX_PENDING_OFFERS) -> None:
        self.limit = limit
        self._offers: dict[tuple[str, datetime], PendingOffer] = {}  # in offer order
        self._of_job: dict[str, deque[PendingOffer]] = {}  # each job's, oldest first
        # Offers dropped before they were sent: job -> (the first one's instant, count).
        self.superseded: dict[str, tuple[datetime, int]] = {}

    def __len__(self) -> int:
        return len(self._offers)

    def add(self, offer: PendingOffer, *, now_db: float, keep: int = 1) -> None:
        """Hold ``offer``; the job's oldest due ones beyond ``keep`` (counting ``offer``
        if it is due) are superseded."""
        if offer.key in self._offers:  # offered again: it is already here
            return
        queue = self._of_job.get(offer.job_id, ())
        due_here = [o for o in queue if o.scheduled_for.timestamp() <= now_db]
        excess = len(due_here) + (offer.scheduled_for.timestamp() <= now_db) - max(1, keep)
        for old in due_here[:max(0, excess)]:  # oldest first
            self._drop(old, superseded=True)
        self._of_job.setdefault(offer.job_id, deque()).append(offer)
        self._offers[offer.key] = offer
        if len(self._offers) > self.limit:  # the oldest go first
            self._drop(self._offers[next(iter(self._offers))], superseded=True)

    def due(self, now_db: float) -> tuple[list[PendingOffer], float | None]:
        """The offers due by ``now_db`` (epoch seconds, the database's clock), and the
        instant of the first one not due yet (None: there is none)."""
        due: list[PendingOffer] = []
        first_later: float | None = None
        for offer in self._offers.values():
            at = offer.scheduled_for.timestamp()
            if at <= now_db:
                due.append(offer)
            elif first_later is None or at < first_later:
                first_later = at
        return due, first_later

    def sent(self, offers: list[PendingOffer]) -> None:
        for offer in offers:
            self._drop(offer, superseded=False)

    def take_superseded(self) -> dict[str, tuple[datetime, int]]:
        superseded, self.superseded = self.superseded, {}
        return superseded

    def _drop(self, offer: PendingOffer, *, superseded: bool) -> None:
        if self._offers.pop(offer.key, None) is None:
            return
        queue = self._of_job[offer.job_id]
        queue.remove(offer)
        if not queue:
            del self._of_job[offer.job_id]
        if superseded:
            first, count = self.superseded.get(offer.job_id, (offer.scheduled_for, 0))
            self.superseded[offer.job_id] = (min(first, offer.scheduled_for), count + 1)
