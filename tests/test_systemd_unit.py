"""scripts/taskd.service: the keys the contract and the daemon's timings need, and
``systemd-analyze verify`` on a copy whose ExecStart exists on this machine."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli import start as start_command
from supervisor.processes import coordinator
from supervisor.processes.coordinator import DaemonOptions

UNIT = Path(__file__).resolve().parent.parent / "scripts" / "taskd.service"
# Keys systemd accepts more than once, each adding to a list.
_LIST_KEYS = {"Environment", "After", "Wants", "ExecStartPre", "ExecStartPost"}


def parse_unit(text: str) -> dict[str, dict[str, str]]:
    """systemd's ini dialect, as much as the unit uses: sections, Key=Value, # comments.

    Unlike configparser it keeps case, does no interpolation (``$MAINPID``), and
    fails on a key repeated where the repeat would silently override the first.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"line {number}: {raw!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        if key in current and key not in _LIST_KEYS:
            raise AssertionError(f"line {number}: {key} set twice")
        current[key] = f"{current[key]} {value}" if key in current else value
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, str]]:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def service(unit: dict[str, dict[str, str]]) -> dict[str, str]:
    return unit["Service"]


def seconds(value: str) -> float:
    """systemd time spans as used here: "45", "45s", "5min", "1min 30s"."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total


@pytest.mark.parametrize(("key", "expected"), [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ("KillMode", "mixed"),
    ("Restart", "on-failure"),
    ("WatchdogSec", "30"),
    ("User", "taskd"),
    ("Group", "taskd"),
    ("RuntimeDirectory", "taskd"),
    ("RuntimeDirectoryMode", "0750"),
    ("LogsDirectory", "taskd"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "full"),
    ("PrivateTmp", "no"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictRealtime", "yes"),
])
def test_required_service_keys(service: dict[str, str], key: str, expected: str) -> None:
    assert service.get(key) == expected


def test_sections_and_install(unit: dict[str, dict[str, str]]) -> None:
    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "RestartSec" in unit["Service"]


def test_exec_start(service: dict[str, str]) -> None:
    argv = shlex.split(service["ExecStart"])
    assert argv == ["/opt/taskd/venv/bin/taskd", "start", "--workers", "8",
                    "--jobs-dir", "/etc/taskd/jobs.d",
                    "--log-file", "/var/log/taskd/executions.jsonl"]


def test_exec_start_options_are_ones_taskd_start_accepts(service: dict[str, str]) -> None:
    args = shlex.split(service["ExecStart"])[2:]
    context = start_command.make_context("start", args)  # parses only; runs nothing
    assert context.params["workers"] == 8
    assert context.params["jobs_dir"] == "/etc/taskd/jobs.d"


def test_log_file_and_socket_live_in_directories_systemd_makes(service: dict[str, str]) -> None:
    argv = shlex.split(service["ExecStart"])
    log_file = Path(argv[argv.index("--log-file") + 1])
    assert log_file.parent == Path("/var/log") / service["LogsDirectory"]
    environment = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))
    socket = Path(environment["TASKD_SOCKET"])
    assert socket == Path("/run") / service["RuntimeDirectory"] / "taskd.sock"


def test_stop_timeout_covers_the_whole_shutdown(service: dict[str, str]) -> None:
    shutdown_s = (DaemonOptions(jobs_dir="x").grace_period_s
                  + coordinator.SHUTDOWN_KILL_AFTER_S + coordinator.LOGGER_FLUSH_S)
    assert seconds(service["TimeoutStopSec"]) > shutdown_s


def test_watchdog_leaves_room_for_the_loop(service: dict[str, str]) -> None:
    # Keep-alives go out every WatchdogSec/2 from a loop that wakes at least every
    # MAX_SLEEP_S: that must fit several times into the watchdog period.
    assert seconds(service["WatchdogSec"]) / 2 >= 5 * coordinator.MAX_SLEEP_S


def test_usage_errors_are_not_restarted(service: dict[str, str]) -> None:
    assert "2" in service["RestartPreventExitStatus"].split()


def test_hardening_does_not_hide_what_jobs_need(service: dict[str, str]) -> None:
    assert service.get("ProtectSystem") != "strict"
    assert service.get("ProtectHome", "no") == "no"
    for key in ("PrivateNetwork", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert service.get(key, "no") == "no", key


# -- systemd-analyze verify --------------------------------------------------------------

# systemd versions differ on whether verify looks the user up; its absence here is fine.
_BENIGN = re.compile(r"\b(user|group)\b.*\btaskd\b", re.IGNORECASE)


def _runnable_taskd() -> str:
    beside_python = Path(sys.executable).parent / "taskd"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("taskd") or "/bin/true"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("ExecStart=/opt/taskd/venv/bin/taskd ",
                                    f"ExecStart={_runnable_taskd()} ")
    assert text != UNIT.read_text()
    copy = tmp_path / "taskd.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                            capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).splitlines()
    problems = [line for line in output if line.strip() and not _BENIGN.search(line)]
    assert result.returncode == 0, output
    # Unknown keys and bad values are only warnings (exit 0): catch them here.
    assert problems == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above is only worth something if verify reports what we filter for."""
    copy = tmp_path / "taskd.service"
    copy.write_text(UNIT.read_text()
                    .replace("ExecStart=/opt/taskd/venv/bin/taskd ",
                             f"ExecStart={_runnable_taskd()} ")
                    .replace("Type=notify", "Tpye=notify"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert "Tpye" in result.stdout + result.stderr
