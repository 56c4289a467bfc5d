"""The task-type registry: found through entry points, or handed down by the coordinator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workers.execute_command import ExecuteCommand
from workers.http_request import HttpRequest
from workers.task_type import (
    REGISTRY_VARIABLE,
    UnknownTaskType,
    _handed_down,
    registered_task_types,
    registry_for_children,
    task_type_named,
)


class Outer:
    class Nested(ExecuteCommand):
        name = "nested"


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    monkeypatch.delenv(REGISTRY_VARIABLE, raising=False)
    _clear_caches()
    yield
    _clear_caches()


def _clear_caches() -> None:
    for cached in (_handed_down, registered_task_types, task_type_named):
        cached.cache_clear()


def test_entry_points_without_a_handed_down_registry():
    assert registered_task_types() == {"execute_command": ExecuteCommand,
                                       "http_request": HttpRequest}


def test_a_handed_down_registry_is_used_and_removed_from_the_environment(monkeypatch):
    monkeypatch.setenv(REGISTRY_VARIABLE, json.dumps(
        {"shell": "workers.execute_command:ExecuteCommand",
         "nested": f"{__name__}:Outer.Nested"}))
    assert task_type_named("shell") is ExecuteCommand
    assert task_type_named("nested") is Outer.Nested
    assert REGISTRY_VARIABLE not in os.environ  # the tasks a worker runs never see it


def test_what_the_coordinator_hands_down_is_its_own_registry(monkeypatch):
    handed = registry_for_children()
    own = registered_task_types()
    _clear_caches()
    monkeypatch.setenv(REGISTRY_VARIABLE, handed)
    assert registered_task_types() == own


def _imported_by_a_worker_lookup(module: str) -> bool:
    """Whether a process with the registry handed down, as a worker has it, imports
    ``module`` when it looks up and uses execute_command."""
    code = ("import sys, workers.worker_main, workers.execute_command\n"
            "from workers.task_type import task_type_named\n"
            "assert task_type_named('execute_command').name == 'execute_command'\n"
            f"print({module!r} in sys.modules)")
    env = {**os.environ, REGISTRY_VARIABLE: registry_for_children()}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout.strip() == "True"


def test_a_worker_with_the_registry_handed_down_never_imports_importlib_metadata():
    assert not _imported_by_a_worker_lookup("importlib.metadata")


def test_a_handed_down_registry_imports_only_the_type_asked_for():
    assert not _imported_by_a_worker_lookup("workers.http_request")
    assert _imported_by_a_worker_lookup("workers.execute_command")  # the check can fail


def test_an_unknown_type_names_the_known_ones(monkeypatch):
    monkeypatch.setenv(REGISTRY_VARIABLE, json.dumps(
        {"shell": "workers.execute_command:ExecuteCommand"}))
    with pytest.raises(UnknownTaskType, match=r"unknown task type 'nope' \(known: shell\)"):
        task_type_named("nope")
