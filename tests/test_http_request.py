"""The http_request task type: validation, the entry point, and runs against a local server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from supervisor import __version__
from workers.http_request import HttpRequest
from workers.task_type import (
    OUTPUT_TAIL_BYTES,
    RunContext,
    TaskParamsError,
    registered_task_types,
    task_type_named,
)

DEFAULTS = {"method": "GET", "headers": {}, "body": None, "timeout_s": 30.0}
VALID: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"url": "http://example.com"}, {**DEFAULTS, "url": "http://example.com"}),
    (
        {"url": "HTTPS://h:8443/p?q=1", "method": "post", "body": "x", "_c": 1, "timeout_s": 5},
        {
            **DEFAULTS,
            "url": "HTTPS://h:8443/p?q=1",
            "method": "POST",
            "body": "x",
            "timeout_s": 5.0,
        },
    ),
    (
        {"url": "http://[::1]/", "headers": {"X-A": "1", "Accept": ""}, "timeout_s": 0.5},
        {
            **DEFAULTS,
            "url": "http://[::1]/",
            "headers": {"X-A": "1", "Accept": ""},
            "timeout_s": 0.5,
        },
    ),
]
URL = {"url": "http://h/"}
INVALID: list[tuple[Any, str]] = [
    ("http://h/", 'must be an object, got "http://h/"'),
    ({"uri": "http://h/"}, 'unknown key "uri"'),
    ({**URL, "expect_status": 200}, 'unknown key "expect_status"'),
    ({"_note": "x"}, "url: required key is missing"),
    ({"url": "ftp://x"}, 'url: must be an http or https URL, got "ftp://x"'),
    ({"url": 42}, "url: must be an http or https URL, got 42"),
    ({"url": ""}, 'url: must be an http or https URL, got ""'),
    ({"url": "example.com/a"}, 'url: must be an http or https URL, got "example.com/a"'),
    ({"url": "http:///a"}, 'url: must be an http or https URL, got "http:///a"'),
    ({"url": "http://a b/"}, 'url: must be an http or https URL, got "http://a b/"'),
    ({"url": "http://h:99999/"}, 'url: must be an http or https URL, got "http://h:99999/"'),
    (
        {**URL, "method": "FETCH"},
        'method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "FETCH"',
    ),
    (
        {**URL, "method": None},
        "method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got null",
    ),
    ({**URL, "headers": ["A: b"]}, 'headers: must be an object, got ["A: b"]'),
    ({**URL, "headers": {"A b": "1"}}, 'headers: name must be a valid HTTP header name, got "A b"'),
    ({**URL, "headers": {"": "1"}}, 'headers: name must be a valid HTTP header name, got ""'),
    ({**URL, "headers": {"X-A": 1}}, "headers.X-A: must be a string, got 1"),
    ({**URL, "headers": {"X-A": "a\r\nB: c"}}, "headers.X-A: must not contain a line break or NUL"),
    ({**URL, "headers": {"X-A": "€"}}, "headers.X-A: must be Latin-1 text"),
    ({**URL, "body": {"a": 1}}, 'body: must be a string, got {"a": 1}'),
    ({**URL, "body": None}, "body: must be a string, got null"),
    ({**URL, "body": "\ud800"}, "body: must be valid Unicode text"),
    ({**URL, "timeout_s": 0}, "timeout_s: must be a positive number, got 0"),
    ({**URL, "timeout_s": -1.5}, "timeout_s: must be a positive number, got -1.5"),
    ({**URL, "timeout_s": True}, "timeout_s: must be a positive number, got true"),
    ({**URL, "timeout_s": "5"}, 'timeout_s: must be a positive number, got "5"'),
    ({**URL, "timeout_s": float("nan")}, "timeout_s: must be a positive number, got NaN"),
    ({**URL, "timeout_s": float("inf")}, "timeout_s: must be a positive number, got Infinity"),
]


@pytest.mark.parametrize(("params", "expected"), VALID)
def test_validate_accepts_and_normalizes(params: dict[str, Any], expected: dict[str, Any]) -> None:
    assert HttpRequest.validate(params) == expected


@pytest.mark.parametrize(("params", "message"), INVALID)
def test_validate_rejects_with_one_line_message(params: Any, message: str) -> None:
    with pytest.raises(TaskParamsError) as caught:
        HttpRequest.validate(params)
    assert str(caught.value) == message


def test_entry_point_resolves_to_the_class() -> None:
    registered_task_types.cache_clear()
    assert task_type_named("http_request") is HttpRequest
    assert HttpRequest.name == "http_request"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path == "/slow":
            self.server.release.wait(5)  # the deliberately slow handler
        status, payload = 200, b"hello from the test server"
        if self.path.startswith("/status/"):
            status, payload = int(self.path.rsplit("/", 1)[1]), b"nope"
        elif self.path == "/big":
            payload = b"a" * 1_000_000 + "THE-END \u00e9".encode()
        declared = len(payload) + (100 if self.path == "/short" else 0)
        self.send_response(status)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str, dict[str, str], bytes]]
    release: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client gave up on /slow; nothing to report


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("no_proxy", "*")  # never send 127.0.0.1 through a configured proxy
    srv = Server(("127.0.0.1", 0), Handler)
    srv.seen, srv.release = [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def run(srv: Server, path: str, job_timeout: float | None = 10, **task: Any) -> Any:
    params = HttpRequest.validate({"url": f"http://127.0.0.1:{srv.server_port}{path}", **task})
    context = RunContext("job-1", "run-42", "2026-11-26T21:00:00+00:00", job_timeout)
    return HttpRequest.run(params, context)


def test_get_200_is_success_with_the_body(server: Server) -> None:
    outcome = run(server, "/ok")
    assert outcome.success and outcome.error is None and outcome.exit_code is None
    assert outcome.output_tail == "HTTP/1.0 200 OK\nhello from the test server"
    assert server.seen[0][2]["User-Agent"] == f"taskd/{__version__}"


def test_post_sends_body_headers_and_the_taskd_ids(server: Server) -> None:
    headers = {"Content-Type": "application/json", "X-Custom": "v", "User-Agent": "mine/1"}
    outcome = run(server, "/hook", method="post", headers=headers, body='{"k": "é"}')
    assert outcome.success, outcome
    [(method, path, seen_headers, body)] = server.seen
    assert (method, path, body) == ("POST", "/hook", '{"k": "é"}'.encode())
    assert seen_headers["X-Taskd-Job-Id"] == "job-1"
    assert seen_headers["X-Taskd-Run-Id"] == "run-42"
    assert seen_headers["Content-Type"] == "application/json"
    assert seen_headers["X-Custom"] == "v"
    assert seen_headers["User-Agent"] == "mine/1"


@pytest.mark.parametrize("status", [404, 500])
def test_error_status_is_failure(server: Server, status: int) -> None:
    outcome = run(server, f"/status/{status}")
    assert not outcome.success
    assert outcome.error == f"HTTP {status}"
    assert outcome.output_tail.startswith(f"HTTP/1.0 {status} ")
    assert outcome.output_tail.endswith("\nnope")


@pytest.mark.parametrize(("task_timeout", "job_timeout"), [(0.3, 10), (30, 0.3)])
def test_slow_server_times_out(server: Server, task_timeout: float, job_timeout: float) -> None:
    started = time.monotonic()
    outcome = run(server, "/slow", job_timeout=job_timeout, timeout_s=task_timeout)
    assert time.monotonic() - started < 3
    assert not outcome.success
    assert outcome.error == "timeout after 0.3s"


def test_connection_refused_is_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = HttpRequest.validate({"url": f"http://127.0.0.1:{port}/"})
    outcome = HttpRequest.run(params, RunContext("j", "r", "2026-01-01T00:00:00+00:00", 5))
    assert not outcome.success
    assert outcome.error == "connection failed: Connection refused"


def test_body_shorter_than_its_content_length_is_failure(server: Server) -> None:
    outcome = run(server, "/short")
    assert outcome.error == "connection failed: response body cut short"
    assert outcome.output_tail.endswith("\nhello from the test server")


def test_huge_response_keeps_only_the_tail(server: Server) -> None:
    outcome = run(server, "/big")
    assert outcome.success
    assert len(outcome.output_tail.encode()) <= OUTPUT_TAIL_BYTES
    assert outcome.output_tail.endswith("aaaTHE-END é")


def test_stop_requested_before_start_does_not_send(server: Server) -> None:
    params = HttpRequest.validate({"url": f"http://127.0.0.1:{server.server_port}/ok"})
    context = RunContext("j", "r", "2026-01-01T00:00:00+00:00", 5, stop_requested=lambda: True)
    outcome = HttpRequest.run(params, context)
    assert (outcome.success, outcome.error) == (False, "shutdown")
    assert server.seen == []
