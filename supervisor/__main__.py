"""``python -m supervisor`` is the ``taskd`` command."""

from supervisor.cli import main

main(prog_name="taskd")
