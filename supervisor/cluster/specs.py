"""Which version of each job every node has: what it may claim, and the conflict view.

A node runs the version of a job its own files hold, so each node publishes the version
of each job it would run (``taskd_node_jobs``; ``JobSpec.version``, a short hash of its
file's bytes), with the limits that version sets (``JobVersion``: the claims hold them
cluster-wide): claims only take jobs the claimer has published, and ``conflicts`` lists
the jobs whose hash differs between live nodes (for ``taskd status``). Publishing
writes only what changed since this object last published for that node (nothing at all
for a heartbeat, or a reload that changed nothing), so 100,000 jobs cost one COPY at
join and, in one round trip, a row per edited job after.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from supervisor.cluster.database import ClusterDatabase
from supervisor.jobfiles.jobspec import JobSpec
from supervisor.timing.schedule import run_limit

_COLUMNS = "(node_id, job_id, spec_hash, run_limit, replace, concurrency_group)"
# A node's first publish (every job it has) is a COPY: 100,000 rows took the server 0.26 s
# of CPU, against 0.41 s inserted from one JSON text.
_COPY = f"COPY taskd_node_jobs {_COLUMNS} FROM STDIN"
# After it, only the changed versions, as one JSON text, [[job_id, hash], [job_id, hash,
# run_limit, replace, group], ...] (limits only where a job has them): psycopg builds
# five arrays at four times the CPU json.dumps takes for this one text.
_UPSERT = f"""
INSERT INTO taskd_node_jobs {_COLUMNS}
SELECT %(node_id)s, v->>0, v->>1, (v->>2)::integer, coalesce((v->>3)::boolean, false), v->>4
FROM json_array_elements(%(versions)s::json) AS v
ON CONFLICT (node_id, job_id) DO UPDATE
SET spec_hash = excluded.spec_hash, run_limit = excluded.run_limit,
    replace = excluded.replace, concurrency_group = excluded.concurrency_group
"""
_REMOVE = "DELETE FROM taskd_node_jobs WHERE node_id = %(node_id)s AND job_id = ANY(%(job_ids)s)"
_REMOVE_ALL = "DELETE FROM taskd_node_jobs WHERE node_id = %(node_id)s"
# A digest of each node's whole set of versions: equal on every live node that has
# published (one that has not has no versions to differ), nothing can conflict and the
# conflict view (which reads every node's every job) is not run. Nodes starting together
# publish one after the other: the view is not run over 100,000 jobs at each.
_SET_DIGEST = "UPDATE taskd_nodes SET jobs_digest = %(digest)s WHERE node_id = %(node_id)s"
_DIGESTS = ("SELECT count(DISTINCT jobs_digest) FROM taskd_nodes "
            "WHERE state = 'alive' AND jobs_digest IS NOT NULL")
_CONFLICTS = """
SELECT j.job_id, json_object_agg(j.node_id, j.spec_hash ORDER BY j.node_id)
FROM taskd_node_jobs j JOIN taskd_nodes n ON n.node_id = j.node_id AND n.state = 'alive'
GROUP BY j.job_id
HAVING count(DISTINCT j.spec_hash) > 1
ORDER BY j.job_id
"""


class JobVersion(NamedTuple):
    """A node's version of a job: its hash, and the limits the claims hold cluster-wide."""

    spec_hash: str
    run_limit: int | None = None  # runs at once: overlap skip/replace 1, max_concurrent N
    replace: bool = False  # overlap: replace (at the limit, the oldest run is stopped)
    concurrency_group: str | None = None

    @classmethod
    def of(cls, spec: JobSpec) -> JobVersion:
        """This node's version of a job: the version of its file, and its limits."""
        return cls(spec.version, run_limit(spec), spec.overlap == "replace",
                   spec.policy.concurrency_group)

    @property
    def limited(self) -> bool:
        return self.run_limit is not None or self.concurrency_group is not None


def version_of(value: str | JobVersion) -> JobVersion:
    return value if isinstance(value, JobVersion) else JobVersion(value)


class SpecHashes:
    def __init__(self, db: ClusterDatabase) -> None:
        self.db = db
        self._published: dict[str, dict[str, JobVersion]] = {}  # node id -> what it has
        self._digests: dict[str, int] = {}  # node id -> the digest of what it has

    def publish(self, node_id: str, hashes: Mapping[str, str | JobVersion]) -> int:
        """Make ``hashes`` (job_id -> spec hash, or its JobVersion) the jobs ``node_id``
        has; how many rows were written or removed."""
        hashes = {job_id: version_of(value) for job_id, value in hashes.items()}
        known = self._published.get(node_id)
        if known is None:  # first time here: whatever the table holds is replaced
            changed, removed = hashes, None
        else:
            changed = {job: h for job, h in hashes.items() if known.get(job) != h}
            removed = [job for job in known if job not in hashes]
            if not changed and not removed:
                return 0
        # The set's digest, updated by what changed (from nothing, the first time).
        before = known or {}
        digest = self._digests.get(node_id, 0) if known is not None else 0
        for job_id in [*(removed or ()), *(job for job in changed if job in before)]:
            digest ^= _job_digest(job_id, before[job_id])
        for job_id, version in changed.items():
            digest ^= _job_digest(job_id, version)
        if removed is None:
            self._replace_all(node_id, changed, digest)
        else:
            versions = {"node_id": node_id, "versions": json.dumps(
                [[job_id, v.spec_hash] if not (v.limited or v.replace) else [job_id, *v]
                 for job_id, v in changed.items()], separators=(",", ":"))}
            with self.db.batch() as db:
                if removed:
                    db.execute(_REMOVE, {"node_id": node_id, "job_ids": removed})
                if changed:
                    db.execute(_UPSERT, versions)
                db.execute(_SET_DIGEST, {"digest": digest, "node_id": node_id})
        self._published[node_id] = hashes
        self._digests[node_id] = digest
        return len(changed) + len(removed or ())

    def _replace_all(self, node_id: str, versions: dict[str, JobVersion], digest: int) -> None:
        """Whatever the table holds of ``node_id`` becomes ``versions``, in one
        transaction (COPY cannot be pipelined: a few round trips, once per node)."""
        with self.db.transaction() as db:
            db.execute(_REMOVE_ALL, {"node_id": node_id})
            with db.cursor().copy(_COPY) as copy:
                for job_id, v in versions.items():
                    copy.write_row((node_id, job_id, v.spec_hash, v.run_limit, v.replace,
                                    v.concurrency_group))
            db.execute(_SET_DIGEST, {"digest": digest, "node_id": node_id})

    def conflicts(self) -> list[dict[str, Any]]:
        """``[{"job_id", "hashes": {node_id: hash}}]`` for each job whose version
        differs between live nodes."""
        with self.db.session() as db:
            (sets,) = db.execute(_DIGESTS).fetchone()
            rows = db.execute(_CONFLICTS).fetchall() if sets > 1 else []
        return [{"job_id": job_id, "hashes": hashes} for job_id, hashes in rows]


def _job_digest(job_id: str, version: JobVersion) -> int:
    """A job's part of its node's set digest (the set's is the XOR of its jobs', so one
    change updates it): 56 bits, a positive bigint."""
    text = f"{job_id}\0{version.spec_hash}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big")
