"""A throwaway PostgreSQL server from Debian's binaries: ``initdb`` and ``pg_ctl`` as the
``postgres`` OS user (when run as root) in a temp dir of its own, listening on a unix
socket in that dir only. Used by the tests (``tests/postgres_server.py``, the pytest
plugin around it) and by ``scripts/bench`` (cluster mode's figures); no pytest here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SKIP_VARIABLE = "TASKD_NO_POSTGRES"
BINDIR_VARIABLE = "TASKD_PG_BINDIR"
SUPERUSER = "postgres"
PORT = 5432  # only names the socket file: the socket dir is the server's own
PREFIX = "taskd-pg-"
START_TIMEOUT_S = 60.0
SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "fsync": "off",
    "full_page_writes": "off",
    # On (the default): a commit survives a crash of the server (``kill``, ``-m
    # immediate``). Off, a claim acknowledged to one node can be lost in the crash and
    # claimed again by another: the cluster's exactly-once needs it on.
    "synchronous_commit": "on",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_connections": "50",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_statement": "none",
}
MISSING = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found: install Debian's "
    "`postgresql` package (apt-get install postgresql; .ci/run does), or set "
    f"{BINDIR_VARIABLE}, or set {SKIP_VARIABLE}=1 to skip the PostgreSQL tests")


class PostgresServer:
    """One PostgreSQL server in a temp dir, reached over a unix socket in that dir."""

    def __init__(self, bindir: Path, label: str = "main") -> None:
        self.bindir = bindir
        self.label = label
        self.dir: Path | None = None
        self._admin: Any = None
        self.timings: dict[str, Any] = {}

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def url(self, dbname: str, *, user: str = SUPERUSER, password: str | None = None,
            **params: str) -> str:
        """A libpq URL for ``dbname`` (trust auth: any password is accepted, unused)."""
        userinfo = user if password is None else f"{user}:{password}"
        query = "&".join([f"host={self.dir}", f"port={PORT}",
                          *(f"{key}={value}" for key, value in params.items())])
        return f"postgresql://{userinfo}@/{dbname}?{query}"

    # -- life ------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Make a new data dir and run a server on it."""
        reap_stale()
        began = time.monotonic()
        as_root = os.geteuid() == 0
        # The socket path must stay short (108 bytes) and, as root, reachable by the
        # postgres user (TMPDIR may be under /root): /tmp then.
        short = not as_root and len(tempfile.gettempdir()) < 60
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.label}-",
                                         dir=None if short else "/tmp"))
        # Atomically: another test process's reap_stale() must never read it half
        # written (empty: "stale") and remove a server that is just starting.
        owner = self.dir / "owner.tmp"
        owner.write_text(str(os.getpid()))
        owner.rename(self.dir / "owner")
        if as_root:
            try:
                account = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise RuntimeError(f"no `{SUPERUSER}` OS user to run PostgreSQL as "
                                   "(Debian's postgresql package creates it)") from None
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        self.timings["initdb_s"] = time.monotonic() - began
        settings = {**SETTINGS, "unix_socket_directories": f"'{self.dir}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.run()
        self.timings["start_s"] = time.monotonic() - began
        return self

    def run(self) -> None:
        """Start the server on its data dir (again, after ``kill``)."""
        # -w: pg_ctl polls until the server accepts connections, up to -t seconds.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-w", "-t", str(int(START_TIMEOUT_S)), "start")
        self._admin = self._connect_admin(deadline=time.monotonic() + START_TIMEOUT_S)

    def kill(self) -> None:
        """Stop the server at once (``-m immediate``: every backend goes, as in a crash);
        the data dir stays, for ``run``."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.dir is None or not (self.data / "postmaster.pid").exists():
            return
        try:
            self.resume()  # a paused postmaster would sit on its stop signal
        except (OSError, ValueError):
            pass
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                  check=False)

    def restart(self) -> None:
        self.kill()
        self.run()

    def stop(self) -> None:
        """Stop the server and remove its dir."""
        self.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def running(self) -> bool:
        return self.dir is not None and (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def pause(self) -> None:
        """SIGSTOP the postmaster: new connections hang (existing sessions go on)."""
        os.kill(self.postmaster_pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.postmaster_pid(), signal.SIGCONT)

    # -- databases -------------------------------------------------------------------

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"test_{uuid.uuid4().hex}"
        began = time.monotonic()
        self._admin_connection().execute(f'CREATE DATABASE "{name}"')
        self.timings.setdefault("create_database_s", []).append(time.monotonic() - began)
        return name

    def drop_database(self, name: str) -> None:
        self._admin_connection().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, dbname: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement in ``dbname`` as the superuser; its rows (if any)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as db:
            cursor = db.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    # -- helpers ---------------------------------------------------------------------

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        command = [str(self.bindir / tool), *args]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs = {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []}
        # pg_ctl sends the server's output to -l: nothing holds these pipes open after.
        result = subprocess.run(command, cwd=self.dir, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=START_TIMEOUT_S + 30,
                                env={**os.environ, "LC_ALL": "C"}, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed (exit {result.returncode}): "
                               f"{result.stdout}{result.stderr}{self._log_tail()}")

    def _admin_connection(self) -> Any:
        """The superuser's connection to ``postgres``, opened again if it broke."""
        if self._admin is None or self._admin.closed:
            self._admin = self._connect_admin(deadline=time.monotonic() + START_TIMEOUT_S)
        return self._admin

    def _connect_admin(self, deadline: float) -> Any:
        import psycopg

        while True:
            try:
                return psycopg.connect(self.url("postgres"), autocommit=True,
                                       connect_timeout=5)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            text = (self.dir / "server.log").read_text(errors="replace")  # type: ignore[operator]
        except OSError:
            return ""
        return "\nserver log:\n" + text[-2000:]


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $TASKD_PG_BINDIR, Debian's newest version, or PATH."""
    candidates = []
    if os.environ.get(BINDIR_VARIABLE):
        candidates.append(os.environ[BINDIR_VARIABLE])
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(debian, key=_major_version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for candidate in candidates:
        path = Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return path
    return None


def reap_stale() -> None:
    """Stop and remove the servers of test sessions that died without stopping them."""
    owners = {*glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}*", "owner")),
              *glob.glob(f"/tmp/{PREFIX}*/owner")}
    for owner in sorted(owners):
        try:
            pid = int(Path(owner).read_text())
            os.kill(pid, 0)
            continue  # its session is still running
        except (OSError, ValueError):
            pass
        stale = PostgresServer(find_bindir() or Path("/nonexistent"))
        stale.dir = Path(owner).parent
        try:
            stale.stop()
        except (OSError, subprocess.SubprocessError, RuntimeError):
            shutil.rmtree(stale.dir, ignore_errors=True)


def _major_version(bindir: str) -> int:
    try:
        return int(Path(bindir).parent.name.split(".")[0])
    except ValueError:
        return 0
