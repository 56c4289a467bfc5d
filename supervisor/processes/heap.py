"""Bulk loads of the job table: the cyclic collector kept off it, the freed memory given back.

Loading 100,000 job files allocates millions of containers the collector tracks (dicts,
specs, states, wheel entries). Left on, it walks the growing table again and again while
it loads (a quarter of the load's time), and every full collection after that walks all
of it once more, though the table holds no reference cycles: it is freed by reference
counting when jobs go. So a bulk load runs with the collector paused, and what it leaves
alive is then frozen (``gc.freeze``): moved out of the generations the collector walks.

A load also frees a lot at its end (the directory snapshot, the parsed documents, the
changes and their events: ~20 MB at 100,000 files) in the middle of glibc's heap, which
keeps it unless asked (``malloc_trim``): ~8 MB of the coordinator's resident memory.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl and others have none
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


@contextmanager
def bulk_load() -> Iterator[None]:
    """Run the block with the cyclic collector off; then freeze what is alive and give
    the memory the block freed back to the OS.

    The collector is on again afterwards (if it was on before), whatever the block
    raised. Garbage from before the block is collected first; only reference cycles
    that become garbage inside the block would be frozen with the rest (never
    collected), and reading job files makes none.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.collect()  # cheap: what is already frozen is not walked
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)
