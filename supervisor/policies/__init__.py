"""The job policies between a due occurrence and a worker: jitter, concurrency groups,
replace, retries and hooks (``dispatcher.Dispatcher`` puts them together)."""
