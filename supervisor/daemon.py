"""``taskd start``: assemble the processes and run the coordinator until told to stop.

Children are created by a fork server: the coordinator has threads (the watcher's
observer), and forking a threaded process is unsafe, while spawning a fresh interpreter
for each replacement worker would be slow. The fork server is a clean process that
preloads the worker's modules once and forks workers (and the logger) from there.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback

from supervisor.commands import dispatch
from supervisor.control_server import ControlServer, ControlSocketError
from supervisor.coordinator import Coordinator, DaemonOptions
from supervisor.diagnostics import Diagnostics
from supervisor.logger_process import LoggerLink
from supervisor.pool import WorkerPool
from supervisor.sd_notify import Notifier
from supervisor.watcher import DirectoryWatcher

_PRELOAD = ["workers.forkserver_init", "workers.worker_main", "workers.execute_command",
            "supervisor.logger_process"]


def run_daemon(options: DaemonOptions) -> int:
    control = None
    if options.socket_path is not None:
        # First of all: a second daemon on the same socket must not start anything.
        control = ControlServer(options.socket_path, lambda request: dispatch(coordinator, request),
                                group=options.socket_group)
        try:
            control.open()
        except ControlSocketError as error:
            print(f"taskd: --socket: {error}", file=sys.stderr)
            return 2
    diagnostics = Diagnostics()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    pool = WorkerPool(options.workers, context=context,
                            monotonic=time.monotonic, on_event=diagnostics.emit)
    logger = LoggerLink(context, options.log_file, coordinator_pid=os.getpid(),
                        on_restart=lambda pid, code: diagnostics.emit(
                            {"event": "logger_restarted", "level": "warning",
                             "old_pid": pid, "exitcode": code}))
    watcher = DirectoryWatcher(options.jobs_dir)
    coordinator = Coordinator(options, queue=pool, logger=logger, watcher=watcher,
                              diagnostics=diagnostics, notifier=Notifier(), control=control)
    # Signals first: a SIGTERM that arrives while children start is not lost.
    coordinator.install_signal_handlers()
    diagnostics.emit({"event": "starting", "level": "info", "pid": os.getpid(),
                      "workers": options.workers, "jobs_dir": options.jobs_dir,
                      "socket": options.socket_path,
                      "timezone": options.timezone, "log_file": options.log_file})
    try:
        logger.start()
        pool.start()
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
    return 0

