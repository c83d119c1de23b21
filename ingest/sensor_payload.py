"""Validation of one MQTT sensor message: pure, synchronous, no I/O.

`ReadingValidator.check(topic, payload, now_ms)` returns a `Reading` or raises `Rejected`
with a reason code and a sentence naming the field and the problem. The bridge turns a
`Rejected` into a dead letter; nothing is silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from gridwatch.codec import Reading
from gridwatch.config import BridgeConfig, GridwatchConfig
from gridwatch.schemas import DeadLetterReason, SensorPayloadV1
from gridwatch.topics import parse_sensor_reading_topic


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
    def __init__(self, cfg: GridwatchConfig) -> None:
        self.prefix = cfg.mqtt.topic_prefix
        self.bridge: BridgeConfig = cfg.bridge
        self.sensors: dict[str, _SensorLimits] = {}
        for s in cfg.sensors:
            t = cfg.sensor_types[s.type]
            self.sensors[s.id] = _SensorLimits(t.valid_min, t.valid_max, t.unit)

    def check(self, topic: str | bytes, payload: bytes, now_ms: int) -> Reading:
        if len(payload) > self.bridge.max_payload_bytes:
            raise Rejected(
                DeadLetterReason.OVERSIZE,
                f"payload is {len(payload)} bytes, more than bridge.max_payload_bytes={self.bridge.max_payload_bytes}",
            )
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
        try:
            p = SensorPayloadV1.model_validate_json(payload)
        except ValidationError as e:
            raise _rejection(e) from None
        if p.ts > now_ms + self.bridge.max_future_s * 1000:
            raise Rejected(
                DeadLetterReason.CLOCK_SKEW,
                f"ts: {p.ts} is {(p.ts - now_ms) / 1000:.0f} s in the future (bridge.max_future_s="
                f"{self.bridge.max_future_s:g})",
            )
        if p.ts < now_ms - self.bridge.max_past_s * 1000:
            raise Rejected(
                DeadLetterReason.CLOCK_SKEW,
                f"ts: {p.ts} is {(now_ms - p.ts) / 1000:.0f} s old (bridge.max_past_s={self.bridge.max_past_s:g})",
            )
        if limits.valid_min is not None and p.value < limits.valid_min:
            raise Rejected(
                DeadLetterReason.SCHEMA,
                f"value: {p.value} {limits.unit} is below the physical minimum {limits.valid_min} for this type",
            )
        if limits.valid_max is not None and p.value > limits.valid_max:
            raise Rejected(
                DeadLetterReason.SCHEMA,
                f"value: {p.value} {limits.unit} is above the physical maximum {limits.valid_max} for this type",
            )
        return Reading(sensor_id, p.ts, p.value, now_ms)


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
