"""JobSpec: one validated job, read from one JSON file.

Everything that can be wrong with a job file is found here, when the file is read, never
when the job runs. Every problem is a JobFileError whose message is one line naming the
file, the key and the expectation, e.g.
``jobs.d/x.json: schedule "61 * * * *": minute 61 is out of range 0-59``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from supervisor.jobfiles.file_trust import daemon_uid, untrusted_reason
from supervisor.jobfiles.jobdir import FileStamp
from supervisor.jobfiles.policy_keys import (
    HOOK_KEYS,
    NO_POLICY,
    POLICY_KEYS,
    HookTask,
    JobPolicy,
    PolicyError,
    non_negative_seconds,
    parse_account,
    parse_concurrency_group,
    parse_env_file,
    parse_jitter,
    parse_max_concurrent,
    parse_retry,
)
from supervisor.jobfiles.task_params import TaskParams
from supervisor.timing.cron_expr import CronSyntaxError
from supervisor.timing.triggers import (
    START_MACROS,
    OneTimeTrigger,
    StartTrigger,
    Trigger,
    cron_trigger,
    local_wall_to_utc,
)
from supervisor.timing.zones import UTC, UnknownZoneError, zone_named
from workers.params import is_unicode, show
from workers.task_type import TaskParamsError, UnknownTaskType, task_type_named

MAX_FILE_BYTES = 1024 * 1024
VERSION_BYTES = 6  # a job version: 12 hex digits
MAX_REASON_CHARS = 500  # an error message stays one readable line
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
KNOWN_KEYS = ("job_id", "description", "schedule", "timezone", "task", "timeout_s",
              "overlap", "enabled", "catch_up", "max_catch_up", "starting_deadline_s",
              *POLICY_KEYS)
_KNOWN_KEY_SET, _POLICY_KEY_SET = frozenset(KNOWN_KEYS), frozenset(POLICY_KEYS)
OVERLAP_POLICIES = ("allow", "skip", "replace")
CATCH_UP_POLICIES = ("none", "latest", "all")
DEFAULT_MAX_CATCH_UP = 100
MAX_MAX_CATCH_UP = 100_000
_TIMESTAMP_START = re.compile(r"\d{4}-\d{2}-\d{2}")
_KEY_FIRST = re.compile(r"\w+[.:]")  # a message that starts with the key it is about
# A one-time instant is later shown in any zone (status, ``taskd next``): keep a day clear
# of datetime's limits so that never overflows.
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
# Characters json.dumps(ensure_ascii=False) leaves as they are but that cannot be one line
# of UTF-8 text: line and paragraph separators, NEL, and lone surrogates.


class JobFileError(ValueError):
    """A job file that cannot be used. ``str()`` is the one-line message."""

    def __init__(self, file: str, reason: str) -> None:
        if len(reason) > MAX_REASON_CHARS:  # quoting a value a megabyte long, say
            reason = reason[:MAX_REASON_CHARS - 3] + "..."
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


@dataclass(frozen=True, eq=True, slots=True)
class JobSpec:
    job_id: str
    file: str
    schedule: str  # as written in the file
    timezone: str  # the zone the schedule is read in (the daemon's default if not given)
    trigger: Trigger
    task_type: str
    task_params: Mapping[str, Any]
    timeout_s: float | None = None
    overlap: str = "allow"
    enabled: bool = True
    description: str | None = None
    catch_up: str = "none"  # what a daemon starting on a state dir runs of what it missed
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    starting_deadline_s: float | None = None  # None: the daemon's --misfire-grace
    policy: JobPolicy = NO_POLICY  # retry, hooks, concurrency, jitter, user (policy_keys)
    # Cluster mode: the job's version (source_version), compared between nodes. None when
    # the file was read without one (a single node has no use for it).
    version: str | None = None

    @property
    def one_time(self) -> bool:
        return isinstance(self.trigger, OneTimeTrigger)

    @property
    def at_start(self) -> bool:
        """``@reboot`` / ``@start``: runs once as the daemon starts."""
        return isinstance(self.trigger, StartTrigger)


def read_job_file(path: str, *, default_zone: str, trusted_only: bool = False) -> JobSpec:
    """Read, decode and validate one job file; JobFileError for anything unusable.

    ``trusted_only``: refuse files that fail cron's ownership rule (see file_trust).
    """
    return read_stamped_job_file(path, default_zone=default_zone, trusted_only=trusted_only)[0]


def read_stamped_job_file(path: str, *, default_zone: str, trusted_only: bool = False,
                          versioned: bool = False) -> tuple[JobSpec, FileStamp]:
    """``read_job_file``, and the stamp of the very file read (from its ``fstat``): the
    reconciler keeps it to notice the next change, with no ``stat`` of its own first.
    ``versioned``: the spec carries its ``version`` (cluster mode)."""
    try:
        # O_NONBLOCK: a FIFO named like a job file must not hang the daemon in open().
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)  # the file we read, even through a symlink
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise JobFileError(path, f"not a regular file (a {_file_kind(st.st_mode)})")
        try:
            if trusted_only:
                reason = untrusted_reason(st, daemon_uid=daemon_uid())
                if reason is not None:
                    raise JobFileError(path, reason)
            size = st.st_size
            if size > MAX_FILE_BYTES:
                raise JobFileError(path, f"larger than 1 MiB ({size} bytes)")
            data = _read_all(fd, size)
        finally:
            os.close(fd)
    except OSError as error:
        raise JobFileError(path, f"cannot read: {error.strerror or error}") from None
    return (parse_job(data, path, default_zone=default_zone, versioned=versioned),
            FileStamp.of(st))


def _read_all(fd: int, size: int) -> bytes:
    """The file's bytes, up to just over the 1 MiB limit.

    Plain ``os.read`` rather than a file object (which costs an ``fstat``, an ``ioctl``
    and a second ``read`` more per file: 100,000 files load measurably faster). One read
    of ``size + 1`` is the whole file when it returns ``size`` bytes; more means the file
    grew since the ``fstat`` and fewer a short read: either way read on to the end.
    """
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    chunks = [data]
    total = len(data)
    while total <= MAX_FILE_BYTES:
        chunk = os.read(fd, MAX_FILE_BYTES + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def parse_job(data: bytes, file: str, *, default_zone: str, versioned: bool = False
              ) -> JobSpec:
    """Validate the bytes of a job file named ``file`` (the name is only for messages);
    ``versioned``: with the spec's ``version`` from those bytes."""
    if len(data) > MAX_FILE_BYTES:
        raise JobFileError(file, f"larger than 1 MiB ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JobFileError(file, f"not UTF-8 text (invalid byte at offset {error.start})") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark (RFC 8259: may be ignored)
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise JobFileError(file, f"not valid JSON: {error.msg} (line {error.lineno}, "
                                 f"column {error.colno})") from None
    except _BadDocument as error:
        raise JobFileError(file, f"not valid JSON: {error}") from None
    except ValueError:  # int() refuses numerals of more than 4300 digits
        raise JobFileError(file, "not valid JSON: a number has too many digits") from None
    except RecursionError:
        raise JobFileError(file, "not valid JSON: nested too deeply") from None
    return job_from_document(document, file, default_zone=default_zone,
                             source=data if versioned else None)


def source_version(source: bytes, zone_name: str) -> str:
    """A job's version for the cluster: a short hash of its file's bytes and the zone its
    schedule is read in (a file without ``timezone`` takes its node's default). Nodes
    fed by the same config management hold the same bytes; a file that differs in any
    byte is another version (``taskd status`` shows it as a conflict). Hashing the bytes
    costs a tenth of hashing the parsed spec, which 100,000 jobs feel at every start."""
    return hashlib.blake2b(zone_name.encode() + b"\0" + source,
                           digest_size=VERSION_BYTES).hexdigest()


def job_from_document(document: Any, file: str, *, default_zone: str,
                      source: bytes | None = None) -> JobSpec:
    """``source``: the file's bytes, to give the spec its ``version``."""
    if not isinstance(document, dict):
        raise JobFileError(file, f"expected a JSON object at the top level, got "
                                 f"{_json_type(document)}")
    for key in document:
        if key not in _KNOWN_KEY_SET and not key.startswith("_"):
            raise JobFileError(file, _unknown_key_message(key, KNOWN_KEYS))
    for key in ("job_id", "schedule", "task"):
        if key not in document:
            raise JobFileError(file, f"{key}: required key is missing")

    job_id = document["job_id"]
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise JobFileError(file, f"job_id {show(job_id)}: must be 1-128 characters from "
                                 f"A-Z a-z 0-9 . _ -")
    zone_name = document.get("timezone", default_zone)
    if not isinstance(zone_name, str):
        raise JobFileError(file, f"timezone {show(zone_name)}: must be a string")
    try:
        zone_named(zone_name)
    except UnknownZoneError as error:
        raise JobFileError(file, f"timezone {show(zone_name)}: {error}") from None
    schedule = document["schedule"]
    if not isinstance(schedule, str):
        raise JobFileError(file, f"schedule {show(schedule)}: must be a string (a cron "
                                 f"expression or an ISO 8601 timestamp)")
    try:
        trigger = schedule_trigger(schedule, zone_name)
    except ScheduleError as error:
        raise JobFileError(file, str(error)) from None
    task_type, task_params = _task(document["task"], file)
    policy = _policy(document, file)
    description = document.get("description")
    if description is not None and not isinstance(description, str):
        raise JobFileError(file, f"description: must be a string, got {show(description)}")
    if description is not None and not is_unicode(description):
        raise JobFileError(file, "description: must be valid Unicode text (it has a lone "
                                 "surrogate escape such as \\ud800)")

    return JobSpec(
        job_id=job_id,  # not interned: unique per job, interning only grows sys.intern's table
        file=file,
        # Shared by the jobs with one cron expression; a timestamp is usually one job's.
        schedule=schedule if isinstance(trigger, OneTimeTrigger) else sys.intern(schedule),
        timezone=sys.intern(zone_name),
        trigger=trigger,
        task_type=task_type,
        task_params=task_params,
        timeout_s=_timeout(document.get("timeout_s"), file),
        overlap=_choice(document, "overlap", OVERLAP_POLICIES, "allow", file),
        enabled=_flag(document, "enabled", True, file),
        description=description,
        catch_up=_choice(document, "catch_up", CATCH_UP_POLICIES, "none", file),
        max_catch_up=_count(document, "max_catch_up", DEFAULT_MAX_CATCH_UP, MAX_MAX_CATCH_UP,
                            file),
        starting_deadline_s=_deadline(document.get("starting_deadline_s"), file),
        policy=policy,
        version=None if source is None else source_version(source, zone_name),
    )


def _policy(document: dict, file: str) -> JobPolicy:
    """The policy keys (NO_POLICY when the file sets none of them)."""
    if _POLICY_KEY_SET.isdisjoint(document):
        return NO_POLICY
    hooks = tuple(HookTask(name, *_task(document[name], file, key=name))
                  for name in HOOK_KEYS if name in document)
    try:
        jitter_s, jitter_fixed = parse_jitter(document)
        user, group = parse_account(document)
        policy = JobPolicy(
            retry=parse_retry(document.get("retry")),
            hooks=hooks,
            max_concurrent=parse_max_concurrent(document.get("max_concurrent")),
            concurrency_group=parse_concurrency_group(document.get("concurrency_group")),
            jitter_s=jitter_s, jitter_fixed=jitter_fixed,
            user=user, group=group,
            env_file=parse_env_file(document.get("env_file")))
    except PolicyError as error:
        raise JobFileError(file, str(error)) from None
    if document.get("overlap") == "skip" and policy.max_concurrent not in (None, 1):
        raise JobFileError(file, f'max_concurrent: overlap "skip" runs one at a time; '
                                 f'with max_concurrent {policy.max_concurrent} use '
                                 f'overlap "allow" (it skips beyond the limit)')
    return policy


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message starts with ``schedule "..."``."""


def schedule_trigger(schedule: str, zone_name: str) -> Trigger:
    """The trigger for a schedule string read in ``zone_name`` (cron or ISO 8601)."""
    text = schedule.strip()
    if text.lower() in START_MACROS:
        return StartTrigger(text.lower())
    if _TIMESTAMP_START.match(text):
        return OneTimeTrigger(_timestamp(text, zone_name))
    try:
        return cron_trigger(text, zone_name)
    except CronSyntaxError as error:
        raise ScheduleError(f"schedule {show(schedule)}: {error}") from None


def _timestamp(text: str, zone_name: str) -> datetime:
    if len(text) == 10:
        raise ScheduleError(f"schedule {show(text)}: a one-time schedule needs a time of day "
                            f"(e.g. {text}T00:00:00Z)")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"schedule {show(text)}: not a valid ISO 8601 timestamp "
                            f"(expected e.g. 2025-10-26T15:00:00Z)") from None
    try:
        if moment.tzinfo is None:
            moment = local_wall_to_utc(moment, zone_named(zone_name))
        moment = moment.astimezone(UTC)
    except OverflowError:  # within a few hours of year 1 or year 9999
        moment = _LATEST + timedelta(days=1)
    if not _EARLIEST <= moment <= _LATEST:
        raise ScheduleError(f"schedule {show(text)}: out of the supported range of dates "
                            f"(0001-01-02 to 9999-12-30)")
    return moment


def _task(task: Any, file: str, *, key: str = "task") -> tuple[str, Mapping[str, Any]]:
    """The task object under ``key`` (``task``, or a hook such as ``on_failure``)."""
    if not isinstance(task, dict) or "type" not in task:
        raise JobFileError(file, f'{key}: must be an object with a "type" key')
    type_name = task["type"]
    if not isinstance(type_name, str):
        raise JobFileError(file, f"{key}.type {show(type_name)}: must be a string")
    try:
        task_class = task_type_named(type_name)
    except UnknownTaskType as error:
        raise JobFileError(file, f"{key}.type: {error}") from None
    params = {key: value for key, value in task.items() if key != "type"}
    try:
        normalized = task_class.validate(params)
    except TaskParamsError as error:
        # "command: ..." becomes "task.command: ..."; "unknown key ..." "task: unknown key ..."
        joint = "." if _KEY_FIRST.match(str(error)) else ": "
        raise JobFileError(file, f"{key}{joint}{error}") from None
    return sys.intern(type_name), TaskParams(normalized)


def _timeout(value: Any, file: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)  # OverflowError for an int beyond any float
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    raise JobFileError(file, f"timeout_s: must be a positive number of seconds, got "
                             f"{show(value)}")


def _count(document: dict, key: str, default: int, most: int, file: str) -> int:
    value = document.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most:
        return value
    raise JobFileError(file, f"{key}: must be a whole number from 1 to {most:,}, got "
                             f"{show(value)}")


def _deadline(value: Any, file: str) -> float | None:
    if value is None:
        return None
    try:
        return non_negative_seconds(value, "starting_deadline_s")
    except PolicyError as error:
        raise JobFileError(file, str(error)) from None


def _choice(document: dict, key: str, allowed: tuple[str, ...], default: str, file: str) -> str:
    value = document.get(key, default)
    if value not in allowed or not isinstance(value, str):
        options = " or ".join(f'"{option}"' for option in allowed)
        raise JobFileError(file, f"{key}: must be {options}, got {show(value)}")
    return value


def _flag(document: dict, key: str, default: bool, file: str) -> bool:
    value = document.get(key, default)
    if not isinstance(value, bool):
        raise JobFileError(file, f"{key}: must be true or false, got {show(value)}")
    return value


def _unknown_key_message(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f'unknown key {show(key)}{hint}; keys starting with "_" are free for comments'


class _BadDocument(ValueError):
    """Raised from the JSON decoder's hooks; the message is the reason."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadDocument(f"duplicate key {show(key)}")
            seen.add(key)
    return result


def _no_constant(name: str) -> None:
    raise _BadDocument(f"{name} is not a number JSON allows")


# One decoder for every file: json.loads with these hooks builds a new one per call,
# which took as long as decoding a small job file.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def hook_from_option(text: str, option: str = "--on-failure") -> HookTask:
    """A daemon-wide hook from the command line: a JSON task object (``{"type": ...}``),
    or else a shell command for ``execute_command``. JobFileError names the option."""
    if text.lstrip().startswith("{"):
        try:
            task = _DECODER.decode(text)
        except (json.JSONDecodeError, _BadDocument) as error:
            raise JobFileError(option, f"not a valid JSON task object: {error}") from None
    else:
        task = {"type": "execute_command", "command": text}
    name = option.removeprefix("--").replace("-", "_")
    return HookTask(name, *_task(task, option, key=name))
