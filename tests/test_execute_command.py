"""The execute_command task type: parameter validation and the entry point."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from workers.execute_command import ExecuteCommand
from workers.task_type import RunContext, TaskParamsError, task_type_named

VALID: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"command": "true"}, {"command": "true", "env": {}, "cwd": None}),
    (
        {"command": "echo $A", "env": {"A": "1", "B_2": ""}},
        {"command": "echo $A", "env": {"A": "1", "B_2": ""}, "cwd": None},
    ),
    ({"command": "ls", "cwd": "/tmp"}, {"command": "ls", "env": {}, "cwd": "/tmp"}),
    # cwd is not checked at validate time: it may exist by the time the job runs.
    ({"command": "ls", "cwd": "/not/yet"}, {"command": "ls", "env": {}, "cwd": "/not/yet"}),
    (
        {"command": "x", "_comment": "ignored", "_": 42, "env": {}},
        {"command": "x", "env": {}, "cwd": None},
    ),
]

INVALID: list[tuple[Any, str]] = [
    ({}, "command: required key is missing"),
    ({"_note": "only a comment"}, "command: required key is missing"),
    ({"command": 42}, "command: must be a non-empty string, got 42"),
    ({"command": ""}, 'command: must be a non-empty string, got ""'),
    ({"command": None}, "command: must be a non-empty string, got null"),
    ({"command": ["ls", "-l"]}, 'command: must be a non-empty string, got ["ls", "-l"]'),
    ({"command": "a\0b"}, "command: must not contain a NUL character"),
    ({"comand": "ls"}, 'unknown key "comand"'),
    ({"command": "ls", "timeout_s": 3}, 'unknown key "timeout_s"'),
    ({"command": "ls", "env": {"FOO": 1}}, "env.FOO: must be a string, got 1"),
    ({"command": "ls", "env": {"FOO": None}}, "env.FOO: must be a string, got null"),
    ({"command": "ls", "env": {"FOO": "a\0"}}, "env.FOO: must not contain a NUL character"),
    ({"command": "ls", "env": ["A=1"]}, 'env: must be an object, got ["A=1"]'),
    ({"command": "ls", "env": None}, "env: must be an object, got null"),
    (
        {"command": "ls", "env": {"": "x"}},
        'env: variable name must be a non-empty string, got ""',
    ),
    (
        {"command": "ls", "env": {"A=B": "x"}},
        "env: variable name \"A=B\" must not contain '=' or a NUL character",
    ),
    (
        {"command": "ls", "env": {"A\0": "x"}},
        "env: variable name \"A\\u0000\" must not contain '=' or a NUL character",
    ),
    ({"command": "ls", "cwd": ""}, 'cwd: must be a non-empty string, got ""'),
    ({"command": "ls", "cwd": 7}, "cwd: must be a non-empty string, got 7"),
    ({"command": "ls", "cwd": None}, "cwd: must be a non-empty string, got null"),
    ("ls", 'must be an object, got "ls"'),
]


@pytest.mark.parametrize(("params", "expected"), VALID)
def test_validate_accepts_and_normalizes(params: dict[str, Any], expected: dict[str, Any]) -> None:
    assert ExecuteCommand.validate(params) == expected


@pytest.mark.parametrize(("params", "message"), INVALID)
def test_validate_rejects_with_one_line_message(params: Any, message: str) -> None:
    with pytest.raises(TaskParamsError) as caught:
        ExecuteCommand.validate(params)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_long_values_are_cut_short_in_messages() -> None:
    with pytest.raises(TaskParamsError) as caught:
        ExecuteCommand.validate({"command": list(range(1000))})
    assert len(str(caught.value)) < 120


def test_entry_point_resolves_to_the_class() -> None:
    assert task_type_named("execute_command") is ExecuteCommand
    assert ExecuteCommand.name == "execute_command"


def test_run_passes_params_and_the_taskd_variables(tmp_path: Any) -> None:
    params = ExecuteCommand.validate(
        {
            "command": 'echo "$GREETING $TASKD_JOB_ID $TASKD_SCHEDULED_FOR"; pwd -P',
            "env": {"GREETING": "hi"},
            "cwd": str(tmp_path),
        }
    )
    context = RunContext(
        job_id="job-1",
        run_id=uuid.uuid4().hex,
        scheduled_for="2026-11-26T21:00:00+00:00",
        timeout_s=10,
    )
    outcome = ExecuteCommand.run(params, context)
    assert outcome.success, outcome
    assert outcome.output_tail == f"hi job-1 2026-11-26T21:00:00+00:00\n{tmp_path.resolve()}\n"
