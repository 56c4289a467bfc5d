"""This node's clock against the database's: the arithmetic (tables and a property), the
reading against a real PostgreSQL, and a node whose clock runs 30 s ahead, which offers
early but never claims early (claims are decided by the database's now()).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cluster.db_clock import (
    ClockOffset,
    best,
    measure,
    offset_from,
    should_warn,
)
from tests.cluster_harness import Node, rows, wait_for
from tests.property_settings import examples


@pytest.mark.parametrize(("before", "db", "after", "offset", "round_trip", "skew"), [
    (100.0, 100.5, 101.0, 0.0, 1.0, 0.0),  # the database read its clock mid-way
    (100.0, 130.0, 100.2, 29.9, 0.2, 29.8),  # the node is 29.9 s behind
    (130.0, 100.0, 130.2, -30.1, 0.2, 30.0),  # the node is 30.1 s ahead
    (100.0, 101.2, 100.0, 1.2, 0.0, 1.2),  # an instant reading
    (100.0, 101.5, 101.0, 1.0, 1.0, 0.5),  # slow round trip: the least it can be is 0.5
    (100.0, 100.2, 100.2, 0.1, 0.2, 0.0),  # within the uncertainty: no skew for certain
])
def test_offset_is_db_minus_the_midpoint_and_skew_what_is_certain(
        before, db, after, offset, round_trip, skew):
    reading = offset_from(before, db, after)
    assert reading.offset_s == pytest.approx(offset)
    assert reading.round_trip_s == pytest.approx(round_trip)
    assert reading.uncertainty_s == pytest.approx(round_trip / 2)
    assert reading.skew_s == pytest.approx(skew, abs=1e-9)


@pytest.mark.parametrize(("offset", "round_trip", "warn"), [
    (0.0, 0.001, False),
    (0.9, 0.001, False),
    (1.0, 0.0, False),  # more than 1 s warns; exactly 1 s does not
    (1.2, 0.001, True),
    (-1.2, 0.001, True),  # ahead or behind alike
    (1.2, 0.6, False),  # might be 0.9 s only: no false alarm from a slow reading
    (-30.0, 0.01, True),
])
def test_a_warning_when_the_clocks_are_certainly_more_than_a_second_apart(
        offset, round_trip, warn):
    assert should_warn(ClockOffset(offset, round_trip)) is warn


def test_the_best_reading_is_the_shortest_round_trip():
    readings = [ClockOffset(0.4, 0.3), ClockOffset(0.1, 0.01), ClockOffset(-0.2, 0.05)]
    assert best(readings) == ClockOffset(0.1, 0.01)


def test_a_local_clock_that_goes_back_mid_reading_is_refused():
    with pytest.raises(ValueError, match="went back"):
        offset_from(100.0, 100.0, 99.0)


@settings(max_examples=examples(100))
@given(before=st.floats(0, 2e9), round_trip=st.floats(0, 5), where=st.floats(0, 1),
       shift=st.floats(-3600, 3600))
def test_the_true_offset_is_within_the_uncertainty(before, round_trip, where, shift):
    # The database read a clock ``shift`` off ours somewhere within the round trip.
    after = before + round_trip
    reading = offset_from(before, before + where * round_trip + shift, after)
    slack = 1e-6 * max(1.0, before)  # float rounding at epoch magnitudes
    assert abs(reading.offset_s - shift) <= reading.uncertainty_s + slack
    assert reading.skew_s <= abs(shift) + slack


# -- against the server ---------------------------------------------------------------


def test_the_same_clock_measures_no_skew(cluster):
    # The server runs on this machine: one clock, so the database's reading falls
    # between the two local ones (to its microsecond resolution).
    reading = measure(cluster())
    assert reading.skew_s < 1e-5 and not should_warn(reading)


def test_a_node_30_s_ahead_is_told_and_never_claims_early(cluster):
    db = cluster()
    ahead = 30.0

    def fast_clock() -> float:
        return time.time() + ahead

    reading = measure(db, clock=fast_clock)
    assert reading.offset_s == pytest.approx(-ahead, abs=1.0) and should_warn(reading)
    fast = Node(db, ["every-tenth"])
    honest = Node(cluster(), ["every-tenth"])
    # The fast node offers what its clock says is due: the next 2 s of a 0.1 s schedule
    # are all due by its clock, and none yet by the database's.
    local_now = datetime.fromtimestamp(fast_clock(), UTC)
    early = [local_now - timedelta(seconds=ahead) + timedelta(seconds=0.3 + i / 10)
             for i in range(20)]
    assert all(at <= local_now for at in early)
    assert fast.claim([("every-tenth", at, "v1") for at in early]) == []
    # As the database's time passes them, they become claimable, oldest first, never
    # one before its instant, whichever node asks.
    claimed = []
    while len(claimed) < 3:
        claimed += wait_for(lambda: fast.claim([], limit=1) or honest.claim([], limit=1),
                            "an occurrence to come due")
    assert [c.scheduled_for for c in claimed] == early[:3]
    assert all(c.claimed_at >= c.scheduled_for for c in claimed)
    assert rows(db, "SELECT count(*) FROM taskd_occurrences WHERE claimed_at < scheduled_for"
                ) == [(0,)]
