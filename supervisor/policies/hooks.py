"""Which hooks a finished run sets off, and the executions that run them.

- ``on_failure``: every failed run (each attempt); the daemon's ``--on-failure`` stands
  in for jobs without their own (cron's MAILTO).
- ``on_give_up``: a failed run after which no retry follows (without ``retry``, every
  failed run).
- ``on_success``: every successful run.
- ``on_recovery``: a successful run whose job's previous run had failed.
A hook's own record has ``hook``; it never sets off hooks itself.
"""

from __future__ import annotations

import json
from typing import Any

from supervisor.jobfiles.jobspec import JobSpec
from supervisor.jobfiles.policy_keys import HookTask
from workers.execution import Execution, new_run_id

# A hook that hangs must not hold a worker for ever: it gets this long unless its
# job's timeout_s is shorter.
HOOK_TIMEOUT_S = 300.0


def hooks_for(record: dict[str, Any], spec: JobSpec, *, previous_status: str | None,
              retrying: bool, default_on_failure: HookTask | None) -> list[HookTask]:
    if record.get("hook"):
        return []
    policy = spec.policy
    if record["status"] == "SUCCESS":
        names = ["on_success"]
        if previous_status == "FAILURE":
            names.append("on_recovery")
        return [hook for name in names if (hook := policy.hook(name)) is not None]
    found = []
    on_failure = policy.hook("on_failure") or default_on_failure
    if on_failure is not None:
        found.append(on_failure)
    if not retrying and (give_up := policy.hook("on_give_up")) is not None:
        found.append(give_up)
    return found


def hook_execution(hook: HookTask, record: dict[str, Any], spec: JobSpec, *,
                   own: bool) -> Execution:
    """The run of ``hook`` for ``record``. ``own``: the job's own hook (it runs as the
    job's user, with its env_file); the daemon's default runs as the daemon."""
    policy = spec.policy
    timeout = min(spec.timeout_s or HOOK_TIMEOUT_S, HOOK_TIMEOUT_S)
    variables = {"TASKD_HOOK": hook.name, "TASKD_STATUS": record["status"],
                 "TASKD_RUN_ID": record["run_id"], "TASKD_ERROR": record.get("error") or "",
                 "TASKD_EXIT_CODE": "" if record.get("exit_code") is None
                 else str(record["exit_code"])}
    if record.get("attempt") is not None:
        variables["TASKD_ATTEMPT"] = str(record["attempt"])
    return Execution(
        run_id=new_run_id(), job_id=record["job_id"], scheduled_for=record["scheduled_for"],
        task_type=hook.task_type, task_params=dict(hook.task_params), timeout_s=timeout,
        hook=hook.name, payload=json.dumps(record, ensure_ascii=False), variables=variables,
        user=policy.user if own else None, group=policy.group if own else None,
        env_file=policy.env_file if own else None)
