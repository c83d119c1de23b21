"""Validation of one MQTT sensor message: pure, synchronous, no I/O.

`ReadingValidator.check(topic, payload, now_ms)` returns a `Reading` or raises `Rejected`
with a reason code and a sentence naming the field and the problem. The bridge turns a
`Rejected` into a dead letter; nothing is silently dropped.

Two paths, one verdict. The fast path handles what nearly every sensor sends: a registered
sensor's topic (one dict lookup instead of parsing) and a payload that orjson parses into
exactly `{"v": 1, "ts": <int in range>, "value": <finite number>}` (plus an optional valid
`seq`). It only ever *accepts*; anything else (not JSON for orjson, another shape, a wrong
type, a `ts` or `seq` beyond 64 bits that orjson turns into a float, ...) goes to the reference path,
`SensorPayloadV1.model_validate_json`, which decides and words the rejection exactly as
before. The clock and range checks after it are shared. About a third of the reference path's CPU
(docs/BENCHMARKS.md, "bridge CPU per reading"); `tests/test_sensor_payload.py` checks that
both paths agree, reason sentences included, on the fuzz corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from gridwatch.codec import Reading
from gridwatch.config import BridgeConfig, GridwatchConfig
from gridwatch.schemas import DeadLetterReason, SensorPayloadV1
from gridwatch.topics import parse_sensor_reading_topic, sensor_reading_topic

#: schemas.EpochMs bounds (the fast path accepts only what the model accepts).
_TS_MIN, _TS_MAX = 0, 32_503_680_000_000
_new_reading = tuple.__new__  # Reading(...) without the namedtuple's Python-level __new__


class Rejected(Exception):
    def __init__(self, code: DeadLetterReason, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _SensorLimits:
    valid_min: float | None
    valid_max: float | None
    unit: str


class ReadingValidator:
    def __init__(self, cfg: GridwatchConfig, *, fast_path: bool = True) -> None:
        self.prefix = cfg.mqtt.topic_prefix
        self.bridge: BridgeConfig = cfg.bridge
        self.sensors: dict[str, _SensorLimits] = {}
        for s in cfg.sensors:
            t = cfg.sensor_types[s.type]
            self.sensors[s.id] = _SensorLimits(t.valid_min, t.valid_max, t.unit)
        self._max_payload = self.bridge.max_payload_bytes
        self._future_ms = self.bridge.max_future_s * 1000
        self._past_ms = self.bridge.max_past_s * 1000
        # topic -> (sensor id, limits) of every registered sensor: the fast path's topic check
        self._by_topic: dict[str, tuple[str, _SensorLimits]] = {}
        for sid, limits in self.sensors.items():
            topic = sensor_reading_topic(self.prefix, sid)
            if fast_path and parse_sensor_reading_topic(self.prefix, topic) == sid:
                self._by_topic[topic] = (sid, limits)
        self._fast = fast_path

    def check(self, topic: str | bytes, payload: bytes, now_ms: int) -> Reading:
        if len(payload) > self._max_payload:
            raise Rejected(
                DeadLetterReason.OVERSIZE,
                f"payload is {len(payload)} bytes, more than bridge.max_payload_bytes={self.bridge.max_payload_bytes}",
            )
        hit = self._by_topic.get(topic)  # type: ignore[call-overload]  # a bytes topic misses
        if hit is None:
            sensor_id, limits = self._sensor_of(topic)
        else:
            sensor_id, limits = hit
        ts = value = None
        if self._fast:
            try:
                d = orjson.loads(payload)
            except orjson.JSONDecodeError:
                d = None
            if type(d) is dict:
                v, ts, value = d.get("v"), d.get("ts"), d.get("value")
                n = len(d)
                if not (
                    type(v) is int
                    and v == 1
                    and type(ts) is int
                    and _TS_MIN <= ts <= _TS_MAX
                    and ((type(value) is float and value - value == 0.0) or type(value) is int)
                    and (n == 3 or (n == 4 and "seq" in d and _valid_seq(d["seq"])))
                ):
                    ts = None
        if ts is None:  # the reference path decides (and words the rejection)
            try:
                p = SensorPayloadV1.model_validate_json(payload)
            except ValidationError as e:
                raise _rejection(e) from None
            ts, value = p.ts, p.value
        else:
            value = float(value)  # type: ignore[arg-type]  # as the model's float field does
        if ts > now_ms + self._future_ms:
            raise Rejected(
                DeadLetterReason.CLOCK_SKEW,
                f"ts: {ts} is {(ts - now_ms) / 1000:.0f} s in the future (bridge.max_future_s="
                f"{self.bridge.max_future_s:g})",
            )
        if ts < now_ms - self._past_ms:
            raise Rejected(
                DeadLetterReason.CLOCK_SKEW,
                f"ts: {ts} is {(now_ms - ts) / 1000:.0f} s old (bridge.max_past_s={self.bridge.max_past_s:g})",
            )
        if limits.valid_min is not None and value < limits.valid_min:
            raise Rejected(
                DeadLetterReason.SCHEMA,
                f"value: {value} {limits.unit} is below the physical minimum {limits.valid_min} for this type",
            )
        if limits.valid_max is not None and value > limits.valid_max:
            raise Rejected(
                DeadLetterReason.SCHEMA,
                f"value: {value} {limits.unit} is above the physical maximum {limits.valid_max} for this type",
            )
        return _new_reading(Reading, (sensor_id, ts, value, now_ms))

    def _sensor_of(self, topic: str | bytes) -> tuple[str, _SensorLimits]:
        """Sensor of a topic the fast path's table does not hold, or the topic's rejection."""
        if isinstance(topic, bytes):
            raise Rejected(DeadLetterReason.NOT_UTF8, "topic is not valid UTF-8")
        sensor_id = parse_sensor_reading_topic(self.prefix, topic)
        if sensor_id is None:
            raise Rejected(
                DeadLetterReason.BAD_TOPIC,
                f"topic {topic!r} does not follow {self.prefix}/sensors/{{sensor_id}}/reading",
            )
        limits = self.sensors.get(sensor_id)
        if limits is None:
            raise Rejected(
                DeadLetterReason.UNKNOWN_SENSOR, f"sensor {sensor_id!r} is not registered in config"
            )
        return sensor_id, limits


def _valid_seq(seq: object) -> bool:
    return seq is None or (type(seq) is int and seq >= 0)


def _rejection(e: ValidationError) -> Rejected:
    first = e.errors()[0]
    kind = first["type"]
    path = ".".join(str(p) for p in first["loc"]) or "(payload)"
    if kind == "json_invalid":
        # pydantic's message includes the parser's reason ("EOF while parsing", "invalid unicode")
        code = DeadLetterReason.NOT_UTF8 if "unicode" in first["msg"].lower() else DeadLetterReason.NOT_JSON
        return Rejected(code, f"payload is not valid JSON: {first['msg']}")
    if kind == "finite_number":
        return Rejected(DeadLetterReason.NOT_FINITE, f"{path}: NaN or Infinity is not a measurement")
    if kind == "model_type":
        return Rejected(
            DeadLetterReason.SCHEMA, 'payload: expected a JSON object {"v":1,"ts":...,"value":...}'
        )
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return Rejected(DeadLetterReason.SCHEMA, f"{path}: {first['msg']}{more}")
