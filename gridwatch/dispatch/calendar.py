"""Deadline calendars: when does a clock of N working seconds, started now, run out?

A category on a 24/7 calendar (smoke, water level) counts every second. Others count only
working hours in the centre's time zone: weekdays 08:30-17:30, say, minus public holidays, plus
the make-up working days (调休) that China's holiday schedule moves onto weekends.

Pure and synchronous; tested in tests/test_dispatch_rules.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

__all__ = ["AlwaysCalendar", "DeadlineCalendar", "WorkingHoursCalendar"]


class DeadlineCalendar:
    def add(self, start_ms: int, seconds: float) -> int:
        """Epoch ms at which `seconds` of counted time have passed since `start_ms`."""
        raise NotImplementedError


class AlwaysCalendar(DeadlineCalendar):
    """Every second counts (24/7 categories)."""

    def add(self, start_ms: int, seconds: float) -> int:
        return start_ms + int(round(seconds * 1000))


class WorkingHoursCalendar(DeadlineCalendar):
    """Working hours on working days, in one time zone."""

    def __init__(
        self,
        timezone: str,
        start: dt.time,
        end: dt.time,
        weekdays: Iterable[int] = (0, 1, 2, 3, 4),
        holidays: Iterable[dt.date] = (),
        extra_workdays: Iterable[dt.date] = (),
    ) -> None:
        if end <= start:
            raise ValueError(f"working hours end {end} must be after start {start}")
        self.tz = ZoneInfo(timezone)
        self.start = start
        self.end = end
        self.weekdays = frozenset(weekdays)
        self.holidays = frozenset(holidays)
        self.extra_workdays = frozenset(extra_workdays)

    def is_workday(self, day: dt.date) -> bool:
        if day in self.extra_workdays:
            return True
        return day.weekday() in self.weekdays and day not in self.holidays

    def add(self, start_ms: int, seconds: float) -> int:
        remaining = dt.timedelta(seconds=seconds)
        t = dt.datetime.fromtimestamp(start_ms / 1000, tz=self.tz)
        for _ in range(3700):  # ten years of days: a calendar with no working day is a config error
            day = t.date()
            if self.is_workday(day):
                open_at = dt.datetime.combine(day, self.start, tzinfo=self.tz)
                close_at = dt.datetime.combine(day, self.end, tzinfo=self.tz)
                begin = max(t, open_at)
                if begin < close_at:
                    available = close_at - begin
                    if remaining <= available:
                        return int((begin + remaining).timestamp() * 1000)
                    remaining -= available
            t = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=self.tz)
        raise ValueError("working-hours calendar has no working time in the next ten years")
