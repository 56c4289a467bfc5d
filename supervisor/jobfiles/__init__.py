"""Job files: reading and validating one (``jobspec``), the directory's snapshot
(``jobdir``), cron's ownership rule (``file_trust``), reconciling a snapshot against what
is loaded (``reconcile``) and watching the directory for changes (``watcher``).
"""
