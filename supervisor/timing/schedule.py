"""The job table and its timing wheel: which occurrence is due when, and the policies.

Pure: nothing here reads a clock or touches a process. Every method takes ``now`` (an
aware datetime), so the coordinator's loop and the tests drive time themselves.

Policies:
- A cron job's next occurrence is computed from ``now`` when it is added or its schedule
  changes. When occurrences come due together (the wall clock jumped, the machine was
  suspended, the loop stalled) a job runs at most once for the span: the latest one, if it
  is at most ``misfire_grace_s`` late; the others are reported missed, never run in a storm.
- A one-time job runs once. Past its instant when first loaded, it runs at once if at most
  ``misfire_grace_s`` late, else it is reported missed. Reloading its file unchanged
  never runs it again; a new timestamp schedules it anew.
- ``overlap: "skip"``: an occurrence that comes due while a run of the same job is still
  waiting or running is reported skipped; ``max_concurrent`` N: skipped while N are.
  ``overlap: "replace"``: the occurrence comes with the oldest runs to stop
  (``Occurrence.replaces``) so that the limit (1, or ``max_concurrent``) holds.
- ``enabled: false``, or paused (``taskd pause``): loaded, shown, never scheduled.
- ``starting_deadline_s`` (default ``misfire_grace_s``) is a job's own grace.

Memory (``remember``, from the state store when the daemon has one): one-time
instants already run or missed are never run again, and each job's last runs carry
over. While the first load is under way (``catching_up``), a cron job with
``catch_up`` that the store knows looks back at what fell while no taskd ran: since the
latest of the previous daemon's last sign of life, the job's last accounted occurrence
and the moment it was first seen. ``"latest"`` runs the newest of those once, ``"all"``
each (the newest ``max_catch_up``, oldest first, one at a time); an occurrence more than
the deadline ago, or beyond the bound, is reported missed.

Early hand-out: ``due(now, lead_s)`` also returns occurrences up to ``lead_s`` ahead, so
a worker can hold the run and start it at its instant (the coordinator's wake-up and
hand-off are then off the critical path). Such an occurrence is decided exactly as it
would be at its instant; only an ``overlap: "skip"`` job still running is not decided
early: it is held back (``_at_instant``) and decided when its instant comes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from supervisor.jobfiles.jobspec import JobSpec
from supervisor.store.abc import JobMemory, Memory
from supervisor.timing.timing_wheel import TimingWheel
from supervisor.timing.triggers import OneTimeTrigger

# Counting missed occurrences one by one is bounded: past this, skip straight to now.
MAX_MISSED_COUNTED = 100_000


# How many finished runs each job remembers for ``taskd status JOB_ID``.
HISTORY_LENGTH = 20


@dataclass(slots=True)
class Runs:
    """What a job's runs have left behind."""

    # The run ids handed out and not finished, oldest first (``overlap: "replace"``
    # stops the oldest).
    running: dict[str, None] = field(default_factory=dict)
    last_started: str | None = None  # ISO timestamp of the last finished run's start
    last_status: str | None = None
    last_error: str | None = None
    last_success: str | None = None  # ISO: start of the last successful run
    last_failure: str | None = None
    history: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_LENGTH))


_NEVER_RAN = Runs(history=deque(maxlen=0))  # read-only stand-in: never written to
_anonymous_runs = iter(range(1, 2**62))  # run ids for callers that give none (tests)


@dataclass(slots=True)
class JobState:
    spec: JobSpec
    next_fire: datetime | None = None
    # The latest occurrence taken (run or missed), which may be ahead of now when it was
    # handed out early: a reschedule never hands it out again.
    last_taken: datetime | None = None
    # Created by the first run, so 100,000 jobs that never ran cost one pointer each here.
    runs: Runs | None = None

    def started(self) -> Runs:
        if self.runs is None:
            self.runs = Runs()
        return self.runs

    @property
    def in_flight(self) -> int:
        return len((self.runs or _NEVER_RAN).running)

    @property
    def running(self) -> list[str]:
        return list((self.runs or _NEVER_RAN).running)

    @property
    def last_started(self) -> str | None:
        return (self.runs or _NEVER_RAN).last_started

    @property
    def last_status(self) -> str | None:
        return (self.runs or _NEVER_RAN).last_status

    @property
    def last_error(self) -> str | None:
        return (self.runs or _NEVER_RAN).last_error

    @property
    def last_success(self) -> str | None:
        return (self.runs or _NEVER_RAN).last_success

    @property
    def last_failure(self) -> str | None:
        return (self.runs or _NEVER_RAN).last_failure

    @property
    def history(self) -> deque[dict[str, Any]] | None:
        return None if self.runs is None else self.runs.history


@dataclass(frozen=True, slots=True)
class Occurrence:
    """A due occurrence of a job, to be turned into an execution."""

    spec: JobSpec
    scheduled_for: datetime
    manual: bool = False
    catch_up: bool = False
    attempt: int | None = None  # with ``retry``: which attempt at this occurrence
    replaces: tuple[str, ...] = ()  # ``overlap: "replace"``: the runs to stop first
    at_start: bool = False  # an ``@reboot`` job's run as the daemon starts


class Schedule:
    def __init__(self, now: datetime, *, misfire_grace_s: float) -> None:
        self.jobs: dict[str, JobState] = {}
        self.wheel = TimingWheel(now.timestamp())
        self.misfire_grace_s = misfire_grace_s
        # One-time jobs that have fired or been missed: (job_id, epoch of the instant).
        self._one_time_done: set[tuple[str, float]] = set()
        # What the state store remembers of each job (empty without a store).
        self._remembered: dict[str, JobMemory] = {}
        self._last_alive: float | None = None
        self.catching_up = False  # set by the coordinator around the first load
        # Catch-up runs waiting, per job, oldest first: one at a time (see catch_up_due).
        self._catch_up: dict[str, deque[datetime]] = {}
        # Paused by `taskd pause` (kept in the store): loaded, shown, never scheduled.
        self.paused: set[str] = set()
        self.max_deadline_s = float("inf")  # with a store: its history's length
        # Occurrences seen early whose decision waits for their instant (epoch seconds).
        self._at_instant: dict[str, float] = {}
        self._events: list[dict[str, Any]] = []
        # Removed jobs' occurrences handed out ahead of their instant (see remove()).
        self._taken_ahead: dict[str, datetime] = {}
        # In a cluster the claims hold each job's limit over every node's runs: every
        # occurrence is offered, and the claim skips it (cluster/claims.py).
        self.limits_elsewhere = False

    def remember(self, memory: Memory) -> None:
        """What a previous daemon on this state dir left (before the first load)."""
        self._one_time_done |= memory.one_time_done
        self._remembered = memory.jobs
        self._last_alive = memory.last_alive
        self.paused |= {job_id for job_id, job in memory.jobs.items() if job.paused}

    def pause(self, job_id: str) -> bool:
        """Stop scheduling a job until ``resume`` (False: no such job)."""
        state = self.jobs.get(job_id)
        if state is None:
            return False
        self.paused.add(job_id)
        self._catch_up.pop(job_id, None)
        self._set_next(state, None)
        return True

    def resume(self, job_id: str, now: datetime) -> bool:
        """Schedule a paused job again from ``now``: what fell while it was paused is not
        made up (APScheduler's resume_from="now"); a one-time instant that passed meanwhile
        runs if within the job's deadline, else it is missed."""
        state = self.jobs.get(job_id)
        if state is None:
            return False
        if job_id in self.paused:
            self.paused.discard(job_id)
            self._schedule_first(state, now)
        return True

    def knows(self, job_id: str) -> bool:
        return job_id in self._remembered

    def grace_s(self, spec: JobSpec) -> float:
        deadline = spec.starting_deadline_s
        grace = self.misfire_grace_s if deadline is None else deadline
        # The store forgets one-time instants older than its history: never run one.
        return min(grace, self.max_deadline_s)

    # -- the job table ---------------------------------------------------------------

    def upsert(self, spec: JobSpec, now: datetime) -> None:
        """Add a job or replace its definition; reschedule only if its timing changed."""
        state = self.jobs.get(spec.job_id)
        if state is not None:
            timing_same = (state.spec.trigger == spec.trigger
                           and state.spec.enabled == spec.enabled)
            state.spec = spec
            if timing_same:
                return  # e.g. the command or the file name changed: keep the next run
        else:
            state = self.jobs[spec.job_id] = JobState(
                spec, last_taken=self._taken_ahead.pop(spec.job_id, None))
            remembered = self._remembered.get(spec.job_id)
            if remembered is not None and remembered.last_started is not None:
                runs = state.started()
                runs.last_started = remembered.last_started
                runs.last_status = remembered.last_status
                runs.last_error = remembered.last_error
                runs.last_success = remembered.last_success
                runs.last_failure = remembered.last_failure
        self._catch_up.pop(spec.job_id, None)
        self._schedule_first(state, now)

    def remove(self, job_id: str, now: datetime | None = None) -> None:
        """Forget a job. A run in progress finishes and is recorded all the same.

        An occurrence it had handed out early (ahead of ``now``) is remembered, so a
        file that goes and comes back within that moment does not run it twice."""
        state = self.jobs.pop(job_id, None)
        if state is not None and state.last_taken is not None and (
                now is not None and state.last_taken > now):
            self._taken_ahead[job_id] = state.last_taken
        self.wheel.cancel(job_id)
        self._at_instant.pop(job_id, None)
        self._catch_up.pop(job_id, None)

    def _schedule_first(self, state: JobState, now: datetime) -> None:
        spec = state.spec
        if not spec.enabled or spec.job_id in self.paused:
            self._set_next(state, None)
        elif isinstance(spec.trigger, OneTimeTrigger):
            at = spec.trigger.at
            done = (spec.job_id, _epoch_seconds(at)) in self._one_time_done
            self._set_next(state, None if done else at)  # a past instant comes due at once
        else:
            taken = state.last_taken
            self._set_next(state, spec.trigger.next_after(
                taken if taken is not None and taken > now else now))
            if self.catching_up and spec.catch_up != "none":
                self._events.extend(self._plan_catch_up(state, now))

    # -- catch-up --------------------------------------------------------------------

    def _plan_catch_up(self, state: JobState, now: datetime) -> list[dict[str, Any]]:
        """Queue the runs of what fell while no taskd ran; diagnostics for the rest."""
        spec = state.spec
        remembered = self._remembered.get(spec.job_id)
        if remembered is None:
            return []  # new to this state dir: nothing was missed
        since = max((t for t in (self._last_alive, remembered.last_scheduled,
                                 remembered.known_since) if t is not None), default=None)
        if since is None:
            return []
        start = datetime.fromtimestamp(since, now.tzinfo)
        oldest_runnable = now.timestamp() - self.grace_s(spec)
        keep = 1 if spec.catch_up == "latest" else spec.max_catch_up
        runnable: deque[datetime] = deque(maxlen=keep)
        missed, first_missed, last_missed = 0, None, None
        following = spec.trigger.next_after(start)
        counted = 0
        while following is not None and following <= now and counted < MAX_MISSED_COUNTED:
            counted += 1
            if following.timestamp() < oldest_runnable:
                missed, last_missed = missed + 1, following
                first_missed = first_missed or following
            else:
                if len(runnable) == keep:  # pushed out of the bound: missed
                    dropped = runnable[0]
                    missed, last_missed = missed + 1, dropped
                    first_missed = first_missed or dropped
                runnable.append(following)
            following = spec.trigger.next_after(following)
        if runnable:
            self._catch_up[spec.job_id] = runnable
        if not missed:
            return []
        reason = (f"more than {self.grace_s(spec):g}s late" if not runnable else
                  f"catch_up {spec.catch_up!r} runs {len(runnable)} of "
                  f"{len(runnable) + missed}")
        assert first_missed is not None and last_missed is not None
        return [_event("missed", spec, first_missed, count=missed,
                       last=last_missed.isoformat(), reason=f"while taskd was not "
                       f"running; {reason}", catch_up=True)]

    def take_events(self) -> list[dict[str, Any]]:
        """Diagnostics produced while jobs were added (catch-up's missed occurrences)."""
        events, self._events = self._events, []
        return events

    def _catch_up_free(self) -> Iterator[tuple[JobState, deque[datetime]]]:
        """Jobs with catch-up runs waiting and none of their runs in flight."""
        for job_id, waiting in self._catch_up.items():
            state = self.jobs.get(job_id)
            if state is not None and not state.in_flight:
                yield state, waiting

    def catch_up_due(self) -> list[Occurrence]:
        """The next catch-up run of each job with none of its runs in flight."""
        occurrences = [Occurrence(state.spec, waiting.popleft(), catch_up=True)
                       for state, waiting in list(self._catch_up_free())]
        for occurrence in occurrences:
            if not self._catch_up[occurrence.spec.job_id]:
                del self._catch_up[occurrence.spec.job_id]
        return occurrences

    def catch_up_ready(self) -> bool:
        """Whether ``catch_up_due`` has a run to hand out now."""
        return any(True for _ in self._catch_up_free())

    @property
    def catching_up_jobs(self) -> int:
        return len(self._catch_up)

    def _set_next(self, state: JobState, when: datetime | None) -> None:
        state.next_fire = when
        if self._at_instant:
            self._at_instant.pop(state.spec.job_id, None)
        if when is None:
            self.wheel.cancel(state.spec.job_id)
        else:
            self.wheel.schedule(state.spec.job_id, _epoch_seconds(when))

    # -- time ------------------------------------------------------------------------

    def time_to_next(self, now: datetime, lead_s: float = 0.0) -> float | None:
        """Seconds until ``due(now, lead_s)`` has something to do (None: nothing scheduled)."""
        now_ts = now.timestamp()
        to_next = self.wheel.time_to_next(now_ts + lead_s)
        if self._at_instant:
            held = min(self._at_instant.values()) - now_ts
            to_next = held if to_next is None else min(to_next, held)
        return None if to_next is None else max(0.0, to_next)

    def due(self, now: datetime, lead_s: float = 0.0
            ) -> tuple[list[Occurrence], list[dict[str, Any]]]:
        """Occurrences to run, in scheduled order, and diagnostics (missed, skipped).

        With ``lead_s``, occurrences up to that far ahead are included, each decided as
        at its own instant (its ``scheduled_for`` is that instant: nobody may start it
        earlier).
        """
        occurrences: list[Occurrence] = []
        events: list[dict[str, Any]] = []
        now_ts = now.timestamp()
        for job_id in self._due_ids(now_ts, now_ts + lead_s):
            state = self.jobs.get(job_id)
            if state is None or state.next_fire is None:
                continue
            early = state.next_fire > now
            spec = state.spec
            limit = None if self.limits_elsewhere else run_limit(spec)
            at_limit = limit is not None and state.in_flight >= limit
            if early and at_limit:  # it may have finished by its instant: decide then
                self._at_instant[job_id] = state.next_fire.timestamp()
                continue
            scheduled = self._take(state, state.next_fire if early else now, events)
            if scheduled is None:
                continue
            if at_limit and spec.overlap == "replace":
                assert limit is not None
                oldest = tuple(state.running[:state.in_flight - limit + 1])
                occurrences.append(Occurrence(spec, scheduled, replaces=oldest))
            elif at_limit:
                reason = ("previous run still in progress" if limit == 1 else
                          f"max_concurrent {limit} runs still in progress")
                events.append(_event("skipped", spec, scheduled, reason=reason))
            else:
                occurrences.append(Occurrence(spec, scheduled))
        return occurrences, events

    def _due_ids(self, now_ts: float, until_ts: float) -> Iterator[str]:
        """Held-back jobs whose instant has come, then the wheel's entries up to
        ``until_ts``; again while taking one set a next occurrence still within it."""
        yield from self._held_until(now_ts)
        while batch := self.wheel.advance(until_ts):
            for _, job_id, _ in batch:
                yield job_id

    def _held_until(self, now_ts: float) -> list[str]:
        """Held-back jobs whose instant has come, in instant order; forgotten here."""
        if not self._at_instant:
            return []
        ready = sorted((at, job_id) for job_id, at in self._at_instant.items() if at <= now_ts)
        for _, job_id in ready:
            del self._at_instant[job_id]
        return [job_id for _, job_id in ready]

    def _take(self, state: JobState, now: datetime, events: list[dict[str, Any]]
              ) -> datetime | None:
        """Consume a due job's occurrences up to ``now``: the one to run, if any."""
        spec, first = state.spec, state.next_fire
        assert first is not None
        trigger = spec.trigger
        latest, missed, following = first, 0, trigger.next_after(first)
        while following is not None and following <= now and missed < MAX_MISSED_COUNTED:
            latest, missed, following = following, missed + 1, trigger.next_after(following)
        if following is not None and following <= now:  # counted enough: jump ahead
            following = trigger.next_after(now)
        if isinstance(trigger, OneTimeTrigger):
            self._one_time_done.add((spec.job_id, _epoch_seconds(trigger.at)))
        late_s = (now - latest).total_seconds()
        grace_s = self.grace_s(spec)
        run = late_s <= grace_s
        if not run:
            missed += 1
        if missed:
            events.append(_event("missed", spec, first, count=missed,
                                 last=latest.isoformat(),
                                 reason=f"more than {grace_s:g}s late"
                                 if not run else "coalesced: ran the latest occurrence"))
        state.last_taken = latest
        self._set_next(state, following)
        return latest if run else None

    # -- runs ------------------------------------------------------------------------

    def run_started(self, job_id: str, run_id: str | None = None) -> None:
        state = self.jobs.get(job_id)
        if state is not None:
            state.started().running[run_id or f"#{next(_anonymous_runs)}"] = None

    def run_dropped(self, job_id: str, run_id: str) -> None:
        """A run taken back before it started (no record of its own counts for the job)."""
        state = self.jobs.get(job_id)
        if state is not None and state.runs is not None:
            state.runs.running.pop(run_id, None)

    def run_finished(self, record: dict[str, Any]) -> None:
        if record.get("hook"):
            return  # a hook's outcome is its own record, never the job's last run
        state = self.jobs.get(record["job_id"])
        if state is None:
            return  # the job was removed while it ran
        runs = state.started()
        run_id = record.get("run_id")
        if run_id in runs.running:
            del runs.running[run_id]
        else:  # started without an id (by a test): the oldest such run
            anonymous = next((key for key in runs.running if key.startswith("#")), None)
            if anonymous is not None:
                del runs.running[anonymous]
        runs.last_started = record["timestamp"]
        runs.last_status = record["status"]
        runs.last_error = record["error"]
        if record["status"] == "SUCCESS":
            runs.last_success = record["timestamp"]
        else:
            runs.last_failure = record["timestamp"]
        runs.history.append({key: record.get(key) for key in (
            "run_id", "timestamp", "scheduled_for", "status", "duration_ms", "exit_code",
            "error", "worker", "manual", "catch_up", "attempt", "delayed_s")})

    def manual(self, job_id: str, now: datetime) -> Occurrence | None:
        state = self.jobs.get(job_id)
        return None if state is None else Occurrence(state.spec, now, manual=True)


def run_limit(spec: JobSpec) -> int | None:
    """How many runs of a job may be in flight at once (None: no limit)."""
    if spec.policy.max_concurrent is not None:
        return spec.policy.max_concurrent
    return 1 if spec.overlap in ("skip", "replace") else None


@lru_cache(maxsize=4096)
def _epoch_seconds(when: datetime) -> float:
    """``when.timestamp()``: one float for all the jobs due at one instant (cron triggers
    share their answers), not one per job."""
    return when.timestamp()


def _event(name: str, spec: JobSpec, scheduled: datetime, **fields: Any) -> dict[str, Any]:
    level = "warning"
    return {"event": name, "level": level, "job_id": spec.job_id, "file": spec.file,
            "scheduled_for": scheduled.isoformat(), **fields}
