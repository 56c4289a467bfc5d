"""Time zones by IANA name, and the host's own zone (cron's default)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = ZoneInfo("UTC")


class UnknownZoneError(ValueError):
    pass


@cache
def zone_named(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; UnknownZoneError with a clear message otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZoneError(f"unknown time zone {name!r} (expected an IANA name such as "
                               f"'Europe/Berlin' or 'UTC')") from None


def host_zone_name() -> str:
    """The host's local zone as an IANA name, found the way cron finds local time.

    ``$TZ`` first, then the ``/etc/localtime`` link, then ``/etc/timezone``; UTC if none.
    """
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        target = str(localtime.resolve())
        marker = "/zoneinfo/"
        if marker in target:
            return target.split(marker, 1)[1]
    try:
        name = Path("/etc/timezone").read_text().strip()
    except OSError:
        name = ""
    return name or "UTC"
