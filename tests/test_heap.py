"""The collector pause around bulk loads: on again afterwards, whatever happened."""

from __future__ import annotations

import gc

import pytest

from supervisor.heap import collector_paused


@pytest.fixture(autouse=True)
def _collector_restored():
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()  # nothing this process froze stays out of the collector's reach
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_collector_off_inside_on_after_and_the_survivors_frozen():
    gc.enable()
    frozen_before = gc.get_freeze_count()
    with collector_paused():
        assert not gc.isenabled()
        table = [{"job": i} for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(table)


def test_collector_on_again_when_the_block_raises():
    gc.enable()
    with pytest.raises(OSError), collector_paused():
        raise OSError("jobs dir gone")
    assert gc.isenabled()


def test_a_collector_switched_off_by_someone_else_stays_off():
    gc.disable()
    frozen_before = gc.get_freeze_count()
    with collector_paused():
        pass
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen_before
