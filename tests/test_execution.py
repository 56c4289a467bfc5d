"""The execution request and its helpers (workers/execution.py), and what the workers'
preloaded modules import: every worker holds all of it in its memory."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from hypothesis import given
from hypothesis import strategies as st

from supervisor.processes.daemon import _PRELOAD
from workers.execution import Execution, new_run_id


def test_run_ids_are_version_4_uuids_in_32_hex_digits():
    ids = [new_run_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        parsed = uuid.UUID(hex=run_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (run_id, 4, uuid.RFC_4122)


INSTANT = "2026-01-01T00:00:00+00:00"
texts = st.text(max_size=20)


@given(task_params=st.dictionaries(texts, st.integers() | texts, max_size=3),
       variables=st.dictionaries(texts, texts, max_size=3),
       attempt=st.none() | st.integers(1, 9),
       # (an empty user is refused in the job file; unset policy fields are not sent)
       user=st.none() | st.text(min_size=1, max_size=20),
       manual=st.booleans(), delayed_s=st.none() | st.floats(0.1, 60))
def test_a_request_travels_as_json_and_arrives_equal(task_params, variables, attempt, user,
                                                    manual, delayed_s):
    execution = Execution(run_id=new_run_id(), job_id="j", scheduled_for=INSTANT,
                          task_type="execute_command", task_params=task_params,
                          variables=variables, attempt=attempt, user=user, manual=manual,
                          delayed_s=delayed_s)
    arrived = Execution.from_message(json.loads(json.dumps(execution.to_message())))
    # The defaults (read-only empty mappings) compare equal to the empty dicts sent.
    assert arrived == execution


def test_a_request_with_default_mappings_is_sent_as_plain_json():
    execution = Execution(run_id="r", job_id="j", scheduled_for=INSTANT,
                          task_type="execute_command")
    message = json.loads(json.dumps(execution.to_message()))
    assert message["task_params"] == {}
    assert "variables" not in message  # unset policy fields are not sent


def test_the_workers_preload_leaves_out_what_only_the_coordinator_needs():
    # dataclasses (with inspect, ast, dis), uuid (with platform), logging, click, croniter:
    # each would be in the memory of every worker the fork server makes. Each child also
    # re-runs the ``taskd`` script, which imports supervisor.entry.
    heavy = ["dataclasses", "inspect", "uuid", "logging", "click", "croniter", "watchdog"]
    modules = [*_PRELOAD, "supervisor.entry"]
    code = (f"import sys\nfor name in {modules!r}: __import__(name)\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"
