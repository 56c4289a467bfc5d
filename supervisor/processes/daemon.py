"""``taskd start``: assemble the processes and run the coordinator until told to stop.

Children are created by a fork server: the coordinator has threads (the watcher's
observer), and forking a threaded process is unsafe, while spawning a fresh interpreter
for each replacement worker would be slow. The fork server is a clean process that
preloads the worker's modules once and forks workers (and the logger) from there.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import traceback
from typing import Any

from supervisor.control.commands import dispatch
from supervisor.control.control_server import ControlServer, ControlSocketError
from supervisor.control.diagnostics import Diagnostics
from supervisor.control.sd_notify import Notifier
from supervisor.jobfiles.watcher import DirectoryWatcher
from supervisor.processes.coordinator import Coordinator, DaemonOptions
from supervisor.processes.logger_process import LoggerLink
from supervisor.processes.pool import WorkerPool
from workers.execution import new_run_id
from workers.run_processes import find_processes_with_env, signal_processes
from workers.task_type import REGISTRY_VARIABLE, registry_for_children

INSTANCE_VARIABLE = "TASKD_INSTANCE"

# What the workers need, imported once in the fork server and shared by every worker.
# Not the logger's modules (logging, python-json-logger): the one logger process imports
# them after its fork, instead of each worker holding them (~0.6 MB each).
_PRELOAD = ["workers.forkserver_init", "workers.worker_main", "workers.execute_command"]


def run_daemon(options: DaemonOptions) -> int:
    control = None
    if options.socket_path is not None:
        # First of all: a second daemon on the same socket must not start anything.
        control = ControlServer(options.socket_path, lambda request: dispatch(coordinator, request),
                                group=options.socket_group)
        try:
            control.open()
        except ControlSocketError as error:
            print(f"taskd: cannot open the control socket: {error}", file=sys.stderr)
            return 2
    diagnostics = Diagnostics()
    metrics = None
    if options.metrics_port is not None:
        # Imported only when asked for: prometheus_client and its HTTP server are ~8 MB
        # of the coordinator's memory.
        from supervisor.control.metrics import Metrics
        metrics = Metrics()
    metrics_port = None
    if metrics is not None:
        try:  # before any child starts: a port in use is a usage error
            metrics_port = metrics.start_http(options.metrics_port, options.metrics_address)
        except OSError as error:
            print(f"taskd: --metrics-port {options.metrics_port}: {error.strerror or error}",
                  file=sys.stderr)
            if control is not None:
                control.close()
            return 2

    def on_pool_event(event: dict) -> None:
        diagnostics.emit(event)
        if metrics is not None and event["event"] == "worker_restarted":
            metrics.worker_restarted()

    def on_logger_restart(pid: int, code: int | None) -> None:
        diagnostics.emit({"event": "logger_restarted", "level": "warning", "old_pid": pid,
                          "exitcode": code})
        if metrics is not None:
            metrics.logger_restarted()

    lock, memory, store, state = None, None, None, "memory"
    if options.state_dir is not None:
        from supervisor.store.state_dir import (
            StateDirInUse,
            StateDirLock,
            StateDirUnusable,
            store_path,
        )

        lock = StateDirLock(options.state_dir)
        try:  # right after the socket: a second daemon on this state dir stops here
            lock.acquire()
            memory, store = _open_state(options, diagnostics)
        except StateDirInUse as error:
            print(f"taskd: {error}", file=sys.stderr)
            if control is not None:
                control.close()
            if metrics is not None:
                metrics.stop_http()
            return 2
        except StateDirUnusable as error:
            lock = None
            diagnostics.emit(_store_unusable(str(error), store_path(options.state_dir)))
        if store is not None:
            state = store[0]
    agent = None
    if options.cluster is not None:
        from supervisor.processes.cluster_agent import ClusterAgent
        from supervisor.store.postgres import redact_url

        memory, store = _open_cluster_state(options, diagnostics)
        state = redact_url(options.cluster)
        agent = ClusterAgent(options.cluster, workers=options.workers,
                             lease_s=options.lease_s)

    def on_store_failed(message: str) -> None:
        coordinator.state = "memory"
        diagnostics.emit(_store_unusable(message, state if store else ""))  # no password

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    pool = WorkerPool(options.workers, context=context, monotonic=time.monotonic,
                      on_event=on_pool_event, heartbeat_timeout_s=options.heartbeat_timeout_s)
    logger = LoggerLink(context, options.log_file, coordinator_pid=os.getpid(),
                        on_restart=on_logger_restart, store=store,
                        on_store_failed=on_store_failed)
    watcher = DirectoryWatcher(options.jobs_dir)
    coordinator = Coordinator(options, queue=pool, logger=logger, watcher=watcher,
                              diagnostics=diagnostics, notifier=Notifier(), control=control,
                              metrics=metrics, memory=memory, state=state, cluster=agent)
    _prepare_child_environment()
    # Signals first: a SIGTERM that arrives while children start is not lost.
    coordinator.install_signal_handlers()
    diagnostics.emit({"event": "starting", "level": "info", "pid": os.getpid(),
                      "workers": options.workers, "jobs_dir": options.jobs_dir,
                      "socket": options.socket_path, "metrics_port": metrics_port,
                      "timezone": options.timezone, "log_file": options.log_file,
                      "state_dir": options.state_dir})
    try:
        logger.start()
        pool.start()
        if agent is not None:  # its connection opened after every child is forked
            agent.start()
        watcher.start()
        coordinator.load()
        coordinator.run_forever()
        coordinator.shut_down()
    except Exception as error:  # a bug of ours: say so, leave nothing behind, exit non-zero
        diagnostics.emit({"event": "fatal", "level": "error",
                          "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()})
        pool.kill_all("coordinator failed")
        logger.kill()
        if control is not None:
            control.close()
        return 1
    finally:
        _kill_leftovers(diagnostics)
        if metrics is not None:
            metrics.stop_http()
        if lock is not None:
            lock.release()
    return 0


def _open_state(options: DaemonOptions, diagnostics: Diagnostics) -> tuple[Any, Any]:
    """Read what the previous daemon left, and how the logger is to store what happens.

    A store that cannot be used is one diagnostic and memory-only state, never fatal:
    it holds history, not what is scheduled.
    """
    from supervisor.store.abc import StoreError
    from supervisor.store.sqlite import SQLiteStore
    from supervisor.store.state_dir import store_path
    from supervisor.store.writer import Retention

    assert options.state_dir is not None
    path = store_path(options.state_dir)
    try:
        sqlite_store = SQLiteStore(path)
        try:
            memory = sqlite_store.load_memory()
        finally:
            sqlite_store.close()
    except StoreError as error:
        diagnostics.emit(_store_unusable(str(error), path))
        return None, None
    retention = Retention(max_age_s=options.history_days * 86400.0,
                          per_job=options.history_per_job)
    return memory, (path, retention)


def _open_cluster_state(options: DaemonOptions, diagnostics: Diagnostics
                        ) -> tuple[Any, Any]:
    """The cluster database as the state store: its schema created or upgraded (under
    the schema lock), what the nodes remember read back. Unreachable now: state in
    memory on this node (the agent keeps trying to join; nothing is claimed meanwhile)."""
    from supervisor.store.abc import StoreError
    from supervisor.store.postgres import PostgresStore
    from supervisor.store.writer import Retention

    assert options.cluster is not None
    try:
        store = PostgresStore(options.cluster)
        try:
            memory = store.load_memory()
        finally:
            store.close()
    except StoreError as error:
        diagnostics.emit(_store_unusable(str(error), ""))
        return None, None
    retention = Retention(max_age_s=options.history_days * 86400.0,
                          per_job=options.history_per_job)
    return memory, (options.cluster, retention)


def _store_unusable(message: str, path: str) -> dict[str, Any]:
    return {"event": "state_store_unusable", "level": "error", "file": path,
            "error": message,
            "lost": "run history, catch-up and once-only one-time runs across restarts; "
                    "scheduling goes on in memory"}


def _prepare_child_environment() -> None:
    """What every worker, and so every task, inherits from here on.

    ``TASKD_INSTANCE`` marks every process this daemon's tasks start, so the ones left
    running in the background by a finished run can still be found when taskd stops.
    ``TASKD_TASK_TYPES`` hands the task-type registry down (see ``workers/task_type.py``).
    systemd's notify variables are for the coordinator only: a task that speaks the
    protocol would otherwise talk to systemd in taskd's name.
    """
    os.environ[INSTANCE_VARIABLE] = new_run_id()
    os.environ[REGISTRY_VARIABLE] = registry_for_children()
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)


def _kill_leftovers(diagnostics: Diagnostics) -> None:
    """No process of a task outlives the daemon: kill what finished runs left behind."""
    instance = os.environ.get(INSTANCE_VARIABLE)
    if not instance:
        return
    # multiprocessing's own helpers (the fork server, its resource tracker) carry the mark
    # too, since the workers inherit it from them; they are idle by now and exit with us.
    pids = [pid for pid in find_processes_with_env(INSTANCE_VARIABLE, instance)
            if not _is_multiprocessing_helper(pid)]
    signal_processes(pids, signal.SIGKILL)
    if pids:
        diagnostics.emit({"event": "leftovers_killed", "level": "warning", "pids": pids})



def _is_multiprocessing_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"from multiprocessing." in handle.read()
    except OSError:
        return False
