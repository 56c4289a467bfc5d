"""Keeping the cyclic garbage collector off the job table.

Loading 100,000 job files allocates millions of containers the collector tracks (dicts,
specs, states, wheel entries). Left on, it walks the growing table again and again while
it loads (a quarter of the load's time), and every full collection after that walks all
of it once more, though the table holds no reference cycles: it is freed by reference
counting when jobs go. So a bulk load runs with the collector paused, and what it leaves
alive is then frozen (``gc.freeze``): moved out of the generations the collector walks.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off; then freeze what is alive.

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
