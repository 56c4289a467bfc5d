"""Cron's rule for job files read by a root daemon, and its override."""

from __future__ import annotations

import json
import os

import pytest

from supervisor.jobfiles.file_trust import untrusted_reason
from supervisor.jobfiles.jobspec import JobFileError, read_job_file

JOB = json.dumps({"job_id": "j", "schedule": "@daily",
                  "task": {"type": "execute_command", "command": "true"}})


def fake_stat(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((0o100000 | mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


@pytest.mark.parametrize(
    ("daemon_uid", "owner", "mode", "refused"),
    [
        (0, 0, 0o644, None),
        (0, 0, 0o600, None),
        (0, 0, 0o664, "writable by group or others (mode 0664"),
        (0, 0, 0o646, "writable by group or others (mode 0646"),
        (0, 1000, 0o644, "owned by uid 1000, not root"),
        (1000, 1000, 0o666, None),  # an ordinary user's daemon trusts what it can read
        (1000, 0, 0o644, None),
    ],
)
def test_untrusted_reason_table(daemon_uid, owner, mode, refused):
    reason = untrusted_reason(fake_stat(owner, mode), daemon_uid=daemon_uid)
    if refused is None:
        assert reason is None
    else:
        assert reason.startswith(f"refused: {refused}")


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule applies to a daemon running as root")
def test_root_daemon_refuses_a_group_writable_or_foreign_file(tmp_path):
    path = tmp_path / "j.json"
    path.write_text(JOB)
    os.chmod(path, 0o644)
    assert read_job_file(str(path), default_zone="UTC", trusted_only=True).job_id == "j"
    os.chmod(path, 0o664)
    with pytest.raises(JobFileError, match=r"j\.json: refused: writable by group or others"):
        read_job_file(str(path), default_zone="UTC", trusted_only=True)
    assert read_job_file(str(path), default_zone="UTC").job_id == "j"  # the override
    os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)
    with pytest.raises(JobFileError, match="refused: owned by uid 65534, not root"):
        read_job_file(str(path), default_zone="UTC", trusted_only=True)
    # Through a symlink the file that is read is the one checked.
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(JobFileError, match="refused: owned by uid 65534"):
        read_job_file(str(link), default_zone="UTC", trusted_only=True)
