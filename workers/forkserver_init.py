"""Imported once by the fork server that creates taskd's children (see ``daemon.py``).

The fork server, and so every worker and the logger it forks, moves to a process group
of its own. Signals meant for the daemon's group — Ctrl-C in a terminal, ``timeout``,
``kill -TERM -PGID`` — then reach only the coordinator, which stops its children in
order (grace period, records written) instead of having them die under it. The children
still cannot outlive the coordinator: the fork server exits when it does, and each child
has a parent-death signal and sees end of stream on its channel.

It also finds the installed task types once (a scan of the installed distributions'
metadata), so no worker pays for that scan on its first run.
"""

import os

from workers.task_type import installed_task_types

os.setpgid(0, 0)
installed_task_types()
