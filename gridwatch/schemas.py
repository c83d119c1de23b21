"""Event schemas shared by every part of gridwatch.

Each schema is a pydantic model with a `schema_name` and a `version`. Records on Kafka carry
both (`"schema"` and `"v"` keys), so a consumer can refuse (dead-letter) what it does not
understand instead of misreading it. docs/SCHEMAS.md is generated from these models
(`gridwatch schemas --markdown`), and the JSON Schemas from `gridwatch schemas --json`.

Versioning rule: adding an optional field keeps the version; renaming, removing or
changing the meaning of a field bumps it, and consumers accept both for one release.

Times are epoch milliseconds (int, UTC).
"""

from __future__ import annotations

import base64
import hashlib
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

SENSOR_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

EpochMs = Annotated[int, Field(ge=0, le=32_503_680_000_000, description="Epoch milliseconds, UTC.")]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    schema_name: ClassVar[str]
    version: ClassVar[int]


# --- sensor readings ------------------------------------------------------------------------
class SensorPayloadV1(_Schema):
    """What a sensor publishes on MQTT `{prefix}/sensors/{sensor_id}/reading` (JSON, UTF-8)."""

    schema_name: ClassVar[str] = "sensor_payload"
    version: ClassVar[int] = 1
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    v: Literal[1] = Field(title="Payload version", description="Always 1 for this version.")
    ts: EpochMs = Field(title="Observed time", description="When the sensor measured, epoch ms UTC.")
    value: float = Field(
        title="Value",
        description="The measurement in the unit registered for the sensor. NaN/Infinity are rejected.",
    )
    seq: int | None = Field(
        default=None, ge=0, title="Sequence", description="Optional per-sensor counter (diagnostics)."
    )

    @field_validator("v", mode="before")
    @classmethod
    def _v_is_an_integer(cls, v: object) -> object:
        # Literal[1] matches by equality even in strict mode, so `true` and `1.0` passed
        # (found by tests/test_fuzz_bridge.py) while `"ts": 1.0` is refused.
        if type(v) is not int:
            raise PydanticCustomError("literal_error", "Input should be 1", {"expected": "1"})
        return v


class SensorReading(_Schema):
    """One validated reading as it travels inside a `SensorReadingBatch` on Kafka."""

    schema_name: ClassVar[str] = "sensor_reading"
    version: ClassVar[int] = 1

    sensor_id: str = Field(pattern=SENSOR_ID_PATTERN, title="Sensor id", description="Registered id.")
    ts: EpochMs = Field(title="Observed time", description="When the sensor measured.")
    value: float = Field(title="Value", description="Measurement in the sensor's registered unit.")
    received: EpochMs = Field(title="Received time", description="When the bridge received it.")


class SensorReadingBatch(_Schema):
    """Many readings packed into one Kafka record.

    Packing matters for throughput: one reading per record costs the broker ~57% of a core
    at 5k readings/s; 100-1,000 readings per record keep it at 2-3% (measured on Tansu).
    On the wire `readings` is a list of `[sensor_id, ts, value, received]` arrays to keep
    records small; `gridwatch.codec` is the only code that knows that.
    """

    schema_name: ClassVar[str] = "sensor_reading_batch"
    version: ClassVar[int] = 1

    readings: list[SensorReading] = Field(title="Readings", description="In arrival order.")


class StreamTick(_Schema):
    """A clock tick for the stream workers, sent into the readings topic, one per partition.

    Faust tables can only be changed while processing a record, and a worker's time-driven
    work (closing windows, noticing silent sensors) changes state; so a timer sends ticks
    through the topic and the agent handles them in order with the readings. A replayed
    tick carries the same `now`, so replays give the same result.
    """

    schema_name: ClassVar[str] = "stream_tick"
    version: ClassVar[int] = 1

    now: EpochMs = Field(title="Now", description="Time the tick stands for.")


# --- camera detections ----------------------------------------------------------------------
class Detection(_Schema):
    schema_name: ClassVar[str] = "detection"
    version: ClassVar[int] = 1

    camera_id: str = Field(title="Camera id", description="Configured camera id.")
    frame_ts: EpochMs = Field(title="Frame time", description="Capture time of the frame.")
    label: str = Field(title="Label", description="Class name from the model's label map.")
    class_id: int = Field(ge=0, title="Class id", description="Index in the model's label map.")
    confidence: float = Field(ge=0, le=1, title="Confidence", description="Detector score.")
    bbox: tuple[float, float, float, float] = Field(
        title="Box", description="x1, y1, x2, y2 in pixels of the analysed frame."
    )
    track_id: int | None = Field(default=None, title="Track id", description="Tracker id, if tracked.")
    zone_ids: list[str] = Field(default_factory=list, title="Zones", description="Zones the box is in.")
    model_version: str = Field(title="Model version", description="Registry version of the detector.")


# --- incident candidates --------------------------------------------------------------------
class Category(StrEnum):
    """What kind of matter an incident is. The trigger list (issue 4) routes by this."""

    ILLEGAL_DUMPING = "illegal_dumping"
    GATHERING = "gathering"
    ROAD_BLOCKAGE = "road_blockage"
    WATER_LEVEL = "water_level"
    SMOKE = "smoke"
    AIR_QUALITY = "air_quality"
    NOISE = "noise"
    MANHOLE_COVER = "manhole_cover"
    BIN_OVERFLOW = "bin_overflow"
    SENSOR_ANOMALY = "sensor_anomaly"
    SENSOR_OFFLINE = "sensor_offline"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class SourceKind(StrEnum):
    SENSOR = "sensor"
    CAMERA = "camera"
    CITIZEN = "citizen"
    PATROL = "patrol"


class Location(_Schema):
    schema_name: ClassVar[str] = "location"
    version: ClassVar[int] = 1
    lon: float = Field(ge=-180, le=180, title="Longitude", description="WGS84 degrees.")
    lat: float = Field(ge=-90, le=90, title="Latitude", description="WGS84 degrees.")


class EvidenceRef(_Schema):
    schema_name: ClassVar[str] = "evidence_ref"
    version: ClassVar[int] = 1
    kind: Literal["reading_window", "snapshot", "clip", "report", "photo", "frame", "detections"] = Field(
        title="Kind", description="What the reference points at."
    )
    ref: str = Field(title="Reference", description="URI or query that retrieves the evidence.")
    note: str | None = Field(default=None, title="Note", description="Human-readable summary.")


class IncidentCandidate(_Schema):
    """Something a source thinks is an incident. Fusion (issue 4) turns candidates into incidents.

    `candidate_id` is deterministic (source, rule and episode start), so a replay after a
    crash produces the same id and downstream deduplicates it.
    """

    schema_name: ClassVar[str] = "incident_candidate"
    version: ClassVar[int] = 1

    candidate_id: str = Field(title="Candidate id", description="Deterministic id of this episode.")
    category: Category = Field(title="Category", description="Kind of matter; drives routing.")
    severity: Severity = Field(title="Severity", description="How urgent the source thinks it is.")
    source_kind: SourceKind = Field(title="Source kind", description="sensor, camera, citizen, patrol.")
    source_id: str = Field(title="Source id", description="Sensor id, camera id, report id, ...")
    grid_id: str | None = Field(title="Grid", description="Grid of the location (city model), if inside.")
    location: Location | None = Field(title="Location", description="Where it was observed.")
    observed_at: EpochMs = Field(title="Observed at", description="When the episode started.")
    raised_at: EpochMs = Field(title="Raised at", description="When the source raised the candidate.")
    rule: str = Field(title="Rule", description="Rule or detector that raised it, e.g. 'threshold_high'.")
    summary: str = Field(
        title="Summary", description="One line for a human, e.g. 'water level 3.2 m > 2.5 m'."
    )
    confidence: float = Field(default=1.0, ge=0, le=1, title="Confidence", description="0..1.")
    evidence: list[EvidenceRef] = Field(default_factory=list, title="Evidence", description="References.")
    model_version: str | None = Field(
        default=None, title="Model version", description="Registry version when a model raised it."
    )
    details: dict[str, Any] = Field(default_factory=dict, title="Details", description="Rule specifics.")

    @staticmethod
    def make_id(source_kind: str, source_id: str, rule: str, observed_at: int) -> str:
        digest = hashlib.sha1(f"{source_kind}|{source_id}|{rule}|{observed_at}".encode()).hexdigest()
        return f"cand-{digest[:20]}"


# --- dispatch: pushes to teams and their feedback (issue 4) -----------------------------------
class AlertAction(_Schema):
    schema_name: ClassVar[str] = "alert_action"
    version: ClassVar[int] = 1
    command: str = Field(
        title="Command", description="acknowledge, arrive, resolve, reject, transfer, false_alarm."
    )
    url: str = Field(title="URL", description="HTTP API endpoint that performs it (POST, team token).")


class TeamAlert(_Schema):
    """What a grid team's terminal receives on `{prefix}/teams/{node_id}/alerts` (MQTT QoS 1).

    Delivery is at least once: a terminal deduplicates by `alert_id`.
    """

    schema_name: ClassVar[str] = "team_alert"
    version: ClassVar[int] = 1

    v: Literal[1] = Field(1, title="Version", description="Always 1 for this version.")
    alert_id: str = Field(title="Alert id", description="Unique per (transition, team); dedupe key.")
    event: Literal["dispatched", "escalated", "escalated_away", "transferred", "transferred_away",
                   "reopened", "severity_raised", "overdue_at_top", "merged"] = Field(
        title="Event", description="Why this team is told now."
    )  # fmt: skip
    incident_id: str = Field(title="Incident", description="Incident id.")
    node_id: str = Field(title="Team node", description="Ladder node of the team this alert is for.")
    responsible_node: str = Field(title="Responsible node", description="Node responsible after the event.")
    level: str = Field(title="Level", description="Level now responsible: grid, community, town, district.")
    state: str = Field(title="State", description="Incident state after the event.")
    category: str = Field(title="Category", description="Kind of matter.")
    severity: str = Field(title="Severity", description="low, medium, high, critical.")
    summary: str = Field(title="Summary", description="One line for a human.")
    platform: str = Field(title="Platform", description="Work platform / department from the trigger list.")
    location: Location | None = Field(title="Location", description="Where, if known.")
    map_url: str | None = Field(title="Map link", description="Link to a map at the location.")
    grid_id: str | None = Field(title="Grid", description="Grid of the location.")
    evidence: list[EvidenceRef] = Field(title="Evidence", description="Snapshot and other references.")
    deadlines: dict[str, EpochMs] = Field(title="Deadlines", description="Due time of ack/arrive/resolve.")
    actions: list[AlertAction] = Field(title="Actions", description="Links to act on it.")
    note: str = Field("", title="Note", description="Why (escalation reason, transfer reason, ...).")
    sent_at: EpochMs = Field(title="Created", description="When the alert was created.")


class TeamFeedback(_Schema):
    """A team's command, sent on `{prefix}/teams/{node_id}/feedback` (or POSTed to the API).

    `command_id` makes retries safe: the same id is applied once.
    """

    schema_name: ClassVar[str] = "team_feedback"
    version: ClassVar[int] = 1

    v: Literal[1] = Field(1, title="Version", description="Always 1 for this version.")
    command_id: str = Field(
        min_length=1, max_length=128, title="Command id", description="Unique per command."
    )
    incident_id: str = Field(min_length=1, max_length=64, title="Incident", description="Incident id.")
    command: Literal["acknowledge", "arrive", "resolve", "reject", "transfer", "false_alarm", "note"] = Field(
        title="Command", description="What the team does (`note`: a line in the audit trail, needs `note`)."
    )
    by: str = Field("", max_length=128, title="By", description="Team member's name or id.")
    note: str = Field("", max_length=2000, title="Note", description="Resolution note.")
    reason: str = Field(
        "", max_length=2000, title="Reason", description="Why (reject, transfer, false alarm)."
    )
    photo: str | None = Field(None, max_length=1000, title="Photo", description="Reference to a photo.")
    to_node: str | None = Field(None, max_length=64, title="Transfer to", description="Node id (transfer).")


class VerifyRequest(_Schema):
    """Dispatch asks a camera to verify a resolved incident (Kafka `gridwatch.incident.verify`)."""

    schema_name: ClassVar[str] = "verify_request"
    version: ClassVar[int] = 1

    incident_id: str = Field(title="Incident", description="Incident id.")
    camera_id: str = Field(title="Camera", description="The camera that saw it.")
    zone_id: str = Field(title="Zone", description="The zone its candidate came from.")
    category: str = Field(title="Category", description="Kind of matter.")
    clear_s: float = Field(gt=0, title="Clear for", description="The zone must stay clear this long.")
    timeout_s: float = Field(gt=0, title="Timeout", description="Still there after this long: not verified.")
    requested_at: EpochMs = Field(title="Requested at", description="When the incident was resolved.")
    resolution: str = Field(title="Resolution", description="Id of the resolve command (dedupe key).")


class IncidentCommandEvent(_Schema):
    """A command for dispatch from another service (cameras' verifications) on Kafka."""

    schema_name: ClassVar[str] = "incident_command"
    version: ClassVar[int] = 1

    command_id: str = Field(title="Command id", description="Unique; a replay is applied once.")
    incident_id: str = Field(title="Incident", description="Incident id.")
    command: Literal["verify"] = Field(title="Command", description="What to do.")
    actor: Literal["camera"] = Field(title="Actor", description="Who asks.")
    by: str = Field(title="By", description="Camera id.")
    params: dict[str, Any] = Field(default_factory=dict, title="Parameters", description="e.g. ok, note.")


# --- dead letters ---------------------------------------------------------------------------
class DeadLetterReason(StrEnum):
    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    SCHEMA = "schema"
    NOT_FINITE = "not_finite"
    UNKNOWN_SENSOR = "unknown_sensor"
    CLOCK_SKEW = "clock_skew"
    UNDECODABLE_RECORD = "undecodable_record"
    NO_ROUTE = "no_route"
    BAD_COMMAND = "bad_command"


class DeadLetter(_Schema):
    """What could not be processed, with why and the exact bytes, so nothing vanishes."""

    schema_name: ClassVar[str] = "dead_letter"
    version: ClassVar[int] = 1

    source: str = Field(title="Source", description="Where it came from, e.g. 'mqtt' or 'kafka:<topic>'.")
    origin: str = Field(title="Origin", description="MQTT topic or Kafka topic/partition/offset.")
    reason_code: DeadLetterReason = Field(title="Reason code", description="Machine-readable reason.")
    reason: str = Field(title="Reason", description="Human-readable reason naming the field and problem.")
    raw_b64: str = Field(
        title="Raw bytes",
        description="The payload exactly as received, base64 (payloads over 256 KiB: their first 256 KiB, "
        "and the reason says so).",
    )
    received: EpochMs = Field(title="Received", description="When it was received.")

    @field_validator("raw_b64")
    @classmethod
    def _is_base64(cls, v: str) -> str:
        base64.b64decode(v, validate=True)
        return v

    @classmethod
    def of(
        cls,
        *,
        source: str,
        origin: str,
        reason_code: DeadLetterReason,
        reason: str,
        raw: bytes,
        received: int,
    ) -> DeadLetter:
        return cls(
            source=source,
            origin=origin,
            reason_code=reason_code,
            reason=reason,
            raw_b64=base64.b64encode(raw).decode("ascii"),
            received=received,
        )

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


ALL_SCHEMAS: tuple[type[_Schema], ...] = (
    SensorPayloadV1,
    SensorReading,
    SensorReadingBatch,
    StreamTick,
    Detection,
    IncidentCandidate,
    TeamAlert,
    TeamFeedback,
    VerifyRequest,
    IncidentCommandEvent,
    DeadLetter,
)
