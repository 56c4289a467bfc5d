"""The ``taskd`` command's entry point: nothing imported until it runs.

Every child of the fork server (each worker, the logger) re-runs the script the daemon
was started from, as ``__mp_main__`` (multiprocessing's spawn preparation). The
``taskd`` script imports this module, so whatever it imported at the top — the command
line, click, the client commands — would be in every worker's memory.
"""

from __future__ import annotations


def main() -> None:
    from supervisor.cli import main as command_line

    command_line(prog_name="taskd")
