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


# --- the fast path and the reference path agree ----------------------------------------------
REF = ReadingValidator(CFG, fast_path=False)  # pydantic's model_validate_json decides everything


def _verdict(v: ReadingValidator, topic, payload, now=NOW):
    try:
        r = v.check(topic, payload, now)
    except Rejected as e:
        return ("rejected", e.code, e.reason)
    assert type(r.value) is float
    return ("reading", r.sensor_id, r.ts, r.value.hex(), r.received)


_EDGE = [
    b'{"v":1,"ts":%d,"value":21.5}' % NOW,
    b' {"v":1,\n"ts":%d ,"value":-0.0}\t' % NOW,
    b'{"value":3,"ts":%d,"v":1}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"seq":0}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"seq":null}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"seq":-1}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"seq":18446744073709551616}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"seq":1.0}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"sek":1}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"value":2}' % NOW,
    b'{"v":1,"ts":%d,"value":"x","value":2}' % NOW,
    b'{"v":1,"ts":%d,"value":2,"value":"x"}' % NOW,
    b'{"v":1,"v":2,"ts":%d,"value":2}' % NOW,
    b'{"\\u0076":1,"ts":%d,"value":2}' % NOW,
    b'{"v":1.0,"ts":%d,"value":2}' % NOW,
    b'{"v":true,"ts":%d,"value":2}' % NOW,
    b'{"v":1,"ts":%d.0,"value":2}' % NOW,
    b'{"v":1,"ts":-1,"value":2}',
    b'{"v":1,"ts":32503680000001,"value":2}',
    b'{"v":1,"ts":%d,"value":18446744073709551615}' % NOW,
    b'{"v":1,"ts":%d,"value":18446744073709551617}' % NOW,
    b'{"v":1,"ts":%d,"value":-9223372036854775809}' % NOW,
    b'{"v":1,"ts":%d,"value":123456789012345678901234567890}' % NOW,
    b'{"v":1,"ts":%d,"value":1%s}' % (NOW, b"0" * 400),
    b'{"v":1,"ts":%d,"value":1e308}' % NOW,
    b'{"v":1,"ts":%d,"value":1e309}' % NOW,
    b'{"v":1,"ts":%d,"value":5e-324}' % NOW,
    b'{"v":1,"ts":%d,"value":1e-400}' % NOW,
    b'{"v":1,"ts":%d,"value":0.1000000000000000055511151231257827021181583404541015625}' % NOW,
    b'{"v":1,"ts":%d,"value":2.5000000000000000000001}' % NOW,
    b'{"v":1,"ts":%d,"value":Infinity}' % NOW,
    b'{"v":1,"ts":%d,"value":true}' % NOW,
    b'{"v":1,"ts":%d,"value":null}' % NOW,
    b'{"v":1,"ts":%d,"value":[1]}' % NOW,
    b'\xef\xbb\xbf{"v":1,"ts":%d,"value":1}' % NOW,
    b'{"v":1,"ts":%d,"value":1}\x00' % NOW,
    b'{"v":1,"ts":%d,"value":1,"k":"\\ud800"}' % NOW,
    b'{"v":1,"ts":%d,"value":1,"k":"\xed\xa0\x80"}' % NOW,
    b"[" * 2000 + b"]" * 2000,
    b"",
]


@pytest.mark.parametrize("payload", _EDGE)
def test_fast_path_agrees_with_the_reference_path_on_edge_cases(payload):
    for topic in (TOPIC, b"gridwatch/sensors/x/reading", "gridwatch/sensors/ghost-1/reading"):
        assert _verdict(V, topic, payload) == _verdict(REF, topic, payload), payload


def test_fast_path_agrees_with_the_reference_path_on_the_fuzz_corpus():
    """Same verdict, reason sentence and value bits on 20,000 cases of tests/test_fuzz_bridge.py's corpus
    (the in-process twin of the fuzz test through the real bridge)."""
    from tests.test_fuzz_bridge import Corpus

    cases = Corpus(CFG, NOW, seed=7).build(20_000, 0)
    readings = 0
    for c in cases:
        got = _verdict(V, c.topic, c.payload)
        assert got == _verdict(REF, c.topic, c.payload), (c.kind, c.topic, c.payload[:200])
        readings += got[0] == "reading"
    assert 5_000 < readings < 15_000  # both outcomes well represented
