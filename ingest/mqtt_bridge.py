"""MQTT -> Kafka bridge for sensor readings (the ingest edge).

Delivery is at-least-once end to end:
  * the bridge keeps a persistent MQTT session (clean_start off, session expiry from config),
    so while it is away the broker queues QoS 1 readings for it;
  * a reading is acknowledged (PUBACK) only after Kafka has stored the record holding it:
    each reading's MQTT packet id waits in its batch, and the bridge sends the batch's PUBACKs
    once its produce request is acknowledged (`_take_over_qos1_acks`: no asyncio task per
    message). A crash before that makes the broker redeliver; downstream is idempotent per
    (sensor, ts), so redeliveries are harmless.

Throughput: readings are packed up to `bridge.batch_max_readings` per Kafka record, one open
batch per readings partition, flushed when full or after `bridge.flush_interval_ms`.

Client library: gmqtt on this hot path instead of paho-mqtt (docs/DESIGN.md: paho costs
~88 us CPU per QoS 1 message on MQTT v5 and caps one bridge at 8-10k readings/s; gmqtt
~18-35 us). Trap: with `optimistic_acknowledgement=False`, gmqtt acknowledges only for an
`async def` on_message; a plain function never does and delivery stalls at the in-flight limit.
(`_on_message` stays `async def`: it serves QoS 0 and is the fallback for QoS 1.)

Bad input never stops the bridge: anything invalid goes to the dead-letter topic with its
reason and raw bytes (and is acknowledged only once that record is stored), and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gmqtt import Client as MQTTClient
from gmqtt.mqtt.constants import MQTTv50

from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.codec import Reading, encode_event, encode_reading_batch
from gridwatch.config import GridwatchConfig, secret_from_env
from gridwatch.influx import InfluxSink, health_lines, line
from gridwatch.ingest.sensor_payload import ReadingValidator, Rejected
from gridwatch.kafka import TopicSetupError, ensure_topics, make_producer
from gridwatch.schemas import DeadLetter, DeadLetterReason
from gridwatch.topics import (
    BROKER_DROPPED_TOPIC,
    DEAD_LETTERS,
    SENSOR_READINGS,
    sensor_partition,
    sensor_reading_subscription,
)

log = logging.getLogger(__name__)

#: Most raw bytes a dead letter carries. Only an oversize payload can be longer (everything else is
#: at most bridge.max_payload_bytes); its first bytes are kept and the reason says so. Without a
#: bound, a payload of ~6 MiB made a dead-letter record the producer refuses (max_request_size
#: 8 MiB; a stock Kafka broker refuses ~1 MB): the send was retried forever and the message never
#: acknowledged, so the broker redelivered the poison message on every reconnect.
DEAD_LETTER_MAX_RAW_BYTES = 256 * 1024


#: The dead-letter reasons a message from MQTT can get here (the others belong to later stages).
BRIDGE_REASONS = (
    DeadLetterReason.OVERSIZE, DeadLetterReason.BAD_TOPIC, DeadLetterReason.NOT_UTF8, DeadLetterReason.NOT_JSON,
    DeadLetterReason.SCHEMA, DeadLetterReason.NOT_FINITE, DeadLetterReason.UNKNOWN_SENSOR, DeadLetterReason.CLOCK_SKEW,
)  # fmt: skip
BRIDGE_COUNTERS = (
    "received", "forwarded", "records", "dead_letters", "mqtt_connects", "mqtt_disconnects",
    "mqtt_connect_failures", "kafka_connect_failures", "kafka_send_errors",
)  # fmt: skip


def tune_gc() -> None:
    """Up to mqtt.receive_maximum messages are in flight (before `_take_over_qos1_acks`, each a
    task and a future): with the default thresholds the cyclic GC ran constantly and its full
    passes walked them all (a third of the bridge's CPU under overload). The hot path makes no
    cycles that need prompt collection, so collect rarely, and never the start-up objects."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


@dataclass(slots=True)
class _OpenBatch:
    readings: list[Reading] = field(default_factory=list)
    #: MQTT packet ids of its readings, acknowledged (PUBACK) once the record is stored
    mids: list[int] = field(default_factory=list)
    #: done once the record is stored (what the async `_on_message` path awaits)
    done: asyncio.Future[None] | None = None
    opened: float = 0.0


class SensorBridge:
    """Runs until `stop()`; `stats` holds its counters (also written to InfluxDB)."""

    def __init__(
        self, cfg: GridwatchConfig, *, clock: Clock = SYSTEM_CLOCK, influx: InfluxSink | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.influx = influx
        self.validator = ReadingValidator(cfg)
        self.partitions = cfg.kafka.readings_partitions
        self._partition_of: dict[str, int] = {
            s.id: sensor_partition(s.id, self.partitions) for s in cfg.sensors
        }
        # Per partition: the open batch (still growing), closed batches waiting, and whether a
        # record is in flight. One record in flight per partition keeps readings in order and
        # batches adaptively: while a record is in flight the open batch keeps growing (up to
        # bridge.batch_max_readings), so under load records get bigger instead of more numerous.
        # (Sending every 50 ms batch at once capped the bridge near 20k/s: aiokafka keeps one
        # request in flight per broker, and the flooded event loop made each round trip slow.)
        self._batches: dict[int, _OpenBatch] = {}
        self._ready: dict[int, deque[_OpenBatch]] = {}
        self._inflight: set[int] = set()
        self._producer = make_producer(cfg.kafka)
        self._mqtt: MQTTClient | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._send_locks: dict[tuple[str, int | None], asyncio.Lock] = {}  # see _send
        self._batch_max = cfg.bridge.batch_max_readings
        self._puback: Callable[[int], object] | None = None  # see _new_client
        self._dead_letter_tasks: set[asyncio.Task[None]] = set()
        self.instance = f"{socket.gethostname()}:{cfg.mqtt.client_id}"
        # Counters start at zero so a healthy bridge writes them too, and the panels' increase
        # (non_negative_difference) sees the first disconnect or dead letter after a start.
        self.stats: Counter[str] = Counter(dict.fromkeys(BRIDGE_COUNTERS, 0))
        self.dead_letter_reasons: Counter[str] = Counter({str(r): 0 for r in BRIDGE_REASONS})

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        tune_gc()
        await self._start_kafka()
        self._tasks.append(asyncio.create_task(self._flusher(), name="bridge-flusher"))
        self._tasks.append(asyncio.create_task(self._health_loop(), name="bridge-health"))
        await self._connect_mqtt()

    async def run_forever(self) -> None:
        await self.start()
        await self._stopping.wait()
        await self.close()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        self._stopping.set()
        if self._mqtt is not None:
            self._mqtt.stop_reconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._mqtt.disconnect(), 5)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._flush_all()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._producer.stop(), 10)
        self._write_health()

    async def wait_connected(self, timeout_s: float = 30) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def _start_kafka(self) -> None:
        delay = 0.5
        while True:
            try:
                await ensure_topics(self.cfg.kafka)
                await self._producer.start()
                return
            except TopicSetupError:
                raise  # a configuration problem: retrying cannot fix it
            except Exception as e:
                self.stats["kafka_connect_failures"] += 1
                log.warning(
                    "bridge: Kafka at %s unavailable (%s); retrying in %.1f s",
                    self.cfg.kafka.bootstrap_servers,
                    type(e).__name__,
                    delay,
                )
                with contextlib.suppress(Exception):
                    await self._producer.stop()
                self._producer = make_producer(self.cfg.kafka)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    def _new_client(self) -> MQTTClient:
        m = self.cfg.mqtt
        client = MQTTClient(
            m.client_id,
            clean_session=False,  # persistent session: the broker queues QoS 1 readings while we are away
            optimistic_acknowledgement=False,  # PUBACK only after Kafka has the reading
            session_expiry_interval=m.session_expiry_s,
            receive_maximum=m.receive_maximum,
        )
        if m.username:
            client.set_auth_credentials(m.username, secret_from_env(m.password_env, what="mqtt.password_env"))
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.set_config({"reconnect_retries": -1, "reconnect_delay": m.reconnect_min_s})
        self._take_over_qos1_acks(client)
        return client

    def _take_over_qos1_acks(self, client: MQTTClient) -> None:
        """Receive QoS 1 messages without a task per message; acknowledge them per record.

        With `optimistic_acknowledgement=False`, gmqtt 0.8 runs the async `on_message` of each
        QoS 1 message as a task and sends its PUBACK from the task's done-callback: a task, a
        wake-up and two callbacks per reading, about half of the bridge's own CPU per reading
        (docs/BENCHMARKS.md, "bridge CPU per reading"). Instead, the bridge takes the step
        where gmqtt hands a parsed QoS 1 PUBLISH on (`_handle_qos_1_publish_packet(mid, payload,
        topic, properties)`) and keeps each reading's packet id in its batch; when Kafka has
        stored the record, it sends the PUBACKs with gmqtt's own `_send_puback(mid)`, the call
        gmqtt's callback makes. Same guarantee: no PUBACK before the record (or the dead letter)
        is stored. gmqtt is pinned (pyproject.toml); should these methods be missing, the
        bridge keeps gmqtt's path (the async `_on_message`), correct but slower.
        """
        handler = getattr(client, "_package_handler", None)
        receive = getattr(handler, "_handle_qos_1_publish_packet", None)
        puback = getattr(handler, "_send_puback", None)
        if handler is None or not callable(receive) or not callable(puback):
            log.warning("bridge: gmqtt internals changed; acknowledging through on_message tasks (slower)")
            return
        self._puback = puback
        handler._handle_qos_1_publish_packet = self._on_qos1_publish  # type: ignore[method-assign]

    async def _connect_mqtt(self) -> None:
        m = self.cfg.mqtt
        client = self._mqtt = self._new_client()
        delay = m.reconnect_min_s
        while not self._stopping.is_set():
            try:
                await client.connect(m.host, m.port, keepalive=m.keepalive_s, version=MQTTv50)
                return
            except Exception as e:
                self.stats["mqtt_connect_failures"] += 1
                # never log credentials: host and port only
                log.warning(
                    "bridge: MQTT broker %s:%s unavailable (%s); retrying in %.1f s",
                    m.host,
                    m.port,
                    type(e).__name__,
                    delay,
                )
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, m.reconnect_max_s)

    def _on_connect(self, client: MQTTClient, flags: int, rc: int, properties: dict) -> None:
        self.stats["mqtt_connects"] += 1
        client.reconnect_delay = self.cfg.mqtt.reconnect_min_s  # reset the backoff
        client.subscribe(sensor_reading_subscription(self.cfg.mqtt.topic_prefix), qos=1)
        client.subscribe(BROKER_DROPPED_TOPIC, qos=0)  # mosquitto's drop counter, as a health metric
        self._connected.set()
        log.info("bridge: connected to MQTT %s:%s", self.cfg.mqtt.host, self.cfg.mqtt.port)

    def _on_disconnect(self, client: MQTTClient, packet: bytes, exc: Exception | None = None) -> None:
        self._connected.clear()
        if self._stopping.is_set():
            return
        self.stats["mqtt_disconnects"] += 1
        # exponential backoff for gmqtt's own reconnect loop
        client.reconnect_delay = min(
            max(client.reconnect_delay, self.cfg.mqtt.reconnect_min_s) * 2, self.cfg.mqtt.reconnect_max_s
        )
        log.warning("bridge: MQTT connection lost; reconnecting in %.1f s", client.reconnect_delay)

    # --- the hot path ------------------------------------------------------------------------
    def _on_qos1_publish(self, mid: int, payload: bytes, topic: str | bytes, properties: dict) -> None:
        """A QoS 1 message from gmqtt (see `_take_over_qos1_acks`); its PUBACK follows its record."""
        if topic == BROKER_DROPPED_TOPIC:
            self._broker_dropped(payload)
            self._send_pubacks((mid,))
            return
        self._ingest(topic, payload, mid)

    async def _on_message(
        self, client: MQTTClient, topic: str | bytes, payload: bytes, qos: int, properties: dict
    ) -> int:
        """gmqtt's path (QoS 0; QoS 1 only if `_take_over_qos1_acks` could not take over).

        Returns the PUBACK reason code (0) once the reading or its dead letter is in Kafka.
        """
        if topic == BROKER_DROPPED_TOPIC:
            self._broker_dropped(payload)
            return 0
        await self._ingest(topic, payload, None)
        return 0

    def _broker_dropped(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            self.stats["broker_dropped_messages"] = int(payload)

    def _ingest(self, topic: str | bytes, payload: bytes, mid: int | None) -> asyncio.Future[None]:
        """Validate one message and add it to its partition's open batch, or dead-letter it.

        Returns what is done once Kafka has it (the batch's `done`, or the dead-letter task);
        a packet id `mid` is acknowledged then.
        """
        self.stats["received"] += 1
        now = self.clock.now_ms()
        try:
            reading = self.validator.check(topic, payload, now)
        except Rejected as r:
            return self._start_dead_letter(topic, payload, r, now, mid)
        except Exception as e:  # a bug must not stop the bridge: dead-letter it, loudly
            log.exception("bridge: unexpected error validating a message")
            r = Rejected(DeadLetterReason.SCHEMA, f"internal error: {type(e).__name__}")
            return self._start_dead_letter(topic, payload, r, now, mid)
        part = self._partition_of[reading.sensor_id]
        batch = self._batches.get(part)
        if batch is None:
            batch = self._batches[part] = _OpenBatch(
                done=asyncio.get_running_loop().create_future(), opened=self.clock.monotonic()
            )
        batch.readings.append(reading)
        if mid is not None:
            batch.mids.append(mid)
        done = batch.done
        if len(batch.readings) >= self._batch_max:
            self._close_batch(part)
        assert done is not None
        return done

    def _send_pubacks(self, mids: list[int] | tuple[int, ...]) -> None:
        """PUBACK (reason code 0) each packet id, as gmqtt's publish callback does."""
        puback = self._puback
        assert puback is not None
        failed = 0
        for mid in mids:
            try:
                puback(mid)
            except Exception:  # e.g. the connection object is gone: the broker redelivers
                failed += 1
        if failed:
            log.warning("bridge: %d PUBACKs could not be sent (the broker will redeliver them)", failed)

    def _close_batch(self, part: int) -> None:
        batch = self._batches.pop(part, None)
        if batch and batch.readings:
            self._ready.setdefault(part, deque()).append(batch)
            self._pump(part)

    def _pump(self, part: int) -> None:
        """Send the partition's next closed batch unless one is already in flight."""
        queue = self._ready.get(part)
        if part in self._inflight or not queue:
            return
        self._inflight.add(part)
        task = asyncio.create_task(self._deliver(part, queue.popleft()))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _send(self, topic: str, record: bytes, partition: int | None = None) -> None:
        """Send one record and wait until Kafka has it; retry with backoff until it does.

        Appending is serialised per (topic, partition): aiokafka wakes *every* sender waiting
        on a full batch of a partition whenever it drains, and only one of them gets in. With
        one record per request (dev profile) a burst of N waiting senders cost O(N^2) wake-ups:
        it pinned the bridge at 100% CPU, made waiters time out and retry (found by
        tests/test_fuzz_bridge.py for dead letters; the same herd capped the readings path at
        ~7k/s under overload). Behind the lock one coroutine waits at a time; delivery is
        still awaited concurrently. Unacknowledged MQTT messages wait safely meanwhile.
        """
        lock = self._send_locks.get((topic, partition))
        if lock is None:
            lock = self._send_locks[(topic, partition)] = asyncio.Lock()
        delay = 0.2
        while True:
            try:
                async with lock:
                    delivered = await self._producer.send(topic, record, partition=partition)
                await delivered
                return
            except Exception as e:
                self.stats["kafka_send_errors"] += 1
                log.warning(
                    "bridge: Kafka send to %s failed (%s); retrying in %.1f s", topic, type(e).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _deliver(self, part: int, batch: _OpenBatch) -> None:
        """Send one packed record of readings, then release the MQTT acknowledgements waiting on it."""
        try:
            await self._send(SENSOR_READINGS.name, encode_reading_batch(batch.readings), part)
        finally:
            self._inflight.discard(part)
        self.stats["forwarded"] += len(batch.readings)
        self.stats["records"] += 1
        if batch.done and not batch.done.done():
            batch.done.set_result(None)
        if batch.mids:
            self._send_pubacks(batch.mids)
        open_batch = self._batches.get(part)
        if (
            open_batch
            and self.clock.monotonic() - open_batch.opened >= self.cfg.bridge.flush_interval_ms / 1000
        ):
            self._close_batch(part)  # it waited for us: send it now
        else:
            self._pump(part)

    def _start_dead_letter(
        self, topic: str | bytes, payload: bytes, r: Rejected, now: int, mid: int | None
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._dead_letter(topic, payload, r, now, mid))
        self._dead_letter_tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._dead_letter_tasks.discard)
        return task

    async def _dead_letter(
        self, topic: str | bytes, payload: bytes, r: Rejected, now: int, mid: int | None = None
    ) -> None:
        origin = topic if isinstance(topic, str) else topic.decode("utf-8", "replace")
        reason, raw = r.reason, payload
        if len(raw) > DEAD_LETTER_MAX_RAW_BYTES:
            raw = raw[:DEAD_LETTER_MAX_RAW_BYTES]
            reason += f" (raw bytes truncated to the first {DEAD_LETTER_MAX_RAW_BYTES})"
        dl = DeadLetter.of(
            source="mqtt", origin=origin[:512], reason_code=r.code, reason=reason, raw=raw, received=now
        )
        await self._send(DEAD_LETTERS.name, encode_event(dl))
        self.stats["dead_letters"] += 1
        self.dead_letter_reasons[str(r.code)] += 1
        if mid is not None:
            self._send_pubacks((mid,))

    async def _flusher(self) -> None:
        interval = self.cfg.bridge.flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval / 2)
            now = self.clock.monotonic()
            for part, batch in list(self._batches.items()):
                if now - batch.opened >= interval and part not in self._inflight:
                    self._close_batch(part)

    async def _flush_all(self, timeout_s: float = 10) -> None:
        for part in list(self._batches):
            self._close_batch(part)
        deadline = self.clock.monotonic() + timeout_s
        while (self._inflight or any(self._ready.values())) and self.clock.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # --- health ------------------------------------------------------------------------------
    def _write_health(self) -> None:
        if self.influx is None:
            return
        now = self.clock.now_ms()
        fields = {k: int(v) for k, v in self.stats.items()}
        fields["connected"] = self._connected.is_set()
        lines = health_lines("bridge", self.instance, fields, now)

        for reason, n in self.dead_letter_reasons.items():
            lines.append(line("dead_letters", {"component": "bridge", "reason": reason}, {"count": n}, now))
        self.influx.write(lines)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.bridge.health_interval_s)
            self._write_health()
