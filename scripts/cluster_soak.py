"""Cluster soak: N taskd nodes on one throwaway PostgreSQL under job churn, node kills and
database restarts, then every occurrence accounted for. Run it as ``scripts/soak --cluster``:

    scripts/soak --cluster --duration 60 [--nodes 3] [--workers 2] [--jobs 12] [--seed N]
                 [--lease 3] [--stop-phase 0.5] [--keep DIR] [--json]

A PostgreSQL server of its own (tests/pg_server.py: initdb in a temp dir, a unix socket
only) holds one new database. Each node is ``python -m supervisor start --cluster URL
--lease L`` in a process group of its own, on its own copy of the jobs directory (as
configuration management ships files to each host: every change is written to every
copy, one after the other), with its own log and diagnostics (one file each per life of
the node, so a line torn by a kill never runs into the next life's first line). From one
seeded random generator, the soak:

- churns the jobs: adds, edits (the command only, or the timing, or enabled toggled),
  renames and deletes jobs that run every second or every 2-3 s (light commands, failing
  ones, ``sleep``s long enough to be in flight when their node dies), and adds one-time
  jobs a few seconds ahead;
- SIGKILLs a whole node now and then (its process group: coordinator, workers, logger;
  and every task it ran, as a host that dies takes them along), never the last live one,
  and starts it again a little later (sometimes before its lease ran out, sometimes
  after a peer declared it dead); 0.3 s after the kill it notes which occurrences that
  node had claimed and not finished in the database (its runs in flight);
- restarts PostgreSQL now and then (``pg_ctl restart``, ``-m immediate`` as a crash would,
  or ``-m fast``), or stops it (as a crash) for 1 s to two leases before it starts it
  again: longer than a lease, the nodes fence themselves and rejoin. The throwaway server
  runs without fsync (its data never outlives the soak), but with ``synchronous_commit``
  on: without it a crash loses commits the server had acknowledged, and no client of any
  database survives that.

Then it starts the nodes that are down, waits until the peers declared every killed node
dead, stops all nodes with SIGTERM at once (``--stop-phase``: at that fraction of a
second, e.g. 0.5 to stop while no claim of the per-second jobs is in flight), reads the
database (``taskd_executions``,
``taskd_occurrences``, ``taskd_nodes``; copied into the work dir as JSON lines) and every
node's logs and diagnostics, and checks (``--json`` also prints one JSON object as the
last line of stdout; exit 0 only if every invariant holds):

1. accounting: every occurrence that came due while its job existed with a given timing
   (reconstructed from the churn log with taskd's own trigger code, scripts/soak's
   ``Definition``), away from a change of that job, from a fault and from the start and
   the stop by ``--tolerance`` seconds, has exactly one execution record (SUCCESS or
   FAILURE, ``node lost`` included) or is missed (its row ``missed`` in
   ``taskd_occurrences``, or covered by a ``missed`` diagnostic of some node), never
   both. Duplicates are judged everywhere, faults and changes included: two run ids for
   one ``(job_id, scheduled_for)`` in the database and all logs together are a duplicate.
   A record for an instant the job's schedule never had (away from its changes) is
   unexpected. Several nodes may each say ``missed`` for the same occurrence (each
   reports the offers it coalesced while the database was away): that counts as missed
   once, and is counted apart;
2. the database and the logs agree: every logged record is in the database with the same
   outcome, no run id is logged twice, each record belongs to the occurrence row that
   claimed it, every ``done`` or ``lost`` row has its record, no row is left ``claimed``,
   and a record in the database that no log has belongs to a node that was killed (it
   died between the commit and its log line) or is a ``node lost`` (its reaper may have
   died since); ``taskd history --cluster`` shows as many records as the table holds;
3. node loss: every occurrence a killed node had claimed is ``done`` with its record, or
   ``lost`` with exactly one FAILURE ``node lost`` record naming that node; each run in
   flight at a kill ended that way (``node lost``, or ``done`` if its finish was already
   on its way to the database); no killed node is left ``alive`` in ``taskd_nodes``;
4. the nodes: every life the soak did not kill became ready, never exited by itself,
   wrote nothing but JSON lines (log and diagnostics), and exited 0 at the final SIGTERM;
5. no process leaked: after the stop, no process carries the soak's marker in its
   environment.

``node lost`` records for nodes that were not killed (a node fenced because it could not
heartbeat for a whole lease, e.g. through a database restart) are counted, not failed:
they are the design's answer to a node its peers cannot hear, and still one record each.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # one entry point (and one virtual-environment check): soak's
    soak_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak")
    os.execv(sys.executable, [sys.executable, soak_script, "--cluster", *sys.argv[1:]])

import argparse
import bisect
import contextlib
import importlib.machinery
import importlib.util
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
SOAK_PATH = SCRIPTS / "soak"


def _single_node_soak() -> ModuleType:
    """scripts/soak, for what both soaks share: ``Definition`` (fire instants from taskd's
    trigger code), JSON lines, the process tree. It is ``__main__`` when it handed over."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__file__", None) and \
            Path(main.__file__).resolve() == SOAK_PATH:
        return main
    loader = importlib.machinery.SourceFileLoader("taskd_soak", str(SOAK_PATH))
    spec = importlib.util.spec_from_loader("taskd_soak", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["taskd_soak"] = module
    loader.exec_module(module)
    return module


soak = _single_node_soak()
Definition, read_json_lines, us, iso_us = (soak.Definition, soak.read_json_lines, soak.us,
                                           soak.iso_us)
MARKER = "TASKD_CLUSTER_SOAK_LIFE"  # in every node's environment: "<soak>:<node>:<life>"
KILL_SNAPSHOT_AFTER_S = 0.3  # the node's runs in flight, read this long after its kill
NODE_START_TIMEOUT_S = 40.0
NODE_LOST = "node lost"
Key = tuple[str, int]  # (job_id, scheduled_for in epoch microseconds)


# -- the jobs -----------------------------------------------------------------------------

LIGHT = ["true", "echo tick", "date +%s", 'printf "%s\\n" "$TASKD_RUN_ID"', "sleep 0.2"]
FAILING = ["exit 3", "echo oops >&2; exit 3", "kill -9 $$"]
KINDS = ["tick"] * 3 + ["steady"] * 4 + ["failing"] * 2 + ["long"] * 3 + ["onetime"] * 2 + \
    ["disabled"]
ZONES = [None, None, "UTC", "Asia/Kolkata", "America/New_York"]


def make_doc(rng: random.Random, job_id: str, kind: str, now: float) -> dict[str, Any]:
    """A job of ``kind``: every second (tick), every 1-3 s (steady, failing, disabled),
    every 3 s running 1-2 s (long: in flight when its node dies), or once, soon."""
    period = {"tick": 1, "long": 3}.get(kind) or rng.choice([1, 2, 2, 3])
    if kind == "long":
        command = f"sleep {rng.choice([1, 1.5, 2])}"
    elif kind == "failing":
        command = rng.choice(FAILING)
    else:
        command = rng.choice(LIGHT + (FAILING if kind == "onetime" else []))
    doc: dict[str, Any] = {"job_id": job_id, "_kind": kind}
    if kind == "onetime":
        at = datetime.fromtimestamp(int(now) + rng.randint(3, 8), UTC)
        doc["schedule"] = at.strftime("%Y-%m-%dT%H:%M:%SZ") if rng.random() < 0.5 \
            else at.isoformat()
    else:
        doc["schedule"] = soak.seconds_schedule(rng, period)
    if kind == "disabled":
        doc["enabled"] = False
    zone = rng.choice(ZONES)
    if zone is not None:
        doc["timezone"] = zone
    doc["task"] = {"type": "execute_command", "command": command}
    return doc


def busy_fraction(doc: dict[str, Any]) -> float:
    """How much of one worker this job keeps busy, roughly."""
    period = soak.schedule_period(doc["schedule"])
    if period is None or doc.get("enabled") is False:
        return 0.0
    command = doc["task"]["command"]
    cost = float(command.split()[1]) + 0.05 if command.startswith("sleep ") else 0.03
    return cost / period


@dataclass
class Job:
    job_id: str
    file: str
    doc: dict[str, Any]
    definitions: list[Any] = field(default_factory=list)  # soak.Definition
    changes: list[float] = field(default_factory=list)  # when its timing changed
    alive: bool = True


# -- the nodes ------------------------------------------------------------------------------


@dataclass
class Life:
    """One run of a node's daemon, from its start to its kill or its stop."""

    number: int
    marker: str
    process: subprocess.Popen[bytes]
    diag_path: Path
    log_path: Path
    started_at: float
    ready_at: float | None = None
    killed_at: float | None = None
    stopped_at: float | None = None  # the final SIGTERM
    exit_code: int | None = None
    in_flight: list[dict[str, Any]] = field(default_factory=list)  # read after its kill

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in read_json_lines(self.diag_path)[0]
                if name is None or e.get("event") == name]

    def node_ids(self) -> list[str]:
        """Its memberships: one per join (a fenced node rejoins as a new node)."""
        return [e["node"] for e in self.events("cluster_joined") if e.get("node")]

    def is_ready(self) -> bool:
        if self.ready_at is None:
            events = self.events()
            names = {e.get("event") for e in events}
            if {"ready", "cluster_joined"} <= names:
                self.ready_at = max(_event_time(e) for e in events
                                    if e.get("event") in ("ready", "cluster_joined"))
        return self.ready_at is not None


class Node:
    """One node's directory (jobs.d, its logs, its socket) and its lives."""

    def __init__(self, work: Path, slot: int, marker: str) -> None:
        self.slot = slot
        self.base = work / f"node{slot}"
        self.jobs_dir = self.base / "jobs.d"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.base / "taskd.sock")
        if len(self.socket) > 100:  # AF_UNIX path limit
            self.socket = os.path.join(tempfile.mkdtemp(prefix="taskd-csoak-"), "taskd.sock")
        self.marker = marker
        self.lives: list[Life] = []

    @property
    def life(self) -> Life | None:
        """The current life, if the daemon is up (not killed, not stopped)."""
        last = self.lives[-1] if self.lives else None
        return last if last is not None and last.killed_at is None and \
            last.stopped_at is None else None

    def start(self, url: str, args: argparse.Namespace) -> Life:
        number = len(self.lives) + 1
        marker = f"{self.marker}:{self.slot}:{number}"
        diag = self.base / f"diagnostics-{number}.jsonl"
        log = self.base / f"executions-{number}.jsonl"
        env = {**os.environ, MARKER: marker}
        env.pop("NOTIFY_SOCKET", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "supervisor", "start", "--cluster", url,
                   "--lease", str(args.lease), "--workers", str(args.workers),
                   "--jobs-dir", str(self.jobs_dir), "--log-file", str(log),
                   "--socket", self.socket, "--timezone", "UTC",
                   "--grace-period", str(args.grace_period)]
        with open(diag, "ab") as err, open(self.base / "stdout.txt", "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, env=env, cwd=self.base,
                                       start_new_session=True)  # its own process group
        self.lives.append(Life(number, marker, process, diag, log, time.time()))
        return self.lives[-1]

    def kill(self) -> Life:
        """SIGKILL the whole node at once: its process group, then every task it ran (each
        in a group of its own), then any process still carrying this life's marker."""
        life = self.life
        assert life is not None
        pid = life.process.pid
        tree = soak.descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        life.killed_at = time.time()
        for child in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        life.exit_code = life.process.wait(timeout=30)
        kill_marked(f"{MARKER}={life.marker}")
        return life


def kill_marked(needle: str) -> list[int]:
    """SIGKILL every process whose environment holds ``needle``; their pids."""
    found = []
    for pid in soak._pids():
        environ = soak._environ(pid)
        if needle in {f"{key}={value}" for key, value in environ.items()}:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                found.append(pid)
    return found


def reap_orphans(own_children: set[int]) -> None:
    """Reap zombie orphans handed to us (we are a subreaper), never a node's coordinator
    (its Popen waits for it)."""
    me = os.getpid()
    for pid in soak._pids():
        stat = soak._stat(pid)
        if stat is not None and stat[1] == me and stat[0] == "Z" and pid not in own_children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"]).timestamp()


# -- the database --------------------------------------------------------------------------


class Database:
    """The soak's throwaway PostgreSQL server and its one database."""

    def __init__(self) -> None:
        sys.path.insert(0, str(REPO))
        from tests.pg_server import MISSING, PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit(f"soak --cluster: {MISSING}")
        self.server = PostgresServer(bindir, "cluster-soak").start()
        # The throwaway server trades durability for speed; but a crash restart then
        # loses commits it had acknowledged (claims, finishes), which no client of any
        # database can survive. A commit acknowledged is kept, as in production:
        self.server.execute("postgres", "ALTER SYSTEM SET synchronous_commit = on")
        self.server.execute("postgres", "SELECT pg_reload_conf()")
        self.url = self.server.url(self.server.create_database())

    def restart(self, mode: str) -> tuple[float, float]:
        """``pg_ctl restart``: ``immediate`` stops it as a crash would (every backend at
        once, recovery at the start), ``fast`` cleanly (sessions ended, a checkpoint)."""
        began = time.time()
        server = self.server
        command = [str(server.bindir / "pg_ctl"), "-D", str(server.data), "-m", mode,
                   "-l", str(server.dir / "server.log"), "-w", "-t", "60", "restart"]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # as tests/pg_server.py runs it: as the postgres user
            kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
        # -l: the server's output goes to its log, so nothing holds these pipes open.
        result = subprocess.run(command, cwd=server.dir, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=90, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {result.stdout}{result.stderr}")
        return began, time.time()

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as db:
            cursor = db.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        self.server.stop()


# -- the soak ------------------------------------------------------------------------------


class ClusterSoak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = work
        self.marker = uuid.uuid4().hex
        self.nodes = [Node(work, slot, self.marker) for slot in range(args.nodes)]
        self.db: Database | None = None
        self.jobs: dict[str, Job] = {}
        self.next_id = self.next_file = 0
        self.churn_log: list[dict[str, Any]] = []
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.kills: list[dict[str, Any]] = []
        self.db_restarts: list[tuple[float, float]] = []  # (stopped, accepting again)
        self.db_down = False  # stopped for an outage
        self.ready_at = self.stop_at = 0.0
        self.notes: Counter[str] = Counter()

    # -- files --------------------------------------------------------------------------

    def _write(self, name: str, text: str) -> None:
        """To every node's copy, one after the other (in a random order)."""
        atomic = self.rng.random() < 0.75  # an editor's save: a temporary, renamed
        for node in self.rng.sample(self.nodes, len(self.nodes)):
            path = node.jobs_dir / name
            if atomic:
                temporary = node.jobs_dir / f".{name}.tmp"
                temporary.write_text(text)
                os.replace(temporary, path)
            else:
                with open(path, "w") as handle:
                    handle.write(text)

    def _note(self, action: str, job_id: str | None, **details: Any) -> float:
        now = time.time()
        self.churn_log.append({"t": now, "action": action, "job_id": job_id, **details})
        return now

    def _remark(self, text: str) -> None:
        self.notes[text] += 1

    def _new_doc(self, job_id: str, replacing: dict[str, Any] | None = None,
                 kind: str | None = None) -> dict[str, Any]:
        """A random job within the load budget: the nodes left when one is down, half
        busy at most (a node with no idle worker claims nothing)."""
        load = sum(busy_fraction(job.doc) for job in self.jobs.values() if job.alive)
        budget = 0.45 * self.args.workers * max(1, self.args.nodes - 1) - load
        if replacing is not None:
            budget += busy_fraction(replacing)
        while True:
            doc = make_doc(self.rng, job_id, kind or self.rng.choice(KINDS), time.time())
            if busy_fraction(doc) <= max(budget, 0.1):
                return doc

    def _set_definition(self, job: Job, doc: dict[str, Any], now: float) -> None:
        """The job's effective content is ``doc`` from ``now`` on."""
        old = job.definitions[-1] if job.definitions and job.alive else None
        timing = soak.timing(doc)
        if old is not None and old.end is None and (old.schedule, old.zone,
                                                    old.enabled) == timing:
            job.doc = doc  # same timing: taskd keeps the next run
            return
        if old is not None and old.end is None:
            old.end = now
        job.definitions.append(Definition(*timing, start=now))
        job.changes.append(now)
        job.doc = doc

    def _file_name(self, job_id: str) -> str:
        self.next_file += 1
        return f"{job_id}-{self.next_file}.json"

    # -- churn ----------------------------------------------------------------------------

    def add_job(self, *, initial: bool = False, kind: str | None = None) -> None:
        self.next_id += 1
        job_id = f"csoak-{self.next_id:04d}"
        doc = self._new_doc(job_id, kind=kind)
        job = Job(job_id, self._file_name(job_id), doc)
        self._write(job.file, json.dumps(doc))
        now = self._note("add", job_id, file=job.file, doc=doc)
        self.jobs[job_id] = job
        if not initial:
            self._set_definition(job, doc, now)

    def edit_job(self, job: Job) -> None:
        doc = self._new_doc(job.job_id, replacing=job.doc)
        if self.rng.random() < 0.45:  # the command only: the timing stays
            doc = {**job.doc, "task": doc["task"]}
            if busy_fraction(doc) > 0.7:
                doc["task"] = {"type": "execute_command", "command": "true"}
        elif self.rng.random() < 0.15 and soak.schedule_period(job.doc["schedule"]):
            doc = {**job.doc, "enabled": not job.doc.get("enabled", True)}
        self._write(job.file, json.dumps(doc))
        now = self._note("edit", job.job_id, file=job.file, doc=doc)
        self._set_definition(job, doc, now)

    def delete_job(self, job: Job) -> None:
        for node in self.nodes:
            os.unlink(node.jobs_dir / job.file)
        now = self._note("delete", job.job_id, file=job.file)
        job.alive = False
        job.definitions[-1].end = now
        job.changes.append(now)

    def rename_job(self, job: Job) -> None:
        new = self._file_name(job.job_id)
        for node in self.nodes:
            os.rename(node.jobs_dir / job.file, node.jobs_dir / new)
        self._note("rename", job.job_id, file=new, old_file=job.file)
        job.file = new  # same job, same timing

    def churn(self) -> None:
        alive = [job for job in self.jobs.values() if job.alive]
        weights = {"add": 3.0 if len(alive) < self.args.jobs else 1.0,
                   "delete": 3.0 if len(alive) > self.args.jobs else 1.0,
                   "edit": 4.0, "rename": 1.5, "onetime": 1.0}
        action = self.rng.choices(list(weights), list(weights.values()))[0]
        if action in ("add", "onetime") or not alive:
            self.add_job(kind="onetime" if action == "onetime" else None)
            return
        job = self.rng.choice(alive)
        {"delete": self.delete_job, "edit": self.edit_job,
         "rename": self.rename_job}[action](job)

    # -- faults ---------------------------------------------------------------------------

    def kill_node(self) -> None:
        """SIGKILL a random ready node, never the last one up; start it again later."""
        up = [node for node in self.nodes if node.life is not None and node.life.is_ready()]
        if len(up) < 2:
            return
        busy = self._nodes_with_claims(up)
        node = self.rng.choice(busy if busy and self.rng.random() < 0.7 else up)
        life = node.kill()
        kill = {"t": life.killed_at, "node": node.slot, "life": life.number,
                "pid": life.process.pid}
        self.kills.append(kill)
        self._note("kill", None, node=node.slot, life=life.number)
        self.pending.append((time.monotonic() + KILL_SNAPSHOT_AFTER_S,
                             lambda: self._read_in_flight(life)))
        # Back before its lease ran out (a new node beside the old, not yet dead one),
        # or after a peer declared it dead.
        self.pending.append((time.monotonic() + self.rng.uniform(1.0, 2.5 * self.args.lease),
                             lambda: self.restart_node(node)))

    def _nodes_with_claims(self, nodes: list[Node]) -> list[Node]:
        """Those running claimed occurrences now (a kill there tests ``node lost``)."""
        assert self.db is not None
        if self.db_down:
            return []
        try:
            claiming = {node_id for (node_id,) in self.db.query(
                "SELECT DISTINCT node_id FROM taskd_occurrences WHERE state = 'claimed'")}
        except Exception:  # psycopg.Error: any node will do
            return []
        return [node for node in nodes if node.life is not None
                and claiming & set(node.life.node_ids())]

    def _read_in_flight(self, life: Life, attempts: int = 40) -> None:
        """What the killed life had claimed and not finished, by the database."""
        assert self.db is not None
        try:
            rows = self.db.query(
                "SELECT run_id, job_id, scheduled_for, state, node_id FROM taskd_occurrences"
                " WHERE node_id = ANY(%s) AND state IN ('claimed', 'lost')",
                (life.node_ids(),))
        except Exception as error:  # psycopg.Error: the database is restarting
            if attempts:
                self.pending.append((time.monotonic() + 0.5,
                                     lambda: self._read_in_flight(life, attempts - 1)))
            else:
                self._remark(f"could not read the runs in flight of a killed node: {error}")
            return
        life.in_flight = [{"run_id": run_id, "job_id": job_id, "node": node_id,
                           "scheduled_for": us(scheduled), "state": state}
                          for run_id, job_id, scheduled, state, node_id in rows]

    def restart_node(self, node: Node) -> None:
        if node.life is None:
            assert self.db is not None
            node.start(self.db.url, self.args)
            self._note("start", None, node=node.slot, life=len(node.lives))

    def restart_database(self) -> None:
        """Restart PostgreSQL (as a crash, or cleanly), or stop it for a while: longer
        than a lease, and every node is fenced and rejoins."""
        assert self.db is not None
        if self.db_down:
            return
        mode = self.rng.choice(["immediate", "immediate", "fast", "outage"])
        self._note("db_restart", None, mode=mode)
        if mode != "outage":
            self.db_restarts.append(self.db.restart(mode))
            return
        began = time.time()
        self.db.server.kill()
        self.db_down = True

        def start_again() -> None:
            assert self.db is not None
            self.db.server.run()
            self.db_down = False
            self.db_restarts.append((began, time.time()))

        self.pending.append((time.monotonic() + self.rng.uniform(1.0, 2 * self.args.lease),
                             start_again))

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        """Set up, churn and fault for ``--duration`` seconds, stop every node."""
        self.db = Database()
        for _ in range(self.args.jobs):
            self.add_job(initial=True)
        for node in self.nodes:
            node.start(self.db.url, self.args)
        self._wait_ready()
        self.ready_at = time.time()
        for job in self.jobs.values():  # loaded at start-up
            self._set_definition(job, job.doc, self.ready_at)
        self._loop()
        self._run_pending(everything=True)  # the restarts and snapshots still waiting
        self._wait_ready()
        self._wait_killed_buried()
        self.stop()

    def _loop(self) -> None:
        rng, lease = self.rng, self.args.lease
        t0 = time.monotonic()
        end = t0 + self.args.duration
        # The last fault leaves time for a lease to run out and a peer to bury the node.
        faults_end = end - (2 * lease + 2)
        timers = {"churn": t0 + rng.uniform(0.3, 1.2), "kill": t0 + rng.uniform(2.5, 5),
                  "db": t0 + rng.uniform(6, 10)}
        actions: dict[str, tuple[Callable[[], None], Callable[[], float], bool]] = {
            "churn": (self.churn, lambda: rng.uniform(0.4, 1.5), False),
            "kill": (self.kill_node, lambda: rng.uniform(5, 10), True),
            "db": (self.restart_database, lambda: rng.uniform(12, 25), True)}
        while (now := time.monotonic()) < end:
            self._check_exits()
            for name, due in sorted(timers.items(), key=lambda item: item[1]):
                action, interval, is_fault = actions[name]
                if due <= now:
                    if not is_fault or now < faults_end:
                        action()
                    timers[name] = max(due + interval(), time.monotonic())
            self._run_pending()
            reap_orphans(self._coordinator_pids())
            wake = min([*timers.values(), *(due for due, _ in self.pending), end])
            time.sleep(max(0.0, min(0.2, wake - time.monotonic())))

    def _run_pending(self, *, everything: bool = False) -> None:
        """The delayed actions that are due, oldest first (``everything``: waiting for
        each in turn; an action may add another, a retry)."""
        while self.pending:
            due, action = min(self.pending, key=lambda entry: entry[0])
            if due > time.monotonic():
                if not everything:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
            self.pending.remove((due, action))
            action()

    def _coordinator_pids(self) -> set[int]:
        return {life.process.pid for node in self.nodes for life in node.lives}

    def _check_exits(self) -> None:
        for node in self.nodes:
            life = node.life
            if life is not None and life.process.poll() is not None:
                life.exit_code = life.process.returncode
                life.stopped_at = time.time()
                self._remark(f"node {node.slot} life {life.number} exited by itself with "
                             f"{life.exit_code}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        for node in self.nodes:
            life = node.life
            while life is not None and not life.is_ready():
                if life.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"soak --cluster: node {node.slot} did not become "
                                     f"ready (exit {life.process.poll()}); see "
                                     f"{life.diag_path}")
                time.sleep(0.05)

    def _wait_killed_buried(self) -> None:
        """Until a peer declared every killed life dead (a lease and a heartbeat)."""
        assert self.db is not None
        killed = [node_id for node in self.nodes for life in node.lives
                  if life.killed_at is not None for node_id in life.node_ids()]
        deadline = time.monotonic() + 4 * self.args.lease + 10
        while killed and time.monotonic() < deadline:
            try:
                (alive,), = self.db.query("SELECT count(*) FROM taskd_nodes WHERE node_id = "
                                          "ANY(%s) AND state = 'alive'", (killed,))
            except Exception:  # psycopg.Error: polled again
                alive = -1
            if alive == 0:
                return
            time.sleep(0.2)
        if killed:
            self._remark("a killed node was still alive in taskd_nodes when the nodes "
                         "were stopped")

    def stop(self) -> None:
        """SIGTERM every node at once (at ``--stop-phase`` of a second, if given), wait
        for them all."""
        if self.args.stop_phase is not None:
            time.sleep((self.args.stop_phase - time.time()) % 1.0)
        self.stop_at = time.time()
        self._note("sigterm", None)
        lives = [node.life for node in self.nodes if node.life is not None]
        for life in lives:
            life.process.send_signal(signal.SIGTERM)
            life.stopped_at = self.stop_at
        for life in lives:
            try:
                life.exit_code = life.process.wait(timeout=self.args.grace_period + 30)
            except subprocess.TimeoutExpired:
                self._remark("a node did not exit within grace period + 30 s: killed")
                life.process.kill()
                life.process.wait()
        with open(self.work / "churn.jsonl", "w") as handle:
            for entry in self.churn_log:
                handle.write(json.dumps(entry) + "\n")

    def abort(self) -> None:
        """Interrupted: stop whatever still runs, the way that leaves nothing behind."""
        for node in self.nodes:
            life = node.life
            if life is not None and life.process.poll() is None:
                life.process.terminate()
                try:
                    life.exit_code = life.process.wait(timeout=self.args.grace_period + 20)
                except subprocess.TimeoutExpired:
                    os.killpg(life.process.pid, signal.SIGKILL)
                    life.process.wait()
                life.stopped_at = time.time()


# -- what happened -------------------------------------------------------------------------


@dataclass
class Evidence:
    """The database after the stop, and what every life of every node wrote."""

    stored: dict[str, dict[str, Any]]  # taskd_executions: run_id -> record
    rows: dict[Key, tuple[str, str | None, str | None]]  # occurrences: (state, node, run)
    node_states: dict[str, str]  # taskd_nodes: node_id -> state
    logged: list[tuple[Life, dict[str, Any]]]  # every execution line of every log
    events: list[dict[str, Any]]  # every diagnostic of every life
    unparsable: dict[tuple[int, int], list[str]]  # (node, life) -> lines not JSON
    history_cli: int | None  # records `taskd history --cluster` showed

    def records(self) -> dict[str, dict[str, Any]]:
        """Every record by run id: the database's, and logged ones it lacks."""
        return {**{record["run_id"]: record for _, record in self.logged}, **self.stored}


def gather(run: ClusterSoak) -> Evidence:
    assert run.db is not None
    stored = {run_id: json.loads(record) for run_id, record in run.db.query(
        "SELECT run_id, record FROM taskd_executions ORDER BY id")}
    occurrences = run.db.query("SELECT job_id, scheduled_for, state, node_id, run_id "
                               "FROM taskd_occurrences ORDER BY scheduled_for, job_id")
    rows = {(job_id, us(at)): (state, node_id, run_id)
            for job_id, at, state, node_id, run_id in occurrences}
    node_states = dict(run.db.query("SELECT node_id, state FROM taskd_nodes"))
    with open(run.work / "db_executions.jsonl", "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in stored.values())
    with open(run.work / "db_occurrences.jsonl", "w") as handle:
        handle.writelines(json.dumps({"job_id": job_id, "scheduled_for": at.isoformat(),
                                      "state": state, "node": node_id, "run_id": run_id})
                          + "\n" for job_id, at, state, node_id, run_id in occurrences)
    logged, events, unparsable = [], [], {}
    for node in run.nodes:
        for life in node.lives:
            lines, _ = read_json_lines(life.log_path)
            logged += [(life, line) for line in lines if line.get("event") == "execution"]
            diagnostics, _ = read_json_lines(life.diag_path)
            events += [{**event, "_node": node.slot, "_life": life.number}
                       for event in diagnostics]
            unparsable[(node.slot, life.number)] = [
                *non_json_lines(life.log_path), *non_json_lines(life.diag_path)]
    return Evidence(stored, rows, node_states, logged, events, unparsable,
                    history_cli_count(run.db.url))


def non_json_lines(path: Path) -> list[str]:
    """The lines of ``path`` that are not a JSON object (split on "\\n" only, as
    ``read_json_lines``), each cut to 200 characters."""
    if not path.exists():
        return []
    found = []
    for line in path.read_bytes().decode("utf-8", errors="replace").split("\n"):
        if line.strip():
            try:
                is_object = isinstance(json.loads(line), dict)
            except ValueError:
                is_object = False
            if not is_object:
                found.append(line[:200])
    return found


def history_cli_count(url: str) -> int | None:
    """How many records ``taskd history --cluster URL`` shows (None: it failed)."""
    result = subprocess.run([sys.executable, "-m", "supervisor", "history", "--cluster", url,
                             "-n", "1000000", "--json"], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        return None
    return len(json.loads(result.stdout))


def killed_node_ids(run: ClusterSoak) -> dict[str, Life]:
    return {node_id: life for node in run.nodes for life in node.lives
            if life.killed_at is not None for node_id in life.node_ids()}


# -- the invariants -------------------------------------------------------------------------


def fault_windows(run: ClusterSoak, events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Kills (an instant each) and database restarts: from the stop until every node up
    then was back (reconnected, or fenced and rejoined)."""
    windows = [(us(kill["t"]), us(kill["t"])) for kill in run.kills]
    recovery = ("cluster_connected", "cluster_joined", "node_fenced")
    starts = {(node.slot, life.number): life.started_at for node in run.nodes
              for life in node.lives}
    for began, ended in run.db_restarts:
        back = [_event_time(e) for e in events if e.get("event") in recovery
                and starts[(e["_node"], e["_life"])] < began
                and began <= _event_time(e) <= ended + 15]
        windows.append((us(began), us(max([ended, *back]))))
    return windows


def change_windows(run: ClusterSoak, events: list[dict[str, Any]]
                   ) -> tuple[dict[str, list[tuple[int, int]]], float]:
    """Per job, each change from its write until the last node said it applied it (or
    until the next change); and the slowest such latency."""
    started = {(node.slot, life.number): life.started_at for node in run.nodes
               for life in node.lives}
    applied: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (time, life start)
    for event in events:
        if event.get("event") in soak.APPLIED_EVENTS and event.get("time"):
            applied[event.get("job_id", "")].append(
                (_event_time(event), started[(event["_node"], event["_life"])]))
    windows: dict[str, list[tuple[int, int]]] = {}
    slowest = 0.0
    for job in run.jobs.values():
        changes = sorted(t for t in job.changes if t != run.ready_at)
        spans = []
        for index, t in enumerate(changes):
            until = min(t + soak.MAX_APPLY_S,
                        changes[index + 1] if index + 1 < len(changes) else float("inf"))
            # A life started after the write loads the job; it applies no change (one
            # starting at the write may load either version: until it said so).
            end = max((at for at, life_start in applied.get(job.job_id, [])
                       if t <= at < until and life_start < t), default=t)
            slowest = max(slowest, end - t)
            spans.append((us(t), us(end)))
        windows[job.job_id] = spans
    return windows, slowest


def missed_reports(events: Iterable[dict[str, Any]], candidates: dict[str, list[int]]
                   ) -> tuple[Counter[Key], int]:
    """The occurrences each ``missed`` diagnostic covers (``count`` of the job's instants
    from ``scheduled_for`` on, none after ``last`` when it has one), counted per report;
    and how many diagnostics covered fewer instants than their count."""
    reports: Counter[Key] = Counter()
    mismatches = 0
    for event in events:
        if event.get("event") != "missed":
            continue
        job_id, first = event["job_id"], iso_us(event["scheduled_for"])
        last = iso_us(event["last"]) if event.get("last") else None
        count = int(event.get("count", 1))
        instants = candidates.get(job_id, [])
        low = bisect.bisect_left(instants, first)
        covered = [t for t in instants[low:low + count] if last is None or t <= last]
        mismatches += len(covered) != count
        for instant in covered or [first]:
            reports[(job_id, instant)] += 1
    return reports, mismatches


def schedule_instants(run: ClusterSoak, jobs_windows: dict[str, list[tuple[int, int]]],
                      faults: list[tuple[int, int]]
                      ) -> tuple[set[Key], dict[str, list[int]], dict[Key, str]]:
    """What each job's timings had due: the occurrences judged; every instant of each job
    (near its definitions' bounds too); and why each instant not judged is not."""
    tol = run.args.tolerance
    judged_from, judged_until = us(run.ready_at + tol), us(run.stop_at - tol)
    expected: set[Key] = set()
    candidates: dict[str, list[int]] = {}
    excused: dict[Key, str] = {}
    for job in run.jobs.values():
        found: set[int] = set()
        for definition in job.definitions:
            end = min(definition.end if definition.end is not None else run.stop_at,
                      run.stop_at)
            for instant in definition.instants(definition.start - tol, end + tol):
                found.add(instant)
                if not judged_from < instant < judged_until:
                    why = "start or stop"
                elif not us(definition.start) < instant < us(end) or \
                        soak._near(instant, jobs_windows[job.job_id], tol):
                    why = "change"
                elif soak._near(instant, faults, tol):
                    why = "fault"
                else:
                    expected.add((job.job_id, instant))
                    continue
                excused.setdefault((job.job_id, instant), why)
        candidates[job.job_id] = sorted(found)
    return expected, candidates, excused


def check_accounting(run: ClusterSoak, evidence: Evidence) -> dict[str, Any]:
    tol = run.args.tolerance
    jobs_windows, slowest = change_windows(run, evidence.events)
    faults = fault_windows(run, evidence.events)
    expected, candidates, excused = schedule_instants(run, jobs_windows, faults)
    excused = {key: why for key, why in excused.items() if key not in expected}

    runs: dict[Key, set[str]] = defaultdict(set)
    for record in evidence.records().values():
        runs[(record["job_id"], iso_us(record["scheduled_for"]))].add(record["run_id"])
    reports, mismatches = missed_reports(evidence.events, candidates)
    missed_rows = {key for key, (state, _, _) in evidence.rows.items() if state == "missed"}
    missed = missed_rows | set(reports)

    result: Counter[str] = Counter()
    unaccounted, conflicting = [], []
    for key in sorted(expected):
        if runs.get(key) and key in missed:
            conflicting.append(key)
        elif runs.get(key):
            result["recorded"] += 1
        elif key in missed:
            result["missed"] += 1
        else:
            unaccounted.append(key)
    duplicated = sorted(key for key, run_ids in runs.items() if len(run_ids) > 1)
    seen = {*runs, *missed}

    def near_change(key: Key) -> bool:
        return soak._near(key[1], jobs_windows.get(key[0], []), tol)

    unexpected = sorted(key for key in seen if key[1] not in candidates.get(key[0], ())
                        and not near_change(key))
    return {"expected": len(expected), "recorded": result["recorded"],
            "missed": result["missed"], "unaccounted": len(unaccounted),
            "duplicated": len(duplicated), "conflicting": len(conflicting),
            "unexpected": len(unexpected),
            "not_judged": dict(Counter(excused.get(key, "not in the schedule")
                                       for key in seen if key not in expected)),
            "missed_rows": len(missed_rows), "missed_diagnostics_covered": len(reports),
            "missed_reported_by_several": sum(1 for n in reports.values() if n > 1),
            "missed_count_mismatches": mismatches,
            "apply_latency_max_s": round(slowest, 3),
            "fault_windows_s": round(sum(high - low for low, high in faults) / 1e6, 2),
            "examples": {"unaccounted": show(unaccounted), "duplicated": show(duplicated),
                         "conflicting": show(conflicting), "unexpected": show(unexpected)},
            "ok": not (unaccounted or duplicated or conflicting or unexpected)}


def check_consistency(run: ClusterSoak, evidence: Evidence) -> dict[str, Any]:
    """The database and the logs: the same records, each the claim of its occurrence."""
    stored, rows = evidence.stored, evidence.rows
    times_logged = Counter(record["run_id"] for _, record in evidence.logged)
    logged_not_stored = sorted({r["run_id"] for _, r in evidence.logged
                                if r["run_id"] not in stored})
    contradicting = sorted({r["run_id"] for _, r in evidence.logged
                            if r["run_id"] in stored and outcome(r) != outcome(
                                stored[r["run_id"]])})
    not_the_claim, without_claim = [], []
    for run_id, record in stored.items():
        row = rows.get((record["job_id"], iso_us(record["scheduled_for"])))
        if row is None:
            without_claim.append(run_id)
        elif row[2] != run_id:
            not_the_claim.append(run_id)
    finished_without_record = sorted(
        str(key) for key, (state, _, run_id) in rows.items()
        if state in ("done", "lost") and run_id not in stored)
    left_claimed = sorted(str(key) for key, (state, _, _) in rows.items()
                          if state == "claimed")
    killed = killed_node_ids(run)
    unlogged = [record for run_id, record in stored.items() if run_id not in times_logged]
    unlogged_unexplained = sorted(
        r["run_id"] for r in unlogged
        if r.get("error") != NODE_LOST and r.get("node") not in killed)
    history_ok = evidence.history_cli == len(stored)
    logged_twice = sorted(run_id for run_id, n in times_logged.items() if n > 1)
    problems = (logged_not_stored, logged_twice, contradicting, not_the_claim,
                without_claim, finished_without_record, left_claimed, unlogged_unexplained)
    return {"stored": len(stored), "log_lines": len(evidence.logged),
            "logged_not_stored": len(logged_not_stored), "logged_twice": len(logged_twice),
            "contradicting": len(contradicting),
            "record_not_the_claim": len(not_the_claim),
            "record_without_claim": len(without_claim),
            "finished_without_record": len(finished_without_record),
            "left_claimed": len(left_claimed),
            "stored_not_logged": len(unlogged),
            "stored_not_logged_unexplained": len(unlogged_unexplained),
            "history_cli": evidence.history_cli, "history_cli_ok": history_ok,
            "examples": [example for problem in problems for example in problem[:3]],
            "ok": history_ok and not any(problems)}


def check_node_loss(run: ClusterSoak, evidence: Evidence) -> dict[str, Any]:
    """Each killed node's claims: done, or lost with one ``node lost`` record of its own."""
    killed = killed_node_ids(run)
    stored, bad = evidence.stored, []
    lost_rows = 0
    for key, (state, node_id, run_id) in evidence.rows.items():
        if node_id not in killed or state not in ("claimed", "lost"):
            continue
        lost_rows += 1
        record = stored.get(run_id or "")
        if state != "lost" or record is None or record.get("error") != NODE_LOST or \
                record.get("node") != node_id or record.get("status") != "FAILURE":
            bad.append(f"{key[0]}@{_iso_us(key[1])} {state}")
    in_flight = [entry for node in run.nodes for life in node.lives
                 for entry in life.in_flight]
    ended: Counter[bool | None] = Counter()  # node lost / another record / none
    for entry in in_flight:
        record = stored.get(entry["run_id"])
        ended[record.get("error") == NODE_LOST if record else None] += 1
    not_buried = sorted(node_id for node_id in killed
                        if evidence.node_states.get(node_id) == "alive")
    node_lost = [r for r in stored.values() if r.get("error") == NODE_LOST]
    logged_ids = {r["run_id"] for _, r in evidence.logged}
    of_unkilled = [r for r in node_lost if r.get("node") not in killed]
    return {"killed_lives": sum(1 for node in run.nodes for life in node.lives
                                if life.killed_at is not None),
            "killed_claims_lost": lost_rows, "in_flight_at_kills": len(in_flight),
            "in_flight_recorded_node_lost": ended[True],
            "in_flight_finished_after_kill": ended[False],
            "in_flight_without_record": ended[None],
            "node_lost_records": len(node_lost),
            "node_lost_logged_by_a_peer": sum(1 for r in node_lost if r["run_id"] in logged_ids),
            "node_lost_of_nodes_not_killed": len(of_unkilled),
            "fenced": sum(1 for e in evidence.events if e.get("event") == "node_fenced"),
            "killed_still_alive": len(not_buried), "examples": bad[:10],
            "ok": not bad and not ended[None] and not not_buried}


def check_lives(run: ClusterSoak, evidence: Evidence) -> dict[str, Any]:
    """Every life the soak did not kill came up, stayed up and exited 0 at the stop."""
    problems = []
    for node in run.nodes:
        for life in node.lives:
            name = f"node {node.slot} life {life.number}"
            if life.killed_at is not None:
                continue
            if not life.is_ready():
                problems.append(f"{name} never became ready")
            if life.stopped_at != run.stop_at:
                problems.append(f"{name} exited by itself with {life.exit_code}")
            elif life.exit_code != 0:
                problems.append(f"{name} exited {life.exit_code} at the stop")
            bad = evidence.unparsable[(node.slot, life.number)]
            if bad:
                problems.append(f"{name} wrote {len(bad)} lines that are not JSON, the "
                                f"first: {bad[0]!r}")
    fatal = [e for e in evidence.events if e.get("event") == "fatal"]
    problems += [f"node {e['_node']} life {e['_life']}: fatal {e.get('error')}" for e in fatal]
    return {"lives": sum(len(node.lives) for node in run.nodes), "problems": problems,
            "ok": not problems}


def check_leaks(run: ClusterSoak) -> dict[str, Any]:
    """Poll a few seconds for every process of the nodes to be gone; kill what is left."""
    prefix = run.marker + ":"
    deadline = time.monotonic() + 5
    while True:
        reap_orphans(run._coordinator_pids())
        leaked = [pid for pid in soak._pids()
                  if soak._environ(pid).get(MARKER, "").startswith(prefix)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    details = [f"{pid}: {soak._cmdline(pid)}" for pid in leaked[:10]]
    for pid in leaked:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return {"leaked": len(leaked), "processes": details, "ok": not leaked}


def outcome(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record.get("job_id"), iso_us(record["scheduled_for"]), record.get("status"),
            record.get("error"), record.get("node"))


def _iso_us(t: int) -> str:
    return datetime.fromtimestamp(t / 1e6, UTC).isoformat()


def show(keys: list[Key]) -> list[str]:
    return [f"{job_id}@{_iso_us(t)}" for job_id, t in keys[:10]]


# -- the report ---------------------------------------------------------------------------

INVARIANTS = ("accounting", "consistency", "node_loss", "lives", "leaks")


def analyse(run: ClusterSoak) -> dict[str, Any]:
    evidence = gather(run)
    records = list(evidence.stored.values())
    lags = sorted((iso_us(r["timestamp"]) - iso_us(r["scheduled_for"])) / 1e6
                  for r in records if r.get("error") != NODE_LOST)
    events = Counter(e.get("event") for e in evidence.events)
    summary = {
        "seed": run.args.seed, "duration_s": run.args.duration, "nodes": run.args.nodes,
        "workers": run.args.workers, "lease_s": run.args.lease,
        "initial_jobs": run.args.jobs,
        "churn": dict(Counter(e["action"] for e in run.churn_log
                              if e["action"] in ("add", "edit", "delete", "rename"))),
        "faults": {"node_kills": len(run.kills),
                   "node_starts": sum(len(node.lives) - 1 for node in run.nodes),
                   "db_restarts": len(run.db_restarts),
                   "db_restart_s": [round(high - low, 2) for low, high in run.db_restarts],
                   "cluster_unavailable": events["cluster_unavailable"],
                   "node_fenced": events["node_fenced"]},
        "records": len(records),
        "outcomes": dict(Counter(soak._outcome(r) for r in records).most_common()),
        "dispatch_lag_s": {"p50": round(soak._percentile(lags, 0.5), 3),
                           "p95": round(soak._percentile(lags, 0.95), 3),
                           "max": round(lags[-1], 3) if lags else 0.0},
        "accounting": check_accounting(run, evidence),
        "consistency": check_consistency(run, evidence),
        "node_loss": check_node_loss(run, evidence),
        "lives": check_lives(run, evidence),
        "leaks": check_leaks(run),
        "notes": [f"{text} (x{n})" if n > 1 else text for text, n in run.notes.items()],
        "work_dir": str(run.work)}
    summary["ok"] = all(summary[name]["ok"] for name in INVARIANTS)
    return summary


def print_report(summary: dict[str, Any]) -> None:
    a, c, n = summary["accounting"], summary["consistency"], summary["node_loss"]
    f, lag = summary["faults"], summary["dispatch_lag_s"]
    judged = ", ".join(f"{why} {count}" for why, count in a["not_judged"].items()) or "none"
    print(f"taskd cluster soak: {summary['duration_s']:g} s, {summary['nodes']} nodes x "
          f"{summary['workers']} workers, lease {summary['lease_s']:g} s, "
          f"{summary['initial_jobs']} initial jobs, seed {summary['seed']}")
    print("churn:   " + ", ".join(f"{k} {v}" for k, v in sorted(summary["churn"].items())))
    print(f"faults:  {f['node_kills']} node kills, {f['node_starts']} node restarts, "
          f"{f['db_restarts']} database restarts ({f['db_restart_s']} s); "
          f"{f['cluster_unavailable']} cluster_unavailable, {f['node_fenced']} node_fenced")
    print(f"records: {summary['records']}: " + ", ".join(
        f"{k} {v}" for k, v in summary["outcomes"].items()))
    print(f"dispatch lag (s): p50 {lag['p50']}, p95 {lag['p95']}, max {lag['max']}")
    rows = [
        ("accounting", f"expected {a['expected']}: recorded {a['recorded']}, missed "
                       f"{a['missed']}; unaccounted {a['unaccounted']}, duplicated "
                       f"{a['duplicated']}, conflicting {a['conflicting']}, unexpected "
                       f"{a['unexpected']} (not judged: {judged}; fault windows "
                       f"{a['fault_windows_s']} s, missed rows {a['missed_rows']}, missed "
                       f"by several nodes {a['missed_reported_by_several']}, changes "
                       f"applied within {a['apply_latency_max_s']} s)"),
        ("consistency", f"{c['stored']} stored, {c['log_lines']} logged: logged not stored "
                        f"{c['logged_not_stored']}, logged twice {c['logged_twice']}, "
                        f"contradicting {c['contradicting']}, not the claim "
                        f"{c['record_not_the_claim']}, without claim "
                        f"{c['record_without_claim']}, finished without record "
                        f"{c['finished_without_record']}, left claimed {c['left_claimed']}, "
                        f"stored not logged {c['stored_not_logged']} (unexplained "
                        f"{c['stored_not_logged_unexplained']}), history --cluster "
                        f"{c['history_cli']}"),
        ("node loss", f"{n['killed_lives']} killed: {n['in_flight_at_kills']} runs in flight"
                      f" -> {n['in_flight_recorded_node_lost']} node lost, "
                      f"{n['in_flight_finished_after_kill']} finished, "
                      f"{n['in_flight_without_record']} without record; "
                      f"{n['killed_claims_lost']} claims lost; {n['node_lost_records']} "
                      f"node lost records ({n['node_lost_logged_by_a_peer']} logged by a "
                      f"peer, {n['node_lost_of_nodes_not_killed']} of nodes not killed, "
                      f"{n['fenced']} fenced); {n['killed_still_alive']} killed still alive"),
        ("node lives", f"{summary['lives']['lives']} lives: "
                       + ("; ".join(summary["lives"]["problems"]) or "all up, exit 0")),
        ("no leaked process", f"{summary['leaks']['leaked']} left after the stop"),
    ]
    print()
    print(f"{'invariant':<18} {'verdict':<7} details")
    for (name, details), key in zip(rows, INVARIANTS, strict=True):
        print(f"{name:<18} {'PASS' if summary[key]['ok'] else 'FAIL':<7} {details}")
    for kind, examples in a["examples"].items():
        if examples:
            print(f"  {kind}: {', '.join(examples)}")
    for label, examples in (("consistency", c["examples"]), ("node loss", n["examples"]),
                            ("leaked", summary["leaks"]["processes"])):
        if examples:
            print(f"  {label}: {', '.join(map(str, examples))}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    print()
    kept = "kept" if summary["work_dir_kept"] else "removed"
    print(f"cluster soak {'PASSED' if summary['ok'] else 'FAILED'} in {summary['runtime_s']} s;"
          f" work dir {summary['work_dir']} ({kept})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="soak --cluster",
        description="Run N taskd cluster nodes on a throwaway PostgreSQL under job churn, "
                    "node kills and database restarts, then check that every occurrence "
                    "has one record or one missed (exit 0 only if every invariant holds).")
    parser.add_argument("--duration", type=float, default=120.0, metavar="SECONDS",
                        help="how long the churn and the faults last (default 120)")
    parser.add_argument("--nodes", type=int, default=3, help="cluster nodes (default 3)")
    parser.add_argument("--workers", type=int, default=2,
                        help="taskd --workers of each node (default 2)")
    parser.add_argument("--jobs", type=int, default=12,
                        help="initial number of jobs, which the churn stays around "
                             "(default 12)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed of the churn and the faults (default: a random "
                             "one, printed)")
    parser.add_argument("--lease", type=float, default=3.0, metavar="SECONDS",
                        help="taskd --lease: silent this long, a node is declared dead "
                             "(default 3)")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="work in DIR and keep it: node*/ (jobs.d, executions-N.jsonl, "
                             "diagnostics-N.jsonl per life), churn.jsonl, db_*.jsonl (a "
                             "failed soak keeps its temporary work dir too)")
    parser.add_argument("--json", action="store_true",
                        help="also print the invariants as one JSON object (last line)")
    parser.add_argument("--tolerance", type=float, default=1.0, metavar="SECONDS",
                        help="occurrences this close to a change of their job or to a "
                             "fault are not judged (duplicates are judged everywhere)")
    parser.add_argument("--grace-period", type=float, default=2.0, metavar="SECONDS",
                        help="taskd --grace-period at the stop (default 2)")
    parser.add_argument("--stop-phase", type=float, default=None, metavar="FRACTION",
                        help="send the final SIGTERM at this fraction of a second (0.5: "
                             "mid-second, when no claim of the per-second jobs is in "
                             "flight); default: whenever the duration ends")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.duration <= 0 or args.nodes < 2 or args.workers < 1 or args.jobs < 0 or \
            args.lease <= 0 or not 0 <= (args.stop_phase or 0) < 1:
        parser.error("--duration and --lease must be positive, --nodes at least 2, "
                     "--workers at least 1, --stop-phase in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    if args.keep:
        work = Path(args.keep).resolve()
        if work.exists() and any(work.iterdir()):  # its logs and jobs would mix with ours
            raise SystemExit(f"soak --cluster: --keep {work}: not empty")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="taskd-cluster-soak-"))
    run = ClusterSoak(args, work)
    if not soak.become_subreaper():
        run._remark("could not become a child subreaper: orphaned tasks are not tracked")
    try:
        try:
            run.run()
        except BaseException:
            run.abort()
            raise
        summary = analyse(run)
    finally:
        if run.db is not None:
            run.db.stop()
    summary["runtime_s"] = round(time.monotonic() - began, 1)
    summary["work_dir_kept"] = bool(args.keep) or not summary["ok"]  # a failure is evidence
    print_report(summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    if not summary["work_dir_kept"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["ok"] else 1
