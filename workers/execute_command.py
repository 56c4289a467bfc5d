"""The ``execute_command`` task type: one shell command, run by ``/bin/sh -c``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from workers.command_runner import run_command
from workers.task_type import RunContext, TaskOutcome, TaskParamsError, TaskType

_KNOWN_KEYS = ("command", "env", "cwd")


class ExecuteCommand(TaskType):
    """Task keys: ``command`` (required), ``env`` (object of strings), ``cwd``."""

    name = "execute_command"

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if not isinstance(params, Mapping):
            raise TaskParamsError(f"must be an object, got {_show(params)}")
        for key in params:
            if isinstance(key, str) and key.startswith("_"):
                continue  # a comment
            if key not in _KNOWN_KEYS:
                raise TaskParamsError(f"unknown key {_show(key)}")
        if "command" not in params:
            raise TaskParamsError("command: required key is missing")
        command = _non_empty_string("command", params["command"])
        env = _environment(params.get("env", {}))
        # cwd is not checked for existence here: it may appear before the job runs; a
        # missing one is a FAILURE of that run ("failed to start: ...").
        cwd = _non_empty_string("cwd", params["cwd"]) if "cwd" in params else None
        return {"command": command, "env": env, "cwd": cwd}

    @classmethod
    def run(cls, params: Mapping[str, Any], context: RunContext) -> TaskOutcome:
        return run_command(
            params["command"],
            env=params.get("env") or {},
            cwd=params.get("cwd"),
            timeout_s=context.timeout_s,
            extra_env={
                "TASKD_JOB_ID": context.job_id,
                "TASKD_RUN_ID": context.run_id,
                "TASKD_SCHEDULED_FOR": context.scheduled_for,
            },
            stop_requested=context.stop_requested,
        )


def _non_empty_string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TaskParamsError(f"{key}: must be a non-empty string, got {_show(value)}")
    if "\0" in value:  # exec() cannot pass it; better said now than at run time
        raise TaskParamsError(f"{key}: must not contain a NUL character")
    return value


def _environment(env: Any) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise TaskParamsError(f"env: must be an object, got {_show(env)}")
    for name, value in env.items():
        if not isinstance(name, str) or not name:
            raise TaskParamsError(
                f"env: variable name must be a non-empty string, got {_show(name)}"
            )
        if "=" in name or "\0" in name:
            raise TaskParamsError(
                f"env: variable name {_show(name)} must not contain '=' or a NUL character"
            )
        if not isinstance(value, str):
            raise TaskParamsError(f"env.{name}: must be a string, got {_show(value)}")
        if "\0" in value:
            raise TaskParamsError(f"env.{name}: must not contain a NUL character")
    return dict(env)


def _show(value: Any) -> str:
    """A value as the user wrote it in JSON, cut short to keep the message one line."""
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
