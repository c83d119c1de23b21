"""The live change feed behind the console's server-sent events.

One poller per console (not one per browser): every `interval_s` it reads the audit rows with
`seq` above the last one seen (`transitions.seq` is the primary key, so the query is an index
range scan however many incidents are open), loads the current board row of just the incidents
they touch, and hands each subscriber the deltas it may see. Browsers never receive the whole
list again; they resume after a reconnect with `Last-Event-ID` (the seq).

Commit order and seq order agree on SQLite (one writer at a time), but not on PostgreSQL: two
transactions on different incidents may commit in the opposite order of their seqs. A seq that is
skipped is therefore remembered as a gap for `gap_ttl_s` and asked for again on every poll, so a
late commit is still delivered (a gap that never fills is a rolled-back insert).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gridwatch.console import queries
from gridwatch.dispatch.ledger import Ledger
from gridwatch.dispatch.models import TransitionRow

log = logging.getLogger(__name__)

RESYNC = "resync"


def event_of(tr: TransitionRow, row: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "seq": tr.seq,
        "incident_id": tr.incident_id,
        "kind": tr.kind,
        "actor": tr.actor,
        "by": tr.by,
        "from_state": tr.from_state,
        "to_state": tr.to_state,
        "from_node": tr.from_node,
        "to_node": tr.to_node,
        "level": tr.level,
        "at_ms": tr.at_ms,
        "note": tr.note,
        "changed": tr.changed,
        "incident": row,
    }


@dataclass(eq=False)
class Subscriber:
    may_see: Callable[[dict[str, Any]], bool]
    queue: asyncio.Queue[list[dict[str, Any]] | str | None]
    start_seq: int = 0
    overflowed: bool = field(default=False)


class ChangeFeed:
    def __init__(
        self,
        ledger: Ledger,
        *,
        interval_s: float = 0.5,
        batch: int = 2000,
        queue_batches: int = 256,
        gap_ttl_s: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.batch = batch
        self.queue_batches = queue_batches
        self.gap_ttl_s = gap_ttl_s
        self.last_seq: int | None = None
        self._gaps: dict[int, float] = {}
        self._subs: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._wake: asyncio.Event | None = None
        self.polls = 0

    async def subscribe(self, may_see: Callable[[dict[str, Any]], bool]) -> Subscriber:
        if self.last_seq is None:
            self.last_seq = await asyncio.to_thread(queries.max_seq, self.ledger)
        sub = Subscriber(may_see, asyncio.Queue(self.queue_batches), self.last_seq)
        if self._closed:
            sub.queue.put_nowait(None)  # shutting down: the stream ends at once
            return sub
        self._subs.add(sub)
        loop = asyncio.get_running_loop()
        # (A task left on another, closed loop - test clients run one loop each - never finishes.)
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="console-feed")
        return sub

    def poke(self) -> None:
        """Poll now rather than at the next tick (after a command given through the console)."""
        if self._wake is not None:
            self._wake.set()

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        """End every open stream (a server shutting down must not wait for browsers)."""
        self._closed = True
        for sub in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)
        self._subs.clear()
        if self._task is not None:
            self._task.cancel()

    async def catch_up(
        self, since: int, until: int, may_see: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]] | str:
        """Events in (since, until] for a browser resuming after a reconnect, or RESYNC if too many."""
        if since >= until:
            return []

        def q() -> list[dict[str, Any]] | str:
            trs = [
                t
                for t in queries.transitions_since(self.ledger, since, limit=self.batch + 1)
                if t.seq <= until
            ]
            if len(trs) > self.batch:
                return RESYNC
            rows = queries.rows_by_id(self.ledger, {t.incident_id for t in trs})
            evs = [event_of(t, rows.get(t.incident_id)) for t in trs]
            return [e for e in evs if may_see(e)]

        return await asyncio.to_thread(q)

    async def _run(self) -> None:
        # Runs while anybody listens; the next subscriber starts it again.
        self._wake = asyncio.Event()
        while self._subs and not self._closed:
            t0 = time.monotonic()
            try:
                events = await asyncio.to_thread(self._poll)
            except Exception as e:  # a database hiccup must not end the feed
                log.warning("console feed: poll failed: %s", e)
                events = []
            if events:
                self._fan_out(events)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.interval_s - (time.monotonic() - t0)))
            self._wake.clear()

    def _poll(self) -> list[dict[str, Any]]:
        self.polls += 1
        last = self.last_seq or 0
        now = time.monotonic()
        self._gaps = {s: t for s, t in self._gaps.items() if now - t < self.gap_ttl_s}
        trs = queries.transitions_since(self.ledger, last, self._gaps, self.batch)
        if not trs:
            return []
        for t in trs:
            if t.seq in self._gaps:
                del self._gaps[t.seq]
                continue
            if t.seq > last + 1 and t.seq - last < 1000:
                for missing in range(last + 1, t.seq):
                    self._gaps.setdefault(missing, now)
            last = max(last, t.seq)
        self.last_seq = last
        rows = queries.rows_by_id(self.ledger, {t.incident_id for t in trs})
        return [event_of(t, rows.get(t.incident_id)) for t in trs]

    def _fan_out(self, events: list[dict[str, Any]]) -> None:
        for sub in list(self._subs):
            # Everything polled after a subscription is new to it (seq above its start, or a late
            # commit); updates are idempotent in the browser, so a rare repeat is harmless.
            mine = [e for e in events if sub.may_see(e)]
            if not mine:
                continue
            try:
                sub.queue.put_nowait(mine)
            except asyncio.QueueFull:
                # A browser too slow to keep up: tell it to reload its view instead of buffering forever.
                sub.overflowed = True
                self._subs.discard(sub)
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.get_nowait()
                    sub.queue.put_nowait(RESYNC)
