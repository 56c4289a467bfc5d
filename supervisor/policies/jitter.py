"""How long a job's run waits after its instant (``jitter_s``, ``jitter_fixed``).

As systemd's ``RandomizedDelaySec=``: a fresh delay in [0, jitter_s) for each run; with
``FixedRandomDelay=`` (``jitter_fixed``) the same delay every time, drawn from a hash of
the host name and the job id, so a fleet spreads out and each host keeps its rhythm.
"""

from __future__ import annotations

import hashlib
import random
import socket

from supervisor.jobfiles.jobspec import JobSpec


def fixed_offset(host: str, job_id: str, jitter_s: float) -> float:
    digest = hashlib.sha256(f"{host}\0{job_id}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64  # in [0, 1)
    return fraction * jitter_s


def delay_for(spec: JobSpec, *, host: str | None = None,
              rng: random.Random | None = None) -> float:
    """The delay of one run of ``spec`` (0.0 without jitter)."""
    policy = spec.policy
    if not policy.jitter_s:
        return 0.0
    if policy.jitter_fixed:
        return fixed_offset(host or socket.gethostname(), spec.job_id, policy.jitter_s)
    return (rng or random).random() * policy.jitter_s
