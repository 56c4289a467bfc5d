"""Tests for supervisor.timing.timing_wheel: table tests plus a stateful check against a heap model.

No clocks and no sleeping: every time is passed in explicitly.
"""

from __future__ import annotations

import heapq
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from supervisor.timing.timing_wheel import TimingWheel, _start_of, _tick
from tests.property_settings import examples

BASE = 1_700_000_000.0  # November 2023
DAY = 86_400.0
YEAR = 365.25 * DAY


def keys(fired):
    return [key for _, key, _ in fired]


def check_structure(wheel, *, after_advance=False):
    """White-box: every entry sits where (tick, wheel time) says, and the counters agree."""
    assert wheel._cur == _tick(wheel.now)
    found = dict(wheel._ready)
    for level, slots in enumerate(wheel._slots):
        bits = sum(1 << idx for idx, slot in enumerate(slots) if slot is not None)
        assert bits == wheel._occupied[level]
        for idx, slot in enumerate(slots):
            for key, entry in (slot or {}).items():
                assert wheel._level_of(_tick(entry.due), wheel._cur) == level
                assert (_tick(entry.due) >> (wheel._bits * level)) & wheel._mask == idx
                found[key] = entry
    live = [e for _, _, e in wheel._overflow if wheel._index.get(e.key) is e]
    assert len(live) == wheel._overflow_live
    for entry in live:
        assert wheel._level_of(_tick(entry.due), wheel._cur) == wheel._levels
        found[entry.key] = entry
    for entry in wheel._ready.values():
        assert _tick(entry.due) <= wheel._cur
        assert entry.due > wheel.now or not after_advance
    assert found == wheel._index


# -- table tests ----------------------------------------------------------------------


def test_due_exactly_at_now_is_returned():
    due = BASE + 0.1 + 0.2  # a due whose float value is not a round number of ms
    wheel = TimingWheel(BASE)
    wheel.schedule("a", due, "payload")
    assert wheel.advance(due) == [(due, "a", "payload")]
    assert len(wheel) == 0


@pytest.mark.parametrize("offset", [0.0005, 0.0105, 1.0, 61.25, DAY + 0.0009, 30 * YEAR])
def test_just_before_and_just_after(offset):
    due = BASE + offset
    wheel = TimingWheel(BASE)
    wheel.schedule("a", due)
    assert wheel.advance(math.nextafter(due, -math.inf)) == []  # same millisecond, still early
    assert "a" in wheel
    assert keys(wheel.advance(math.nextafter(due, math.inf))) == ["a"]


def test_same_millisecond_entries_are_split_by_float_due():
    wheel = TimingWheel(BASE)
    wheel.schedule("late", BASE + 0.0108)
    wheel.schedule("early", BASE + 0.0102)
    assert keys(wheel.advance(BASE + 0.0105)) == ["early"]
    assert wheel.time_to_next(BASE + 0.0105) == (BASE + 0.0108) - (BASE + 0.0105)
    assert keys(wheel.advance(BASE + 0.0108)) == ["late"]


def test_ties_keep_insertion_order_across_levels():
    due = BASE + 3 * DAY
    wheel = TimingWheel(BASE, slot_bits=2, levels=3)  # tiny wheel: "a" cascades, "z" does not
    wheel.schedule("a", due)
    wheel.schedule("m", due + 1)
    wheel.advance(due - 0.002)
    wheel.schedule("z", due)
    wheel.schedule("b", due)
    wheel.schedule("past", BASE)  # due long ago: first, whenever scheduled
    assert keys(wheel.advance(due + 5)) == ["past", "a", "z", "b", "m"]


def test_result_sorted_by_due_then_sequence():
    wheel = TimingWheel(BASE)
    dues = {"k3": BASE + 30, "k1": BASE + 10, "k2": BASE + 20, "k1b": BASE + 10}
    for key, due in dues.items():
        wheel.schedule(key, due, key.upper())
    assert wheel.advance(BASE + 60) == [
        (BASE + 10, "k1", "K1"),
        (BASE + 10, "k1b", "K1B"),
        (BASE + 20, "k2", "K2"),
        (BASE + 30, "k3", "K3"),
    ]


def test_reschedule_replaces_and_moves_to_end_of_ties():
    wheel = TimingWheel(BASE)
    wheel.schedule("a", BASE + 5, 1)
    wheel.schedule("b", BASE + 5, 2)
    wheel.schedule("a", BASE + 5, 3)  # same due, new payload: now after "b"
    wheel.schedule("c", BASE + 100, 4)
    wheel.schedule("c", BASE + 7, 5)  # moved earlier
    assert len(wheel) == 3
    assert wheel.due_of("c") == BASE + 7
    assert wheel.advance(BASE + 10) == [(BASE + 5, "b", 2), (BASE + 5, "a", 3), (BASE + 7, "c", 5)]
    assert wheel.advance(BASE + 200) == []


def test_cancel_and_cancel_missing():
    wheel = TimingWheel(BASE)
    wheel.schedule("a", BASE + 1)
    wheel.schedule("b", BASE + 2 * YEAR)
    wheel.schedule("c", BASE - 5)
    assert wheel.cancel("a") is True
    assert wheel.cancel("a") is False
    assert wheel.cancel("never") is False
    assert wheel.cancel("b") is True
    assert wheel.cancel("c") is True
    assert len(wheel) == 0
    assert wheel.advance(BASE + 3 * YEAR) == []
    assert wheel.time_to_next(BASE + 3 * YEAR) is None


def test_past_entries_come_out_on_next_advance():
    wheel = TimingWheel(BASE)
    wheel.schedule("old", BASE - 10 * YEAR)
    wheel.schedule("older", BASE - 20 * YEAR)
    wheel.schedule("now", BASE)
    assert wheel.time_to_next(BASE) == 0.0
    assert keys(wheel.advance(BASE - DAY)) == ["older", "old", "now"]  # backwards: still BASE


def test_time_zero_and_negative_times():
    wheel = TimingWheel(0.0, slot_bits=2, levels=2)
    wheel.schedule("neg", -1.5)
    wheel.schedule("pos", 0.25)
    assert keys(wheel.advance(0.0)) == ["neg"]
    assert keys(wheel.advance(0.25)) == ["pos"]
    neg = TimingWheel(-10.0, slot_bits=2, levels=2)
    neg.schedule("cross", 3.0)  # across zero: the overflow path
    neg.schedule("near", -9.0)
    assert keys(neg.advance(5.0)) == ["near", "cross"]


def test_thirty_years_ahead_within_default_span():
    wheel = TimingWheel(BASE)
    due = BASE + 30 * YEAR + 0.123
    wheel.schedule("far", due)
    wheel.schedule("near", BASE + 1)
    assert wheel.next_due() == BASE + 1
    assert keys(wheel.advance(BASE + 29 * YEAR)) == ["near"]
    assert wheel.next_due() == due
    assert wheel.advance(due - 0.0005) == []
    assert wheel.advance(due) == [(due, "far", None)]


@pytest.mark.parametrize(
    ("slot_bits", "levels", "horizon"),
    [(2, 2, 1.0), (3, 3, DAY), (8, 6, 20_000 * YEAR)],  # span: 16 ms, 512 ms, ~8900 years
)
def test_beyond_span_goes_through_overflow(slot_bits, levels, horizon):
    wheel = TimingWheel(BASE, slot_bits=slot_bits, levels=levels)
    dues = [BASE + horizon * f for f in (1.0, 0.25, 0.5, 0.75, 2.5)]
    for i, due in enumerate(dues):
        wheel.schedule(i, due)
    wheel.schedule("gone", BASE + horizon * 0.6)
    wheel.cancel("gone")
    assert wheel.next_due() == min(dues)
    assert keys(wheel.advance(BASE + horizon * 0.6)) == [1, 2]
    assert keys(wheel.advance(BASE + horizon * 2)) == [3, 0]
    assert keys(wheel.advance(BASE + horizon * 3)) == [4]
    assert len(wheel) == 0


def test_overflow_epoch_boundary_is_due_at_its_first_tick():
    wheel = TimingWheel(0.0, slot_bits=2, levels=2)  # span 16 ms; 0.032 s is tick 32 exactly
    wheel.schedule("a", 0.032)
    wheel.schedule("b", 0.048)
    wheel.schedule("c", 0.0485)
    assert wheel.time_to_next(0.0) == 0.032
    assert keys(wheel.advance(0.032)) == ["a"]
    check_structure(wheel)
    assert keys(wheel.advance(0.048)) == ["b"]
    check_structure(wheel)
    assert keys(wheel.advance(0.0485)) == ["c"]


def test_overflow_compaction_after_many_cancels():
    wheel = TimingWheel(BASE, slot_bits=2, levels=2)
    for i in range(1000):
        wheel.schedule(i, BASE + 100 + i)
    for i in range(0, 1000, 2):
        wheel.cancel(i)
    for i in range(1, 1000, 4):
        wheel.schedule(i, BASE + 5000 - i)  # replace within the overflow
    fired = wheel.advance(BASE + 10_000)
    assert len(fired) == 500
    assert [d for d, _, _ in fired] == sorted(d for d, _, _ in fired)
    assert len(wheel._overflow) == 0
    check_structure(wheel)


def test_jump_far_ahead_in_one_advance():
    wheel = TimingWheel(BASE)
    rng = random.Random(7)
    dues = {i: BASE + rng.uniform(-DAY, 500 * YEAR) for i in range(2000)}
    for key, due in dues.items():
        wheel.schedule(key, due)
    fired = wheel.advance(BASE + 1000 * YEAR)
    assert keys(fired) == sorted(dues, key=lambda k: (dues[k], k))
    # An empty wheel jumping millennia is immediate (no ticking across the gap).
    assert wheel.advance(BASE + 5000 * YEAR) == []
    wheel.schedule("x", BASE + 5000 * YEAR + 1)
    assert keys(wheel.advance(BASE + 7000 * YEAR)) == ["x"]


@given(st.integers(-(10**15), 10**15))
def test_start_of_is_the_first_float_of_a_tick(tick):
    # time_to_next wakes at _start_of(slot start): early enough, yet late enough to cascade.
    start = _start_of(tick)
    assert _tick(start) >= tick
    assert _tick(math.nextafter(start, -math.inf)) < tick


def test_advance_backwards_does_not_rewind():
    wheel = TimingWheel(BASE)
    wheel.schedule("a", BASE + 10)
    assert wheel.advance(BASE + 20) != []
    wheel.schedule("b", BASE + 15)  # in the past of the wheel
    assert wheel.now == BASE + 20
    assert keys(wheel.advance(BASE)) == ["b"]
    assert wheel.now == BASE + 20
    wheel.schedule("c", BASE + 21)
    assert wheel.advance(BASE + 5) == []
    assert keys(wheel.advance(BASE + 21)) == ["c"]


def test_time_to_next_empty_due_and_future():
    wheel = TimingWheel(BASE)
    assert wheel.time_to_next(BASE) is None
    assert wheel.next_due() is None
    wheel.schedule("soon", BASE + 0.2005)  # level 0: exact
    assert wheel.time_to_next(BASE) == (BASE + 0.2005) - BASE
    assert wheel.time_to_next(BASE + 1) == 0.0  # caller's now is past it
    wheel.schedule("due", BASE - 1)
    assert wheel.time_to_next(BASE) == 0.0
    wheel.advance(BASE + 1)
    assert wheel.time_to_next(BASE + 1) is None


@pytest.mark.parametrize("offset", [0.3, 1.0, 59.999, 3600.5, 7 * DAY + 0.017, 30 * YEAR])
def test_time_to_next_never_late_and_converges(offset):
    wheel = TimingWheel(BASE)
    due = BASE + offset
    wheel.schedule("a", due)
    now = BASE
    for _ in range(2 * 6 + 4):
        ttn = wheel.time_to_next(now)
        assert 0.0 < ttn <= due - now
        now += ttn
        if wheel.advance(now):
            assert now == due
            break
    else:
        pytest.fail("time_to_next never reached the entry")


@pytest.mark.parametrize(
    ("slot_bits", "now", "start_tick"),
    [(2, 0.465, 468), (8, 1_700_000_017.876, 1_700_000_018_176)],
)
def test_time_to_next_when_slot_start_over_ms_rounds_up(slot_bits, now, start_tick):
    # start_tick / 1000 lies above the first float of that tick; an entry due at that first
    # float sits in a higher-level slot starting at start_tick, and must not be woken late.
    due = _start_of(start_tick)
    assert due < start_tick / 1000
    wheel = TimingWheel(now, slot_bits=slot_bits, levels=6)
    wheel.schedule("a", due)
    assert wheel._occupied[0] == 0  # it is in a higher level, not level 0
    ttn = wheel.time_to_next(now)
    assert 0.0 < ttn <= due - now
    assert keys(wheel.advance(now + ttn)) == ["a"]


def test_len_contains_due_of():
    wheel = TimingWheel(BASE)
    assert len(wheel) == 0 and "a" not in wheel and wheel.due_of("a") is None
    wheel.schedule("a", BASE + 1)
    wheel.schedule(("job", 2), BASE + 40 * YEAR)
    wheel.schedule(3, BASE - 1)
    assert len(wheel) == 3
    assert "a" in wheel and ("job", 2) in wheel and 3 in wheel and "b" not in wheel
    assert wheel.due_of(("job", 2)) == BASE + 40 * YEAR
    wheel.advance(BASE + 2)
    assert len(wheel) == 1 and "a" not in wheel and wheel.due_of("a") is None


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        TimingWheel(BASE, slot_bits=0)
    with pytest.raises(ValueError):
        TimingWheel(math.nan)
    wheel = TimingWheel(BASE)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            wheel.schedule("a", bad)
        with pytest.raises(ValueError):
            wheel.advance(bad)
    assert len(wheel) == 0
    wheel.schedule("int-due", int(BASE) + 1)
    assert wheel.advance(BASE + 1) == [(BASE + 1, "int-due", None)]


def test_hundred_thousand_entries():
    rng = random.Random(1)
    wheel = TimingWheel(BASE)
    n = 100_000
    for i in range(n):
        wheel.schedule(i, BASE + rng.uniform(-60, 7 * DAY))
    for i in range(0, n, 10):
        wheel.cancel(i)
    assert len(wheel) == n - n // 10
    total, now, last = 0, BASE, -math.inf
    while len(wheel):
        now += 3 * 3600
        fired = wheel.advance(now)
        dues = [d for d, _, _ in fired]
        assert dues == sorted(dues) and (not dues or (dues[0] >= last and dues[-1] <= now))
        last = dues[-1] if dues else last
        total += len(fired)
        if total < 300:
            check_structure(wheel, after_advance=True)
    assert total == n - n // 10
    assert not any(wheel._occupied) and not wheel._ready


# -- stateful property test against a heap model -------------------------------------


class HeapModel:
    """The obvious implementation: a heap of (due, seq, key) with lazy deletion."""

    def __init__(self, now):
        self.now = now
        self.heap = []
        self.live = {}  # key -> (seq, due, payload)
        self.seq = 0

    def schedule(self, key, due, payload):
        self.seq += 1
        self.live[key] = (self.seq, due, payload)
        heapq.heappush(self.heap, (due, self.seq, key))

    def cancel(self, key):
        return self.live.pop(key, None) is not None

    def _skip_stale(self):
        while self.heap and self.live.get(self.heap[0][2], (None,))[0] != self.heap[0][1]:
            heapq.heappop(self.heap)

    def advance(self, now):
        self.now = max(self.now, now)
        out = []
        self._skip_stale()
        while self.heap and self.heap[0][0] <= self.now:
            due, _, key = heapq.heappop(self.heap)
            out.append((due, key, self.live.pop(key)[2]))
            self._skip_stale()
        return out

    def next_due(self):
        self._skip_stale()
        return self.heap[0][0] if self.heap else None


MS, SEC, MIN, HOUR = 0.001, 1.0, 60.0, 3600.0
offsets = st.one_of(
    st.builds(
        lambda unit, n, frac: unit * n + frac,
        st.sampled_from([MS, SEC, MIN, HOUR, DAY, YEAR, 30 * YEAR, 4000 * YEAR]),
        st.integers(-2, 30),
        st.sampled_from([0.0, 0.0004, 0.0009999]),
    ),
    st.floats(-1.0, 1.0),
)


class WheelMachine(RuleBasedStateMachine):
    @initialize(
        slot_bits=st.sampled_from([1, 2, 3, 8]),
        levels=st.sampled_from([1, 2, 3, 6]),
        origin=st.sampled_from([0.0, BASE]),  # 0.0: exact ms ticks, and times either side of 0
        start=st.floats(-1000.0, 1000.0) | st.integers(-50, 50).map(lambda n: n / 1000),
    )
    def start(self, slot_bits, levels, origin, start):
        now = origin + start
        self.levels = levels
        self.wheel = TimingWheel(now, slot_bits=slot_bits, levels=levels)
        self.model = HeapModel(now)
        self.payloads = 0

    @rule(key=st.integers(0, 12), offset=offsets)
    def schedule(self, key, offset):
        self.payloads += 1
        due = self.model.now + offset
        self.wheel.schedule(key, due, self.payloads)
        self.model.schedule(key, due, self.payloads)

    @rule(key=st.integers(0, 12))
    def cancel(self, key):
        assert self.wheel.cancel(key) == self.model.cancel(key)

    @rule(step=offsets)
    def advance(self, step):
        now = self.model.now + step  # negative steps try to go backwards
        assert self.wheel.advance(now) == self.model.advance(now)
        check_structure(self.wheel, after_advance=True)

    @precondition(lambda self: self.model.live)
    @rule()
    def follow_time_to_next(self):
        # Sleeping for time_to_next and advancing reaches the next entry in a few wakes.
        for _ in range(2 * self.levels + 4):
            now = self.model.now + self.wheel.time_to_next(self.model.now)
            fired = self.wheel.advance(now)
            assert fired == self.model.advance(now)
            if fired:
                return
        raise AssertionError("time_to_next did not lead to the next entry")

    @invariant()
    def agrees_with_model(self):
        wheel, model = self.wheel, self.model
        assert wheel.now == model.now
        check_structure(wheel)
        assert len(wheel) == len(model.live)
        for key in range(13):
            assert (key in wheel) == (key in model.live)
            assert wheel.due_of(key) == (model.live[key][1] if key in model.live else None)
        true_next = model.next_due()
        assert wheel.next_due() == true_next
        ttn = wheel.time_to_next(model.now)
        if true_next is None:
            assert ttn is None
        else:
            assert 0.0 <= ttn <= max(0.0, true_next - model.now)
            assert (ttn == 0.0) == (true_next <= model.now)


WheelMachine.TestCase.settings = settings(max_examples=examples(800), stateful_step_count=40,
                                          deadline=None)
test_wheel_matches_heap_model = WheelMachine.TestCase
