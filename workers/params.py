"""Checking a job file's values with one-line messages: shared by the job parser and
every task type's ``validate``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from workers.task_type import TaskParamsError

# Characters that would break a message (or a JSON line) in two, or cannot be UTF-8.
_UNSHOWABLE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def show(value: Any) -> str:
    """A value as it would appear in the JSON file, shortened for one-line messages."""
    try:
        try:
            shown = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            shown = repr(value)
    except RecursionError:  # nested deeper than the encoder goes
        shown = "[..." if isinstance(value, list) else "{..." if isinstance(value, dict) else "?"
    # Escaped as JSON would (\u2028): the message stays one line of valid UTF-8.
    shown = _UNSHOWABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", shown)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def has_unshowable(text: str) -> bool:
    return _UNSHOWABLE.search(text) is not None


def is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate ("\\ud800" is JSON, but no UTF-8 text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_task_keys(params: Any, known: Iterable[str]) -> None:
    """A task object must be an object of known keys (``_``-keys are comments)."""
    if type(params) is not dict and not isinstance(params, Mapping):  # (dict: no ABC check)
        raise TaskParamsError(f"must be an object, got {show(params)}")
    known = set(known)
    for key in params:
        if isinstance(key, str) and key.startswith("_"):
            continue  # a comment
        if key not in known:
            raise TaskParamsError(f"unknown key {show(key)}")
