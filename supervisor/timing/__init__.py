"""Time and schedules: cron syntax, the calendar search, triggers with cronie's DST rules,
time zones, the timing wheel, and the job table with its policies (``schedule``).

All pure: nothing here reads a clock or touches a process; callers pass ``now``.
"""
