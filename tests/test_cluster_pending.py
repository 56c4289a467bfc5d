"""A node's unsent offers (cluster/pending.py): while the database is away each job keeps
its newest ``keep`` due offers, an offer waiting for its instant is never dropped, and
every offer is accounted for exactly once: sent, superseded (counted for the one
``missed`` line), or still pending."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cluster.pending import PendingOffer, PendingOffers
from tests.property_settings import examples

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def offer(job: str, second: int) -> PendingOffer:
    return PendingOffer(job, T0 + timedelta(seconds=second), "h", 60.0)


def now(second: float) -> float:
    return (T0 + timedelta(seconds=second)).timestamp()


# (keep, seconds offered while the database is away, now) -> the seconds still pending
COALESCING = [
    (1, [0, 1, 2, 3], 10, [3]),  # catch_up none/latest: the latest
    (2, [0, 1, 2, 3], 10, [2, 3]),  # catch_up all, max_catch_up 2
    (100, [0, 1, 2, 3], 10, [0, 1, 2, 3]),
    (1, [5, 6, 7], 4, [5, 6, 7]),  # not due yet (this clock runs ahead): all kept
    (1, [3, 4, 5, 6], 4, [4, 5, 6]),  # 3 was superseded by 4, due too; 5 and 6 wait
]


def test_due_offers_coalesce_into_each_job_s_latest_keep():
    for keep, seconds, at, expected in COALESCING:
        pending = PendingOffers()
        for second in seconds:
            pending.add(offer("tick", second), now_db=now(at), keep=keep)
        pending.add(offer("other", 0), now_db=now(at), keep=keep)
        due, later = pending.due(now(max(seconds) + 1))
        assert [o.scheduled_for for o in due if o.job_id == "tick"] == [
            T0 + timedelta(seconds=s) for s in expected], (keep, seconds, at)
        dropped = len(seconds) - len(expected)
        assert pending.take_superseded() == (
            {"tick": (T0 + timedelta(seconds=seconds[0]), dropped)} if dropped else {})
        assert later is None


def test_the_first_offer_not_due_says_when_to_wake():
    pending = PendingOffers()
    for second in (9, 7, 8):
        pending.add(offer(f"job-{second}", second), now_db=now(0))
    due, later = pending.due(now(7.5))
    assert [o.job_id for o in due] == ["job-7"] and later == now(8)


def test_beyond_the_limit_the_oldest_offer_goes_first():
    pending = PendingOffers(limit=3)
    for second in range(5):
        pending.add(offer(f"job-{second}", second), now_db=now(0))
    assert len(pending) == 3
    assert [o.job_id for o in pending.due(now(10))[0]] == ["job-2", "job-3", "job-4"]
    assert sorted(pending.take_superseded()) == ["job-0", "job-1"]


events = st.lists(st.one_of(
    st.tuples(st.just("offer"), st.sampled_from("abc"), st.integers(0, 30)),
    st.tuples(st.just("send"), st.just(""), st.integers(0, 30))), max_size=60)


@settings(max_examples=examples(200))
@given(events, st.integers(1, 4), st.integers(2, 40))
def test_every_offer_is_sent_superseded_or_pending_exactly_once(steps, keep, limit):
    pending = PendingOffers(limit=limit)
    held = 0  # offers taken in (one already pending is not taken twice)
    sent = superseded = 0
    clock = 0
    for kind, job, second in steps:
        clock = max(clock, second)  # the database's clock never goes back
        if kind == "offer":
            already = {o.key for o in pending.due(float("inf"))[0]}
            held += offer(job, second).key not in already
            pending.add(offer(job, second), now_db=now(clock), keep=keep)
        else:
            due, _ = pending.due(now(clock))
            pending.sent(due)
            sent += len(due)
        superseded += sum(count for _, count in pending.take_superseded().values())
        assert len(pending) <= limit
        due, _ = pending.due(now(clock))
        for job_id in "abc":  # due and unsent: at most keep per job
            assert sum(1 for o in due if o.job_id == job_id) <= keep
    assert sent + superseded + len(pending) == held
