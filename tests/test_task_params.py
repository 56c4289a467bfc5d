"""TaskParams: a read-only mapping equal to the dict it was made from."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
from hypothesis import given

from supervisor.jobfiles.jobspec import parse_job
from supervisor.jobfiles.task_params import TaskParams

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10)


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=6))
def test_the_same_mapping_as_the_dict(params):
    frozen = TaskParams(params)
    assert dict(frozen) == params and frozen == params and params == frozen
    assert list(frozen) == list(params) and len(frozen) == len(params)
    assert json.loads(json.dumps(dict(frozen))) == json.loads(json.dumps(params))
    for key, value in params.items():
        assert frozen[key] == value and frozen.get(key) == value


def test_a_missing_key_is_a_key_error():
    params = TaskParams({"command": "true"})
    with pytest.raises(KeyError):
        params["env"]
    assert params.get("env") is None and "env" not in params


def test_read_only_and_empty_containers_are_never_shared():
    params = TaskParams({"command": "true", "env": {}, "args": []})
    with pytest.raises(TypeError):
        params["command"] = "false"
    env = params["env"]
    env["X"] = "1"  # a caller that changes what it was given changes only its copy
    dict(params)["args"].append(1)
    assert params["env"] == {} and params["args"] == []
    assert params["env"] is not params["env"]


def test_jobs_with_the_same_keys_share_them():
    a = TaskParams({"command": "a", "env": {}, "cwd": None})
    b = TaskParams({"command": "b", "env": {}, "cwd": None})
    assert a._keys is b._keys and a != b


def test_a_job_file_reads_into_task_params():
    spec = parse_job(b'{"job_id": "j", "schedule": "* * * * *", '
                     b'"task": {"type": "execute_command", "command": "true"}}',
                     "j.json", default_zone="UTC")
    assert isinstance(spec.task_params, TaskParams)
    assert dict(spec.task_params) == {"command": "true", "env": {}, "cwd": None}
