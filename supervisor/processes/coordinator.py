"""The coordinator: one event loop that owns the job table, the wheel and the watcher.

One loop step (``step``): wait — bounded by the wheel's next due time, the watcher's
settle deadline and the safety-net rescan — on worker channels and sentinels, the
logger, the watcher's wake-up pipe and the signal wake-up socket; then act: signals,
finished runs, settled file changes, due occurrences, hand-out. Signal handlers only
record the signal (``signal.set_wakeup_fd``); the loop decides what it means.

Time: the monotonic clock for sleeping, the wall clock for fire times. The sleep is
capped (``MAX_SLEEP_S``) so a wall-clock step (NTP, suspend/resume) is noticed within
a second; the schedule then coalesces what came due (see ``schedule.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from supervisor.control.diagnostics import Diagnostics
from supervisor.control.sd_notify import Notifier
from supervisor.jobfiles.jobdir import snapshot, stamp
from supervisor.jobfiles.jobspec import read_stamped_job_file
from supervisor.jobfiles.policy_keys import HookTask
from supervisor.jobfiles.reconcile import Changes, Reconciler
from supervisor.policies.dispatcher import Dispatcher
from supervisor.processes.handoff import ExecutionQueue
from supervisor.processes.heap import bulk_load
from supervisor.processes.readiness import wait_readable
from supervisor.store.abc import Memory
from supervisor.timing.schedule import Occurrence, Schedule
from workers.execution import Execution, failure_record

MAX_SLEEP_S = 1.0
# Occurrences are handed to idle workers this long before their instant; the worker holds
# the run and starts it on time (workers.worker_main), so neither this loop's wake-up nor
# the hand-off adds to a run's lateness.
HANDOFF_LEAD_S = 0.02
RESCAN_INTERVAL_S = 30.0
RESCAN_COST_FACTOR = 400  # the periodic rescan takes at most ~0.25 % of the loop's time
# After the grace period: time for workers to stop their tasks (TERM, then KILL after
# half a second) and report, before the coordinator kills what is left.
SHUTDOWN_KILL_AFTER_S = 3.0
LOGGER_FLUSH_S = 10.0
# How often the state store hears that this daemon is alive: catch-up after a crash
# looks back from the last of these (see schedule.py).
ALIVE_EVERY_S = 5.0
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Clock(Protocol):
    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class DaemonOptions:
    jobs_dir: str
    workers: int = 8
    log_file: str | None = None
    timezone: str = "UTC"
    misfire_grace_s: float = 60.0
    grace_period_s: float = 30.0
    rescan_interval_s: float = RESCAN_INTERVAL_S
    socket_path: str | None = None
    socket_group: str | None = None
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    allow_insecure_files: bool = False
    heartbeat_timeout_s: float = 10.0
    state_dir: str | None = None
    history_days: float = 30.0
    history_per_job: int = 1000
    on_failure: HookTask | None = None  # --on-failure: for jobs without their own
    cluster: str | None = None  # --cluster: the PostgreSQL URL the nodes share
    lease_s: float = 15.0


class Coordinator:
    def __init__(self, options: DaemonOptions, *, queue: ExecutionQueue, logger: Any,
                 watcher: Any, clock: Clock | None = None,
                 diagnostics: Diagnostics | None = None,
                 notifier: Notifier | None = None, control: Any = None,
                 metrics: Any = None, memory: Memory | None = None,
                 state: str = "memory", cluster: Any = None) -> None:
        self.options = options
        self.queue = queue
        self.logger = logger
        self.watcher = watcher
        self.clock = clock or SystemClock()
        self.diagnostics = diagnostics or Diagnostics()
        self.notifier = notifier or Notifier()
        self.control = control  # the control socket server, when there is one
        self.metrics = metrics  # Prometheus metrics, when --metrics-port is given
        # The cluster agent (cluster_agent.ClusterAgent), in cluster mode: scheduled runs
        # are offered to the cluster and run where they are claimed.
        self.cluster = cluster
        self._claimed: set[str] = set()  # run ids of this node's claims not finished
        # Runs this node held when it was declared dead: a peer recorded them node lost,
        # so their own records are not logged a second time (one record per occurrence).
        self._disowned: set[str] = set()
        # Claimed runs' records waiting for the database to take them (then logged).
        self._finishing: dict[str, dict[str, Any]] = {}
        self._published: dict[str, Any] = {}  # job id -> cluster.specs.JobVersion
        self.schedule = Schedule(self.clock.now(), misfire_grace_s=options.misfire_grace_s)
        self.schedule.limits_elsewhere = cluster is not None
        self.memory = memory  # what the state store had at start, until load() used it
        self.state = state  # the store's file, or "memory"
        if memory is not None:
            self.schedule.remember(memory)
            self.schedule.max_deadline_s = options.history_days * 86400.0
        self._marked_known: set[str] = set()
        self._next_alive = self.clock.monotonic()
        self._stopping_at: datetime | None = None
        self._loaded = False  # the first load is done (later @reboot jobs wait a start)
        self._starting = False  # handing out the @reboot runs
        self.reconciler = Reconciler(partial(
            read_stamped_job_file, default_zone=options.timezone,
            trusted_only=not options.allow_insecure_files, versioned=cluster is not None))
        self.started_at = self.clock.now()
        self.stopping = False
        self.stop_now = False
        self.rescan_requested = False
        self._next_rescan = self.clock.monotonic() + options.rescan_interval_s
        # systemd's watchdog: keep-alives come from this loop, so a wedged loop is restarted.
        self._keepalive_s = self.notifier.watchdog_interval_s()
        self._next_keepalive = self.clock.monotonic() + (self._keepalive_s or 0.0)
        self._signal_reader: socket.socket | None = None
        self.counters = {"executions": 0, "success": 0, "failure": 0}
        self.dispatcher = Dispatcher(self.schedule, hand_out=self._hand_out,
                                     stop_run=self._stop_run, emit=self.emit,
                                     account=self._account_skipped,
                                     remember=self.logger.mark if memory is not None
                                     else None,
                                     default_on_failure=options.on_failure)

    # -- start-up --------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, _record_only)
        self._signal_reader, self._signal_writer = reader, writer

    def load(self) -> None:
        """The first full scan of the jobs directory."""
        started = self.clock.monotonic()
        self._account_for_lost_runs()
        self.schedule.catching_up = self.memory is not None
        with bulk_load(), self.diagnostics.batched():
            # Every file is new: the stamps come from reading them (see jobdir.UNSTAMPED).
            self._apply(self.reconciler.full(snapshot(self.options.jobs_dir, stamped=False)))
        self.schedule.catching_up = False
        if self.memory is not None:
            self.dispatcher.restore(self.memory.pending_retries, self.clock.now())
        self._run_at_start()
        self._publish_jobs()
        self._seed_metrics()
        self.memory = None  # read once: the schedule keeps what it needs
        self._loaded = True
        # The first safety-net rescan backs off as the later ones do: a rescan costs less
        # than the load (nothing to parse), so this errs towards the quiet side.
        self._back_off_rescan(self.clock.monotonic() - started)
        jobs = len(self.schedule.jobs)
        errors = len(self.reconciler.errors())
        self.emit({"event": "ready", "level": "info", "pid": os.getpid(), "jobs": jobs,
                   "invalid_files": errors, "workers": self.options.workers,
                   "worker_pids": self.queue.worker_pids(), "logger_pid": self.logger.pid,
                   "jobs_dir": self.options.jobs_dir, "state": self.state,
                   "catching_up": self.schedule.catching_up_jobs})
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        self._update_gauges()

    def _account_for_lost_runs(self) -> None:
        """Runs a previous daemon handed out and never recorded (it was killed, or the
        machine went down): one FAILURE record each, ``daemon lost``. Never re-run."""
        if self.memory is None or self.cluster is not None:
            return  # in a cluster, a dead node's runs are its peers' to record
        alive = self.memory.last_alive
        for run in self.memory.unfinished:
            started = datetime.fromtimestamp(run["dispatched_at"], UTC)
            ended = datetime.fromtimestamp(max(run["dispatched_at"], alive or 0.0), UTC)
            execution = Execution(run_id=run["run_id"], job_id=run["job_id"],
                                  scheduled_for=run["scheduled_for"], task_type="",
                                  manual=run["manual"])
            record = failure_record(execution, started=started, finished=ended, worker=0,
                                    error="daemon lost")
            self._collect([record])

    def _run_at_start(self) -> None:
        """``@reboot`` / ``@start`` jobs: one run each, now that the daemon has started."""
        now = self.clock.now()
        self._starting = True  # in a cluster too, each node runs them as it starts
        for state in list(self.schedule.jobs.values()):
            spec = state.spec
            if spec.at_start and spec.enabled and spec.job_id not in self.schedule.paused:
                self.submit(Occurrence(spec, now, at_start=True))
        self._starting = False

    def _seed_metrics(self) -> None:
        if self.metrics is None or self.memory is None:
            return
        for job_id, job in self.memory.jobs.items():
            if job_id in self.schedule.jobs:
                self.metrics.job_ran(job_id, "SUCCESS", job.last_success)
                self.metrics.job_ran(job_id, "FAILURE", job.last_failure)

    # -- the loop --------------------------------------------------------------------

    def run_forever(self) -> None:
        while not self.stopping:
            self.step()

    def step(self, *, wait: Callable[[list[Any], float], list[Any]] = wait_readable) -> None:
        ready = wait(self._wait_objects(), self._sleep_s())
        # What has its own wake-up object is looked at only when that object is ready
        # (during a burst the loop steps about once per run).
        if self._signal_reader in ready:
            self._read_signals()
        if self.stopping:
            return  # shut_down() takes it from here; nothing new is started or respawned
        logger_objects = self.logger.wait_objects()
        if not logger_objects or _any_in(logger_objects, ready):  # none: it is restarting
            self.logger.handle_readable()
            self.logger.check()
        self._collect(self.queue.service())
        self._collect(self.dispatcher.take_records())
        if self.cluster is not None:
            self._cluster_step(ready)
        if self.control is not None and (self.control.clients
                                         or _any_in(self.control.wait_objects(), ready)):
            self.control.service()  # may ask for a run, a reload or a stop
        self._watch()
        self._dispatch_due()  # ExecutionQueue.put hands out to idle workers at once
        self._mark_alive()
        self.logger.pump()
        self._keep_alive()
        self._update_gauges()

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.set_gauges(
                queue_depth=self.queue.depth(), busy_workers=len(self.queue.busy()),
                workers=self.options.workers, invalid_files=len(self.reconciler.errors()),
                jobs=len(self.schedule.jobs))
            if self.cluster is not None:
                self.metrics.set_clock_offset(self.cluster.offset_s)

    def _keep_alive(self) -> None:
        mono = self.clock.monotonic()
        if self._keepalive_s is None or mono < self._next_keepalive:
            return
        self._next_keepalive = mono + self._keepalive_s
        self.notifier.notify("WATCHDOG=1", f"STATUS={self.status_line()}")

    def _mark_alive(self, *, at: datetime | None = None) -> None:
        mono = self.clock.monotonic()
        if not self.logger.storing or (mono < self._next_alive and at is None):
            return
        self._next_alive = mono + ALIVE_EVERY_S
        self.logger.mark({"mark": "alive", "at": (at or self.clock.now()).timestamp()})

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what an operator sees in ``systemctl status``."""
        busy = sum(1 for worker in self.queue.worker_status() if worker["state"] == "busy")
        return (f"{len(self.schedule.jobs)} jobs, {len(self.reconciler.errors())} invalid "
                f"files, {busy}/{self.options.workers} workers busy, queue "
                f"{self.queue.depth()}, {self.counters['executions']} executions")

    def _wait_objects(self) -> list[Any]:
        objects = [*self.queue.wait_objects(), *self.logger.wait_objects()]
        if self.cluster is not None:
            objects.append(self.cluster.wait_object())
        if not self.stopping:
            objects.append(self.watcher)
            if self.control is not None:
                objects += self.control.wait_objects()
        if self._signal_reader is not None:
            objects.append(self._signal_reader)
        return objects

    def _sleep_s(self) -> float:
        if self.schedule.catch_up_ready():
            return 0.0
        mono = self.clock.monotonic()
        limits = [MAX_SLEEP_S, self._next_rescan - mono]
        if self._keepalive_s is not None:
            limits.append(self._next_keepalive - mono)
        now = self.clock.now()
        for to_next in (self.schedule.time_to_next(now, HANDOFF_LEAD_S),
                        self.dispatcher.time_to_next(now, HANDOFF_LEAD_S)):
            if to_next is not None:
                limits.append(to_next)
        for deadline in (self.watcher.next_deadline(),
                         self.control.next_deadline() if self.control else None):
            if deadline is not None:
                limits.append(deadline - mono)
        return max(0.0, min(limits))

    def _read_signals(self) -> None:
        if self._signal_reader is None:
            return
        try:
            data = self._signal_reader.recv(256)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGHUP:
                self.request_reload("SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.request_stop(signal.Signals(signum).name)  # a second one: no grace

    def _watch(self) -> None:
        mono = self.clock.monotonic()
        full = self.rescan_requested or self.watcher.take_rescan_needed()
        if mono >= self._next_rescan:
            full = self.watcher.health_check() or True
        if full:
            self.rescan_requested = False
            self._rescan()
        else:
            paths = self.watcher.settled(mono)
            if paths:
                self._apply(self.reconciler.paths(paths, stamp))
        for event in self.watcher.drain_diagnostics():  # after the health check's own
            self.emit(event)

    def _rescan(self) -> None:
        """Compare the whole directory with the job table (the safety net, and SIGHUP)."""
        started = self.clock.monotonic()
        try:
            with bulk_load(), self.diagnostics.batched():
                self._apply(self.reconciler.full(snapshot(self.options.jobs_dir)))
        except OSError as error:
            self.emit({"event": "jobs_dir_unreadable", "level": "error",
                       "file": self.options.jobs_dir, "error": str(error)})
        self._back_off_rescan(self.clock.monotonic() - started)

    def _back_off_rescan(self, took: float) -> None:
        # With a huge directory the periodic scan itself costs: keep it under about
        # 1/RESCAN_COST_FACTOR of the loop's time whatever the directory's size.
        self._next_rescan = self.clock.monotonic() + max(self.options.rescan_interval_s,
                                                         RESCAN_COST_FACTOR * took)

    def _apply(self, changes: Changes) -> None:
        now = self.clock.now()
        for job_id in changes.removed:
            self.schedule.remove(job_id, now)
            self.dispatcher.job_removed(job_id)
        known: list[str] = []
        for spec in changes.upserted:
            if spec.at_start and spec.job_id not in self.schedule.jobs and self._loaded:
                self.emit({"event": "runs_at_start", "level": "info", "job_id": spec.job_id,
                           "file": spec.file, "reason": f"schedule {spec.schedule!r} runs "
                           f"each time taskd starts; not now (taskd run {spec.job_id} runs "
                           f"it by hand)"})
            self.schedule.upsert(spec, now)
            if (spec.catch_up != "none" and self.logger.storing
                    and spec.job_id not in self._marked_known
                    and not self.schedule.knows(spec.job_id)):
                known.append(spec.job_id)  # from now on it can miss something
        if known:
            self._marked_known.update(known)
            self.logger.mark({"mark": "known", "job_ids": known, "at": now.timestamp()})
        for event in changes.events:
            self.emit(event)
        for event in self.schedule.take_events():
            self._missed(event)
        if self._loaded and (changes.upserted or changes.removed):
            self._publish_jobs(changes)

    def _dispatch_due(self) -> None:
        now = self.clock.now()
        occurrences, events = self.schedule.due(now, HANDOFF_LEAD_S)
        for event in events:
            self._missed(event)
        for occurrence in occurrences:
            self.submit(occurrence)
        for occurrence in self.schedule.catch_up_due():
            self.submit(occurrence)
        self.dispatcher.due(now, HANDOFF_LEAD_S)

    def _missed(self, event: dict[str, Any]) -> None:
        """A missed or skipped diagnostic; the store remembers the occurrences are done."""
        if event["event"] == "skipped":
            self.dispatcher.skipped(event)  # one line per streak of them
            return
        if event["event"] == "missed" and self.cluster is not None:
            event = self._offer_missed(event)
            if event is None:
                return
        self.emit(event)
        if event["event"] == "missed":
            self._account_skipped(event)

    def _offer_missed(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """In a cluster, what this node missed a peer may have run: its occurrences are
        offered past their deadline instead (a peer's claim stands; one nobody claimed
        is expired, and said missed, by exactly one node). Beyond the first
        ``MAX_MISSED_OFFERED``, the rest is said here; None if nothing is left to say."""
        state = self.schedule.jobs.get(event["job_id"])
        if state is None:
            return event
        at = datetime.fromisoformat(event["scheduled_for"])
        last = datetime.fromisoformat(event.get("last", event["scheduled_for"]))
        version = self._published.get(state.spec.job_id)
        offered = 0
        while at is not None and at <= last and offered < MAX_MISSED_OFFERED:
            self.cluster.offer(state.spec.job_id, at,
                               version.spec_hash if version is not None else None, 0.0)
            offered += 1
            at = state.spec.trigger.next_after(at)
        left = int(event.get("count", 1)) - offered
        if at is None or at > last or left <= 0:
            return None
        return {**event, "scheduled_for": at.isoformat(), "count": left}

    def _account_skipped(self, event: dict[str, Any]) -> None:
        if self.logger.storing:
            state = self.schedule.jobs.get(event["job_id"])
            self.logger.mark({"mark": "missed", "job_id": event["job_id"],
                              "scheduled_for": event.get("last", event["scheduled_for"]),
                              "one_time": bool(state and state.spec.one_time)})

    def submit(self, occurrence: Occurrence) -> Execution | None:
        """Hand a due occurrence to the dispatcher (policies, then a worker); in a
        cluster, a scheduled one without jitter straight to the cluster's offers (its
        policies are the claims' and the claiming node's)."""
        if (self.cluster is not None and not self._starting and not occurrence.manual
                and occurrence.attempt is None and not occurrence.spec.policy.jitter_s):
            self.dispatcher.cancel_retries(occurrence.spec.job_id, occurrence.scheduled_for)
            self._offer_occurrence(occurrence.spec, occurrence.scheduled_for)
            return None
        return self.dispatcher.offer(occurrence, self.clock.now())

    def _hand_out(self, execution: Execution) -> None:
        """To a worker, now; in a cluster, a scheduled run is offered instead, and runs
        where it is claimed (see ``_cluster_step``). Every run but a hook's is marked
        dispatched in the store first: its record comes after this."""
        if self.cluster is not None:
            if _claimable(execution) and not self._starting:
                self._offer(execution)
                return
            self.queue.put(execution)  # manual runs, retries and hooks: this node's own
            return
        if self.logger.storing and execution.hook is None:
            state = self.schedule.jobs.get(execution.job_id)
            self.logger.mark({"mark": "dispatched", "job_id": execution.job_id,
                              "run_id": execution.run_id,
                              "scheduled_for": execution.scheduled_for,
                              "at": self.clock.now().timestamp(),
                              "one_time": bool(state and state.spec.one_time),
                              "manual": execution.manual})
        self.queue.put(execution)

    # -- cluster mode --------------------------------------------------------------------

    def _offer(self, execution: Execution) -> None:
        state = self.schedule.jobs.get(execution.job_id)
        self.schedule.run_dropped(execution.job_id, execution.run_id)  # runs where claimed
        if state is not None:
            self._offer_occurrence(state.spec, datetime.fromisoformat(execution.scheduled_for))

    def _offer_occurrence(self, spec: Any, scheduled_for: datetime) -> None:
        version = self._published.get(spec.job_id)
        # What came due while the database was away follows the job's catch_up: "all"
        # offers each (up to max_catch_up), else the latest; its deadline, the rest.
        self.cluster.offer(spec.job_id, scheduled_for,
                           version.spec_hash if version is not None else None,
                           self.schedule.grace_s(spec),
                           keep=spec.max_catch_up if spec.catch_up == "all" else 1)

    def _cluster_step(self, ready: list[Any]) -> None:
        if self.cluster.wait_object() in ready:
            results = self.cluster.take()
            for event in results.events:
                self.emit(event)
            if results.fenced:
                self._disowned |= self._claimed
                self._claimed = set()
                for run_id in sorted(self._disowned):
                    self._stop_run(run_id, "node lost")
            for record, kept in results.finished:
                self._finishing.pop(record["run_id"], None)
                if kept:  # in the shared store: the logger writes its line only
                    self._collect([record], stored=True)
                else:
                    self._disown(record)
            for claim in results.claims:
                self._run_claim(claim)
            for skipped in results.skipped:  # at its job's limit, counted cluster-wide
                state = self.schedule.jobs.get(skipped.job_id)
                self.dispatcher.skipped({"event": "skipped", "level": "warning",
                                         "job_id": skipped.job_id,
                                         "file": state.spec.file if state else None,
                                         "scheduled_for": skipped.scheduled_for.astimezone(
                                             self.clock.now().tzinfo).isoformat(),
                                         "reason": skipped.reason})
            for stop in results.stops:  # overlap: replace, claimed on some node
                if stop.run_id in self._claimed:
                    self._stop_run(stop.run_id, stop.reason)
            for job_id, paused in sorted(results.paused.items()):  # paused on some node
                if job_id in self.schedule.jobs:
                    self.set_paused(job_id, paused, via="cluster")
            for lost in results.lost:
                self.emit({"event": "node_lost", "level": "warning", "node": lost.node_id,
                           "job_id": lost.job_id, "run_id": lost.run_id,
                           "scheduled_for": lost.scheduled_for.isoformat()})
                self._collect([lost.record], stored=True)  # stored by the reaping
            for job_id, scheduled_for in results.missed:
                state = self.schedule.jobs.get(job_id)
                self.emit({"event": "missed", "level": "warning", "job_id": job_id,
                           "file": state.spec.file if state else None,
                           "scheduled_for": scheduled_for.isoformat(),
                           "reason": "no node claimed it within its deadline"})
        self.cluster.set_capacity(len(self.queue.busy()), self.queue.depth())

    def _run_claim(self, claim: Any) -> None:
        """Run an occurrence this node claimed, as this node's version of the job; one
        that cannot run here still ends in its one record."""
        state = self.schedule.jobs.get(claim.job_id)
        scheduled_for = claim.scheduled_for.astimezone(self.clock.now().tzinfo)
        if state is None:  # removed here after it was offered
            execution = Execution(run_id=claim.run_id, job_id=claim.job_id,
                                  scheduled_for=scheduled_for.isoformat(), task_type="")
            error: str | None = "job not loaded on the claiming node"
        else:
            execution = self.dispatcher.execution_for(
                Occurrence(state.spec, scheduled_for))._replace(run_id=claim.run_id)
            self.schedule.run_started(claim.job_id, claim.run_id)
            error = "shutdown" if self.stopping else None  # claimed as the stop began
        self._claimed.add(claim.run_id)
        if error is None:
            self.queue.put(execution)
            return
        now = self.clock.now()
        self._collect([failure_record(execution, started=now, finished=now, worker=0,
                                      error=error)])

    def _disown(self, record: dict[str, Any]) -> None:
        self.schedule.run_dropped(record["job_id"], record["run_id"])
        self.emit({"event": "run_disowned", "level": "warning", "job_id": record["job_id"],
                   "run_id": record["run_id"], "status": record["status"],
                   "error": record["error"],
                   "reason": "this node was declared dead while it ran; a peer recorded "
                             "it node lost"})

    def _publish_jobs(self, changes: Changes | None = None) -> None:
        """Tell the cluster which version of each job this node has (all of them after
        the load; then only the jobs a change touched are hashed again)."""
        if self.cluster is None:
            return
        from supervisor.cluster.specs import JobVersion

        if changes is None:
            self._published = {job_id: JobVersion.of(state.spec)
                               for job_id, state in self.schedule.jobs.items()}
        else:
            for job_id in changes.removed:
                self._published.pop(job_id, None)
            for spec in changes.upserted:
                self._published[spec.job_id] = JobVersion.of(spec)
        self.cluster.publish(self._published)

    def _stop_run(self, run_id: str, error: str) -> bool:
        cancel = getattr(self.queue, "cancel", None)
        return bool(cancel and cancel(run_id, error))

    def _collect(self, records: list[dict[str, Any]], *, stored: bool = False) -> None:
        now = self.clock.now()
        for record in records:
            if record["run_id"] in self._disowned:
                self._disowned.discard(record["run_id"])
                self._disown(record)
                continue
            if self.cluster is not None:
                record.setdefault("node", self.cluster.node_id)
                if record["run_id"] in self._claimed:  # logged once the database has it
                    self._claimed.discard(record["run_id"])
                    self._finishing[record["run_id"]] = record
                    self.cluster.finished(record)
                    continue
            state = self.schedule.jobs.get(record["job_id"])
            previous_status = state.last_status if state is not None else None
            self.schedule.run_finished(record)
            if self.metrics is not None:
                self.metrics.record_execution(record)
            self.counters["executions"] += 1
            self.counters["success" if record["status"] == "SUCCESS" else "failure"] += 1
            self.logger.submit(record, stored=stored)
            self.dispatcher.finished(record, previous_status, now)

    def emit(self, event: dict[str, Any]) -> None:
        self.diagnostics.emit(event)

    # -- what the control commands ask -------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The whole picture, for ``taskd status``: JSON-able, keys as the contract says."""
        now = self.clock.now()
        errors = self.reconciler.errors()
        return {
            "pid": os.getpid(),
            "started_at": self.started_at.isoformat(),
            "uptime_s": round((now - self.started_at).total_seconds(), 3),
            "jobs_dir": self.options.jobs_dir,
            "timezone": self.options.timezone,
            "state": self.state,
            "workers": self.queue.worker_status(),
            "logger": {"pid": self.logger.pid, "unacknowledged": self.logger.unacked},
            "queue_depth": self.queue.depth(),
            "counters": {**self.counters, "worker_restarts": self.queue.restarts},
            "jobs": [self._job_status(state) for _, state in sorted(self.schedule.jobs.items())],
            "concurrency_groups": self.dispatcher.status()["groups"],
            **({"node": self.cluster.node_id, "nodes": self.cluster.nodes,
                "conflicts": self.cluster.conflicts,
                "cluster_connected": self.cluster.connected}
               if self.cluster is not None else {}),
            "errors": [{"file": file, "error": error} for file, error in sorted(errors.items())],
        }

    def job_status(self, job_id: str) -> dict[str, Any] | None:
        state = self.schedule.jobs.get(job_id)
        if state is None:
            return None
        return {**self._job_status(state), "description": state.spec.description,
                "task_type": state.spec.task_type, "timeout_s": state.spec.timeout_s,
                "overlap": state.spec.overlap, "catch_up": state.spec.catch_up,
                "max_catch_up": state.spec.max_catch_up,
                "starting_deadline_s": state.spec.starting_deadline_s,
                **state.spec.policy.describe(), **self.dispatcher.job_status(job_id),
                "running_runs": state.running,
                "history": list(state.history or [])}

    def _job_status(self, state: Any) -> dict[str, Any]:
        spec = state.spec
        return {"job_id": spec.job_id, "file": spec.file, "schedule": spec.schedule,
                "timezone": spec.timezone, "enabled": spec.enabled,
                "next_run": state.next_fire.isoformat() if state.next_fire else None,
                **self._last_run(state), "running": state.in_flight,
                "paused": spec.job_id in self.schedule.paused}

    def _last_run(self, state: Any) -> dict[str, Any]:
        """The job's last run: this node's, or in a cluster the latest on any node."""
        here = {"last_run": state.last_started, "last_status": state.last_status,
                "last_error": state.last_error, "last_success": state.last_success,
                "last_failure": state.last_failure}
        view = self.cluster.view if self.cluster is not None else None
        anywhere = view.last_run(state.spec.job_id) if view is not None else None
        if anywhere is None or (here["last_run"] is not None and _later_or_same(
                here["last_run"], anywhere["last_run"])):
            return here
        return anywhere

    def run_now(self, job_id: str) -> Execution | None:
        """``taskd run``: one manual execution now, whatever the schedule says."""
        occurrence = self.schedule.manual(job_id, self.clock.now())
        if occurrence is None or self.stopping:
            return None
        self.emit({"event": "manual_run", "level": "info", "job_id": job_id,
                   "file": occurrence.spec.file})
        return self.submit(occurrence)

    def set_paused(self, job_id: str, paused: bool, via: str = "command"
                   ) -> dict[str, Any] | None:
        """``taskd pause`` / ``taskd resume`` (``via="cluster"``: made on another node,
        already in the shared store); None if there is no such job."""
        now = self.clock.now()
        was = job_id in self.schedule.paused
        found = (self.schedule.pause(job_id) if paused
                 else self.schedule.resume(job_id, now))
        if not found:
            return None
        state = self.schedule.jobs[job_id]
        if was != paused:
            if via != "cluster":
                self.logger.mark({"mark": "paused", "job_id": job_id, "paused": paused})
            self.emit({"event": "job_paused" if paused else "job_resumed", "level": "info",
                       "job_id": job_id, "file": state.spec.file,
                       **({"via": via} if via == "cluster" else {})})
        return {"job_id": job_id, "paused": paused, "changed": was != paused,
                "kept": self.state,
                "next_run": state.next_fire.isoformat() if state.next_fire else None}

    def request_reload(self, via: str) -> None:
        self.rescan_requested = True
        self.emit({"event": "reload_requested", "level": "info", "via": via})

    def request_stop(self, via: str) -> None:
        self.stop_now = self.stopping
        self.stopping = True
        self._stopping_at = self._stopping_at or self.clock.now()
        self.emit({"event": "stopping", "level": "info", "via": via,
                   "immediate": self.stop_now})

    # -- shutdown --------------------------------------------------------------------

    def shut_down(self, *, wait: Callable[[list[Any], float], list[Any]] = wait_readable
                  ) -> None:
        """Stop scheduling; give running executions the grace period, then stop them.

        Every execution ends in a record: waiting ones and interrupted ones say
        ``shutdown``. A second SIGTERM/SIGINT cuts the grace period short.
        """
        self.notifier.notify("STOPPING=1")
        self.watcher.stop()
        if self.cluster is not None:
            self.cluster.drain()  # claims nothing more; what it claimed is recorded
            self._cluster_step([self.cluster.wait_object()])
        self._collect(self.queue.drop_pending("shutdown"))
        self._collect(self.dispatcher.drain("shutdown", self.clock.now()))
        self.queue.stop_workers()
        grace_ends = self.clock.monotonic() + self.options.grace_period_s
        kill_at: float | None = None
        while self.queue.busy() or self.queue.alive():
            mono = self.clock.monotonic()
            if kill_at is None and (self.stop_now or mono >= grace_ends
                                    or not self.queue.busy()):
                # Busy workers stop their task's process group (TERM, then KILL) and
                # report; idle ones have been asked to leave. Whatever is left by
                # kill_at is killed.
                self.queue.signal_busy(signal.SIGTERM)
                kill_at = mono + SHUTDOWN_KILL_AFTER_S
            if kill_at is not None and mono >= kill_at:
                break
            limit = (kill_at if kill_at is not None else grace_ends) - mono
            # `taskd status` keeps answering during the grace period: what is still running?
            control = self.control.wait_objects() if self.control is not None else []
            ready = wait([*self._wait_objects(), *control], max(0.0, min(limit, 0.2)))
            if self.cluster is not None and self.cluster.wait_object() in ready:
                self._cluster_step(ready)  # finishes the database took: logged now
            if self.control is not None:
                self.control.service()
            self._read_signals()
            self.logger.handle_readable()
            self.logger.check()
            self._collect(self.queue.stopping_service())
            self.logger.pump()
        self._collect(self.queue.kill_all("shutdown"))
        if self.control is not None:
            self.control.close()
        # Scheduling stopped at the stop request: what fell after it (during the grace
        # period) is the next start's to catch up.
        self._mark_alive(at=self._stopping_at or self.clock.now())
        if self.cluster is not None:
            self.cluster.stop()  # its claimed runs finished, it leaves the cluster
            self._cluster_step([self.cluster.wait_object()])
            # The database did not answer for these: logged all the same, never lost.
            self._collect(list(self._finishing.values()))
            self._finishing.clear()
        flushed = self.logger.close(timeout=LOGGER_FLUSH_S)
        self.emit({"event": "stopped", "level": "info" if flushed else "error",
                   "records_flushed": flushed, **self.counters})


MAX_MISSED_OFFERED = 100  # per missed line: a long stall's misses are not all offered


def _later_or_same(one: str, other: str | None) -> bool:
    return other is None or datetime.fromisoformat(one) >= datetime.fromisoformat(other)


def _claimable(execution: Execution) -> bool:
    """Runs of the schedule go through the cluster's claims; a manual run, a retry (of a
    run this node claimed) and a hook are this node's own."""
    return (not execution.manual and execution.hook is None
            and (execution.attempt or 1) == 1)


def _any_in(objects: list[Any], ready: list[Any]) -> bool:
    return any(obj in ready for obj in objects)


def _record_only(signum: int, frame: object) -> None:
    """The wake-up fd already carries the signal number to the loop; nothing else here."""
