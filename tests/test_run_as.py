"""A job's ``user`` and ``group``: account look-up, the root-only rule, and commands that
really run as another account (a user made with useradd for the test, removed after).

Waits are bounded polls, never fixed sleeps.
"""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.accounts import MadeUser, pids_of_uid
from tests.test_command_runner import alive, wait_until
from workers import run_as as run_as_module
from workers.execute_command import ExecuteCommand
from workers.run_as import AccountError, check_can_switch, resolve_account, run_as
from workers.task_type import RunContext, TaskOutcome

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="making a test user needs root and useradd",
)


def run(command: str, *, timeout_s: float | None = 10, env: dict[str, str] | None = None,
        cwd: str | None = None, **context: Any) -> TaskOutcome:
    task = {"command": command, "env": env or {}} | ({"cwd": cwd} if cwd else {})
    params = ExecuteCommand.validate(task)
    return ExecuteCommand.run(params, RunContext(
        job_id="job-u", run_id=uuid.uuid4().hex, scheduled_for="2026-11-26T21:00:00+00:00",
        timeout_s=timeout_s, **context))




REPORT = ('id -u; id -g; id -G; echo "$HOME|$USER|$LOGNAME|$SHELL"; pwd; '
          'touch "$HOME/created"')


# -- looking accounts up --------------------------------------------------------------


def test_resolve_account(user: MadeUser) -> None:
    account = resolve_account(user.name)
    assert (account.name, account.uid, account.gid) == (user.name, user.uid, user.gid)
    assert account.groups == tuple(sorted({user.gid, user.extra_gid}))
    assert account.home == str(user.home)
    assert account.shell == "/bin/sh"
    assert resolve_account(str(user.uid)) == account  # a numeric uid with an entry


def test_resolve_account_with_a_group(user: MadeUser) -> None:
    account = resolve_account(user.name, user.extra_group)
    assert account.gid == user.extra_gid
    # As systemd's Group=: the group, plus the memberships the group database lists.
    assert account.groups == tuple(sorted(set(os.getgrouplist(user.name, user.extra_gid))))
    assert resolve_account(user.name, str(user.extra_gid)).gid == user.extra_gid


@pytest.mark.parametrize(("user", "group", "message"), [
    ("taskd-nosuchuser", None, 'user "taskd-nosuchuser": no such user'),
    ("", None, 'user "": no such user'),
    ("a\0b", None, 'user "a\\u0000b": no such user'),
    ("4000000000", None, 'user "4000000000": no such user'),
    ("root", "taskd-nosuchgroup", 'group "taskd-nosuchgroup": no such group'),
    ("root", "99999999999999999999", 'group "99999999999999999999": no such group'),
])
def test_unknown_accounts(user: str, group: str | None, message: str) -> None:
    with pytest.raises(AccountError) as caught:
        resolve_account(user, group)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


# -- who may switch ---------------------------------------------------------------------


def test_a_root_daemon_may_switch_to_anyone() -> None:
    assert check_can_switch("root", "root", daemon_uid=0) is None
    assert check_can_switch("taskd-nosuchuser", None, daemon_uid=0) is None  # said elsewhere


@pytest.mark.parametrize(("user", "group", "message"), [
    ("root", None, "user: only a daemon running as root can run jobs as another user "
                   "(taskd runs as uid 1000)"),
    ("taskd-nosuchuser", None, "user: only a daemon running as root can run jobs as another "
                               "user (taskd runs as uid 1000)"),
    (None, "root", "group: only a daemon running as root can run jobs as another group "
                   "(taskd runs as gid 1000)"),
])
def test_a_daemon_not_root_cannot_switch(user: str | None, group: str | None,
                                         message: str) -> None:
    with pytest.raises(AccountError) as caught:
        check_can_switch(user, group, daemon_uid=1000, daemon_gid=1000)
    assert str(caught.value) == message


def test_a_daemon_not_root_may_name_its_own_account(user: MadeUser) -> None:
    own = {"daemon_uid": user.uid, "daemon_gid": user.gid}
    assert check_can_switch(user.name, **own) is None
    assert check_can_switch(str(user.uid), str(user.gid), **own) is None
    with pytest.raises(AccountError, match=r"^group: only a daemon running as root"):
        check_can_switch(user.name, user.extra_group, **own)


def test_own_account_under_a_daemon_not_root_needs_no_switch(
    user: MadeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_as_module.os, "geteuid", lambda: user.uid)
    monkeypatch.setattr(run_as_module.os, "getegid", lambda: user.gid)
    account, credentials = run_as(user.name, None)
    assert account is not None and account.uid == user.uid
    assert credentials is None


def test_a_daemon_not_root_refuses_another_user_at_run_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_as_module.os, "geteuid", lambda: 1000)
    outcome = run("echo never", user="root")
    assert outcome == TaskOutcome(False, None, "failed to start: user: only a daemon running "
                                  "as root can run jobs as another user (taskd runs as uid 1000)")


def test_nothing_to_switch_without_user_or_group() -> None:
    assert run_as(None, None) == (None, None)


# -- commands run as the user -------------------------------------------------------------


@needs_root
def test_command_runs_as_the_user(user: MadeUser) -> None:
    outcome = run(REPORT, user=user.name)
    assert outcome.success, outcome
    uid, gid, groups, env, cwd = outcome.output_tail.splitlines()
    assert (int(uid), int(gid)) == (user.uid, user.gid)
    assert sorted(map(int, groups.split())) == sorted({user.gid, user.extra_gid})
    assert env == f"{user.home}|{user.name}|{user.name}|/bin/sh"
    assert cwd == str(user.home)  # no cwd: the home directory, as cron does
    created = (user.home / "created").stat()
    assert (created.st_uid, created.st_gid) == (user.uid, user.gid)


@needs_root
def test_command_runs_with_the_group(user: MadeUser) -> None:
    outcome = run(REPORT + '; rm "$HOME/created"; touch "$HOME/by-group"', user=user.name,
                  group=user.extra_group)
    assert outcome.success, outcome
    uid, gid, groups, *_ = outcome.output_tail.splitlines()
    assert (int(uid), int(gid)) == (user.uid, user.extra_gid)
    assert sorted(map(int, groups.split())) == sorted(
        set(os.getgrouplist(user.name, user.extra_gid)))
    created = (user.home / "by-group").stat()
    assert (created.st_uid, created.st_gid) == (user.uid, user.extra_gid)


@needs_root
def test_group_alone_keeps_the_daemon_account(user: MadeUser) -> None:
    outcome = run("id -u; id -g; id -G", group=user.extra_group)
    assert outcome.success, outcome
    assert outcome.output_tail.split() == ["0", str(user.extra_gid), str(user.extra_gid)]


@needs_root
def test_env_layers_over_the_account(user: MadeUser, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("LOGNAME=from-file\nUSER=from-file\nFROM_FILE=1\n")
    outcome = run('echo "$HOME|$USER|$LOGNAME|$FROM_FILE|$TASKD_JOB_ID"', user=user.name,
                  env={"HOME": "/from-task", "USER": "from-task"}, env_file=str(env_file))
    assert outcome.success, outcome
    # daemon < account < env_file < task env < TASKD_*
    assert outcome.output_tail == "/from-task|from-task|from-file|1|job-u\n"


@needs_root
def test_a_cwd_is_kept(user: MadeUser) -> None:
    outcome = run("pwd", user=user.name, cwd="/")
    assert outcome.output_tail == "/\n"


@needs_root
def test_timeout_kills_the_users_process_group_and_escapers(user: MadeUser) -> None:
    home = user.home
    inner = f"echo $$ > {home}/escaper; exec sleep 30"
    command = (f"sleep 30 & echo $! > {home}/child; "
               f"sh -c 'sleep 30 & echo $! > {home}/grandchild; wait' & "
               f"setsid sh -c '{inner}' >/dev/null 2>&1 & "
               f"while ! [ -s {home}/child ] || ! [ -s {home}/grandchild ] "
               f"|| ! [ -s {home}/escaper ]; do sleep 0.01; done; echo ready; wait")
    outcome = run(command, user=user.name, timeout_s=3)
    assert (outcome.success, outcome.error, outcome.output_tail) == (
        False, "timeout after 3s", "ready\n")
    pids = {name: int((home / name).read_text()) for name in ("child", "grandchild", "escaper")}
    for name in pids:
        (home / name).unlink()
    assert wait_until(lambda: not any(map(alive, pids.values()))), pids
    assert wait_until(lambda: pids_of_uid(user.uid) == []), "a process of the user survived"


@needs_root
def test_the_output_pipe_and_tail_work(user: MadeUser) -> None:
    outcome = run("yes | head -c 100000; echo; echo last >&2", user=user.name)
    assert outcome.success, outcome
    assert outcome.output_tail.endswith("y\ny\n\nlast\n")
    assert len(outcome.output_tail) == 4096


@needs_root
def test_a_hook_input_reaches_a_switched_command(user: MadeUser) -> None:
    outcome = run("cat; id -u", user=user.name, payload='{"status": "FAILURE"}')
    assert outcome.output_tail == f'{{"status": "FAILURE"}}{user.uid}\n'


@needs_root
def test_a_missing_user_fails_the_run() -> None:
    outcome = run("echo never", user="taskd-nosuchuser")
    assert outcome == TaskOutcome(False, None,
                                  'failed to start: user "taskd-nosuchuser": no such user')


@needs_root
def test_a_missing_group_fails_the_run() -> None:
    outcome = run("echo never", user="root", group="taskd-nosuchgroup")
    assert outcome.error == 'failed to start: group "taskd-nosuchgroup": no such group'


@needs_root
def test_a_user_without_a_home_starts_in_the_root_directory(
    user: MadeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = pwd.getpwnam(user.name)
    fields = list(entry)
    fields[5] = "/nonexistent/taskd-test"  # pw_dir, as for "nobody"
    gone = pwd.struct_passwd(fields)
    lookup = {user.name: gone}
    monkeypatch.setattr(run_as_module.pwd, "getpwnam", lambda name: lookup[name])
    outcome = run('pwd; echo "$HOME"', user=user.name)
    assert outcome.output_tail == "/\n/nonexistent/taskd-test\n"
