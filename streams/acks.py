"""Acknowledge a partition's records strictly in offset order. Pure, synchronous.

A record is "done" when its InfluxDB lines are durable, which happens out of order (a tick
with no lines is done at once; a spilled chunk before an older batch still being sent).
Faust commits the offset after the lowest acked run and tolerates one gap, so acking out of
order let a commit pass a record whose lines were still only in memory (a crash then lost
them). `OrderedAcker` releases an ack only when every earlier record of the partition is
done too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class OrderedAcker:
    def __init__(self) -> None:
        self._pending: dict[int, deque[list]] = {}  # partition -> [[offset, done, ack], ...]

    def track(self, partition: int, offset: int, ack: Callable[[], object]) -> Callable[[], None]:
        """Register a record in arrival order; returns the function that marks it done."""
        entry = [offset, False, ack]
        self._pending.setdefault(partition, deque()).append(entry)

        def done() -> None:
            entry[1] = True
            self._release(partition)

        return done

    def _release(self, partition: int) -> None:
        q = self._pending.get(partition)
        while q and q[0][1]:
            q.popleft()[2]()

    def pending(self, partition: int) -> int:
        return len(self._pending.get(partition, ()))

    def forget(self, partition: int) -> None:
        """After a revocation: those records will be redelivered to whoever owns them now."""
        self._pending.pop(partition, None)
