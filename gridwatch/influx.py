"""Writing time series to InfluxDB: line protocol, batching, retries, bounded buffer, spill.

`InfluxSink` is the only writer. Producers call `sink.write(lines)`, which never blocks and
never raises: lines are queued in memory; a background task sends them in batches through
influxdb-client's async v2 write API, retrying with exponential backoff while InfluxDB is
away. When the memory queue passes `influx.max_buffer_lines`, the oldest batches spill to
disk (`influx.spill_dir`) and are replayed after recovery. Only when the spill is full too
are lines dropped, and every dropped line is counted in `stats["dropped_lines"]` (written to
the `pipeline_health` measurement), never silently.

A 400 or 422 answer means InfluxDB refused the data itself (e.g. a field type conflict):
retrying cannot help, so those lines are counted as `rejected_lines` and logged. Any other
error (401/403/404 from a rotated token or missing bucket, 5xx, no connection) is retried.

The measurement / tag / field schema is in docs/INFLUX_SCHEMA.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.config import InfluxConfig, secret_from_env

log = logging.getLogger(__name__)

# --- line protocol ---------------------------------------------------------------------------
_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": "", "\r": ""})
_MEAS_ESCAPE = str.maketrans({",": r"\,", " ": r"\ ", "\n": "", "\r": ""})


def escape_tag(s: str) -> str:
    return s.translate(_TAG_ESCAPE)


def _field(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{s}"'


def series_key(measurement: str, tags: dict[str, str]) -> str:
    """`measurement,tag=value,...` (tags sorted, escaped; empty values left out)."""
    tag_part = "".join(f",{k}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
    return f"{measurement.translate(_MEAS_ESCAPE)}{tag_part}"


def line(measurement: str, tags: dict[str, str], fields: dict[str, Any], ts_ms: int) -> str:
    """One line of line protocol with a millisecond timestamp. Empty tag values are left out."""
    field_part = ",".join(f"{k}={_field(v)}" for k, v in fields.items() if v is not None)
    return f"{series_key(measurement, tags)} {field_part} {ts_ms}"


# --- the sink --------------------------------------------------------------------------------
class _Chunk:
    __slots__ = ("lines", "on_written", "on_durable")

    def __init__(
        self,
        lines: list[str],
        on_written: Callable[[int], None] | None,
        on_durable: Callable[[], object] | None = None,
    ) -> None:
        self.lines = lines
        self.on_written = on_written
        self.on_durable = on_durable


class InfluxSink:
    """Batched, retried, bounded writer. Use `async with InfluxSink(cfg) as sink:`."""

    def __init__(self, cfg: InfluxConfig, *, clock: Clock = SYSTEM_CLOCK, name: str = "influx") -> None:
        self.cfg = cfg
        self.clock = clock
        self.name = name
        self._queue: deque[_Chunk] = deque()
        self._queued_lines = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._write_api: Any = None
        self._closing = False
        self._spill_seq = 0
        self._spill_bytes = 0
        self._healthy = True
        self.stats: dict[str, int] = {
            "written_lines": 0,
            "write_requests": 0,
            "write_errors": 0,
            "retries": 0,
            "rejected_lines": 0,
            "spilled_lines": 0,
            "replayed_lines": 0,
            "dropped_lines": 0,
        }
        # Each sink spills into its own subdirectory (named after the sink): the bridge and a
        # stream worker share one config, and two sinks replaying and numbering the same files
        # overwrote and double-replayed each other's spill.
        self.spill_dir: Path | None = cfg.spill_dir / name if cfg.spill_dir is not None else None
        self._live_batches_since_replay = 0
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            for f in sorted(self.spill_dir.glob("*.lp")):  # a previous run's spill: replay it too
                self._spill_bytes += f.stat().st_size
                self._spill_seq = max(self._spill_seq, int(f.stem.split("-")[-1]) + 1)

    # public API
    @property
    def buffered_lines(self) -> int:
        return self._queued_lines

    @property
    def spilled_bytes(self) -> int:
        return self._spill_bytes

    @property
    def healthy(self) -> bool:
        """False while the last write attempt failed (InfluxDB unreachable or erroring)."""
        return self._healthy

    def write(
        self,
        lines: list[str],
        on_written: Callable[[int], None] | None = None,
        on_durable: Callable[[], object] | None = None,
    ) -> None:
        """Queue lines. `on_written(ack_ms)` is called once they are stored (for latency figures).

        `on_durable()` is called once the sink no longer holds them only in memory: stored,
        spilled to disk, refused by InfluxDB (counted) or dropped (counted). A caller that
        commits a source position (a Kafka offset) must wait for it: a crash loses the memory
        buffer, and a committed position is never read again.
        """
        if not lines:
            if on_durable is not None:
                _fire([on_durable])
            return
        self._queue.append(_Chunk(lines, on_written, on_durable))
        self._queued_lines += len(lines)
        if self._queued_lines > self.cfg.max_buffer_lines:
            self._shed()
        if self._queued_lines >= self.cfg.batch_max_lines:
            self._wake.set()

    async def start(self) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        token = secret_from_env(self.cfg.token_env, what="influx.token_env") or "unused"
        self._client = InfluxDBClientAsync(
            url=self.cfg.url, token=token, org=self.cfg.org, timeout=int(self.cfg.timeout_s * 1000)
        )
        self._write_api = self._client.write_api()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-writer")

    async def close(self, *, drain_timeout_s: float = 10.0) -> None:
        """Flush what can be flushed within the timeout; spill the rest (if spilling is on)."""
        self._closing = True
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        while self._queue:  # could not drain: keep it on disk rather than lose it
            self._spill_or_drop(self._queue.popleft())
        if self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> InfluxSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the memory queue and the spill are empty. True if they are."""
        deadline = self.clock.monotonic() + timeout_s
        while (self._queued_lines or self._spill_bytes) and self.clock.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        return not (self._queued_lines or self._spill_bytes)

    # internals
    def _shed(self) -> None:
        """Over the memory bound: move the oldest chunks to disk (or count them dropped)."""
        while self._queued_lines > self.cfg.max_buffer_lines and len(self._queue) > 1:
            self._spill_or_drop(self._queue.popleft())

    def _spill_or_drop(self, chunk: _Chunk, *, queued: bool = True) -> None:
        """`queued`: the chunk's lines are still counted in `_queued_lines` (not for a taken batch)."""
        if queued:
            self._queued_lines -= len(chunk.lines)
        data = ("\n".join(chunk.lines) + "\n").encode()
        spilled = False
        if self.spill_dir is not None and self._spill_bytes + len(data) <= self.cfg.max_spill_bytes:
            path = self.spill_dir / f"spill-{self._spill_seq:09d}.lp"
            self._spill_seq += 1
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)  # a crash leaves either a whole file or none
                spilled = True
            except OSError as e:  # disk full, permissions: the lines are lost, and counted
                log.error("%s: cannot spill to %s: %s", self.name, self.spill_dir, e.strerror)
        if spilled:
            self._spill_bytes += len(data)
            self.stats["spilled_lines"] += len(chunk.lines)
            chunk.on_written = None  # its latency can no longer be measured meaningfully
        else:
            self.stats["dropped_lines"] += len(chunk.lines)
            log.error("%s: buffer and spill full: dropped %d lines (counted)", self.name, len(chunk.lines))
        if chunk.on_durable is not None:
            on_durable, chunk.on_durable = chunk.on_durable, None
            _fire([on_durable])

    def _take_batch(self) -> tuple[list[str], list[Callable[[int], None]], list[Callable[[], object]]]:
        lines: list[str] = []
        callbacks = []
        durable: list[Callable[[], object]] = []
        # Whole chunks only (a batch may pass batch_max_lines by one chunk): a chunk's on_durable
        # stands for all of its lines, and a split chunk's spilled remainder fired it while its
        # first part was still in a batch being retried.
        while self._queue and (
            not lines or len(lines) + len(self._queue[0].lines) <= self.cfg.batch_max_lines
        ):
            chunk = self._queue.popleft()
            lines.extend(chunk.lines)
            if chunk.on_written:
                callbacks.append(chunk.on_written)
            if chunk.on_durable:
                durable.append(chunk.on_durable)
        self._queued_lines -= len(lines)
        return lines, callbacks, durable

    async def _run(self) -> None:
        """The writer loop; an unexpected error is logged and the loop goes on (never dies silently)."""
        while True:
            try:
                await self._loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["write_errors"] += 1
                log.exception("%s: writer loop failed; restarting it", self.name)
                await asyncio.sleep(self.cfg.retry_min_s)

    async def _loop(self) -> None:
        while True:
            if not self._queue and not self._spill_bytes:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.flush_interval_ms / 1000)
                if not self._queue and not self._spill_bytes:
                    continue
            elif self._queue and self._queued_lines < self.cfg.batch_max_lines and not self._closing:
                # a partial batch: give it the flush interval to fill up
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.flush_interval_ms / 1000)
            if self._queue:
                lines, callbacks, durable = self._take_batch()
                if not await self._send_with_retry("\n".join(lines), len(lines)):
                    # closing while InfluxDB is down: keep the batch on disk rather than lose it
                    self._spill_or_drop(_Chunk(lines, None), queued=False)
                    _fire(durable)
                    return
                ack = self.clock.now_ms()
                for cb in callbacks:
                    cb(ack)
                _fire(durable)
                self._live_batches_since_replay += 1
                # under steady load the queue is never empty: replay a spill file every few
                # live batches so a past outage's data reaches InfluxDB now, not after the load
                if self._spill_bytes and self._live_batches_since_replay >= 4:
                    self._live_batches_since_replay = 0
                    if not await self._replay_one_spill_file():
                        return
            elif self._spill_bytes and not await self._replay_one_spill_file():
                return

    async def _replay_one_spill_file(self) -> bool:
        files = sorted(self.spill_dir.glob("*.lp")) if self.spill_dir else []
        if not files:
            self._spill_bytes = 0
            return True
        f = files[0]
        try:
            data = f.read_bytes()
        except FileNotFoundError:  # removed by hand meanwhile: nothing to replay
            return True
        body = data.decode().rstrip("\n")
        n = body.count("\n") + 1 if body else 0
        # big spill files are sent in batch-sized pieces
        parts = body.split("\n")
        for i in range(0, len(parts), self.cfg.batch_max_lines):
            piece = parts[i : i + self.cfg.batch_max_lines]
            if not await self._send_with_retry("\n".join(piece), len(piece)):
                return False
        f.unlink(missing_ok=True)
        self._spill_bytes = max(0, self._spill_bytes - len(data))
        self.stats["replayed_lines"] += n
        return True

    async def _send_with_retry(self, body: str, n_lines: int) -> bool:
        """Send one batch until it is stored or refused. False only if closing gave up on it."""
        from influxdb_client.client.write_api import WritePrecision
        from influxdb_client.rest import ApiException

        delay = self.cfg.retry_min_s
        while True:
            self.stats["write_requests"] += 1
            try:
                await self._write_api.write(
                    bucket=self.cfg.bucket, org=self.cfg.org, record=body, write_precision=WritePrecision.MS
                )
                self.stats["written_lines"] += n_lines
                self._healthy = True
                return True
            except ApiException as e:
                status = e.status or 0
                # Only "bad data" answers are final. 401/403/404 (token rotated, bucket missing),
                # 413, 429 and 5xx are the deployment's problem, not the data's: keep retrying
                # (the buffer and spill hold the lines) instead of acking them away.
                if status in (400, 422):
                    self.stats["rejected_lines"] += n_lines
                    self.stats["write_errors"] += 1
                    log.error(
                        "%s: InfluxDB refused %d lines (HTTP %s): %s",
                        self.name,
                        n_lines,
                        status,
                        (e.body or "")[:300] if isinstance(e.body, str) else e.reason,
                    )
                    self._healthy = True
                    return True
                err = f"HTTP {status} {e.reason}"
            except Exception as e:  # connection refused, timeout, DNS...: InfluxDB is away
                err = f"{type(e).__name__}: {e}"
            self.stats["write_errors"] += 1
            self._healthy = False
            if self._closing and self.stats["write_errors"] and delay >= self.cfg.retry_max_s:
                return False
            log.warning(
                "%s: write failed (%s); retrying in %.1f s; %d lines buffered",
                self.name,
                err,
                delay,
                self._queued_lines + n_lines,
            )
            self.stats["retries"] += 1
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, self.cfg.retry_max_s)
            if self._queued_lines > self.cfg.max_buffer_lines:
                self._shed()


def _fire(callbacks: list[Callable[[], object]]) -> None:
    """Run `on_durable` callbacks; one that raises must not stop the writer."""
    for cb in callbacks:
        try:
            cb()
        except Exception:
            log.exception("influx: on_durable callback failed")


def health_lines(component: str, instance: str, stats: dict[str, Any], ts_ms: int) -> list[str]:
    """`pipeline_health` lines for a component's counters and gauges."""
    return [line("pipeline_health", {"component": component, "instance": instance}, stats, ts_ms)]
