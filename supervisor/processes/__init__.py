"""The daemon's processes: the coordinator loop, assembling it (``daemon``), the worker
pool behind the ``handoff`` seam, the logger process, their non-blocking channels, and
the coordinator's own memory during bulk loads (``heap``).
"""
