"""A job's ``user`` and ``group``: which account its command runs as.

The account is looked up in the user and group databases (``/etc/passwd``, NSS) when the
job is loaded, to report a typo at once, and again at each run, since accounts come and
go. The child switches before exec, as systemd's ``User=``/``Group=`` do:

- uid of the user; gid of ``group`` if given, else the user's primary group;
- supplementary groups: the user's memberships in the group database plus that gid
  (``getgrouplist``, what ``initgroups`` sets at a login);
- ``HOME``, ``USER``, ``LOGNAME`` of the account and ``SHELL=/bin/sh`` (the command's
  shell, as cron sets it), over the daemon's own;
- with no ``cwd``, the command starts in the account's home directory (as cron does), or
  in ``/`` when it has none.

``group`` without ``user`` keeps the daemon's account and changes only the group (the
supplementary groups become that one group).

Only a root daemon can switch. A daemon running as someone else accepts a ``user`` (and
``group``) that is its own account, with no switch to make: a job file that names the
account it is meant for works under a per-user daemon too.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import NamedTuple

from workers.params import show

#: What a switched command's ``SHELL`` says: it is run by ``/bin/sh -c``.
COMMAND_SHELL = "/bin/sh"


class AccountError(ValueError):
    """The account cannot be used; one line starting with ``user`` or ``group``."""


class Account(NamedTuple):
    """A user's entry, with the group and supplementary groups a command of it gets."""

    name: str
    uid: int
    gid: int  # the one the command runs with (``group``, else the primary group)
    groups: tuple[int, ...] = ()  # supplementary, ``gid`` among them
    home: str = "/"
    shell: str = COMMAND_SHELL  # the login shell of the entry (not what the command gets)

    def environment(self) -> dict[str, str]:
        """What a command run as this account finds in its environment."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name,
                "SHELL": COMMAND_SHELL}

    def working_directory(self) -> str:
        """Where a command without ``cwd`` starts."""
        return self.home if os.path.isdir(self.home) else "/"


class Credentials(NamedTuple):
    """What the child process switches to before exec (``subprocess.Popen``'s
    ``user``, ``group`` and ``extra_groups``)."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    def popen_arguments(self) -> dict[str, object]:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def resolve_account(user: str, group: str | None = None) -> Account:
    """The account named ``user`` (a name, or a numeric uid that has an entry)."""
    try:
        entry = _user_entry(user)
    except (KeyError, ValueError, OverflowError):  # ValueError: a NUL in the name
        raise AccountError(f"user {show(user)}: no such user") from None
    gid = entry.pw_gid if group is None else resolve_group(group)
    try:
        groups = os.getgrouplist(entry.pw_name, gid)
    except OSError as error:
        raise AccountError(f"user {show(user)}: cannot list its groups: "
                           f"{error.strerror or error}") from None
    return Account(name=entry.pw_name, uid=entry.pw_uid, gid=gid,
                   groups=tuple(sorted(set(groups))), home=entry.pw_dir or "/",
                   shell=entry.pw_shell or COMMAND_SHELL)


def resolve_group(group: str) -> int:
    """The gid of the group named ``group`` (a name, or a numeric gid that has an entry)."""
    try:
        if group.isdigit() and group.isascii():
            return grp.getgrgid(int(group)).gr_gid
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError, OverflowError):
        raise AccountError(f"group {show(group)}: no such group") from None


def check_can_switch(
    user: str | None,
    group: str | None = None,
    *,
    daemon_uid: int | None = None,
    daemon_gid: int | None = None,
) -> None:
    """Refuse what this daemon cannot do: a root daemon can run as anyone; another only
    as its own account (and its own primary group)."""
    daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid
    if daemon_uid == 0:
        return
    daemon_gid = os.getegid() if daemon_gid is None else daemon_gid
    if user is not None and _uid_of(user) != daemon_uid:
        raise AccountError(f"user: only a daemon running as root can run jobs as another "
                           f"user (taskd runs as uid {daemon_uid})")
    if group is not None and _gid_of(group) != daemon_gid:
        raise AccountError(f"group: only a daemon running as root can run jobs as another "
                           f"group (taskd runs as gid {daemon_gid})")


def run_as(user: str | None, group: str | None) -> tuple[Account | None, Credentials | None]:
    """At run time: the account a command runs as (None: the daemon's own, unchanged) and
    what its child switches to (None: nothing to switch, as for a daemon's own account)."""
    if user is None and group is None:
        return None, None
    check_can_switch(user, group)
    if user is None:
        assert group is not None
        gid = resolve_group(group)
        return None, Credentials(os.geteuid(), gid, (gid,)) if os.geteuid() == 0 else None
    account = resolve_account(user, group)
    if os.geteuid() != 0:
        return account, None  # its own account (check_can_switch said so)
    return account, Credentials(account.uid, account.gid, account.groups)


def _user_entry(user: str) -> pwd.struct_passwd:
    if user.isdigit() and user.isascii():
        return pwd.getpwuid(int(user))
    return pwd.getpwnam(user)


def _uid_of(user: str) -> int | None:
    try:
        return _user_entry(user).pw_uid
    except (KeyError, ValueError, OverflowError):
        return None


def _gid_of(group: str) -> int | None:
    try:
        return resolve_group(group)
    except AccountError:
        return None
