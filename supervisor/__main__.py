"""``python -m supervisor`` is the ``taskd`` command."""

from supervisor.entry import main

main()
