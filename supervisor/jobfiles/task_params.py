"""TaskParams: a job's normalized task parameters, read-only and small.

There is one per loaded job, so at 100,000 jobs its size counts: a dict, a read-only
proxy over it and an empty ``env`` dict came to ~290 bytes a job. Here it is a tuple of
values against a tuple of keys shared by every job with the same keys, and empty
containers (an ``execute_command`` task without ``env``) are not stored per job: each
read hands out a fresh empty one, so no caller can change another job's parameters
through it. ``dict(params)`` is what a worker is sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

_KEY_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}
_EMPTY_DICT = object()
_EMPTY_LIST = object()


class TaskParams(Mapping[str, Any]):
    __slots__ = ("_keys", "_values")

    def __init__(self, params: Mapping[str, Any]) -> None:
        keys = tuple(params)
        self._keys = _KEY_TUPLES.setdefault(keys, keys)
        self._values = tuple(_compact(params[key]) for key in keys)

    def __getitem__(self, key: str) -> Any:
        try:
            value = self._values[self._keys.index(key)]
        except ValueError:
            raise KeyError(key) from None
        if value is _EMPTY_DICT:
            return {}
        if value is _EMPTY_LIST:
            return []
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TaskParams({dict(self)!r})"


def _compact(value: Any) -> Any:
    if type(value) is dict and not value:
        return _EMPTY_DICT
    if type(value) is list and not value:
        return _EMPTY_LIST
    return value
