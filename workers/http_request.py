"""The ``http_request`` task type: one HTTP(S) request with the standard library.

Success is a 2xx status (redirects are followed, as urllib does). The output tail is the
status line and the end of the response body. The request's time is bounded by the
smaller of the task's ``timeout_s`` and the job's ``timeout_s``: every network wait
(connect, waiting for the response, each read) has that timeout, and the body download
stops at the deadline. ``stop_requested`` is polled before the request and between body
chunks; a wait already in progress ends by its timeout (DNS look-ups are not bounded).

A hook's input (the JSON of the record that set it off) is the request's body when the
task has no ``body`` of its own, sent as ``Content-Type: application/json`` unless the
task's headers name another type. The method is still the task's (default GET): a
webhook says ``"method": "POST"``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from supervisor import __version__
from workers.command_runner import TailBuffer, format_seconds
from workers.params import check_task_keys, has_unshowable, show
from workers.task_type import OUTPUT_TAIL_BYTES, RunContext, TaskOutcome, TaskParamsError, TaskType

_KNOWN_KEYS = ("url", "method", "headers", "body", "timeout_s")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_TIMEOUT_S = 30.0
_READ_CHUNK = 65536
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 header field name
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # whitespace and control characters
# Left as they are by json.dumps(ensure_ascii=False) but no part of one line of UTF-8 text.
# socket timeouts past about 1e9 s raise OverflowError; a longer wait is the same as forever.
_MAX_WAIT_S = 365 * 86400.0


class HttpRequest(TaskType):
    """Task keys: ``url`` (required), ``method``, ``headers``, ``body``, ``timeout_s``."""

    name = "http_request"

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        check_task_keys(params, _KNOWN_KEYS)
        if "url" not in params:
            raise TaskParamsError("url: required key is missing")
        url = _url(params["url"])
        method = params.get("method", "GET")
        if not isinstance(method, str) or not method.isascii() or method.upper() not in METHODS:
            raise TaskParamsError(
                f"method: must be one of {', '.join(METHODS)}, got {show(method)}"
            )
        headers = _headers(params.get("headers", {}))
        body = params.get("body")
        if "body" in params:
            if not isinstance(body, str):
                raise TaskParamsError(f"body: must be a string, got {show(body)}")
            try:
                body.encode("utf-8")
            except UnicodeEncodeError:
                raise TaskParamsError("body: must be valid Unicode text") from None
        timeout = params.get("timeout_s", DEFAULT_TIMEOUT_S)
        if not _is_positive_number(timeout):
            raise TaskParamsError(f"timeout_s: must be a positive number, got {show(timeout)}")
        return {
            "url": url,
            "method": method.upper(),
            "headers": headers,
            "body": body,
            "timeout_s": float(timeout),
        }

    @classmethod
    def run(cls, params: Mapping[str, Any], context: RunContext) -> TaskOutcome:
        # Imported by the first run, not with the task type: the registry imports every
        # type into every worker (and the coordinator, to validate), and urllib.request
        # with http.client and ssl is ~5 MB of memory in each, HTTP tasks or not.
        import http.client
        import urllib.error
        import urllib.request

        timeout = float(params.get("timeout_s", DEFAULT_TIMEOUT_S))
        if context.timeout_s is not None:
            timeout = min(timeout, float(context.timeout_s))
        timeout = min(timeout, _MAX_WAIT_S)
        if context.stop_requested():
            return TaskOutcome(False, error="shutdown")
        body = params.get("body")
        hook_input = body is None and context.payload is not None
        if hook_input:
            body = context.payload
        request = urllib.request.Request(
            params["url"],
            data=None if body is None else body.encode("utf-8"),
            method=params.get("method", "GET"),
        )
        for name, value in (params.get("headers") or {}).items():
            request.add_header(name, value)
        if hook_input and not request.has_header("Content-type"):
            request.add_header("Content-Type", "application/json")
        if not request.has_header("User-agent"):  # urllib stores names .capitalize()d
            request.add_header("User-Agent", f"taskd/{__version__}")
        request.add_header("X-Taskd-Job-Id", context.job_id)
        request.add_header("X-Taskd-Run-Id", context.run_id)

        deadline = time.monotonic() + timeout
        tail = TailBuffer(OUTPUT_TAIL_BYTES)

        def failure(error: str) -> TaskOutcome:
            return TaskOutcome(False, error=error, output_tail=tail.text())

        timed_out = f"timeout after {format_seconds(timeout)}"
        try:
            try:
                response: Any = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as error:  # a non-2xx answer is still an answer
                response = error
            with response:
                status = int(response.status)
                tail.add(_status_line(response, status).encode("utf-8", errors="replace"))
                read = getattr(response, "read1", response.read)
                while chunk := read(_READ_CHUNK):
                    tail.add(chunk)
                    if context.stop_requested():
                        return failure("shutdown")
                    if time.monotonic() >= deadline:
                        return failure(timed_out)
                if (getattr(_raw(response), "length", None) or 0) > 0:  # Content-Length unmet
                    return failure("connection failed: response body cut short")
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                return failure(timed_out)
            return failure(f"connection failed: {_reason(error.reason)}")
        except TimeoutError:
            return failure(timed_out)
        except (OSError, http.client.HTTPException) as error:
            return failure(f"connection failed: {_reason(error)}")
        except Exception as error:  # never let a request problem escape into the worker
            return failure(f"request failed: {_reason(error)}")
        if 200 <= status < 300:
            return TaskOutcome(True, output_tail=tail.text())
        return failure(f"HTTP {status}")


def _url(url: Any) -> str:
    problem = (not isinstance(url, str) or _UNSAFE.search(url) is not None
               or has_unshowable(url))
    if not problem:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a bad port
            problem = parts.scheme not in ("http", "https") or not parts.hostname
        except ValueError:
            problem = True
    if problem:
        raise TaskParamsError(f"url: must be an http or https URL, got {show(url)}")
    return url


def _headers(headers: Any) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        raise TaskParamsError(f"headers: must be an object, got {show(headers)}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise TaskParamsError(
                f"headers: name must be a valid HTTP header name, got {show(name)}"
            )
        if not isinstance(value, str):
            raise TaskParamsError(f"headers.{name}: must be a string, got {show(value)}")
        if any(c in value for c in "\r\n\0"):
            raise TaskParamsError(f"headers.{name}: must not contain a line break or NUL")
        try:
            value.encode("latin-1")  # what http.client sends header values as
        except UnicodeEncodeError:
            raise TaskParamsError(f"headers.{name}: must be Latin-1 text") from None
    return dict(headers)


def _is_positive_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return False
    return math.isfinite(number) and number > 0


def _raw(response: Any) -> Any:
    """The http.client response (an HTTPError wraps it)."""
    import urllib.error  # already imported by run(), the only caller

    if isinstance(response, urllib.error.HTTPError):
        return getattr(response, "fp", None) or response
    return response


def _status_line(response: Any, status: int) -> str:
    version = getattr(_raw(response), "version", 11)
    http_version = {9: "HTTP/0.9", 10: "HTTP/1.0"}.get(version, "HTTP/1.1")
    return f"{http_version} {status} {response.reason}\n"


def _reason(reason: Any) -> str:
    """An exception (or urllib's reason string) as a short one-line phrase."""
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:197] + "..."
