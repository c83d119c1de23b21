"""Fuzzing the sensor ingest edge: generated and mutated MQTT topics and payloads.

Two tests:

* ``test_validator_agrees_with_an_independent_oracle`` (in-process, hypothesis, 2,000 examples):
  JSON documents and raw bytes drawn by hypothesis go through ``ReadingValidator.check``; it never
  raises anything but ``Rejected``, and its verdict (reading or reason code) equals the one of a
  small oracle written here from the payload contract, not from the product code.

* ``test_fuzz_through_the_real_bridge`` (real mosquitto + the real ``gridwatch bridge`` process +
  Tansu + InfluxDB 1.6): a seeded corpus of >= 100,000 (topic, payload) cases, published with
  QoS 1. Asserts that the bridge survives; that each case delivered to it is EITHER stored as a
  reading OR dead-lettered (never both, never neither: readings + dead letters == cases, exactly);
  that cases valid by construction are stored with the value they were built with and cases invalid
  by construction are dead-lettered with the expected reason code; that every dead letter carries a
  reason and exactly the bytes published; and that the bridge's counters in InfluxDB agree.

Outcome of a case: decided by construction where that is easy (valid payloads, the oracle's
structured documents, truncations, oversize, unknown sensors, ...). Byte-level mutations and
duplicate keys are "undetermined": only the either-or invariant applies to them, and the in-process
validator (checked against the bridge's own output) says which reading they must have produced.

Topics outside the bridge's subscription (``{prefix}/sensors/+/reading``) are published too, as a
separate group: the broker never hands them to the bridge, so they must be neither stored nor
dead-lettered, and the bridge's ``received`` counter must not include them.

Seed: ``GRIDWATCH_FUZZ_SEED`` (default 20241124); cases: ``GRIDWATCH_FUZZ_CASES`` (default 100000).
"""

from __future__ import annotations

import json
import math
import os
import random
import string
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatch.codec import Reading, decode_event, decode_readings_record
from gridwatch.config import GridwatchConfig
from gridwatch.devservers.stack import DevStack
from gridwatch.ingest.mqtt_bridge import DEAD_LETTER_MAX_RAW_BYTES
from gridwatch.ingest.sensor_payload import ReadingValidator, Rejected
from gridwatch.localrun import LocalPipeline, read_topic
from gridwatch.schemas import DeadLetter, StreamTick
from gridwatch.schemas import DeadLetterReason as R
from gridwatch.topics import DEAD_LETTERS, SENSOR_READINGS
from tests.helpers import demo_config

SEED = int(os.environ.get("GRIDWATCH_FUZZ_SEED", "20241124"))
N_CASES = int(os.environ.get("GRIDWATCH_FUZZ_CASES", "100000"))  # delivered to the bridge
N_UNSUBSCRIBED = max(100, N_CASES // 50)  # published on topics the bridge does not subscribe to

MAX_PAYLOAD = 2048
MAX_TS = 32_503_680_000_000  # schemas.EpochMs upper bound
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
FIELDS = ("v", "ts", "value", "seq")


# ==================================================================================================
# JSON writing with control over the text, and the oracle
# ==================================================================================================


class Lit:
    """A JSON token written verbatim (``NaN``, ``1e400``, ``1.0``, 400 digits...) and what it means."""

    __slots__ = ("means", "text")

    def __init__(self, text: str, means: Any) -> None:
        self.text = text
        self.means = means

    def __repr__(self) -> str:
        return f"Lit({self.text[:40]!r})"


_WS = ("",) * 12 + (" ", "  ", "\n", "\t", "\r\n", " \t ")


def dump(obj: Any, rng: random.Random | None = None) -> str:
    """JSON text of `obj`; with `rng`: random insignificant whitespace and escaped key letters."""

    def ws() -> str:
        return rng.choice(_WS) if rng is not None else ""

    def key(k: str) -> str:
        if rng is not None and k and rng.random() < 0.06:
            i = rng.randrange(len(k))
            esc = f"\\u{ord(k[i]):04x}" if rng.random() < 0.5 else f"\\u{ord(k[i]):04X}"
            if ord(k[i]) <= 0xFFFF and k[i] not in '"\\':
                return '"' + json.dumps(k[:i])[1:-1] + esc + json.dumps(k[i + 1 :])[1:-1] + '"'
        return json.dumps(k, ensure_ascii=rng is None or rng.random() < 0.5)

    def go(o: Any) -> str:
        if isinstance(o, Lit):
            return o.text
        if o is None:
            return "null"
        if o is True:
            return "true"
        if o is False:
            return "false"
        if isinstance(o, int):
            return str(o)
        if isinstance(o, float):
            if math.isnan(o):
                return "NaN"
            if math.isinf(o):
                return "Infinity" if o > 0 else "-Infinity"
            return repr(o)
        if isinstance(o, str):
            return json.dumps(o, ensure_ascii=rng is None or rng.random() < 0.5)
        if isinstance(o, list | tuple):
            return "[" + ws() + ("," + ws()).join(go(x) for x in o) + ws() + "]"
        if isinstance(o, dict):
            items = [ws() + key(k) + ws() + ":" + ws() + go(v) + ws() for k, v in o.items()]
            return "{" + ",".join(items) + "}"
        raise TypeError(type(o))

    return ws() + go(obj) + ws()


def _means(x: Any) -> Any:
    return x.means if isinstance(x, Lit) else x


def _is_int(x: Any) -> bool:
    return type(x) is int


def _field_error(name: str, x: Any) -> str | None:
    """None if the (decoded) value is fine for the field, else 'schema' or 'finite'."""
    if name == "v":
        return None if _is_int(x) and x == 1 else "schema"
    if name == "ts":
        return None if _is_int(x) and 0 <= x <= MAX_TS else "schema"
    if name == "value":
        if type(x) is float:
            return None if math.isfinite(x) else "finite"
        if _is_int(x):
            try:
                float(x)
            except OverflowError:
                return "finite"
            return None
        return "schema"
    if name == "seq":
        return None if x is None or (_is_int(x) and x >= 0) else "schema"
    raise AssertionError(name)


@dataclass(frozen=True)
class Limits:
    lo: float | None
    hi: float | None


def limits_of(cfg: GridwatchConfig) -> dict[str, Limits]:
    return {
        s.id: Limits(cfg.sensor_types[s.type].valid_min, cfg.sensor_types[s.type].valid_max)
        for s in cfg.sensors
    }


def topic_sensor(topic: str, prefix: str = "gridwatch") -> str | None:
    parts = topic.split("/")
    if (
        len(parts) == 4
        and parts[0] == prefix
        and parts[1] == "sensors"
        and parts[3] == "reading"
        and parts[2]
    ):
        return parts[2]
    return None


Expect = tuple[str, int, float] | frozenset  # (sensor_id, ts, value) or the acceptable reason codes


def oracle(topic: str, payload_len: int, doc: Any, sensors: dict[str, Limits], now: int) -> Expect:
    """What the contract says a (topic, payload) becomes, `doc` being the JSON the payload holds.

    Order of checks as documented for the bridge: size, topic, JSON/schema, clock, physical range.
    """
    if payload_len > MAX_PAYLOAD:
        return frozenset({R.OVERSIZE})
    sid = topic_sensor(topic)
    if sid is None:
        return frozenset({R.BAD_TOPIC})
    if sid not in sensors:
        return frozenset({R.UNKNOWN_SENSOR})
    if not isinstance(doc, dict):
        return frozenset({R.SCHEMA})
    errors = []
    for name in FIELDS:
        if name not in doc:
            if name != "seq":
                errors.append("schema")
            continue
        err = _field_error(name, _means(doc[name]))
        if err:
            errors.append(err)
    if any(k not in FIELDS for k in doc):
        errors.append("schema")
    if errors:
        # the first error in field order names the code (extra keys come after the fields)
        return frozenset({R.NOT_FINITE if errors[0] == "finite" else R.SCHEMA})
    ts, value = _means(doc["ts"]), float(_means(doc["value"]))
    if ts > now + 300_000 or ts < now - 7 * DAY:
        return frozenset({R.CLOCK_SKEW})
    lim = sensors[sid]
    if (lim.lo is not None and value < lim.lo) or (lim.hi is not None and value > lim.hi):
        return frozenset({R.SCHEMA})
    return (sid, ts, value)


# ==================================================================================================
# In-process property test (hypothesis)
# ==================================================================================================

_CFG = demo_config()
_LIMITS = limits_of(_CFG)
_SIDS = sorted(_LIMITS)
_NOW = 1_764_000_000_000
_VALIDATOR = ReadingValidator(_CFG)

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(
        [
            Lit("1e400", math.inf),
            Lit("-1e400", -math.inf),
            Lit("1.0", 1.0),
            Lit("1e0", 1.0),
            Lit("1E+0", 1.0),
            Lit("-0", 0),
            Lit("-0.0", -0.0),
            Lit("5e-324", 5e-324),
            Lit("1e-400", 0.0),
        ]
    )
)
_json_values = st.recursive(
    _json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=5,
)
_field_values = {
    "v": st.just(1) | _json_values,
    "ts": st.integers(_NOW - 8 * DAY, _NOW + HOUR) | st.integers(_NOW - 2 * HOUR, _NOW) | _json_values,
    "value": st.floats(-10, 200) | st.integers(-10, 200) | _json_values,
    "seq": st.none() | st.integers(min_value=0) | _json_values,
}


@st.composite
def _documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_json_values)  # anything, usually not an object
    doc: dict[str, Any] = {}
    for name in FIELDS:
        if draw(st.integers(0, 9)) < (3 if name == "seq" else 9):
            doc[name] = draw(_field_values[name])
    extra = draw(
        st.dictionaries(st.text(max_size=5).filter(lambda k: k not in FIELDS), _json_values, max_size=2)
    )
    items = list({**doc, **extra}.items())
    order = draw(st.permutations(range(len(items))))
    return {items[i][0]: items[i][1] for i in order}


_topics = (
    st.sampled_from(_SIDS).map(lambda s: f"gridwatch/sensors/{s}/reading")
    | st.text(max_size=12).map(lambda s: f"gridwatch/sensors/{s}/reading")
    | st.text(max_size=30)
)


@pytest.mark.timeout(300)
@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    topic=st.sampled_from(_SIDS).map(lambda s: f"gridwatch/sensors/{s}/reading") | _topics,
    body=_documents() | st.binary(max_size=MAX_PAYLOAD + 64),
    rnd=st.randoms(use_true_random=False),
)
def test_validator_agrees_with_an_independent_oracle(topic: str, body: Any, rnd: random.Random):
    validator = _VALIDATOR
    if isinstance(body, bytes):
        payload, doc = body, None
    else:
        payload, doc = dump(body, rnd).encode("utf-8", "surrogatepass"), body
    try:
        got: Any = validator.check(topic, payload, _NOW)
    except Rejected as r:
        assert r.reason and isinstance(r.code, R)
        got = r.code
    else:
        assert isinstance(got, Reading) and math.isfinite(got.value) and got.received == _NOW
        assert got.sensor_id in _LIMITS and _NOW - 7 * DAY <= got.ts <= _NOW + 300_000
        lim = _LIMITS[got.sensor_id]
        assert lim.lo <= got.value <= lim.hi
    if doc is None:
        return  # raw bytes: only "Rejected or a sound reading"
    try:
        json.loads(payload)  # the oracle needs a payload that is JSON (plus NaN/Infinity)
    except ValueError:
        return
    want = oracle(topic, len(payload), doc, _LIMITS, _NOW)
    if isinstance(want, frozenset):
        assert got in want, f"{topic!r} {payload!r}: oracle {set(want)}, validator {got!r}"
    else:
        assert isinstance(got, Reading), f"{topic!r} {payload!r}: oracle {want}, validator {got!r}"
        assert (got.sensor_id, got.ts, got.value) == want, payload


# ==================================================================================================
# The corpus for the real bridge
# ==================================================================================================


@dataclass(slots=True)
class Case:
    kind: str
    topic: str
    payload: bytes
    expect: Expect | None  # None: undetermined (byte mutations, duplicate keys)
    subscribed: bool = True


# hand-picked: MQTT forbids +, # and (in mosquitto) control characters and U+0000 in topics
_ID_CHARS = string.ascii_letters + string.digits + "-_.~!$&'()*,;=:@ %\"<>?[]{}|\\^`"
_ID_UNICODE = "äöüßéèçñøåÆŒ中文传感器水位噪声测试ёжщΩλπ€£¥©®™…‰•←→∀∂∑√∞≈≠≤≥🙂🚒🌊💧🔥\u200b\u00a0\u202e\ufeff"
_NOISE = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"-", b"+", b".", b"e", b"E", b"0", b"9",
          b"n", b"t", b" ", b"\n", b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\\u", b"1e999",
          b"NaN", b"null", b"true", b"9" * 30]  # fmt: skip
_WRONG = [None, True, False, "1", "", "NaN", "Infinity", [], [1], {}, {"value": 1}, [[[]]], 1.5, -1, 0, 2,
          10**30, -(10**30), 1e300, -1e300, Lit("1e400", math.inf), Lit("NaN", math.nan), "\u0000", "中文",
          Lit("-0", 0), 2**63, -(2**63)]  # fmt: skip
_INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3", b"\xc3(", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xed\xa0\x80",
                 b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80", b"\x80"]  # fmt: skip


class Corpus:
    """A seeded generator of cases; valid ones are unique per (sensor, ts)."""

    def __init__(self, cfg: GridwatchConfig, now: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.limits = limits_of(cfg)
        self.sids = sorted(self.limits)
        self._valid_k = 0  # valid cases: ts counts down from now - 2 h
        self._tmpl_k = 0  # everything else: from now - 3 days
        self._seen: set[tuple[str, bytes]] = set()
        self.cases: list[Case] = []

    # --- pieces ------------------------------------------------------------------------------
    def topic(self, sid: str) -> str:
        return f"gridwatch/sensors/{sid}/reading"

    def value_lit(self, lim: Limits) -> Lit:
        rng = self.rng
        lo, hi = lim.lo if lim.lo is not None else -1e6, lim.hi if lim.hi is not None else 1e6
        while True:
            r = rng.random()
            if r < 0.08:
                x = rng.choice([lo, hi])
                text = rng.choice([repr(float(x)), str(int(x)) if float(x).is_integer() else repr(float(x))])
            elif r < 0.25:
                text = str(rng.randint(math.ceil(lo), math.floor(hi)))
            elif r < 0.45:
                text = repr(round(rng.uniform(lo, hi), rng.randint(0, 6)))
            elif r < 0.6:
                text = f"{rng.uniform(lo, hi):.{rng.randint(0, 12)}e}"
                text = text.replace("e", rng.choice(["e", "E"])).replace("+", rng.choice(["+", ""]))
            elif r < 0.65:
                text = rng.choice(["0", "-0", "0.0", "-0.0", "0e0", "0E-5", "0.000"])
            elif r < 0.72:  # more digits than a double holds: must round the same way as Python
                whole = rng.randint(math.ceil(lo), math.floor(hi) - 1)
                text = f"{whole}.{''.join(rng.choices(string.digits, k=rng.randint(15, 30)))}"
            else:
                text = repr(rng.uniform(lo, hi))
            if lo <= float(text) <= hi:
                return Lit(text, float(text))

    def valid_doc(self, sid: str, ts: int) -> dict[str, Any]:
        rng = self.rng
        fields: list[tuple[str, Any]] = [("v", 1), ("ts", ts), ("value", self.value_lit(self.limits[sid]))]
        if rng.random() < 0.3:
            fields.append(("seq", rng.choice([rng.randrange(2**31), 0, None, 2**64 + rng.randrange(99)])))
        rng.shuffle(fields)
        return dict(fields)

    def next_valid_ts(self) -> int:
        self._valid_k += 1
        return self.now - 2 * HOUR - self._valid_k * 37 - self.rng.randrange(37)

    def template(self) -> tuple[str, dict[str, Any]]:
        """A valid document for a random sensor, at a (sensor, ts) no valid case uses."""
        self._tmpl_k += 1
        sid = self.rng.choice(self.sids)
        return sid, self.valid_doc(sid, self.now - 3 * DAY - self._tmpl_k * 37 - self.rng.randrange(37))

    def add(
        self, kind: str, topic: str, payload: bytes, expect: Expect | None, subscribed: bool = True
    ) -> bool:
        key = (topic[:512], payload[:DEAD_LETTER_MAX_RAW_BYTES])
        if key in self._seen:
            return False
        self._seen.add(key)
        self.cases.append(Case(kind, topic, payload, expect, subscribed))
        return True

    def judged(self, kind: str, topic: str, payload: bytes, doc: Any) -> bool:
        return self.add(kind, topic, payload, oracle(topic, len(payload), doc, self.limits, self.now))

    # --- categories --------------------------------------------------------------------------
    def valid(self) -> None:
        sid = self.rng.choice(self.sids)
        ts = self.next_valid_ts()
        doc = self.valid_doc(sid, ts)
        text = dump(doc, self.rng)
        if self.rng.random() < 0.01:  # exactly at the size limit is still fine
            text += " " * (MAX_PAYLOAD - len(text.encode()))
        expect = (sid, ts, float(doc["value"].means))
        assert oracle(self.topic(sid), len(text.encode()), doc, self.limits, self.now) == expect
        assert self.add("valid", self.topic(sid), text.encode(), expect)

    def structured(self) -> None:
        """Wrong types, missing/extra keys, nesting, non-finite numbers, skewed ts... judged by the oracle."""
        rng = self.rng
        sid, doc = self.template()
        now = self.now
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if not isinstance(doc, dict):
                break
            op = rng.randrange(11)
            if op == 0 and doc:  # missing key
                del doc[rng.choice(list(doc))]
            elif op == 1:  # wrong type
                doc[rng.choice(FIELDS)] = rng.choice(_WRONG)
            elif op == 2:  # extra keys
                name = "".join(rng.choices(_ID_CHARS + _ID_UNICODE, k=rng.randint(0, 8)))
                doc[name] = rng.choice(_WRONG + [1])
            elif op == 3:  # nested
                f = rng.choice(FIELDS[:3])
                doc[f] = rng.choice(
                    [{f: doc.get(f, 1)}, [doc.get(f, 1)], {"$numberLong": str(doc.get(f, 1))}]
                )
            elif op == 4:  # not finite / too big for a double
                doc["value"] = rng.choice(
                    [Lit("NaN", math.nan), Lit("Infinity", math.inf), Lit("-Infinity", -math.inf),
                     Lit("1e400", math.inf), Lit("-1E400", -math.inf), Lit("1e309", math.inf),
                     Lit("1" + "0" * 400, 10**400), Lit("-" + "9" * 330, -int("9" * 330))]
                )  # fmt: skip
            elif op == 5:  # ts not an integer
                ts = _means(doc.get("ts", now - DAY))
                ts = ts if _is_int(ts) else now - DAY
                doc["ts"] = rng.choice(
                    [Lit(f"{ts}.0", float(ts)), ts + 0.5, Lit(f"{ts / 1000:.3f}e3", ts / 1.0), float(ts),
                     Lit(f"{ts:.6e}", float(f"{ts:.6e}")), str(ts)]
                )  # fmt: skip
            elif op == 6:  # ts far from now, negative, or beyond the schema's bound
                doc["ts"] = rng.choice(
                    [now + rng.randint(HOUR, 3650 * DAY), now - rng.randint(8 * DAY, now), 0, -1,
                     -rng.randint(1, 2**62), MAX_TS + 1, 2**63, 10**30, Lit("-0", 0), 1]
                )  # fmt: skip
            elif op == 7:  # other versions
                doc["v"] = rng.choice(
                    [0, 2, -1, Lit("1.0", 1.0), Lit("1e0", 1.0), True, False, "1", None, [1], 1.5, 10**20]
                )
            elif op == 8:  # bad sequence numbers
                doc["seq"] = rng.choice(
                    [-1, -(2**63), 1.5, True, "3", [], {}, Lit("1e3", 1000.0), Lit("NaN", math.nan)]
                )
            elif op == 9:  # outside the physical range of the sensor type
                lim = self.limits[sid]
                doc["value"] = rng.choice(
                    [
                        lim.lo - rng.choice([1e-9, 0.5, 1e6]),
                        lim.hi + rng.choice([1e-9, 0.5, 1e6]),
                        1e300,
                        -1e300,
                    ]
                )
            else:  # not an object at all
                doc = rng.choice([[doc], "reading", 1, 1.5, None, True, [], [1, 2], {"reading": doc}])
        text = dump(doc, self.rng).encode("utf-8", "surrogatepass")
        if len(text) > MAX_PAYLOAD:
            return
        self.judged("structured", self.topic(sid), text, doc)

    def truncated(self) -> None:
        sid, doc = self.template()
        text = dump(doc, self.rng).strip().encode()
        self.add("truncated", self.topic(sid), text[: self.rng.randrange(len(text))], frozenset({R.NOT_JSON}))

    def not_json(self) -> None:
        rng = self.rng
        sid, doc = self.template()
        text = dump(doc).encode()
        body = text[1:-1]
        ts = str(doc["ts"]).encode()
        variants = [
            text + rng.choice([b",", b"x", b"}", b"{}", b"1", b"\x00", b"]", b"//", b"\x1a"]),
            b"\xef\xbb\xbf" + text,
            rng.choice([b"x", b"(", b"\x00", b")]}'\n"]) + text,
            text.replace(b'"', b"'"),
            b"{" + body + b",}",
            b"{" + body + b"/* comment */}",
            b"{" + body.replace(b",", b" ", 1) + b"}",
            b"",
            rng.choice([b"nan", b"undefined", b"None", b"True", b"{", b"}", b"[", b'"', b"v=1", b"\x00"]),
            text.replace(b'"ts":' + ts, b'"ts":0' + ts),
            text.replace(b'"ts":' + ts, b'"ts":+' + ts),
            text.replace(b'"ts":' + ts, b'"ts":0x' + ts),
            text.replace(b'"v":1', b'"v":.1'),
            text.replace(b'"v":1', b'"v":1.'),
            text.replace(b'"v":1', b'"v":01'),
            text.replace(b'"v":1', b'"v":-'),
            b"{" + body + b"}" + b"\n" + b"{" + body + b"}",
            b'{"v":1,"ts":' + ts + b',"value":"\\x41"}',
            b'{"v":1,"ts":' + ts + b',"value":"\\u12"}',
            b'{"v":1,"ts":' + ts + b',"value":"\t"}',  # raw control character in a string
        ]
        payload = rng.choice(variants)
        if payload != text:
            self.add("not_json", self.topic(sid), payload, frozenset({R.NOT_JSON}))

    def not_utf8(self) -> None:
        rng = self.rng
        sid, doc = self.template()
        bad = rng.choice(_INVALID_UTF8)
        text = dump(doc).encode()
        if rng.random() < 0.6:  # inside a string: the JSON is fine except for its encoding
            where = rng.choice(["key", "value"])
            extra = b'"x' + bad + b'":1' if where == "key" else b'"note":"' + bad + b'"'
            payload, want = text[:-1] + b"," + extra + b"}", frozenset({R.NOT_UTF8})
        else:  # anywhere: the parser may first see broken UTF-8 or broken JSON
            i = rng.randrange(len(text) + 1)
            payload, want = text[:i] + bad + text[i:], frozenset({R.NOT_UTF8, R.NOT_JSON})
        self.add("not_utf8", self.topic(sid), payload, want)

    def mutated(self) -> None:
        """Byte-level mutations: the outcome is whatever the validator says (undetermined)."""
        rng = self.rng
        sid, doc = self.template()
        b = bytearray(dump(doc, rng).encode())
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            op = rng.randrange(9)
            i = rng.randrange(len(b) + 1)
            j = min(len(b), i + rng.randint(1, 8))
            if op == 0 and b:  # flip one bit
                k = rng.randrange(len(b))
                b[k] ^= 1 << rng.randrange(8)
            elif op == 1 and b:  # replace a byte
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif op == 2:  # insert noise
                b[i:i] = rng.choice(_NOISE)
            elif op == 3:  # delete a slice
                del b[i:j]
            elif op == 4:  # duplicate a slice
                b[j:j] = b[i:j]
            elif op == 5:  # swap two slices
                k = rng.randrange(len(b) + 1)
                lo, hi = sorted((i, k))
                b = b[:lo] + b[hi:] + b[lo:hi]
            elif op == 6:  # splice with another payload
                other = dump(self.template()[1]).encode()
                b = b[:i] + other[rng.randrange(len(other) + 1) :]
            elif op == 7:  # blow up a digit run
                digits = [k for k, c in enumerate(b) if 48 <= c <= 57]
                if digits:
                    k = rng.choice(digits)
                    b[k:k] = bytes(rng.choices(b"0123456789", k=rng.choice([5, 20, 300])))
            else:  # change a letter's case
                letters = [k for k, c in enumerate(b) if 97 <= c <= 122]
                if letters:
                    b[rng.choice(letters)] -= 32
        topic = self.topic(sid) if rng.random() < 0.97 else self.topic(self.rng.choice(self.sids))
        self.add("mutated", topic, bytes(b[: MAX_PAYLOAD + 10]), None)

    def duplicate_keys(self) -> None:
        rng = self.rng
        sid, doc = self.template()
        text = dump(doc)
        name = rng.choice(["v", "ts", "value", "seq"])
        again = f'"{name}":' + rng.choice(["1", "NaN", '"x"', "null", dump(doc.get(name, 2))])
        text = "{" + again + "," + text[1:] if rng.random() < 0.5 else text[:-1] + "," + again + "}"
        self.add("duplicate_keys", self.topic(sid), text.encode(), None)

    def oversize(self) -> None:
        rng = self.rng
        sid, doc = self.template()
        text = dump(doc).encode()
        r = rng.random()
        if r < 0.4:  # valid JSON, padded past the limit
            n = rng.choice([MAX_PAYLOAD + 1, MAX_PAYLOAD + 2, rng.randint(MAX_PAYLOAD + 1, 6000)])
            payload = text + rng.choice([b" ", b"\n", b"\t"]) * (n - len(text))
        elif r < 0.6:  # a huge string field
            payload = text[:-1] + b',"blob":"' + b"A" * rng.randint(MAX_PAYLOAD, 5000) + b'"}'
        else:  # noise
            payload = rng.randbytes(rng.randint(MAX_PAYLOAD + 1, 8000))
        topic = self.topic(sid)
        if rng.random() < 0.2:  # size is checked before the topic
            topic = rng.choice(
                [f"gridwatch/sensors/ghost-{rng.randrange(10**6)}/reading", "gridwatch/sensors//reading"]
            )
        self.add("oversize", topic, payload, frozenset({R.OVERSIZE}))

    def unknown_sensor(self) -> None:
        rng = self.rng
        sid, doc = self.template()
        r = rng.random()
        if r < 0.3:
            sensor = rng.choice(
                [sid.upper(), sid + " ", " " + sid, sid + ".", sid + "\u200b", sid[:-1], sid + "0", "x" + sid,
                 sid.replace("-", "_"), sid.replace("-", "\u2010"), f"{sid}%2Freading", "..", ".", "*", "$SYS", "\\"]
            )  # fmt: skip
        elif r < 0.6:
            sensor = "".join(rng.choices(_ID_CHARS, k=rng.randint(1, 40)))
        elif r < 0.9:
            sensor = "".join(rng.choices(_ID_CHARS + _ID_UNICODE * 3, k=rng.randint(1, 20)))
        else:  # longer than the dead letter's origin field keeps (512)
            sensor = "".join(rng.choices(_ID_CHARS, k=rng.randint(500, 700)))
        if sensor in self.limits:
            return
        payload = rng.choice([dump(doc, rng).encode(), b"", b"not json", rng.randbytes(rng.randint(1, 64))])
        self.add("unknown_sensor", self.topic(sensor), payload, frozenset({R.UNKNOWN_SENSOR}))

    def bad_topic(self) -> None:
        """The only malformed topic the subscription delivers: an empty sensor level."""
        sid, doc = self.template()
        payload = self.rng.choice([dump(doc, self.rng).encode(), self.rng.randbytes(self.rng.randint(0, 40))])
        self.add("bad_topic", "gridwatch/sensors//reading", payload, frozenset({R.BAD_TOPIC}))

    def unsubscribed(self) -> None:
        rng = self.rng
        sid, doc = self.template()
        topic = rng.choice(
            [f"gridwatch/sensors/{sid}/reading/extra", f"gridwatch/sensors/{sid}/reading/", f"gridwatch/sensors/{sid}",
             "gridwatch/sensors/reading", f"gridwatch/{sid}/reading", f"gridwatch/sensors/{sid}/x/reading",
             f"Gridwatch/sensors/{sid}/reading", f"gridwatch2/sensors/{sid}/reading", f"/gridwatch/sensors/{sid}/reading",
             f"gridwatch//sensors/{sid}/reading", f"gridwatch/Sensors/{sid}/reading", f"gridwatch/sensors/{sid}/Reading",
             f"gridwatch/sensors/{sid}/readings", f"sensors/{sid}/reading", f"gridwatch/sensors/{sid}/reading ",
             "gridwatch", "gridwatch/sensors", "/", "//", f"gridwatch/sensors/{sid}/reading//", "gridwatch/sensors///reading"]
        )  # fmt: skip
        # the bridge subscribes to the whole gridwatch/sensors subtree: malformed topics there are
        # dead-lettered as bad_topic; anything outside it never reaches the bridge
        if topic == "gridwatch/sensors" or topic.startswith("gridwatch/sensors/"):
            self.add("bad_topic_subtree", topic, dump(doc, rng).encode(), frozenset({R.BAD_TOPIC}))
        else:
            self.add("unsubscribed", topic, dump(doc, rng).encode(), None, subscribed=False)

    def huge(self) -> None:
        """A few payloads far beyond the limit, up to several MiB (dead letters keep their first bytes)."""
        for n in (300_000, 1_500_000, 7_000_000):
            sid = self.rng.choice(self.sids)
            self.add("oversize_huge", self.topic(sid), self.rng.randbytes(n), frozenset({R.OVERSIZE}))

    def build(self, n: int, n_unsubscribed: int) -> list[Case]:
        weights = {
            self.valid: 40,
            self.structured: 20,
            self.mutated: 14,
            self.truncated: 5,
            self.not_json: 4,
            self.not_utf8: 2,
            self.duplicate_keys: 2,
            self.oversize: 4,
            self.unknown_sensor: 7,
            self.bad_topic: 2,
        }
        makers, w = list(weights), list(weights.values())
        self.huge()
        while len(self.cases) < n:
            self.rng.choices(makers, w)[0]()
        while len(self.cases) < n + n_unsubscribed:
            self.unsubscribed()
        self.rng.shuffle(self.cases)
        return self.cases


# ==================================================================================================
# The real bridge
# ==================================================================================================


def publish_all(pipe: LocalPipeline, cases: list[Case], window: int = 20_000) -> None:
    """QoS 1 through the real mosquitto; at most `window` unacknowledged (paho's ids are 16-bit)."""
    lost: list[Any] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzz-pub", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_disconnect = lambda *a: lost.append(a)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(pipe.stack.mqtt_host, pipe.stack.mqtt_port, keepalive=60)
    c.loop_start()
    try:
        assert connected.wait(10)
        pending: deque[mqtt.MQTTMessageInfo] = deque()

        def acked(info: mqtt.MQTTMessageInfo) -> None:
            info.wait_for_publish(60)
            assert info.is_published(), f"no PUBACK for message {info.mid} within 60 s"

        for case in cases:
            info = c.publish(case.topic, case.payload, qos=1)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, (info.rc, case.topic)
            pending.append(info)
            while len(pending) > window:
                acked(pending.popleft())
        while pending:
            acked(pending.popleft())
        assert not lost, f"the broker dropped the publisher: {lost}"
    finally:
        c.loop_stop()
        c.disconnect()


def bridge_counters(pipe: LocalPipeline) -> dict[str, int]:
    fields = ("received", "forwarded", "dead_letters", "kafka_send_errors")
    q = ", ".join(f"last({f}) AS {f}" for f in fields)
    series = pipe.influxql(f"SELECT {q} FROM pipeline_health WHERE component='bridge'")
    if not series:
        return {}
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    return {f: int(row[f] or 0) for f in fields}


def bridge_dead_letter_reasons(pipe: LocalPipeline) -> dict[str, int]:
    series = pipe.influxql("SELECT last(count) FROM dead_letters WHERE component='bridge' GROUP BY reason")
    counts = {s["tags"]["reason"]: int(s["values"][0][1]) for s in series}
    return {k: v for k, v in counts.items() if v}  # the bridge writes its known reasons from zero


def predict(validator: ReadingValidator, case: Case, now: int) -> tuple[str, int, float] | R:
    try:
        r = validator.check(case.topic, case.payload, now)
    except Rejected as e:
        return e.code
    return (r.sensor_id, r.ts, r.value)


@pytest.mark.servers
@pytest.mark.timeout(600)
def test_fuzz_through_the_real_bridge(tmp_path: Path):
    t_start = time.monotonic()
    with DevStack(tmp_path / "servers") as stack:
        pipe = LocalPipeline(
            stack,
            tmp_path,
            overrides={"bridge": {"health_interval_s": 1, "max_payload_bytes": MAX_PAYLOAD}},
        )
        try:
            pipe.start_bridge()
            _fuzz(pipe, t_start)
        finally:
            pipe.stop()


def _fuzz(pipe: LocalPipeline, t_start: float) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    now_lo = time.time_ns() // 1_000_000
    cases = Corpus(pipe.cfg, now_lo, SEED).build(N_CASES, N_UNSUBSCRIBED)
    delivered = [c for c in cases if c.subscribed]
    timings["generate"] = time.monotonic() - t0
    assert len(delivered) >= 100_000 or N_CASES < 100_000

    t0 = time.monotonic()
    publish_all(pipe, cases)
    timings["publish"] = time.monotonic() - t0

    # the bridge has handled everything once its counters say so (health every second)
    n = len(delivered)

    def settled() -> bool:
        s = bridge_counters(pipe)
        return s.get("received") == n and s.get("forwarded", 0) + s.get("dead_letters", 0) == n

    t0 = time.monotonic()
    assert pipe.wait_for(settled, 120, interval=1), f"bridge counters {bridge_counters(pipe)}, expected {n}"
    timings["drain after publish"] = time.monotonic() - t0
    time.sleep(1.5)  # a late duplicate would show up in the counters by now
    counters = bridge_counters(pipe)
    now_hi = time.time_ns() // 1_000_000
    assert pipe.bridge.alive, pipe.bridge.log_tail()

    t0 = time.monotonic()
    dead = [
        decode_event(raw, DeadLetter) for raw in read_topic(pipe.stack.kafka_bootstrap, DEAD_LETTERS.name, 60)
    ]
    readings: list[Reading] = []
    for raw in read_topic(pipe.stack.kafka_bootstrap, SENSOR_READINGS.name, 60):
        rec = decode_readings_record(raw)
        if not isinstance(rec, StreamTick):
            readings.extend(rec)
    timings["read kafka"] = time.monotonic() - t0

    problems: list[str] = []

    def problem(msg: str) -> None:
        if len(problems) < 40:
            problems.append(msg)

    # --- each dead letter: a reason, the published bytes, a case the bridge was given ---------
    by_key = {(c.topic[:512], c.payload[:DEAD_LETTER_MAX_RAW_BYTES]): c for c in cases}
    dl_of: dict[int, DeadLetter] = {}
    for d in dead:
        case = by_key.get((d.origin, d.raw))
        if not d.reason or not d.reason_code or d.source != "mqtt":
            problem(f"dead letter without source/reason: {d!r}")
        if "internal error" in d.reason:
            problem(f"validator crashed: {d.reason} on {d.origin!r} {d.raw[:100]!r}")
        if not now_lo <= d.received <= now_hi:
            problem(f"dead letter received={d.received} outside [{now_lo}, {now_hi}]")
        if case is None:
            problem(f"dead letter for nothing published: {d.origin[:80]!r} {d.raw[:80]!r}")
            continue
        if not case.subscribed:
            problem(f"dead letter for a topic the bridge does not subscribe to: {case.topic!r}")
        if id(case) in dl_of:
            problem(f"dead-lettered twice: {case.topic[:80]!r} {case.payload[:80]!r}")
        dl_of[id(case)] = d
        if len(case.payload) > DEAD_LETTER_MAX_RAW_BYTES and not (
            d.reason_code == R.OVERSIZE and "truncated" in d.reason
        ):
            problem(f"a {len(case.payload)}-byte payload: {d.reason_code} {d.reason}")

    # --- each case: stored xor dead-lettered, as constructed ---------------------------------
    validator = ReadingValidator(pipe.cfg)
    expected_readings: Counter[tuple[str, int, float]] = Counter()
    outcome: Counter[tuple[str, str]] = Counter()
    for case in delivered:
        d = dl_of.get(id(case))
        if d is not None:
            outcome[(case.kind, str(d.reason_code))] += 1
            if isinstance(case.expect, tuple):
                problem(
                    f"[{case.kind}] valid case dead-lettered ({d.reason_code}: {d.reason}): {case.payload!r}"
                )
            elif isinstance(case.expect, frozenset) and d.reason_code not in case.expect:
                problem(
                    f"[{case.kind}] dead-lettered as {d.reason_code}, expected one of {sorted(case.expect)}: "
                    f"{case.topic[:80]!r} {case.payload[:120]!r} ({d.reason})"
                )
            # the bridge says what the validator says, at the bridge's own clock
            again = predict(validator, case, d.received)
            if again != d.reason_code:
                problem(f"[{case.kind}] bridge {d.reason_code}, validator {again!r}: {case.payload[:120]!r}")
            continue
        outcome[(case.kind, "stored")] += 1
        if isinstance(case.expect, tuple):
            expected_readings[case.expect] += 1
        elif isinstance(case.expect, frozenset):
            problem(
                f"[{case.kind}] not dead-lettered, expected {sorted(case.expect)}: "
                f"{case.topic[:80]!r} {case.payload[:120]!r}"
            )
        else:  # undetermined: the validator names the reading (either clock: ts near a limit)
            lo, hi = predict(validator, case, now_lo), predict(validator, case, now_hi)
            accepted = lo if isinstance(lo, tuple) else hi
            if not isinstance(accepted, tuple):
                problem(f"[{case.kind}] neither stored nor dead-lettered ({lo}): {case.payload[:120]!r}")
            else:
                expected_readings[accepted] += 1
    for case in cases:
        if not case.subscribed:
            outcome[(case.kind, "not delivered" if id(case) not in dl_of else "dead-lettered?!")] += 1

    got = Counter((r.sensor_id, r.ts, r.value) for r in readings)
    if got != expected_readings:
        missing, extra = expected_readings - got, got - expected_readings
        problem(f"readings differ: {sum(missing.values())} missing e.g. {list(missing)[:5]}, "
                f"{sum(extra.values())} unexpected e.g. {list(extra)[:5]}")  # fmt: skip
    for r in readings[:: max(1, len(readings) // 1000)]:
        if not now_lo <= r.received <= now_hi:
            problem(f"reading received={r.received} outside [{now_lo}, {now_hi}]")
            break

    # --- the summary (shown with -s or on failure) --------------------------------------------
    kinds = Counter(c.kind for c in cases)
    lines = [f"fuzz seed {SEED}: {len(cases)} cases, {n} delivered to the bridge"]
    for kind, total in kinds.most_common():
        parts = ", ".join(f"{o} {k}" for (kk, o), k in sorted(outcome.items()) if kk == kind)
        lines.append(f"  {kind:15} {total:6}: {parts}")
    lines.append(f"  readings {len(readings)}, dead letters {len(dead)}; bridge counters {counters}")
    lines.append("  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    lines.append(f"  total {time.monotonic() - t_start:.1f}s")
    summary = "\n".join(lines)
    print(summary)

    assert not problems, summary + "\n" + "\n".join(problems)
    # exact accounting: every delivered case is one reading or one dead letter
    assert len(dl_of) == len(dead), "dead letters not matched to a case"
    assert len(readings) + len(dead) == n, summary
    assert counters["received"] == n
    assert counters["forwarded"] == len(readings)
    assert counters["dead_letters"] == len(dead)
    assert counters["kafka_send_errors"] == 0, counters  # a burst of bad input needs no retries
    assert bridge_dead_letter_reasons(pipe) == dict(Counter(str(d.reason_code) for d in dead))
    assert pipe.bridge.alive
    log = (pipe.workdir / "bridge.log").read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log, pipe.bridge.log_tail(60)
    assert pipe.stack.mosquitto.dropped_message_warnings() == 0
