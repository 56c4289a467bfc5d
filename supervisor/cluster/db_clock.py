"""How far this node's clock is from the database's, which decides everything that counts.

Due-ness, leases and deaths are the database's ``now()``; a node's own clock only tells
it when to offer. A node whose clock is off still never runs early or twice, but its
offers come early or late, so it says so: ``measure`` reads ``clock_timestamp()``
bracketed by two local readings, ``offset = db - midpoint``, and half the round trip is
how uncertain that is (the database read the clock somewhere in between).
``skew_s`` is the least the clocks can be apart given that uncertainty, so a slow
round trip never raises a false warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from supervisor.cluster.database import ClusterDatabase

WARN_SKEW_S = 1.0
SAMPLES = 3


@dataclass(frozen=True, slots=True)
class ClockOffset:
    offset_s: float  # database minus node: positive when the node's clock is behind
    round_trip_s: float

    @property
    def uncertainty_s(self) -> float:
        return self.round_trip_s / 2

    @property
    def skew_s(self) -> float:
        """The least the clocks differ by, for certain (0 when within the uncertainty)."""
        return max(0.0, abs(self.offset_s) - self.uncertainty_s)


def offset_from(local_before: float, db_time: float, local_after: float) -> ClockOffset:
    """One reading: the database's epoch seconds between two local epoch readings."""
    if local_after < local_before:
        raise ValueError(f"the local clock went back during the reading "
                         f"({local_before} then {local_after})")
    return ClockOffset(offset_s=db_time - (local_before + local_after) / 2,
                       round_trip_s=local_after - local_before)


def best(readings: Iterable[ClockOffset]) -> ClockOffset:
    """The reading with the shortest round trip: the least uncertain."""
    return min(readings, key=lambda reading: reading.round_trip_s)


def should_warn(offset: ClockOffset, threshold_s: float = WARN_SKEW_S) -> bool:
    """Whether the node's clock is certainly more than ``threshold_s`` off."""
    return offset.skew_s > threshold_s


def measure(db: ClusterDatabase, *, clock: Callable[[], float] = time.time,
            samples: int = SAMPLES) -> ClockOffset:
    """This node's clock (``clock``: epoch seconds) against the database's."""
    readings = []
    with db.session() as connection:
        for _ in range(max(1, samples)):
            before = clock()
            (db_now,) = connection.execute("SELECT clock_timestamp()").fetchone()
            after = clock()
            readings.append(offset_from(before, db_now.timestamp(), after))
    return best(readings)
