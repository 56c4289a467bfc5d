"""Imported once by the fork server that creates taskd's children (see ``daemon.py``).

The fork server, and so every worker and the logger it forks, moves to a process group
of its own. Signals meant for the daemon's group — Ctrl-C in a terminal, ``timeout``,
``kill -TERM -PGID`` — then reach only the coordinator, which stops its children in
order (grace period, records written) instead of having them die under it. The children
still cannot outlive the coordinator: the fork server exits when it does, and each child
has a parent-death signal and sees end of stream on its channel.
"""

import os

os.setpgid(0, 0)
