"""The control commands: one small class each, as circus does.

``message()`` builds the request on the client, ``execute()`` runs in the daemon (inside
the coordinator's loop, so it must be quick) and ``console_msg()`` turns the result into
text for a person. A response is ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}``; ``dispatch`` is the control server's handler.
"""

from __future__ import annotations

import heapq
import os
import textwrap
import unicodedata
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar

WIDTH = 80
STATUS_LIMIT = 50  # jobs (and file errors) in the human status view
_NEVER = datetime.max.replace(tzinfo=UTC)
_KINDS = {str: "a string", int: "an integer", bool: "true or false"}


def ok(result: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


class Command:
    name: ClassVar[str]
    params: ClassVar[dict[str, type]] = {}  # accepted args and their types
    required: ClassVar[tuple[str, ...]] = ()

    def message(self, **kwargs: Any) -> dict[str, Any]:
        return {"command": self.name,
                "args": {key: value for key, value in kwargs.items() if value is not None}}

    def check(self, args: dict[str, Any]) -> str | None:
        """Why these args are unacceptable, or None."""
        for key, value in args.items():
            kind = self.params.get(key)
            if kind is None:
                return f"{self.name}: unknown argument {key!r}"
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                return f"{self.name}: argument {key!r} must be {_KINDS[kind]}"
        missing = [key for key in self.required if key not in args]
        return f"{self.name}: missing argument {missing[0]!r}" if missing else None

    def execute(self, coordinator: Any, args: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def console_msg(self, result: dict[str, Any]) -> str:
        raise NotImplementedError


class Status(Command):
    name = "status"
    params: ClassVar[dict[str, type]] = {"job_id": str, "limit": int}

    def execute(self, coordinator: Any, args: dict[str, Any]) -> dict[str, Any]:
        if "job_id" in args:
            job = coordinator.job_status(args["job_id"])
            return ok(job) if job is not None else _no_job(args["job_id"])
        status = coordinator.status()
        if "limit" in args:  # the human view: the soonest jobs, not 100,000 of them
            status["jobs_total"], status["errors_total"] = len(status["jobs"]), len(
                status["errors"])
            status["jobs"] = heapq.nsmallest(max(0, args["limit"]), status["jobs"],
                                             key=_by_next_run)
            status["errors"] = status["errors"][:max(0, args["limit"])]
        return ok(status)

    def console_msg(self, result: dict[str, Any], *, now: datetime | None = None,
                    zone: tzinfo | None = None) -> str:
        view = _View(now or datetime.now(UTC), zone)
        lines = view.status(result) if "workers" in result else view.job(result)
        return "\n".join(view.fit(line).rstrip() for line in lines)


def policy_lines(j: dict[str, Any]) -> list[str]:
    """The policy keys a job sets, one line each, for ``taskd status JOB_ID``."""
    lines = []
    retry = j.get("retry")
    if retry:
        lines.append(f"  retry        {retry['attempts']} attempts, {retry['delay_s']:g}s "
                     f"x{retry['backoff']:g} up to {retry['max_delay_s']:g}s"
                     + (", also when a worker is lost" if retry.get("on_lost") else ""))
    for pending in j.get("retry_pending") or []:
        lines.append(f"  retry next   attempt {pending['attempt']} of the run for "
                     f"{pending['scheduled_for']}")
    hooks = j.get("hooks") or {}
    if hooks:
        lines.append("  hooks        " + ", ".join(f"{name} ({kind})"
                                                   for name, kind in hooks.items()))
    limits = []
    if j.get("max_concurrent"):
        limits.append(f"max_concurrent {j['max_concurrent']}")
    if j.get("concurrency_group"):
        limits.append(f"concurrency_group {j['concurrency_group']}")
    if limits:
        lines.append("  concurrency  " + ", ".join(limits))
    if j.get("jitter_s"):
        kind = "fixed offset" if j.get("jitter_fixed") else "random each run"
        lines.append(f"  jitter       up to {j['jitter_s']:g}s ({kind})")
    if j.get("user"):
        account = j["user"] + (f":{j['group']}" if j.get("group") else "")
        lines.append(f"  runs as      {account}")
    if j.get("env_file"):
        lines.append(f"  env_file     {j['env_file']}")
    return lines


class Run(Command):
    name = "run"
    params: ClassVar[dict[str, type]] = {"job_id": str}
    required = ("job_id",)

    def execute(self, coordinator: Any, args: dict[str, Any]) -> dict[str, Any]:
        if coordinator.stopping:
            return error("taskd is shutting down: no new runs")
        execution = coordinator.run_now(args["job_id"])
        if execution is None:
            return _no_job(args["job_id"])
        return ok({"job_id": execution.job_id, "run_id": execution.run_id,
                   "scheduled_for": execution.scheduled_for})

    def console_msg(self, result: dict[str, Any]) -> str:
        return f"started {result['job_id']}: run_id {result['run_id']}"


class Pause(Command):
    name = "pause"
    params: ClassVar[dict[str, type]] = {"job_id": str}
    required = ("job_id",)
    paused = True

    def execute(self, coordinator: Any, args: dict[str, Any]) -> dict[str, Any]:
        result = coordinator.set_paused(args["job_id"], self.paused)
        return ok(result) if result is not None else _no_job(args["job_id"])

    def console_msg(self, result: dict[str, Any]) -> str:
        what = "paused" if result["paused"] else "resumed"
        text = f"{result['job_id']} {what}" if result["changed"] else \
            f"{result['job_id']} was already {what}"
        if result["paused"] and result["kept"] == "memory":
            text += " (no state dir: until taskd restarts)"
        elif not result["paused"]:
            text += f"; next run {result['next_run'] or '-'}"
        return text


class Resume(Pause):
    name = "resume"
    paused = False


class Reload(Command):
    name = "reload"

    def execute(self, coordinator: Any, args: dict[str, Any]) -> dict[str, Any]:
        coordinator.request_reload("control")
        return ok({"pid": os.getpid()})

    def console_msg(self, result: dict[str, Any]) -> str:
        return f"taskd (pid {result['pid']}) rescans its jobs directory"


class Stop(Command):
    name = "stop"

    def execute(self, coordinator: Any, args: dict[str, Any]) -> dict[str, Any]:
        coordinator.request_stop("control")
        return ok({"pid": os.getpid(), "grace_period_s": coordinator.options.grace_period_s})

    def console_msg(self, result: dict[str, Any]) -> str:
        return (f"taskd (pid {result['pid']}) is stopping; running executions get up to "
                f"{result['grace_period_s']:g}s to finish")


COMMANDS: dict[str, Command] = {command.name: command
                                for command in (Status(), Run(), Pause(), Resume(), Reload(),
                                                Stop())}


def dispatch(coordinator: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The control server's handler: one request in, one response out."""
    name = request.get("command")
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        return error(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    args = request.get("args", {})
    if not isinstance(args, dict):
        return error("bad request: args must be an object")
    problem = command.check(args)
    return error(problem) if problem else command.execute(coordinator, args)


def _no_job(job_id: str) -> dict[str, Any]:
    return error(f"no job with job_id {job_id!r}")


def _by_next_run(job: dict[str, Any]) -> tuple[datetime, str]:
    """Soonest first; disabled jobs and finished one-time jobs last."""
    due = _parse(job.get("next_run")) if job.get("enabled", True) else None
    return (due or _NEVER, job["job_id"])


def _parse(text: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


class _View:
    """Text for a person, every line at most WIDTH columns."""

    def __init__(self, now: datetime, zone: tzinfo | None) -> None:
        self.now = now
        self.zone = zone or datetime.now().astimezone().tzinfo

    def status(self, s: dict[str, Any]) -> list[str]:
        counters = s.get("counters", {})
        jobs, errors = s.get("jobs", []), s.get("errors", [])
        jobs_total = s.get("jobs_total", len(jobs))
        errors_total = s.get("errors_total", len(errors))
        lines = [
            f"taskd pid {s['pid']}, up {_span(s.get('uptime_s', 0))}, queue depth "
            f"{s.get('queue_depth', 0)}, {jobs_total} jobs, {errors_total} file errors",
            f"runs {counters.get('executions', 0)} ({counters.get('success', 0)} ok, "
            f"{counters.get('failure', 0)} failed), worker restarts "
            f"{counters.get('worker_restarts', 0)}, logger pid {s['logger']['pid']}",
            f"jobs dir {s.get('jobs_dir', '?')}",
            f"state {s.get('state', 'memory')}", "",
            f"WORKERS ({len(s['workers'])})",
            f"  {'ID':>3}  {'PID':<8} {'STATE':<6} {'FOR':<9} JOB"]
        for w in s["workers"]:
            since = _parse(w.get("since"))
            held = _span((self.now - since).total_seconds()) if since and w.get("job_id") else ""
            lines.append(f"  {w['id']:>3}  {w.get('pid') or '-':<8} {w['state']:<6} "
                         f"{held:<9} {w.get('job_id') or ''}")
        lines += self.cluster(s)
        shown = sorted(jobs, key=_by_next_run)[:STATUS_LIMIT]
        lines += ["", f"JOBS ({jobs_total}, soonest first; times in "
                      f"{self.now.astimezone(self.zone).tzname()})",
                  f"  {'JOB ID':<17} {'SCHEDULE (ZONE)':<22} {'NEXT RUN':<19} LAST RUN"]
        for job in shown:
            # The zone's last part ("Berlin"): the full name is in `status JOB_ID`.
            zone = job["timezone"].rsplit("/", 1)[-1]
            lines.append(f"  {self.cell(job['job_id'], 17)} "
                         f"{self.cell(job['schedule'] + ' ' + zone, 22)} "
                         f"{self.cell(self.next_run(job), 19)} {self.last_run(job)}")
        if jobs_total > len(shown):
            lines.append(f"  … and {jobs_total - len(shown)} more (use --json)")
        if errors_total:
            lines += ["", f"FILE ERRORS ({errors_total})"]
            for problem in errors[:STATUS_LIMIT]:
                lines += self.file_error(problem["file"], problem["error"],
                                         s.get("jobs_dir"))
            if errors_total > min(len(errors), STATUS_LIMIT):
                lines.append(f"  … and {errors_total - min(len(errors), STATUS_LIMIT)} "
                             "more (use --json)")
        return lines

    def cluster(self, s: dict[str, Any]) -> list[str]:
        """The cluster's nodes (cluster mode only) and jobs whose versions differ."""
        if "nodes" not in s:
            return []
        nodes = [n for n in s["nodes"] if n.get("state") == "alive"]
        connected = "" if s.get("cluster_connected") else "; database unreachable"
        lines = ["", f"NODES ({len(nodes)} alive; this node {(s.get('node') or '-')[:12]}"
                     f"{connected})",
                 f"  {'NODE':<12} {'HOST':<20} {'PID':<8} {'HEARTBEAT':<10} {'BUSY':<7} "
                 "RUNNING"]
        for n in nodes:
            runs = n.get("runs") or []
            shown = ", ".join(run["job_id"] for run in runs[:3])
            more = f" +{len(runs) - 3}" if len(runs) > 3 else ""
            lines.append(f"  {n['id'][:12]:<12} {self.cell(n['host'], 20)} {n['pid']:<8} "
                         f"{_span(n['heartbeat_age_s']) + ' ago':<10} "
                         f"{str(n['busy']) + '/' + str(n['workers']):<7} "
                         f"{shown or '-'}{more}")
        for conflict in s.get("conflicts") or []:
            versions = ", ".join(f"{node[:8]} {digest[:8]}"
                                 for node, digest in sorted(conflict["hashes"].items()))
            lines.append(f"  conflict: job {conflict['job_id']} differs between nodes "
                         f"({versions})")
        return lines

    def job(self, j: dict[str, Any]) -> list[str]:
        task = f"{j.get('task_type')}, overlap {j.get('overlap')}"
        if j.get("timeout_s"):
            task += f", timeout {j['timeout_s']:g}s"
        lines = [f"job {j['job_id']}", f"  file         {j['file']}"]
        if j.get("description"):
            lines.append(f"  description  {j['description']}")
        lines += [f"  schedule     {j['schedule']}  ({j['timezone']})",
                  f"  task         {task}",
                  f"  next run     {self.next_run(j, full=True)}",
                  f"  last run     {self.last_run(j)}"
                  + (f": {j['last_error']}" if j.get("last_error") else ""),
                  f"  last success {self.when(_parse(j.get('last_success')), full=True)}",
                  f"  last failure {self.when(_parse(j.get('last_failure')), full=True)}",
                  f"  running now  {j.get('running', 0)}"]
        if j.get("catch_up", "none") != "none":
            deadline = j.get("starting_deadline_s")
            within = "--misfire-grace" if deadline is None else f"{deadline:g}s"
            lines.insert(-1, f"  catch-up     {j['catch_up']} (at most "
                             f"{j.get('max_catch_up')}, deadline {within})")
        lines[-1:-1] = policy_lines(j)
        history = list(reversed(j.get("history") or []))
        lines += ["", f"RECENT RUNS ({len(history)}, newest first)"]
        if history:
            lines.append(f"  {'STARTED':<20} {'STATUS':<8} {'TOOK':>9}  {'WORKER':<6} "
                         "RUN ID / NOTE")
        for run in history:
            started = _parse(run.get("timestamp"))
            took = run.get("duration_ms")
            note = " ".join(x for x in ("manual" if run.get("manual") else "",
                                        f"attempt {run['attempt']}"
                                        if (run.get("attempt") or 1) > 1 else "",
                                        run.get("error") or "") if x)
            lines.append(f"  {self.when(started, full=False):<20} {run.get('status', '?'):<8} "
                         f"{_span(took / 1000, ms=True) if took is not None else '-':>9}  "
                         f"{run.get('worker') or '-':<6} {(run.get('run_id') or '')[:12]} "
                         f"{note}")
        return lines

    def file_error(self, file: str, message: str, jobs_dir: str | None) -> list[str]:
        reason = message.removeprefix(f"{file}: ")
        shown = os.path.relpath(file, jobs_dir) if jobs_dir and file.startswith(jobs_dir) \
            else file
        wrapped = textwrap.wrap(_printable(reason), WIDTH - 6) or [""]
        if len(wrapped) > 2:
            wrapped = [wrapped[0], wrapped[1] + " " + wrapped[2]]  # fit() adds the "…"
        return [f"  {shown}", *(f"    {part}" for part in wrapped[:2])]

    # -- pieces --------------------------------------------------------------------------

    def next_run(self, job: dict[str, Any], full: bool = False) -> str:
        if not job.get("enabled", True):
            return "disabled"
        if job.get("paused"):
            return "paused"
        when = _parse(job.get("next_run"))
        return self.when(when, full) if when else "-"

    def last_run(self, job: dict[str, Any]) -> str:
        when = _parse(job.get("last_run"))
        if when is None:
            return "running" if job.get("running") else "never"
        return f"{job.get('last_status')} {self.relative(when)}"

    def when(self, moment: datetime | None, full: bool) -> str:
        """Local time, as short as is unambiguous, and how far from now."""
        if moment is None:
            return "-"
        local, today = moment.astimezone(self.zone), self.now.astimezone(self.zone)
        if full:
            text = local.strftime("%Y-%m-%d %H:%M:%S %Z")
        elif local.date() == today.date():
            text = local.strftime("%H:%M:%S")
        elif local.year == today.year:
            text = local.strftime("%m-%d %H:%M")
        else:
            text = local.strftime("%Y-%m-%d")
        return f"{text} {self.relative(moment)}"

    def relative(self, moment: datetime) -> str:
        seconds = (moment - self.now).total_seconds()
        if abs(seconds) < 1:
            return "now"
        return f"in {_span(seconds, units=1)}" if seconds > 0 else \
            f"{_span(-seconds, units=1)} ago"

    def cell(self, text: str, width: int) -> str:
        text = self.fit(text, width)
        return text + " " * (width - _columns(text))

    @staticmethod
    def fit(text: str, width: int = WIDTH) -> str:
        """``text`` cut to ``width`` terminal columns, ending in "…" when cut."""
        text = _printable(text)
        if _columns(text) <= width:
            return text
        out, used = [], 0
        for char in text:
            if used + _columns(char) > width - 1:
                break
            out.append(char)
            used += _columns(char)
        return "".join(out) + "…"


def _printable(text: str) -> str:
    """No control characters (a file name may hold a newline) in a line of the view."""
    return "".join("?" if unicodedata.category(c).startswith("C") else c for c in str(text))


def _columns(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _span(seconds: float, *, units: int = 2, ms: bool = False) -> str:
    """3h12m, 45s, 2d3h (``units=1``: 3h); with ``ms``, sub-second spans as 12ms."""
    if ms and seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    total = max(0, int(seconds))
    for i, (size, unit) in enumerate(_UNITS):
        if total >= size or size == 1:
            text = f"{total // size}{unit}"
            if units > 1 and size > 1:
                smaller, smaller_unit = _UNITS[i + 1]
                if total % size // smaller:
                    text += f"{total % size // smaller}{smaller_unit}"
            return text
    raise AssertionError("unreachable")


_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))
