"""The ``execute_command`` task type: one shell command, run by ``/bin/sh -c``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.command_runner import run_command
from workers.params import check_task_keys, is_unicode, show
from workers.task_type import RunContext, TaskOutcome, TaskParamsError, TaskType

_KNOWN_KEYS = ("command", "env", "cwd")
# Left as they are by json.dumps(ensure_ascii=False) but no part of one line of UTF-8 text.


class ExecuteCommand(TaskType):
    """Task keys: ``command`` (required), ``env`` (object of strings), ``cwd``."""

    name = "execute_command"

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        check_task_keys(params, _KNOWN_KEYS)
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
        raise TaskParamsError(f"{key}: must be a non-empty string, got {show(value)}")
    if "\0" in value:  # exec() cannot pass it; better said now than at run time
        raise TaskParamsError(f"{key}: must not contain a NUL character")
    if not is_unicode(value):
        raise TaskParamsError(f"{key}: must be valid Unicode text")
    return value


def _environment(env: Any) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise TaskParamsError(f"env: must be an object, got {show(env)}")
    for name, value in env.items():
        if not isinstance(name, str) or not name:
            raise TaskParamsError(
                f"env: variable name must be a non-empty string, got {show(name)}"
            )
        if "=" in name or "\0" in name:
            raise TaskParamsError(
                f"env: variable name {show(name)} must not contain '=' or a NUL character"
            )
        if not is_unicode(name):
            raise TaskParamsError(f"env: variable name {show(name)} must be valid Unicode text")
        where = f"env.{name}" if name.isprintable() else f"env.{show(name)}"  # one line
        if not isinstance(value, str):
            raise TaskParamsError(f"{where}: must be a string, got {show(value)}")
        if "\0" in value:
            raise TaskParamsError(f"{where}: must not contain a NUL character")
        if not is_unicode(value):
            raise TaskParamsError(f"{where}: must be valid Unicode text")
    return dict(env)
