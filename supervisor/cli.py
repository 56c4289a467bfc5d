"""The ``taskd`` command line (click). Each command is a thin shell over the core."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from supervisor import __version__

if TYPE_CHECKING:
    from supervisor.jobfiles.jobspec import JobSpec
    from supervisor.timing.lookahead import DstNotice
    from supervisor.timing.triggers import Trigger

# Job files, schedules (croniter, the task types) and zones (pathlib, zoneinfo) are
# imported by the commands that use them: every command pays for what this module imports
# (``taskd history`` aims at well under 100 ms, interpreter start included).


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskd")
def main() -> None:
    """taskd: a job-scheduler daemon (cron and one-time jobs from a watched directory).

    Shell completion (bash): eval "$(_TASKD_COMPLETE=bash_source taskd)"; for zsh or fish
    use zsh_source or fish_source.
    """


_SOCKET_HELP = ("Control socket (default: $TASKD_SOCKET, else /run/taskd/taskd.sock as root, "
                "else $XDG_RUNTIME_DIR/taskd.sock, else /tmp/taskd-UID/taskd.sock).")


@main.command()
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 512),
              help="Size of the worker pool.")
@click.option("--jobs-dir", required=True, metavar="DIR", help="Directory of *.json job files.")
@click.option("--log-file", default=None, metavar="PATH",
              help="Append execution records here instead of stdout (reopened after "
                   "logrotate moves it).")
@click.option("--timezone", "zone", default=None,
              help="Zone for jobs that name none (default: the host's zone).")
@click.option("--misfire-grace", default=60.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0), help="How late a run may still start.")
@click.option("--grace-period", default=30.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0),
              help="On SIGTERM, how long running executions get to finish.")
@click.option("--socket", "socket_path", default=None, metavar="PATH",
              help=_SOCKET_HELP + " Created mode 0600.")
@click.option("--socket-group", default=None, metavar="GROUP",
              help="Make the control socket 0660 and owned by this group (name or gid), "
                   "so its members may use the client commands.")
@click.option("--metrics-port", default=None, metavar="PORT", type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port (off by default).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address the metrics endpoint listens on.")
@click.option("--allow-insecure-files", is_flag=True,
              help="As root, also accept job files not owned by root or writable by "
                   "group or others (cron refuses them; see docs/SECURITY.md).")
@click.option("--rescan-interval", default=30.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0.1),
              help="How often the jobs directory is rescanned as a safety net for lost "
                   "file events.")
@click.option("--heartbeat-timeout", default=10.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=2),
              help="A busy worker silent for this long (stopped, wedged) is replaced "
                   "(it reports every second).")
@click.option("--state-dir", default=None, metavar="DIR",
              help="Keep state here (run history, catch-up, one-time runs done) across "
                   "restarts (default: $STATE_DIRECTORY, set by systemd's StateDirectory=; "
                   "without either, state is kept in memory only).")
@click.option("--history-days", default=30.0, show_default=True, metavar="DAYS",
              type=click.FloatRange(min=0, min_open=True),
              help="With a state dir: forget run records older than this.")
@click.option("--history-per-job", default=1000, show_default=True, metavar="N",
              type=click.IntRange(min=1), help="With a state dir: keep at most this many "
                                               "run records per job.")
@click.option("--on-failure", default=None, metavar="COMMAND_OR_TASK_JSON",
              help="Run this after every failed run of a job that has no on_failure of its "
                   "own (cron's MAILTO): a shell command, or a task object such as "
                   "'{\"type\": \"http_request\", \"url\": \"...\", \"method\": \"POST\"}'; "
                   "it gets the execution record as JSON on stdin (or as the body).")
@click.option("--cluster", default=None, metavar="URL", envvar="TASKD_CLUSTER",
              help="Run as one node of a cluster sharing this PostgreSQL database "
                   "(postgresql://...; default $TASKD_CLUSTER): each occurrence runs once "
                   "on whichever node claims it. Needs the cluster extra (psycopg).")
@click.option("--lease", default=15.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=1.0),
              help="In a cluster: a node silent this long is declared dead by its peers.")
def start(workers: int, jobs_dir: str, log_file: str | None, zone: str | None,
          misfire_grace: float, grace_period: float, socket_path: str | None,
          socket_group: str | None, metrics_port: int | None, metrics_address: str,
          allow_insecure_files: bool, rescan_interval: float,
          heartbeat_timeout: float, state_dir: str | None, history_days: float,
          history_per_job: int, on_failure: str | None, cluster: str | None,
          lease: float) -> None:
    """Run the daemon in the foreground (as systemd expects).

    Example: taskd start --workers 8 --jobs-dir conf/jobs.d --log-file /var/log/taskd.jsonl
    """
    from supervisor.control.control_client import default_socket_path
    from supervisor.processes.coordinator import DaemonOptions
    from supervisor.processes.daemon import run_daemon
    from supervisor.store.state_dir import state_dir_from

    zone_name = _zone_or_exit(zone, code=2)
    default_hook = _hook_or_exit(on_failure) if on_failure is not None else None
    if cluster is not None:
        _check_cluster(cluster, state_dir)
    _check_jobs_dir(jobs_dir)
    if log_file is not None:
        _check_log_file(log_file)
    options = DaemonOptions(jobs_dir=os.path.abspath(jobs_dir), workers=workers,
                            log_file=log_file and os.path.abspath(log_file), timezone=zone_name,
                            misfire_grace_s=misfire_grace, grace_period_s=grace_period,
                            socket_path=os.path.abspath(socket_path or default_socket_path()),
                            socket_group=socket_group, metrics_port=metrics_port,
                            metrics_address=metrics_address,
                            allow_insecure_files=allow_insecure_files,
                            rescan_interval_s=rescan_interval,
                            heartbeat_timeout_s=heartbeat_timeout,
                            state_dir=None if cluster else state_dir_from(state_dir,
                                                                          os.environ),
                            history_days=history_days, history_per_job=history_per_job,
                            on_failure=default_hook, cluster=cluster, lease_s=lease)
    sys.exit(run_daemon(options))


def _check_cluster(url: str, state_dir: str | None) -> None:
    if not url.startswith(("postgresql://", "postgres://")):
        _fail(f"--cluster {url!r}: expected a postgresql:// URL", code=2)
    if state_dir is not None:
        _fail("--cluster and --state-dir: a cluster keeps its state in its database; "
              "give one of them", code=2)
    if find_spec("psycopg") is None:
        _fail("--cluster needs psycopg: pip install 'taskd[cluster]'", code=2)


def _hook_or_exit(text: str):
    from supervisor.jobfiles.jobspec import JobFileError, hook_from_option

    try:
        return hook_from_option(text)
    except JobFileError as error:
        _fail(str(error), code=2)


def _client_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--socket and --timeout, shared by the commands that talk to a running daemon."""
    function = click.option("--timeout", default=5.0, show_default=True, metavar="SECONDS",
                            type=click.FloatRange(min=0, min_open=True),
                            help="How long to wait for the daemon's answer.")(function)
    return click.option("--socket", "socket_path", default=None, metavar="PATH",
                        help=_SOCKET_HELP)(function)


def _ask(socket_path: str | None, timeout: float, name: str, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon; its result, or exit 1 with the reason on stderr."""
    from supervisor.control.commands import COMMANDS
    from supervisor.control.control_client import ControlError, default_socket_path, request

    path = socket_path or default_socket_path()
    try:
        response = request(path, COMMANDS[name].message(**args), timeout_s=timeout)
    except ControlError as error:
        _fail(str(error))
    if not response.get("ok"):
        _fail(str(response.get("error") or "the daemon refused the request"))
    return response.get("result") or {}


def _complete_job_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of JOB_ID: the jobs of the running daemon, if one answers."""
    from supervisor.control.commands import COMMANDS
    from supervisor.control.control_client import ControlError, default_socket_path, request

    path = ctx.params.get("socket_path") or default_socket_path()
    try:
        response = request(path, COMMANDS["status"].message(), timeout_s=1.0)
    except ControlError:
        return []
    jobs = (response.get("result") or {}).get("jobs", [])
    return [job["job_id"] for job in jobs if job["job_id"].startswith(incomplete)]


@main.command()
@click.argument("job_id", required=False, shell_complete=_complete_job_ids)
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status(job_id: str | None, socket_path: str | None, timeout: float, as_json: bool) -> None:
    """Show workers, jobs, queue and file errors; or one job and its recent runs.

    Examples: taskd status; taskd status --json; taskd status heartbeat
    """
    from supervisor.control.commands import COMMANDS, STATUS_LIMIT

    limit = None if as_json or job_id else STATUS_LIMIT
    result = _ask(socket_path, timeout, "status", job_id=job_id, limit=limit)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        click.echo(COMMANDS["status"].console_msg(result))


@main.command()
@click.argument("job_id", shell_complete=_complete_job_ids)
@_client_options
def run(job_id: str, socket_path: str | None, timeout: float) -> None:
    """Run a job now, whatever its schedule says (the record has "manual": true).

    Example: taskd run nightly-report
    """
    _say("run", _ask(socket_path, timeout, "run", job_id=job_id))


@main.command()
@click.argument("job_id", shell_complete=_complete_job_ids)
@_client_options
def pause(job_id: str, socket_path: str | None, timeout: float) -> None:
    """Stop scheduling a job until `taskd resume` (kept across restarts with a state dir).

    Example: taskd pause nightly-report
    """
    _say("pause", _ask(socket_path, timeout, "pause", job_id=job_id))


@main.command()
@click.argument("job_id", shell_complete=_complete_job_ids)
@_client_options
def resume(job_id: str, socket_path: str | None, timeout: float) -> None:
    """Schedule a paused job again from now (what fell while paused is not made up).

    Example: taskd resume nightly-report
    """
    _say("resume", _ask(socket_path, timeout, "resume", job_id=job_id))


@main.command()
@_client_options
def reload(socket_path: str | None, timeout: float) -> None:
    """Rescan the jobs directory now (as SIGHUP does).

    Example: taskd reload --socket /run/taskd/taskd.sock
    """
    _say("reload", _ask(socket_path, timeout, "reload"))


@main.command()
@_client_options
def stop(socket_path: str | None, timeout: float) -> None:
    """Stop the daemon gracefully (as SIGTERM does).

    Example: taskd stop
    """
    _say("stop", _ask(socket_path, timeout, "stop"))


def _since_epoch(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """--since as epoch seconds (a usage error, exit 2, when it is neither form)."""
    if value is None:
        return None
    import time

    from supervisor.store.history_view import parse_since

    try:
        return parse_since(value, time.time(), _host_zone())
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _host_zone():
    """The host's zone (as ``taskd next`` reads a time without an offset); the C library's
    idea of local time when the host names a zone zoneinfo does not know."""
    from supervisor.timing.zones import UnknownZoneError, host_zone_name, zone_named

    try:
        return zone_named(host_zone_name())
    except UnknownZoneError:
        return datetime.now().astimezone().tzinfo


@main.group()
def db() -> None:
    """The cluster's database (PostgreSQL)."""


@db.command()
@click.option("--cluster", required=True, metavar="URL", envvar="TASKD_CLUSTER",
              help="The cluster's database (default: $TASKD_CLUSTER).")
def upgrade(cluster: str) -> None:
    """Create or upgrade the cluster's schema (as taskd start does), under its advisory
    lock: safe while nodes run. Exit 1 with the reason if it cannot."""
    from supervisor.store import pg_migrations
    from supervisor.store.abc import StoreError

    if find_spec("psycopg") is None:
        _fail("taskd db upgrade needs psycopg: pip install 'taskd[cluster]'", code=2)
    from supervisor.store.postgres import PostgresStore, redact_url

    try:
        PostgresStore(cluster).close()
    except StoreError as error:
        _fail(str(error))
    click.echo(f"{redact_url(cluster)}: schema at version {pg_migrations.CURRENT}")


@main.command()
@click.argument("job_id", required=False)
@click.option("--status", "outcome", default=None,
              type=click.Choice(["SUCCESS", "FAILURE"], case_sensitive=False),
              metavar="SUCCESS|FAILURE",
              help="Only runs with this outcome (any case).")
@click.option("--since", default=None, metavar="ISO|DURATION", callback=_since_epoch,
              help="Only runs started at or after this: an ISO 8601 instant "
                   "(2026-12-03T17:00:00Z; without an offset, the host's local time) or a "
                   "duration meaning that long ago (90s, 15m, 2h, 7d, 1h30m).")
@click.option("-n", "count", default=20, show_default=True,
              type=click.IntRange(1, 1_000_000), help="How many runs to show at most.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON array of the execution records (the log line's fields), "
                   "newest first.")
@click.option("--state-dir", default=None, metavar="DIR",
              help="The daemon's state directory (default: $STATE_DIRECTORY).")
@click.option("--cluster", default=None, metavar="URL", envvar="TASKD_CLUSTER",
              help="Read the cluster's shared history from this PostgreSQL database "
                   "instead (default: $TASKD_CLUSTER).")
def history(job_id: str | None, outcome: str | None, since: float | None, count: int,
            as_json: bool, state_dir: str | None, cluster: str | None) -> None:
    """Show recorded runs, newest first, read from the state store (with or without a
    running daemon). Times in the table are UTC; --json has every field.

    Examples: taskd history; taskd history nightly-report --status failure --since 7d;
    taskd history --since 2026-12-01T00:00:00Z --json --state-dir /var/lib/taskd
    """
    from supervisor.store.abc import HistoryQuery, StoreError

    query = HistoryQuery(job_id=job_id, status=outcome and outcome.upper(), since=since,
                         limit=count)
    try:
        if cluster is not None and state_dir is None:
            from supervisor.store.postgres import PostgresStore

            store = PostgresStore(cluster, read_only=True)
        else:
            from supervisor.store.sqlite import SQLiteStore

            store = SQLiteStore(_store_path_or_exit(state_dir), read_only=True)
        try:
            records = store.history(query)
        finally:
            store.close()
    except StoreError as error:
        _history_fail(str(error))
    if as_json:
        _echo_json_array(records)
    elif records:
        from supervisor.store.history_view import format_table

        click.echo("\n".join(format_table(records)))
    else:
        filtered = " match --status/--since" if outcome or since is not None else ""
        click.echo(f"taskd history: no recorded runs{f' of {job_id}' if job_id else ''}"
                   f"{filtered}", err=True)


def _store_path_or_exit(option: str | None) -> str:
    """DIR/state.db, if there is a file there to read; else exit 1 saying what is missing."""
    import stat

    from supervisor.store.state_dir import state_dir_from, store_path

    directory = state_dir_from(option, os.environ)
    if directory is None:
        _history_fail("no state directory: give --state-dir DIR or set $STATE_DIRECTORY "
                      "(a daemon started without either keeps no history)")
    path = store_path(directory)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        if not os.path.isdir(directory):
            _history_fail(f"{path}: no such file (no directory {directory})")
        _history_fail(f"{path}: no such file (no daemon has kept its state in {directory})")
    except OSError as error:
        _history_fail(f"{path}: cannot read ({error.strerror})")
    if not stat.S_ISREG(found.st_mode):
        _history_fail(f"{path}: not a regular file")
    if found.st_size == 0:
        _history_fail(f"{path}: empty (not a taskd state store)")
    return path


def _echo_json_array(records: list[dict[str, Any]], chunk: int = 1000) -> None:
    """One JSON array, one record per line (as in the execution log), written as it goes
    (``chunk`` records a write: click.echo flushes each time)."""
    from supervisor.control.json_line import one_line

    if not records:
        click.echo("[]")
        return
    click.echo("[")
    for first in range(0, len(records), chunk):
        lines = [one_line(json.dumps(record, ensure_ascii=False))
                 for record in records[first:first + chunk]]
        more = first + chunk < len(records)
        click.echo(",\n".join(lines) + ("," if more else ""))
    click.echo("]")


def _history_fail(message: str) -> NoReturn:
    click.echo(f"taskd history: {message}", err=True)
    sys.exit(1)


def _say(name: str, result: dict[str, Any]) -> None:
    from supervisor.control.commands import COMMANDS

    click.echo(COMMANDS[name].console_msg(result))


def _check_jobs_dir(path: str) -> None:
    if not os.path.isdir(path):
        _fail(f"--jobs-dir {path}: no such directory", code=2)
    try:
        os.listdir(path)
    except OSError as error:
        _fail(f"--jobs-dir {path}: cannot read: {error.strerror}", code=2)


def _check_log_file(path: str) -> None:
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        _fail(f"--log-file {path}: cannot open for appending: {error.strerror}", code=2)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--timezone", "zone", default=None,
              help="Zone for jobs that name none (default: the host's zone).")
@click.option("--allow-insecure-files", is_flag=True,
              help="As root, do not apply cron's ownership rule (as the daemon's option).")
def validate(paths: tuple[str, ...], zone: str | None, allow_insecure_files: bool) -> None:
    """Check job files or directories without a daemon; exit 1 if any is invalid.

    Run as root, it applies the rule a root daemon applies: job files must be owned by
    root and not writable by group or others. A cron schedule that meets a DST change
    within the next year (a wall time skipped or repeated) gets a warning on stderr
    saying what taskd will do; warnings do not change the exit status.

    Example: taskd validate conf/jobs.d
    """
    from supervisor.timing.zones import UTC

    default_zone = _zone_or_exit(zone)
    problems = 0
    start = datetime.now(UTC)
    notices: dict[Trigger, list[DstNotice]] = {}  # jobs sharing a schedule share them
    for path in paths:
        for line, ok, job in _read_jobs(path, default_zone, not allow_insecure_files):
            click.echo(line, err=not ok)
            problems += not ok
            if job is not None:
                for warning in _dst_warnings(job, start, notices):
                    click.echo(warning, err=True)
    sys.exit(1 if problems else 0)


def _read_jobs(path: str, default_zone: str, trusted_only: bool):
    """(message, ok, job) for one argument, a job file or a directory of them: job is the
    JobSpec of a usable file, None for a problem or a note."""
    from supervisor.jobfiles.jobdir import snapshot
    from supervisor.jobfiles.jobspec import JobFileError, read_job_file

    if os.path.isdir(path):
        try:
            files = sorted(snapshot(path))
        except OSError as error:
            yield f"{path}: cannot list directory: {error.strerror}", False, None
            return
        if not files:
            yield f"{path}: no job files (*.json) found", True, None
    elif os.path.exists(path):
        files = [path]
    else:
        yield f"{path}: no such file or directory", False, None
        return
    claimed: dict[str, str] = {}
    for file in files:
        try:
            job = read_job_file(file, default_zone=default_zone, trusted_only=trusted_only)
        except JobFileError as error:
            yield str(error), False, None
            continue
        owner = claimed.setdefault(job.job_id, file)
        if owner != file:
            yield f'{file}: job_id "{job.job_id}" is already claimed by {owner}', False, None
        else:
            yield f"{file}: ok ({job.job_id})", True, job


def _dst_warnings(job: JobSpec, start: datetime, notices: dict[Trigger, list[DstNotice]]):
    """One line per kind of DST change (gap, repeat) that the job's cron schedule meets
    within a year of ``start``."""
    from supervisor.timing.lookahead import describe_notice, dst_notices
    from supervisor.timing.triggers import CronTrigger

    if not isinstance(job.trigger, CronTrigger):
        return
    if job.trigger.expr.hour_star:
        # It keeps its real-time rhythm (an hourly job runs every 3600 s through both
        # changes): nothing an operator would not expect, and in a DST zone nearly every
        # such job meets both changes, so warning would bury the ones that matter.
        return
    if job.trigger not in notices:
        notices[job.trigger] = dst_notices(job.trigger, start)
    for notice in notices[job.trigger]:
        yield f"{job.file}: warning: {describe_notice(notice, job.schedule)}"


_ALL_ONLY = ("jobs_dir", "window", "limit", "as_json", "allow_insecure_files")
_MAX_WINDOW_DAYS = 366


def _window_option(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """--window as a timedelta: a duration as ``taskd history --since`` reads one (90s,
    30m, 24h, 7d, 1w, 1h30m), more than 0 and at most 366 days (a usage error else)."""
    from supervisor.store.history_view import parse_since

    message = f"{value!r}: expected a duration such as 90s, 30m, 24h, 7d, 1w or 1h30m"
    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        pass
    else:  # --since also reads instants; a window is only a duration
        raise click.BadParameter(message)
    try:
        seconds = -parse_since(value, 0.0)  # that long before the epoch: minus the duration
    except ValueError:
        raise click.BadParameter(message) from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: must be longer than 0s")
    if seconds > _MAX_WINDOW_DAYS * 86_400:
        raise click.BadParameter(f"{value!r}: at most {_MAX_WINDOW_DAYS}d")
    return timedelta(seconds=seconds)


@main.command(name="next")
@click.argument("schedule_or_file", required=False)
@click.option("-n", "count", default=5, show_default=True, type=click.IntRange(1, 100000),
              help="How many fire times to print (not with --all).")
@click.option("--timezone", "zone", default=None,
              help="Zone to read the schedule in (default: the job's, else the host's). "
                   "With --all: the zone of jobs that name none and of every time shown "
                   "(default: the host's).")
@click.option("--after", "after", default=None, metavar="ISO_TIMESTAMP",
              help="Print fire times after this instant instead of now.")
@click.option("--all", "all_jobs", is_flag=True,
              help="Every job in --jobs-dir: each fire time within --window, sorted by "
                   "time (as cronie's cronnext).")
@click.option("--jobs-dir", default=None, metavar="DIR",
              help="With --all: the directory of *.json job files.")
@click.option("--window", default="24h", show_default=True, metavar="DURATION",
              callback=_window_option,
              help="With --all: how far ahead to look (90s, 30m, 24h, 7d, 1w; at most 366d).")
@click.option("--limit", default=10_000, show_default=True, type=click.IntRange(1, 10_000_000),
              help="With --all: print at most this many fire times.")
@click.option("--json", "as_json", is_flag=True,
              help='With --all: print one JSON array of {"job_id", "file", "at"}.')
@click.option("--allow-insecure-files", is_flag=True,
              help="With --all, as root: do not apply cron's ownership rule (as the "
                   "daemon's option).")
@click.pass_context
def next_(ctx: click.Context, schedule_or_file: str | None, count: int, zone: str | None,
          after: str | None, all_jobs: bool, jobs_dir: str | None, window: timedelta,
          limit: int, as_json: bool, allow_insecure_files: bool) -> None:
    """Print the next fire times of a schedule or a job file, one per line; or, with
    --all, of every job in a directory within a window.

    Examples: taskd next '30 2 * * *' --timezone Europe/Berlin -n 3;
    taskd next conf/jobs.d/heartbeat.json; taskd next --all --jobs-dir conf/jobs.d --window 7d
    """
    given = [param for param in ctx.command.params
             if ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT]
    if all_jobs:
        if schedule_or_file is not None:
            raise click.UsageError("give SCHEDULE_OR_JOB_FILE or --all, not both")
        if jobs_dir is None:
            raise click.UsageError("--all needs --jobs-dir DIR")
        if any(param.name == "count" for param in given):
            raise click.UsageError("-n is for one schedule; with --all, use --window and --limit")
        _next_all(jobs_dir, zone, after, window, limit, as_json, not allow_insecure_files)
        return
    if schedule_or_file is None:
        raise click.UsageError("missing SCHEDULE_OR_JOB_FILE (or --all --jobs-dir DIR)")
    stray = [param.opts[0] for param in given if param.name in _ALL_ONLY]
    if stray:
        raise click.UsageError(f"{', '.join(stray)}: only with --all")
    _next_one(schedule_or_file, count, zone, after)


def _next_one(schedule_or_file: str, count: int, zone: str | None, after: str | None) -> None:
    from supervisor.timing.zones import UTC, zone_named

    zone_name = _zone_or_exit(zone)
    trigger, zone_name = _trigger_or_exit(schedule_or_file, zone_name)
    local = zone_named(zone_name)
    instant = _instant_or_exit(after, local) if after else datetime.now(UTC)
    for _ in range(count):
        instant = trigger.next_after(instant)
        if instant is None:
            break
        click.echo(instant.astimezone(local).isoformat())


def _next_all(jobs_dir: str, zone: str | None, after: str | None, window: timedelta,
              limit: int, as_json: bool, trusted_only: bool) -> None:
    """``taskd next --all``: problems and notes on stderr, fire times on stdout; exit 1
    when a job file was unusable (after printing what the others do)."""
    from supervisor.timing.lookahead import upcoming
    from supervisor.timing.zones import UTC, zone_named

    _check_jobs_dir(jobs_dir)
    default_zone = _zone_or_exit(zone)
    # One zone for every line, so that the times read in order; a job's own zone is what
    # ``taskd next JOB_FILE`` shows.
    shown_in = zone_named(default_zone)
    start = _instant_or_exit(after, shown_in) if after else datetime.now(UTC)
    try:
        until = start + window
    except OverflowError:
        until = datetime.max.replace(tzinfo=UTC)
    jobs, problems, disabled = [], 0, 0
    for line, ok, job in _read_jobs(jobs_dir, default_zone, trusted_only):
        if not ok or job is None:
            click.echo(line, err=True)
            problems += not ok
        elif job.enabled:
            jobs.append(job)
        else:
            disabled += 1
    found = upcoming(jobs, start, until, limit)
    if as_json:
        _echo_json_array([{"job_id": job.job_id, "file": job.file, "at": None}
                          for job in found.at_start]
                         + [{"job_id": job.job_id, "file": job.file,
                             "at": instant.astimezone(shown_in).isoformat()}
                            for instant, job in found.fires])
    else:
        _echo_lines([f"{'at start':<25}  {job.job_id}" for job in found.at_start]
                    + [f"{instant.astimezone(shown_in).isoformat()}  {job.job_id}"
                       for instant, job in found.fires])
    if disabled:
        click.echo(f"taskd next: {disabled} disabled job{'s' if disabled > 1 else ''} "
                   f"(enabled: false) left out", err=True)
    if found.more:
        more = f"more than {found.more:,}" if found.more_capped else f"{found.more:,}"
        click.echo(f"taskd next: ... {more} more fire times within the window "
                   f"(--limit {limit:,} reached)", err=True)
    sys.exit(1 if problems else 0)


def _echo_lines(lines: list[str], chunk: int = 1000) -> None:
    """Lines to stdout, ``chunk`` a write (one write per line is slow at 86,400 lines)."""
    for first in range(0, len(lines), chunk):
        click.echo("\n".join(lines[first:first + chunk]))


def _trigger_or_exit(text: str, zone_name: str) -> tuple[Trigger, str]:
    from supervisor.jobfiles.jobspec import (
        JobFileError,
        ScheduleError,
        read_job_file,
        schedule_trigger,
    )

    if text.endswith(".json") or os.path.isfile(text):
        try:
            job: JobSpec = read_job_file(text, default_zone=zone_name)
        except JobFileError as error:
            _fail(str(error))
        return job.trigger, job.timezone
    try:
        return schedule_trigger(text, zone_name), zone_name
    except ScheduleError as error:
        _fail(str(error))


def _instant_or_exit(text: str, zone) -> datetime:
    from supervisor.timing.triggers import local_wall_to_utc

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--after {text!r}: not a valid ISO 8601 timestamp")
    if moment.tzinfo is None:
        return local_wall_to_utc(moment, zone)
    return moment


def _zone_or_exit(zone: str | None, *, code: int = 1) -> str:
    from supervisor.timing.zones import UnknownZoneError, host_zone_name, zone_named

    name = zone or host_zone_name()
    try:
        zone_named(name)
    except UnknownZoneError as error:
        _fail(f"--timezone: {error}", code=code)
    return name


def _fail(message: str, *, code: int = 1) -> NoReturn:
    click.echo(f"taskd: {message}", err=True)
    sys.exit(code)

