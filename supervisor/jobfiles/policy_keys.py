"""The policy keys of a job file: retries, hooks, concurrency, jitter, who runs it.

Each ``parse_*`` takes the decoded document and returns the key's value ready for the
JobSpec, or raises ``PolicyError`` whose message starts with the key it is about
(``retry.attempts: must be ...``); jobspec turns it into the file's one-line error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from workers.env_file import EnvFileError, check_env_file_path
from workers.params import is_unicode, show
from workers.run_as import AccountError, check_can_switch, resolve_account

HOOK_KEYS = ("on_failure", "on_success", "on_recovery", "on_give_up")
RETRY_KEYS = ("attempts", "delay_s", "backoff", "max_delay_s", "on_lost")
MAX_ATTEMPTS = 100
MAX_MAX_CONCURRENT = 10_000
MAX_JITTER_S = 7 * 86400.0  # systemd accepts any; a week is already more than a schedule
# A POSIX account or group name (useradd's default rule, plus the trailing $ of Samba
# machine accounts).
_ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_GROUP_NAME_MAX = 128


class PolicyError(ValueError):
    """A policy key's value is unusable; the message starts with the key."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retry``: ``attempts`` runs in all (the first and attempts - 1 retries), the k-th
    retry ``delay_s * backoff ** (k - 1)`` seconds after the failure (at most
    ``max_delay_s``, then ±10 % jitter)."""

    attempts: int
    delay_s: float = 10.0
    backoff: float = 2.0
    max_delay_s: float = 300.0
    on_lost: bool = False  # also retry a run whose worker was lost

    def delay_before(self, attempt: int) -> float:
        """Seconds between the failure of ``attempt - 1`` and ``attempt`` (>= 2), before
        jitter."""
        steps = max(0, attempt - 2)
        try:
            delay = self.delay_s * self.backoff ** steps
        except OverflowError:
            delay = math.inf
        return min(delay, self.max_delay_s)

    def describe(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "delay_s": self.delay_s, "backoff": self.backoff,
                "max_delay_s": self.max_delay_s, "on_lost": self.on_lost}


def parse_retry(value: Any) -> RetryPolicy | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PolicyError(f"retry: must be an object such as {{\"attempts\": 3}}, got "
                          f"{show(value)}")
    for key in value:
        if key not in RETRY_KEYS:
            raise PolicyError(f"retry: unknown key {show(key)} (known: "
                              f"{', '.join(RETRY_KEYS)})")
    if "attempts" not in value:
        raise PolicyError("retry.attempts: required key is missing (how many runs in all, "
                          "the first included)")
    attempts = value["attempts"]
    if not (isinstance(attempts, int) and not isinstance(attempts, bool)
            and 1 <= attempts <= MAX_ATTEMPTS):
        raise PolicyError(f"retry.attempts: must be a whole number from 1 to {MAX_ATTEMPTS} "
                          f"(the first run included), got {show(attempts)}")
    delay_s = _seconds(value, "delay_s", 10.0, "retry.delay_s")
    backoff = value.get("backoff", 2.0)
    if not _finite_number(backoff) or backoff < 1:
        raise PolicyError(f"retry.backoff: must be a number, 1 or more, got {show(backoff)}")
    max_delay_s = _seconds(value, "max_delay_s", max(300.0, delay_s), "retry.max_delay_s")
    if max_delay_s < delay_s:
        raise PolicyError(f"retry.max_delay_s: must be at least retry.delay_s "
                          f"({delay_s:g}), got {show(value['max_delay_s'])}")
    on_lost = value.get("on_lost", False)
    if not isinstance(on_lost, bool):
        raise PolicyError(f"retry.on_lost: must be true or false, got {show(on_lost)}")
    return RetryPolicy(attempts, delay_s, float(backoff), max_delay_s, on_lost)


def parse_max_concurrent(value: Any) -> int | None:
    if value is None:
        return None
    if (isinstance(value, int) and not isinstance(value, bool)
            and 1 <= value <= MAX_MAX_CONCURRENT):
        return value
    raise PolicyError(f"max_concurrent: must be a whole number from 1 to "
                      f"{MAX_MAX_CONCURRENT:,}, got {show(value)}")


def parse_concurrency_group(value: Any) -> str | None:
    if value is None:
        return None
    if (not isinstance(value, str) or not value or len(value) > 128
            or not value.isprintable() or not is_unicode(value)):
        raise PolicyError(f"concurrency_group: must be a name of 1-128 printable "
                          f"characters, got {show(value)}")
    return value


def parse_jitter(document: dict[str, Any]) -> tuple[float, bool]:
    """``jitter_s`` and ``jitter_fixed``."""
    value = document.get("jitter_s", 0)
    if not _finite_number(value) or not 0 <= value <= MAX_JITTER_S:
        raise PolicyError(f"jitter_s: must be a number of seconds from 0 to "
                          f"{MAX_JITTER_S:g} (a week), got {show(value)}")
    fixed = document.get("jitter_fixed", False)
    if not isinstance(fixed, bool):
        raise PolicyError(f"jitter_fixed: must be true or false, got {show(fixed)}")
    if fixed and not value:
        raise PolicyError("jitter_fixed: needs jitter_s (the range the fixed offset is "
                          "drawn from)")
    return float(value), fixed


def parse_account(document: dict[str, Any]) -> tuple[str | None, str | None]:
    """``user`` and ``group``: names this daemon may run a command as, that exist now
    (they are looked up again at each run: an account removed later fails that run)."""
    user, group = document.get("user"), document.get("group")
    if user is not None and (not isinstance(user, str) or not _ACCOUNT_NAME.fullmatch(user)):
        raise PolicyError(f"user: must be an account name, got {show(user)}")
    if group is not None:
        if (not isinstance(group, str) or not group or len(group) > _GROUP_NAME_MAX
                or not _ACCOUNT_NAME.fullmatch(group)):
            raise PolicyError(f"group: must be a group name, got {show(group)}")
        if user is None:
            raise PolicyError("group: needs user (the account the command runs as)")
    if user is not None:
        try:
            check_can_switch(user, group)
            resolve_account(user, group)
        except AccountError as error:
            raise PolicyError(str(error)) from None
    return user, group


def parse_env_file(value: Any) -> str | None:
    """``env_file``: a path (``-`` first: ignored when missing, as systemd does)."""
    if value is None:
        return None
    if not isinstance(value, str) or "\0" in value or not is_unicode(value):
        raise PolicyError(f"env_file: must be a path, got {show(value)}")
    try:
        check_env_file_path(value)  # the file itself is read at each run
    except EnvFileError as error:
        raise PolicyError(str(error)) from None
    return value


def _seconds(document: dict[str, Any], key: str, default: float, name: str) -> float:
    return non_negative_seconds(document.get(key, default), name)


def non_negative_seconds(value: Any, name: str) -> float:
    """A finite number of seconds, 0 or more (``name`` is the key, for the message)."""
    if not _finite_number(value) or value < 0:
        raise PolicyError(f"{name}: must be a number of seconds, 0 or more, got {show(value)}")
    return float(value)


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


@dataclass(frozen=True, slots=True)
class HookTask:
    """One hook: a task of any registered type, run with the record that set it off."""

    name: str  # "on_failure", ...
    task_type: str
    task_params: Any  # TaskParams


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """A job's policy keys. Jobs that set none share ``NO_POLICY``: at 100,000 jobs one
    pointer each, not a dozen fields each."""

    retry: RetryPolicy | None = None
    hooks: tuple[HookTask, ...] = ()
    max_concurrent: int | None = None
    concurrency_group: str | None = None
    jitter_s: float = 0.0
    jitter_fixed: bool = False
    user: str | None = None
    group: str | None = None
    env_file: str | None = None

    def hook(self, name: str) -> HookTask | None:
        return next((hook for hook in self.hooks if hook.name == name), None)

    def describe(self) -> dict[str, Any]:
        """For ``taskd status JOB_ID``: every policy key with its value in effect."""
        return {"retry": self.retry.describe() if self.retry else None,
                "hooks": {hook.name: hook.task_type for hook in self.hooks},
                "max_concurrent": self.max_concurrent,
                "concurrency_group": self.concurrency_group,
                "jitter_s": self.jitter_s, "jitter_fixed": self.jitter_fixed,
                "user": self.user, "group": self.group, "env_file": self.env_file}


NO_POLICY = JobPolicy()
POLICY_KEYS = ("retry", *HOOK_KEYS, "max_concurrent", "concurrency_group", "jitter_s",
               "jitter_fixed", "user", "group", "env_file")
