"""taskd's coordinator side: job files, schedules, the timing wheel and the daemon.

The import name ``supervisor`` is also supervisord's on PyPI; install taskd into a venv
of its own. ``TASKD_PACKAGE`` lets a test prove the imported package is ours.
"""

TASKD_PACKAGE = True
__version__ = "0.1.0"
