"""Which failed runs are tried again, and when (job key ``retry``).

A failure is retried while attempts are left: a non-zero exit, a signal, a timeout, a
failure to start and a ``shutdown`` (the daemon stopped it). Not retried: ``replaced``
(a newer run took its place), ``daemon lost`` (found at start-up; the command may have
done its work) and ``worker lost`` unless ``retry.on_lost`` (the same reason). The
delay is ``retry.delay_before`` with ±10 % jitter, so jobs that failed together (a
database down) do not all come back in the same second.
"""

from __future__ import annotations

import random
from typing import Any

from supervisor.jobfiles.policy_keys import RetryPolicy

NEVER_RETRIED = ("replaced", "daemon lost", "node lost")
JITTER_FRACTION = 0.10


def next_attempt(policy: RetryPolicy | None, record: dict[str, Any]) -> int | None:
    """The attempt that should follow this record's run, or None: no retry."""
    if policy is None or record["status"] == "SUCCESS" or record.get("hook"):
        return None
    error = record.get("error") or ""
    if error in NEVER_RETRIED or (error == "worker lost" and not policy.on_lost):
        return None
    attempt = record.get("attempt") or 1
    return attempt + 1 if attempt < policy.attempts else None


def retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds from the failure to ``attempt`` (2 for the first retry)."""
    base = policy.delay_before(attempt)
    spread = ((rng or random).random() * 2 - 1) * JITTER_FRACTION
    return max(0.0, base * (1 + spread))
