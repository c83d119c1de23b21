"""The one clock.

Everything that asks "what time is it?" asks a `Clock`. Production uses `SystemClock`;
tests drive deadlines and window closes with `ManualClock` instead of sleeping.
Times are epoch milliseconds (int) on the wire and in state, because that is what
sensors send and what InfluxDB stores with `precision=ms`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in epoch milliseconds."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards (for timeouts, rates)."""
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to (tests, replays)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._mono = 0.0

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now_ms += int(seconds * 1000)
        self._mono += seconds


SYSTEM_CLOCK = SystemClock()
