"""Bulk loads: the collector on again afterwards whatever happened, freed memory returned."""

from __future__ import annotations

import gc

import pytest

import supervisor.processes.heap
from supervisor.processes.heap import bulk_load


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
    with bulk_load():
        assert not gc.isenabled()
        table = [{"job": i} for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(table)


def test_collector_on_again_when_the_block_raises():
    gc.enable()
    with pytest.raises(OSError), bulk_load():
        raise OSError("jobs dir gone")
    assert gc.isenabled()


def test_a_collector_switched_off_by_someone_else_stays_off():
    gc.disable()
    frozen_before = gc.get_freeze_count()
    with bulk_load():
        pass
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen_before


def test_the_freed_memory_is_given_back_after_the_load(monkeypatch):
    trims: list[int] = []
    monkeypatch.setattr(supervisor.processes.heap, "_MALLOC_TRIM",
                        lambda pad: trims.append(pad) or 1)
    with pytest.raises(OSError), bulk_load():
        assert trims == []
        raise OSError("jobs dir gone")
    assert trims == [0]


def test_without_malloc_trim_nothing_is_given_back(monkeypatch):
    monkeypatch.setattr(supervisor.processes.heap, "_MALLOC_TRIM", None)
    gc.enable()
    with bulk_load():
        pass
    assert gc.isenabled()
