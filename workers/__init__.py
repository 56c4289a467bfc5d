"""taskd's worker side: the worker process loop and the pluggable task types."""
