"""The ``execute_command`` task type: one shell command, run by ``/bin/sh -c``.

The command's environment, each layer over the one before:

1. the daemon's own environment;
2. with the job's ``user``: ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` of that account;
3. the job's ``env_file``, read at each run (an edit applies to the next run);
4. the task's ``env``;
5. ``TASKD_JOB_ID``, ``TASKD_RUN_ID``, ``TASKD_SCHEDULED_FOR``;
6. the run's ``variables`` (a hook's ``TASKD_STATUS``, ``TASKD_HOOK``, and its
   ``TASKD_RUN_ID``: the run that set it off);
7. ``TASKD_EXECUTION_ID``: this run's own id, always (what finds its processes).

A hook's input (``payload``) is the command's stdin; otherwise stdin is ``/dev/null``.
An account or env file that cannot be used makes the run a FAILURE that says why
(``failed to start: user "x": no such user``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.command_runner import EXECUTION_ID_VARIABLE, run_command
from workers.env_file import EnvFileError, read_env_file
from workers.params import check_task_keys, is_unicode, show
from workers.run_as import AccountError, run_as
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
        env = params.get("env") or {}
        cwd = params.get("cwd")
        credentials = None
        if context.user is not None or context.group is not None or context.env_file:
            # Looked up at each run: the account or the file may have changed since load.
            try:
                account, credentials = run_as(context.user, context.group)
                file_env = read_env_file(context.env_file) if context.env_file else {}
            except (AccountError, EnvFileError) as error:
                return TaskOutcome(success=False, error=f"failed to start: {error}")
            if account is not None:
                env = {**account.environment(), **file_env, **env}
                if cwd is None:
                    cwd = account.working_directory()
            elif file_env:
                env = {**file_env, **env}
        extra_env = {
            "TASKD_JOB_ID": context.job_id,
            "TASKD_RUN_ID": context.run_id,
            "TASKD_SCHEDULED_FOR": context.scheduled_for,
            **context.variables,
            EXECUTION_ID_VARIABLE: context.run_id,
        }
        return run_command(
            params["command"],
            env=env,
            cwd=cwd,
            timeout_s=context.timeout_s,
            extra_env=extra_env,
            stop_requested=context.stop_requested,
            stdin=None if context.payload is None else context.payload.encode("utf-8"),
            credentials=credentials,
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
