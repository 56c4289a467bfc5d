"""The job policies' pure parts, driven by an explicit clock: retries, hooks, jitter,
concurrency groups, skip streaks and the dispatcher that applies them in order."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.jobfiles.jobspec import hook_from_option
from supervisor.jobfiles.policy_keys import RetryPolicy
from supervisor.policies.dispatcher import Dispatcher
from supervisor.policies.groups import MAX_WAITING, GroupGate
from supervisor.policies.hooks import HOOK_TIMEOUT_S, hook_execution, hooks_for
from supervisor.policies.jitter import delay_for, fixed_offset
from supervisor.policies.later import LaterQueue
from supervisor.policies.retry import next_attempt, retry_delay
from supervisor.policies.streaks import SkipStreaks
from supervisor.timing.schedule import Schedule
from tests.property_settings import examples
from tests.test_schedule import T0, at, spec
from workers.execution import Execution

HOOK = {"type": "execute_command", "command": "cat > /dev/null"}


def record(execution: Execution, status="FAILURE", error="exit code 1", **fields):
    result = {"event": "execution", "job_id": execution.job_id, "run_id": execution.run_id,
              "timestamp": execution.scheduled_for, "status": status,
              "scheduled_for": execution.scheduled_for, "error": None if status == "SUCCESS"
              else error, "exit_code": 0 if status == "SUCCESS" else 1}
    if execution.attempt is not None:
        result["attempt"] = execution.attempt
    if execution.hook is not None:
        result["hook"] = execution.hook
    if execution.manual:
        result["manual"] = True
    return {**result, **fields}


# -- retry ---------------------------------------------------------------------------

RETRY_3 = RetryPolicy(3)
RETRY_ON_LOST = RetryPolicy(3, on_lost=True)


@pytest.mark.parametrize(("policy", "fields", "expected"), [
    (None, {"error": "exit code 1"}, None),
    (RETRY_3, {"status": "SUCCESS", "error": None}, None),
    (RETRY_3, {"error": "exit code 1"}, 2),  # no attempt field: the first run
    (RETRY_3, {"error": "exit code 1", "attempt": 2}, 3),
    (RETRY_3, {"error": "exit code 1", "attempt": 3}, None),  # the last attempt
    (RETRY_3, {"error": "timeout after 5s", "attempt": 1}, 2),
    (RETRY_3, {"error": "shutdown", "attempt": 1}, 2),
    (RETRY_3, {"error": "killed by signal SIGKILL", "attempt": 1}, 2),
    (RETRY_3, {"error": "failed to start: cwd /x does not exist", "attempt": 1}, 2),
    (RETRY_3, {"error": "worker lost", "attempt": 1}, None),  # may have had side effects
    (RETRY_ON_LOST, {"error": "worker lost", "attempt": 1}, 2),
    (RETRY_ON_LOST, {"error": "replaced", "attempt": 1}, None),
    (RETRY_ON_LOST, {"error": "daemon lost", "attempt": 1}, None),
    (RETRY_3, {"error": "exit code 1", "attempt": 1, "hook": "on_failure"}, None),
])
def test_which_failures_are_retried(policy, fields, expected):
    base = {"status": "FAILURE", "job_id": "j", "run_id": "r"}
    assert next_attempt(policy, {**base, **fields}) == expected


@given(st.integers(2, 100), st.floats(0, 3600), st.floats(1, 10), st.integers(0, 2**32))
@settings(max_examples=examples(200))
def test_retry_delay_is_the_backoff_within_ten_percent(attempt, delay_s, backoff, seed):
    policy = RetryPolicy(100, delay_s=delay_s, backoff=backoff, max_delay_s=max(delay_s, 600))
    base = policy.delay_before(attempt)
    assert delay_s <= base or base == policy.max_delay_s
    assert base <= policy.max_delay_s
    delay = retry_delay(policy, attempt, random.Random(seed))
    assert base * 0.9 - 1e-9 <= delay <= base * 1.1 + 1e-9


# -- hooks ---------------------------------------------------------------------------

ALL_HOOKS = {name: HOOK for name in ("on_failure", "on_success", "on_recovery", "on_give_up")}
DEFAULT = hook_from_option("echo default")


@pytest.mark.parametrize(("keys", "status", "previous", "retrying", "default", "expected"), [
    (ALL_HOOKS, "FAILURE", None, False, None, ["on_failure", "on_give_up"]),
    (ALL_HOOKS, "FAILURE", "FAILURE", True, None, ["on_failure"]),  # a retry follows
    (ALL_HOOKS, "SUCCESS", None, False, None, ["on_success"]),
    (ALL_HOOKS, "SUCCESS", "SUCCESS", False, None, ["on_success"]),
    (ALL_HOOKS, "SUCCESS", "FAILURE", False, None, ["on_success", "on_recovery"]),
    ({}, "FAILURE", None, False, DEFAULT, ["on_failure"]),  # the daemon's --on-failure
    ({"on_give_up": HOOK}, "FAILURE", None, False, DEFAULT, ["on_failure", "on_give_up"]),
    ({"on_failure": HOOK}, "FAILURE", None, False, DEFAULT, ["on_failure"]),
    ({}, "SUCCESS", "FAILURE", False, DEFAULT, []),
    ({}, "FAILURE", None, False, None, []),
])
def test_which_hooks_a_record_sets_off(keys, status, previous, retrying, default, expected):
    job = spec(**keys)
    found = hooks_for({"status": status, "job_id": "j"}, job, previous_status=previous,
                      retrying=retrying, default_on_failure=default)
    assert [hook.name for hook in found] == expected
    if default is not None and "on_failure" in expected and "on_failure" not in keys:
        assert found[0] is default


def test_a_hooks_record_sets_off_no_hook():
    job = spec(**ALL_HOOKS)
    for status in ("SUCCESS", "FAILURE"):
        assert hooks_for({"status": status, "hook": "on_failure"}, job,
                         previous_status="FAILURE", retrying=False,
                         default_on_failure=DEFAULT) == []


def test_a_hook_run_carries_the_record_and_the_jobs_account():
    job = spec(on_failure=HOOK, user="nobody", env_file="/etc/x.env", timeout_s=5)
    failed = {"job_id": "j", "run_id": "r1", "status": "FAILURE", "error": "exit code 3",
              "exit_code": 3, "scheduled_for": at(0).isoformat(), "attempt": 2}
    hook = job.policy.hook("on_failure")
    execution = hook_execution(hook, failed, job, own=True)
    assert json.loads(execution.payload) == failed
    assert execution.hook == "on_failure" and execution.run_id != "r1"
    assert execution.variables == {"TASKD_HOOK": "on_failure", "TASKD_STATUS": "FAILURE",
                                   "TASKD_RUN_ID": "r1", "TASKD_ERROR": "exit code 3",
                                   "TASKD_EXIT_CODE": "3", "TASKD_ATTEMPT": "2"}
    assert (execution.user, execution.env_file, execution.timeout_s) == (
        "nobody", "/etc/x.env", 5)
    default = hook_execution(DEFAULT, failed, job, own=False)
    assert (default.user, default.env_file, default.timeout_s) == (None, None, 5)
    assert hook_execution(DEFAULT, failed, spec(), own=False).timeout_s == HOOK_TIMEOUT_S


def test_on_failure_option_forms_and_errors():
    assert hook_from_option("mail -s failed root").task_params["command"] == "mail -s failed root"
    web = hook_from_option('{"type": "http_request", "url": "http://127.0.0.1:9/x", '
                           '"method": "POST"}')
    assert (web.task_type, web.task_params["method"]) == ("http_request", "POST")
    with pytest.raises(ValueError, match=r"^--on-failure: on_failure.url: required key"):
        hook_from_option('{"type": "http_request"}')
    with pytest.raises(ValueError, match=r"^--on-failure: not a valid JSON task object"):
        hook_from_option('{"type": ')


# -- jitter --------------------------------------------------------------------------

def test_fixed_jitter_is_stable_per_host_and_job_and_spread():
    offsets = {fixed_offset("host-a", f"job-{n}", 60) for n in range(200)}
    assert all(0 <= offset < 60 for offset in offsets) and len(offsets) == 200
    assert fixed_offset("host-a", "job-1", 60) == fixed_offset("host-a", "job-1", 60)
    assert fixed_offset("host-a", "job-1", 60) != fixed_offset("host-b", "job-1", 60)
    assert min(offsets) < 10 and max(offsets) > 50  # spread over the range


def test_random_jitter_is_fresh_each_run_and_within_range():
    job = spec(jitter_s=30)
    rng = random.Random(7)
    delays = [delay_for(job, rng=rng) for _ in range(100)]
    assert all(0 <= delay < 30 for delay in delays) and len(set(delays)) == 100
    assert delay_for(spec(), rng=rng) == 0.0
    fixed = spec(jitter_s=30, jitter_fixed=True)
    assert delay_for(fixed, host="h") == delay_for(fixed, host="h", rng=rng)


# -- the later queue, groups, streaks ------------------------------------------------

def test_later_queue_orders_by_instant_then_arrival_and_cancels_by_job():
    later = LaterQueue()
    later.push(5, "a", "retry", "a5")
    later.push(3, "b", "retry", "b3")
    later.push(3, "c", "retry", "c3")
    later.push(4, "a", "delayed", "a4")
    assert later.time_to_next(0, "retry") == 3 and later.time_to_next(0, "delayed") == 4
    assert later.cancel("b", "retry") == ["b3"]
    assert later.due(4, "retry") == ["c3"]
    assert later.due(4, "delayed") == ["a4"]
    assert later.pending("a", "retry") == ["a5"] and len(later) == 1
    assert later.due(10, "retry") == ["a5"]
    assert later.time_to_next(10, "retry") is None


def execution(job_id, n=0, **fields):
    return Execution(run_id=f"{job_id}-{n}", job_id=job_id,
                     scheduled_for=at(n).isoformat(), task_type="execute_command", **fields)


def test_a_group_runs_one_at_a_time_in_order_and_bounds_its_queue():
    gate = GroupGate()
    assert gate.admit("db", execution("a")) == "run"
    assert gate.admit("db", execution("b", 1)) == "queued"
    assert gate.admit("db", execution("c", 2)) == "queued"
    assert gate.admit("db", execution("b", 3)) == "skipped"  # b is already waiting
    assert gate.admit("other", execution("d")) == "run"  # groups are independent
    assert gate.finished("a-0").run_id == "b-1"
    assert gate.take_waiting("c-2").run_id == "c-2"
    assert gate.finished("b-1") is None
    assert gate.admit("db", execution("e")) == "run"
    for n in range(MAX_WAITING):
        assert gate.admit("db", execution(f"w{n}")) == "queued"
    assert gate.admit("db", execution("late")) == "skipped"
    assert len(gate.drain()) == MAX_WAITING


def test_a_skip_streak_is_one_line_then_one_count():
    streaks = SkipStreaks()
    first = {"event": "skipped", "job_id": "j", "file": "j.json",
             "scheduled_for": at(1).isoformat(), "reason": "previous run still in progress"}
    assert streaks.note(first) is first
    for n in range(2, 3601):
        assert streaks.note({**first, "scheduled_for": at(n).isoformat()}) is None
    closing = streaks.close("j")
    assert (closing["count"], closing["scheduled_for"], closing["last"]) == (
        3599, at(2).isoformat(), at(3600).isoformat())
    assert streaks.close("j") is None
    assert streaks.note(first) is first  # a new streak
    assert streaks.close("j") is None  # nothing more than the one line said


# -- the dispatcher ------------------------------------------------------------------

class Harness:
    """A real Schedule and Dispatcher; workers are a list of handed-out executions."""

    def __init__(self, *specs, default_on_failure=None):
        self.schedule = Schedule(T0, misfire_grace_s=60)
        for job in specs:
            self.schedule.upsert(job, T0)
        self.handed: list[Execution] = []
        self.stopped: list[tuple[str, str]] = []
        self.events: list[dict] = []
        self.accounted: list[dict] = []
        self.dispatcher = Dispatcher(
            self.schedule, hand_out=self.handed.append,
            stop_run=lambda run_id, error: self.stopped.append((run_id, error)) or True,
            emit=self.events.append, account=self.accounted.append,
            default_on_failure=default_on_failure, host="host-a", rng=random.Random(1))

    def tick(self, now):
        occurrences, events = self.schedule.due(now)
        for event in events:
            if event["event"] == "skipped":
                self.dispatcher.skipped(event)
            else:
                self.events.append(event)
        for occurrence in occurrences:
            self.dispatcher.offer(occurrence, now)
        self.dispatcher.due(now, 0.0)

    def finish(self, execution, now, status="FAILURE", **fields):
        result = record(execution, status, **fields)
        state = self.schedule.jobs.get(execution.job_id)
        previous = state.last_status if state else None
        self.schedule.run_finished(result)
        self.dispatcher.finished(result, previous, now)
        return result

    def names(self, event):
        return [e for e in self.events if e["event"] == event]


def test_replace_stops_the_running_run_and_starts_the_new_one():
    h = Harness(spec(schedule="*/10 * * * * *", overlap="replace"))
    h.tick(at(10))
    first = h.handed[-1]
    h.tick(at(20))
    assert h.stopped == [(first.run_id, "replaced")]
    assert [e.scheduled_for for e in h.handed] == [at(10).isoformat(), at(20).isoformat()]
    assert h.schedule.jobs["j"].running == [first.run_id, h.handed[-1].run_id]


def test_max_concurrent_skips_beyond_the_limit_and_replace_keeps_it():
    h = Harness(spec(max_concurrent=2), spec("r", overlap="replace", max_concurrent=2))
    for n in (1, 2, 3):
        h.tick(at(n))
    j_runs = [e for e in h.handed if e.job_id == "j"]
    assert len(j_runs) == 2 and len(h.names("skipped")) == 1
    r_runs = [e for e in h.handed if e.job_id == "r"]
    assert len(r_runs) == 3 and h.stopped == [(r_runs[0].run_id, "replaced")]


def test_jitter_delays_the_hand_out_and_keeps_the_instant():
    job = spec(schedule="0 * * * * *", jitter_s=30)
    h = Harness(job)
    h.tick(at(60))
    assert h.handed == [] and h.schedule.jobs["j"].in_flight == 1  # waiting counts
    waiting = h.dispatcher.later.pending("j", "delayed")[0]
    assert 0 < waiting.delayed_s < 30 and waiting.scheduled_for == at(60).isoformat()
    h.tick(at(60 + waiting.delayed_s - 0.001))
    assert h.handed == []
    h.tick(at(60 + waiting.delayed_s + 0.001))  # datetimes keep microseconds
    assert h.handed == [waiting]
    assert waiting.not_before() == pytest.approx(at(60).timestamp() + waiting.delayed_s)


def test_manual_runs_and_retries_are_not_jittered():
    h = Harness(spec(schedule="0 0 1 1 *", jitter_s=30, retry={"attempts": 2, "delay_s": 0}))
    manual = h.schedule.manual("j", at(5))
    h.dispatcher.offer(manual, at(5))
    assert h.handed[-1].delayed_s is None and h.handed[-1].attempt == 1
    h.finish(h.handed[-1], at(6))
    h.tick(at(6))
    assert h.handed[-1].attempt == 2 and h.handed[-1].delayed_s is None
    assert h.handed[-1].manual


def test_a_group_queues_in_scheduled_order_and_skips_a_second_waiting_run():
    h = Harness(spec("a", schedule="*/10 * * * * *", concurrency_group="db"),
                spec("b", schedule="*/10 * * * * *", concurrency_group="db"))
    h.tick(at(10))
    assert [e.job_id for e in h.handed] == ["a"] and len(h.names("queued")) == 1
    h.tick(at(20))  # a still runs (allow: its own occurrence waits too), b still waits
    assert [e.job_id for e in h.handed] == ["a"]
    h.finish(h.handed[0], at(21), "SUCCESS")
    assert [e.job_id for e in h.handed] == ["a", "b"]
    assert h.handed[1].scheduled_for == at(10).isoformat()


def test_retries_follow_the_backoff_and_the_next_occurrence_cancels_them():
    job = spec(schedule="0 * * * *", retry={"attempts": 3, "delay_s": 10, "backoff": 2})
    h = Harness(job)
    h.tick(at(3600))
    first = h.handed[-1]
    assert first.attempt == 1
    h.finish(first, at(3601))
    scheduled = h.names("retry_scheduled")[-1]
    assert (scheduled["attempt"], scheduled["of"]) == (2, 3)
    assert 9 <= scheduled["in_s"] <= 11
    h.tick(at(3601 + scheduled["in_s"]))
    second = h.handed[-1]
    assert (second.attempt, second.scheduled_for) == (2, first.scheduled_for)
    h.finish(second, at(3620))
    assert 18 <= h.names("retry_scheduled")[-1]["in_s"] <= 22
    h.tick(at(7200))  # the next occurrence comes before the third attempt
    assert h.names("retry_cancelled")[0]["attempt"] == 3
    assert h.handed[-1].attempt == 1 and h.handed[-1].scheduled_for == at(7200).isoformat()
    h.tick(at(7300))
    assert sum(e.attempt == 3 for e in h.handed) == 0


def test_hooks_are_handed_out_with_the_record_and_never_chain():
    h = Harness(spec(on_failure=HOOK, on_recovery=HOOK, retry={"attempts": 2, "delay_s": 1}))
    h.tick(at(1))
    failed = h.finish(h.handed[-1], at(1.5))
    hooks = [e for e in h.handed if e.hook]
    assert [e.hook for e in hooks] == ["on_failure"]
    assert json.loads(hooks[0].payload) == failed
    h.finish(hooks[0], at(1.6))  # the hook fails: nothing more
    assert [e.hook for e in h.handed if e.hook] == ["on_failure"]
    h.schedule.pause("j")
    h.tick(at(3))  # the retry
    retry_run = h.handed[-1]
    assert retry_run.attempt == 2
    h.finish(retry_run, at(3.5), "SUCCESS")
    assert [e.hook for e in h.handed if e.hook] == ["on_failure", "on_recovery"]


def test_the_daemon_default_on_failure_covers_jobs_without_their_own():
    h = Harness(spec("plain"), spec("own", on_failure=HOOK), default_on_failure=DEFAULT)
    h.tick(at(1))
    for execution in list(h.handed):
        h.finish(execution, at(1.5))
    hooks = {e.job_id: e.task_params["command"] for e in h.handed if e.hook}
    assert hooks == {"plain": "echo default", "own": "cat > /dev/null"}


def test_shutdown_records_every_waiting_run_once():
    h = Harness(spec("a", concurrency_group="g"), spec("b", concurrency_group="g"),
                spec("c", schedule="0 * * * * *", jitter_s=50),
                spec("d", retry={"attempts": 5, "delay_s": 100}))
    h.tick(at(60))
    d_run = next(e for e in h.handed if e.job_id == "d")
    h.finish(d_run, at(60.5))
    records = h.dispatcher.drain("shutdown", at(61))
    assert sorted(r["job_id"] for r in records) == ["b", "c"]
    assert {r["error"] for r in records} == {"shutdown"}
    assert h.names("retry_dropped")[0]["job_id"] == "d"


def test_replacing_a_run_still_waiting_records_it_here():
    h = Harness(spec("a", schedule="1 * * * * *", concurrency_group="g"),
                spec("r", schedule="*/10 * * * * *", overlap="replace", concurrency_group="g"))
    h.tick(at(1))  # a runs
    h.tick(at(10))  # r waits for the group
    waiting = h.dispatcher.groups.status()["g"]["waiting"]
    assert waiting == ["r"]
    h.tick(at(20))  # replaces the waiting run: no worker to ask
    records = h.dispatcher.take_records()
    assert [(r["job_id"], r["error"]) for r in records] == [("r", "replaced")]
    assert not any(run_id.startswith("r") for run_id, _ in h.stopped)


@given(st.lists(st.tuples(st.sampled_from(["tick", "finish", "stop"]),
                          st.integers(0, 3), st.sampled_from(["SUCCESS", "FAILURE"])),
                max_size=40))
@settings(max_examples=examples(150))
def test_every_run_taken_ends_in_exactly_one_record(steps):
    """Whatever happens (groups, jitter, replace, retries, shutdown), each run the
    dispatcher takes ends in one record: a worker's or its own, never two, never none."""
    h = Harness(spec("a", schedule="*/2 * * * * *", concurrency_group="g",
                     retry={"attempts": 2, "delay_s": 1}),
                spec("b", schedule="*/3 * * * * *", concurrency_group="g", overlap="replace"),
                spec("c", schedule="* * * * * *", jitter_s=2, max_concurrent=2),
                spec("d", schedule="*/2 * * * * *", overlap="replace", jitter_s=1))
    ended: dict[str, int] = {}
    running: dict[str, Execution] = {}
    clock = 0.0

    def collect(records):
        for result in records:
            ended[result["run_id"]] = ended.get(result["run_id"], 0) + 1
            running.pop(result["run_id"], None)
            state = h.schedule.jobs.get(result["job_id"])
            previous = state.last_status if state else None
            h.schedule.run_finished(result)
            h.dispatcher.finished(result, previous, at(clock))

    for action, pick, status in steps:
        clock += 1
        if action == "tick":
            h.tick(at(clock))
        elif action == "finish" and running:
            victim = sorted(running)[pick % len(running)]
            collect([record(running[victim], status)])
        elif action == "stop" and h.stopped:  # a worker honours a stop request
            run_id, error = h.stopped.pop(0)
            if run_id in running:
                collect([record(running[run_id], "FAILURE", error=error)])
        for execution in h.handed:
            if execution.hook is None and execution.run_id not in ended:
                running.setdefault(execution.run_id, execution)
        h.handed.clear()
        collect(h.dispatcher.take_records())
    collect(h.dispatcher.drain("shutdown", at(clock)))
    collect([record(execution, "FAILURE", error="shutdown") for execution in running.values()])
    assert all(count == 1 for count in ended.values()), ended
    for state in h.schedule.jobs.values():
        assert state.in_flight == 0, (state.spec.job_id, state.running)


def test_a_run_stopped_by_the_shutdown_is_kept_for_the_next_start():
    remembered: list[dict] = []
    h = Harness(spec(retry={"attempts": 3, "delay_s": 5}))
    h.dispatcher._remember = remembered.append
    h.tick(at(1))
    run = h.handed[-1]
    h.dispatcher.drain("shutdown", at(1.5))  # the stop begins
    h.finish(run, at(2), error="shutdown")
    assert [(m["mark"], m["attempt"]) for m in remembered] == [("retry", 2)]
    assert h.dispatcher.later.pending("j", "retry") == []  # not run by this daemon
    assert h.names("retry_scheduled")[-1]["after"] == "the next start"
