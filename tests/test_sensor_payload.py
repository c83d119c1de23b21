"""The bridge's validation of one MQTT message (pure): what passes, and why each bad thing fails."""

from __future__ import annotations

import pytest

from gridwatch.ingest.sensor_payload import ReadingValidator, Rejected
from gridwatch.schemas import DeadLetterReason as R
from tests.helpers import demo_config

NOW = 1_764_000_000_000
CFG = demo_config()
V = ReadingValidator(CFG)
SID = CFG.sensors[0].id  # a water_level sensor
TOPIC = f"gridwatch/sensors/{SID}/reading"


def test_valid_reading():
    r = V.check(TOPIC, b'{"v":1,"ts":%d,"value":1.25}' % (NOW - 1000), NOW)
    assert (r.sensor_id, r.ts, r.value, r.received) == (SID, NOW - 1000, 1.25, NOW)


@pytest.mark.parametrize(
    ("topic", "payload", "code", "words"),
    [
        (TOPIC, b"x" * 5000, R.OVERSIZE, "more than bridge.max_payload_bytes"),
        ("gridwatch/sensors/reading", b"{}", R.BAD_TOPIC, "does not follow"),
        ("gridwatch/sensors/a/b/reading", b"{}", R.BAD_TOPIC, "does not follow"),
        (b"gridwatch/\xff", b"{}", R.NOT_UTF8, "topic is not valid UTF-8"),
        ("gridwatch/sensors/ghost-1/reading", b"{}", R.UNKNOWN_SENSOR, "'ghost-1' is not registered"),
        (TOPIC, b"not json", R.NOT_JSON, "not valid JSON"),
        (TOPIC, b'{"v":1,"ts":1,"value":"\xff"}', R.NOT_UTF8, "not valid JSON"),
        (TOPIC, b"[1,2]", R.SCHEMA, "expected a JSON object"),
        (TOPIC, b'{"v":1,"ts":%d,"value":NaN}' % NOW, R.NOT_FINITE, "value: NaN or Infinity"),
        (TOPIC, b'{"v":1,"ts":%d,"value":1e999}' % NOW, R.NOT_FINITE, "value: NaN or Infinity"),
        (TOPIC, b'{"v":1,"ts":%d,"value":"3"}' % NOW, R.SCHEMA, "value: Input should be a valid number"),
        (TOPIC, b'{"v":1,"ts":%d,"value":true}' % NOW, R.SCHEMA, "value: Input should be a valid number"),
        (TOPIC, b'{"v":2,"ts":%d,"value":1}' % NOW, R.SCHEMA, "v: Input should be 1"),
        (TOPIC, b'{"v":1,"ts":1.5,"value":1}', R.SCHEMA, "ts: Input should be a valid integer"),
        (TOPIC, b'{"v":1,"value":1}', R.SCHEMA, "ts: Field required"),
        (
            TOPIC,
            b'{"v":1,"ts":%d,"value":1,"extra":1}' % NOW,
            R.SCHEMA,
            "extra: Extra inputs are not permitted",
        ),
        (TOPIC, b'{"v":1,"ts":%d,"value":1}' % (NOW + 3_600_000), R.CLOCK_SKEW, "in the future"),
        (TOPIC, b'{"v":1,"ts":%d,"value":1}' % (NOW - 30 * 86_400_000), R.CLOCK_SKEW, "s old"),
        (TOPIC, b'{"v":1,"ts":%d,"value":99}' % NOW, R.SCHEMA, "above the physical maximum 50"),
    ],
)
def test_rejections_carry_code_and_reason(topic, payload, code, words):
    with pytest.raises(Rejected) as e:
        V.check(topic, payload, NOW)
    assert e.value.code == code
    assert words in e.value.reason
