"""The deadline scheduler: escalate what is due, then sleep exactly until the next deadline.

Shared by the dispatch service and `gridwatch bench dispatch`. It sleeps until the earliest
pending deadline (capped by `max_sleep_s`, so a clock that jumps, like a test's ManualClock, is
noticed), and wakes early when `wake` is set (a new incident may have an earlier deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import ApplyResult
from gridwatch.dispatch.machine import CommandKind

log = logging.getLogger(__name__)


def escalation_lag_ms(result: ApplyResult, now_ms: int) -> float | None:
    """How late an applied deadline escalation was (ms after its due time), else None.

    Deadline command ids end with the due time: "deadline:<incident>:<level>:<step>:<due_ms>".
    """
    tr = result.transition
    if (
        tr is None
        or not tr.changed
        or tr.kind is not CommandKind.ESCALATE
        or not tr.command_id.startswith("deadline:")
    ):
        return None
    return float(now_ms - int(tr.command_id.rsplit(":", 1)[-1]))


async def deadline_loop(
    core: DispatchCore,
    stop: asyncio.Event,
    wake: asyncio.Event,
    max_sleep_s: float,
    on_results: Callable[[list[ApplyResult], int], None],
    on_error: Callable[[BaseException], None] | None = None,
) -> None:
    while not stop.is_set():
        nxt = None
        try:
            results = await asyncio.to_thread(core.escalate_due)
            if results:
                on_results(results, core.clock.now_ms())
            nxt = await asyncio.to_thread(core.ledger.next_due_at)
        except Exception as e:  # the database is away: try again shortly
            log.warning("dispatch: deadline pass failed (%s); retrying", type(e).__name__)
            if on_error:
                on_error(e)
        wait = max_sleep_s if nxt is None else min(max_sleep_s, max(0.0, (nxt - core.clock.now_ms()) / 1000))
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=wait)
