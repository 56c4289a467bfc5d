"""The Dispatcher: from a due occurrence to a run on a worker, with the job's policies.

The schedule decides which occurrences are due (and which are skipped at their job's
limit); the dispatcher turns each into an execution and applies, in order:

1. ``overlap: "replace"``: the runs the occurrence replaces are stopped first (taken out
   if they are still waiting here, else stopped on their worker), recorded ``replaced``;
2. jitter: the run waits ``delayed_s`` after its instant;
3. ``concurrency_group``: it runs when no other run of its group does, else waits in
   scheduled order (bounded; beyond that, skipped);
and, as runs finish, schedules retries, sets off hooks and lets the group's next run go.

Every run taken here is counted in flight by the schedule from the moment it is taken
(so ``overlap`` sees a delayed or waiting run as running), and every one ends in
exactly one record: its worker's, or one made here when it never reached a worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from supervisor.jobfiles.policy_keys import HookTask
from supervisor.policies.groups import GroupGate
from supervisor.policies.hooks import hook_execution, hooks_for
from supervisor.policies.jitter import delay_for
from supervisor.policies.later import LaterQueue
from supervisor.policies.retry import next_attempt, retry_delay
from supervisor.policies.streaks import SkipStreaks
from supervisor.timing.schedule import Occurrence, Schedule
from workers.execution import Execution, failure_record, new_run_id

DELAYED = "delayed"  # LaterQueue kinds
RETRY = "retry"


class Dispatcher:
    def __init__(self, schedule: Schedule, *, hand_out: Callable[[Execution], None],
                 stop_run: Callable[[str, str], bool],
                 emit: Callable[[dict[str, Any]], None],
                 account: Callable[[dict[str, Any]], None] = lambda event: None,
                 remember: Callable[[dict[str, Any]], None] | None = None,
                 default_on_failure: HookTask | None = None, host: str | None = None,
                 rng: random.Random | None = None) -> None:
        self.schedule = schedule
        self._hand_out = hand_out  # to a worker (the coordinator marks it dispatched)
        self._stop_run = stop_run  # stop a run a worker holds: False if it has none
        self._emit = emit  # diagnostics
        self._account = account  # a skipped occurrence, for the state store
        # Pending retries for the state store (None: no store, they live in memory only).
        self._remember = remember
        self.default_on_failure = default_on_failure
        self.host = host
        self.rng = rng or random.Random()
        self.later = LaterQueue()
        self.groups = GroupGate()
        self.streaks = SkipStreaks()
        self.stopping = False
        self._records: list[dict[str, Any]] = []  # made here; the coordinator collects

    # -- occurrences in ----------------------------------------------------------------

    def offer(self, occurrence: Occurrence, now: datetime) -> Execution | None:
        """Take a due occurrence. None if it was skipped (its group's queue is full)."""
        spec = occurrence.spec
        if not occurrence.manual and occurrence.attempt is None:
            self.cancel_retries(spec.job_id, occurrence.scheduled_for)
        for run_id in occurrence.replaces:
            self.stop(spec.job_id, run_id, "replaced", now)
        delay = (0.0 if occurrence.manual or occurrence.attempt is not None
                 else delay_for(spec, host=self.host, rng=self.rng))
        execution = self.execution_for(occurrence, delay)
        self.schedule.run_started(spec.job_id, execution.run_id)
        if delay > 0:
            self.later.push(execution.not_before(), spec.job_id, DELAYED, execution)
            return execution
        return execution if self._admit(execution) else None

    def execution_for(self, occurrence: Occurrence, delay_s: float = 0.0) -> Execution:
        spec = occurrence.spec
        policy = spec.policy
        attempt = occurrence.attempt or (1 if policy.retry is not None else None)
        return Execution(
            run_id=new_run_id(), job_id=spec.job_id,
            scheduled_for=occurrence.scheduled_for.isoformat(), task_type=spec.task_type,
            task_params=dict(spec.task_params), timeout_s=spec.timeout_s,
            manual=occurrence.manual, catch_up=occurrence.catch_up, attempt=attempt,
            user=policy.user, group=policy.group, env_file=policy.env_file,
            delayed_s=delay_s or None)

    def _admit(self, execution: Execution) -> bool:
        """Through the concurrency group to a worker; False if skipped."""
        state = self.schedule.jobs.get(execution.job_id)
        group = state.spec.policy.concurrency_group if state is not None else None
        if self.schedule.limits_elsewhere:  # a cluster's claims hold the groups
            group = None
        verdict = "run" if group is None else self.groups.admit(group, execution)
        if verdict == "run":
            self._hand_out(execution)
        elif verdict == "queued":
            self._emit({"event": "queued", "level": "info", "job_id": execution.job_id,
                        "file": state.spec.file if state else None,
                        "scheduled_for": execution.scheduled_for, "group": group,
                        "reason": f"concurrency_group {group!r} is busy"})
        else:
            self.schedule.run_dropped(execution.job_id, execution.run_id)
            self.skipped({"event": "skipped", "level": "warning", "job_id": execution.job_id,
                          "file": state.spec.file if state else None,
                          "scheduled_for": execution.scheduled_for,
                          "reason": f"concurrency_group {group!r}: a run of this job is "
                                    f"already waiting"})
        return verdict != "skipped"

    def skipped(self, event: dict[str, Any]) -> None:
        """A skipped occurrence: the first of a streak is said, the rest counted."""
        self._account(event)
        shown = self.streaks.note(event)
        if shown is not None:
            self._emit(shown)

    # -- time ------------------------------------------------------------------------

    def time_to_next(self, now: datetime, lead_s: float) -> float | None:
        """Until ``due`` has something to do. Delayed runs go out ``lead_s`` early (the
        worker holds them to their ``not_before``); retries at their time."""
        now_ts = now.timestamp()
        times = [t for t in (self.later.time_to_next(now_ts + lead_s, DELAYED),
                             self.later.time_to_next(now_ts, RETRY)) if t is not None]
        return min(times, default=None)

    def due(self, now: datetime, lead_s: float) -> None:
        now_ts = now.timestamp()
        for execution in self.later.due(now_ts + lead_s, DELAYED):
            self._admit(execution)
        for pending in self.later.due(now_ts, RETRY):
            self._retry(pending, now)

    def _retry(self, pending: tuple[str, datetime, bool, int], now: datetime) -> None:
        job_id, scheduled_for, manual, attempt = pending
        state = self.schedule.jobs.get(job_id)
        if state is None or self.stopping:
            return  # the job went away meanwhile
        self._forget_retry(job_id)
        self.offer(Occurrence(state.spec, scheduled_for, manual=manual, attempt=attempt), now)

    def cancel_retries(self, job_id: str, superseded_by: datetime) -> None:
        """The job's next scheduled occurrence came: a retry still waiting is dropped."""
        for _, scheduled_for, _, attempt in self.later.cancel(job_id, RETRY):
            self._forget_retry(job_id)
            self._retry_cancelled(job_id, scheduled_for, attempt, superseded_by)

    def _retry_cancelled(self, job_id: str, scheduled_for: datetime, attempt: int,
                         superseded_by: datetime) -> None:
        state = self.schedule.jobs.get(job_id)
        self._emit({"event": "retry_cancelled", "level": "info", "job_id": job_id,
                    "file": state.spec.file if state else None,
                    "scheduled_for": scheduled_for.isoformat(), "attempt": attempt,
                    "reason": f"the next occurrence ({superseded_by.isoformat()}) "
                              f"came due first"})

    def _keep_retry(self, job_id: str, scheduled_for: datetime, manual: bool, attempt: int,
                    due_at: float) -> None:
        if self._remember is not None:
            self._remember({"mark": "retry", "job_id": job_id,
                            "scheduled_for": scheduled_for.isoformat(), "attempt": attempt,
                            "due_at": due_at, "manual": manual})

    def _forget_retry(self, job_id: str) -> None:
        if self._remember is not None:
            self._remember({"mark": "retry_done", "job_id": job_id})

    def restore(self, pending: list[dict[str, Any]], now: datetime) -> None:
        """Retries an earlier daemon left waiting (from the state store): each runs at its
        time, or at once if that passed, unless its job is gone, has no retry any more, or
        its next occurrence came meanwhile (that occurrence is catch-up's to decide)."""
        for item in pending:
            job_id = item["job_id"]
            scheduled_for = datetime.fromisoformat(item["scheduled_for"])
            state = self.schedule.jobs.get(job_id)
            superseded = None
            if state is not None and not item["manual"]:
                following = state.spec.trigger.next_after(scheduled_for)
                superseded = following if following is not None and following <= now else None
            if state is None or state.spec.policy.retry is None or superseded is not None:
                self._forget_retry(job_id)
                if superseded is not None:
                    self._retry_cancelled(job_id, scheduled_for, item["attempt"], superseded)
                continue
            self.later.push(max(item["due_at"], now.timestamp()), job_id, RETRY,
                            (job_id, scheduled_for, item["manual"], item["attempt"]))
            self._emit({"event": "retry_restored", "level": "info", "job_id": job_id,
                        "file": state.spec.file, "scheduled_for": item["scheduled_for"],
                        "attempt": item["attempt"],
                        "in_s": round(max(0.0, item["due_at"] - now.timestamp()), 3)})

    # -- runs out --------------------------------------------------------------------

    def stop(self, job_id: str, run_id: str, error: str, now: datetime) -> None:
        """Stop one run wherever it is; its record says ``error``."""
        waiting = (self.later.take(job_id, DELAYED, run_id)
                   or self.groups.take_waiting(run_id))
        if waiting is not None:
            self._records.append(failure_record(waiting, started=now, finished=now,
                                                worker=0, error=error))
        else:
            self._stop_run(run_id, error)

    def finished(self, record: dict[str, Any], previous_status: str | None,
                 now: datetime) -> None:
        """A run's record was collected (after the schedule saw it)."""
        if record.get("hook"):
            return
        following = self.groups.finished(record["run_id"])
        if following is not None:
            self._hand_out(following)
        closing = self.streaks.close(record["job_id"])
        if closing is not None:
            self._emit(closing)
        state = self.schedule.jobs.get(record["job_id"])
        if state is None:
            return  # removed while it ran: no retry, no hooks
        spec = state.spec
        attempt = next_attempt(spec.policy.retry, record)
        if attempt is not None:
            assert spec.policy.retry is not None
            delay = retry_delay(spec.policy.retry, attempt, self.rng)
            scheduled_for = datetime.fromisoformat(record["scheduled_for"])
            manual = bool(record.get("manual"))
            due_at = now.timestamp() + delay
            self._keep_retry(spec.job_id, scheduled_for, manual, attempt, due_at)
            if not self.stopping:
                self.later.push(due_at, spec.job_id, RETRY,
                                (spec.job_id, scheduled_for, manual, attempt))
            self._emit({"event": "retry_scheduled", "level": "info", "job_id": spec.job_id,
                        "file": spec.file, "run_id": record["run_id"],
                        "scheduled_for": record["scheduled_for"], "attempt": attempt,
                        "of": spec.policy.retry.attempts, "in_s": round(delay, 3),
                        "error": record.get("error"),
                        **({"after": "the next start"} if self.stopping else {})})
        if self.stopping:
            return  # workers are leaving: a hook would only be recorded "shutdown"
        for hook in hooks_for(record, spec, previous_status=previous_status,
                              retrying=attempt is not None,
                              default_on_failure=self.default_on_failure):
            own = hook is not self.default_on_failure
            self._hand_out(hook_execution(hook, record, spec, own=own))

    def job_removed(self, job_id: str) -> None:
        if self.later.cancel(job_id, RETRY):
            self._forget_retry(job_id)

    def take_records(self) -> list[dict[str, Any]]:
        records, self._records = self._records, []
        return records

    def drain(self, error: str, now: datetime) -> list[dict[str, Any]]:
        """At shutdown: every run still waiting here ends as ``error``; pending retries
        are dropped (said once each)."""
        self.stopping = True
        records = self.take_records()
        for kind, item in self.later.drain():
            if kind == DELAYED:
                records.append(failure_record(item, started=now, finished=now, worker=0,
                                              error=error))
            else:  # kept in the store for the next start, or lost with this daemon
                job_id, scheduled_for, _, attempt = item
                kept = self._remember is not None
                self._emit({"event": "retry_kept" if kept else "retry_dropped",
                            "level": "info" if kept else "warning", "job_id": job_id,
                            "scheduled_for": scheduled_for.isoformat(), "attempt": attempt,
                            "reason": "runs after the next start" if kept else
                            "taskd is stopping and has no state dir"})
        records += [failure_record(execution, started=now, finished=now, worker=0,
                                   error=error) for execution in self.groups.drain()]
        for event in self.streaks.close_all():
            self._emit(event)
        return records

    def status(self) -> dict[str, Any]:
        return {"groups": self.groups.status(), "waiting": len(self.later)}

    def job_status(self, job_id: str) -> dict[str, Any]:
        retries = self.later.pending(job_id, RETRY)
        return {"retry_pending": [{"scheduled_for": scheduled_for.isoformat(),
                                   "attempt": attempt}
                                  for _, scheduled_for, _, attempt in retries],
                "delayed": len(self.later.pending(job_id, DELAYED))}

