"""Acknowledgements: the stream worker's ordered Kafka acks, and the bridge's MQTT PUBACKs."""

import asyncio
import time

from gmqtt.mqtt.constants import MQTTCommands

from gridwatch.ingest.mqtt_bridge import SensorBridge
from gridwatch.streams.acks import OrderedAcker
from gridwatch.topics import DEAD_LETTERS, SENSOR_READINGS, sensor_reading_topic
from tests.helpers import demo_config


def test_acks_are_released_in_offset_order_only():
    acked: list[int] = []
    a = OrderedAcker()
    done = {o: a.track(0, o, lambda o=o: acked.append(o)) for o in (10, 11, 12, 13)}
    done[11]()  # a tick, durable at once: must wait for 10
    done[13]()
    assert acked == []
    done[10]()
    assert acked == [10, 11]
    done[12]()
    assert acked == [10, 11, 12, 13]
    assert a.pending(0) == 0


def test_partitions_are_independent_and_forgettable():
    acked: list[tuple[int, int]] = []
    a = OrderedAcker()
    d0 = a.track(0, 5, lambda: acked.append((0, 5)))
    d1 = a.track(1, 7, lambda: acked.append((1, 7)))
    d1()
    assert acked == [(1, 7)]
    a.forget(0)
    d0()  # a late completion for a revoked partition releases nothing
    assert acked == [(1, 7)] and a.pending(0) == 0


# --- the bridge: a PUBACK only once Kafka has the record (no servers: stand-ins below) --------


class _HeldProducer:
    """Stand-in for aiokafka's producer: each send's delivery waits until the test releases it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, asyncio.Future[None]]] = []

    async def send(self, topic, value, partition=None):
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((topic, fut))
        return fut

    async def stop(self):
        return None


class _Wire:
    """Stand-in for gmqtt's connection: records the acknowledgements gmqtt would write."""

    def __init__(self) -> None:
        self.pubacks: list[tuple[int, int]] = []

    def send_command_with_mid(self, cmd, mid, dup, reason_code=0):
        assert cmd == MQTTCommands.PUBACK
        self.pubacks.append((mid, reason_code))


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def _bridge_with_stand_ins():
    cfg = demo_config()
    bridge = SensorBridge(cfg)
    await bridge._producer.stop()
    producer = bridge._producer = _HeldProducer()
    client = bridge._new_client()
    wire = client._connection = _Wire()
    return cfg, bridge, producer, client._package_handler, wire


def test_bridge_acknowledges_qos1_readings_only_after_kafka_has_their_record():
    async def main():
        cfg, bridge, producer, handler, wire = await _bridge_with_stand_ins()
        assert handler._handle_qos_1_publish_packet == bridge._on_qos1_publish  # no task per message
        now = time.time_ns() // 1_000_000
        sensors = [s.id for s in cfg.sensors[:40]]
        for mid, sid in enumerate(sensors, 1):  # gmqtt hands each parsed QoS 1 PUBLISH on like this
            payload = b'{"v":1,"ts":%d,"value":1.5}' % now
            handler._handle_qos_1_publish_packet(mid, payload, sensor_reading_topic("gridwatch", sid), {})
        handler._handle_qos_1_publish_packet(
            99, b"not json", sensor_reading_topic("gridwatch", sensors[0]), {}
        )
        for part in list(bridge._batches):
            bridge._close_batch(part)
        await _settle()
        assert wire.pubacks == []  # records sent, not yet stored
        readings = [f for t, f in producer.sent if t == SENSOR_READINGS.name]
        dead = [f for t, f in producer.sent if t == DEAD_LETTERS.name]
        assert len(dead) == 1 and 1 <= len(readings) <= cfg.kafka.readings_partitions
        dead[0].set_result(None)
        await _settle()
        assert wire.pubacks == [(99, 0)]  # the dead letter is stored: only its message is acknowledged
        readings[0].set_result(None)
        await _settle()
        first = {mid for mid, _ in wire.pubacks[1:]}
        assert first and first < set(range(1, len(sensors) + 1))  # only the readings of that record
        for f in readings[1:]:
            f.set_result(None)
        await _settle()
        assert sorted(wire.pubacks) == sorted([(m, 0) for m in range(1, len(sensors) + 1)] + [(99, 0)])
        assert bridge.stats["received"] == len(sensors) + 1
        assert bridge.stats["forwarded"] == len(sensors) and bridge.stats["dead_letters"] == 1

    asyncio.run(main())


def test_bridge_on_message_path_returns_only_after_kafka_has_the_record():
    """gmqtt's own path (QoS 0, or QoS 1 if the take-over is unavailable) keeps the same guarantee."""

    async def main():
        cfg, bridge, producer, handler, wire = await _bridge_with_stand_ins()
        now = time.time_ns() // 1_000_000
        topic = sensor_reading_topic("gridwatch", cfg.sensors[0].id)
        task = asyncio.ensure_future(
            bridge._on_message(None, topic, b'{"v":1,"ts":%d,"value":2}' % now, 1, {})
        )
        await _settle()
        bridge._close_batch(next(iter(bridge._batches)))
        await _settle()
        assert not task.done() and len(producer.sent) == 1
        producer.sent[0][1].set_result(None)
        await _settle()
        assert task.done() and task.result() == 0 and wire.pubacks == []

    asyncio.run(main())
