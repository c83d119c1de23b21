"""The one configuration loader.

A gridwatch deployment is described by one YAML file validated by the pydantic models
below (unknown keys are refused, every field has a title and a description: run
`gridwatch config schema` to see them all). Secrets are never written in the file: a
field ending in `_env` names the environment variable that holds the secret.

    cfg = load_config("gridwatch.yaml")      # raises ConfigError("file: key.path: problem")

Relative paths in the file (city map, extra sensor files, spill directory) are resolved
against the directory of the file that names them.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gridwatch.console.auth import ConsoleUser
from gridwatch.schemas import SENSOR_ID_PATTERN, Category, Severity


class ConfigError(ValueError):
    """A configuration problem, phrased as `file: key.path: problem`."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def secret_from_env(var: str | None, *, what: str) -> str | None:
    """Read a secret named by an `*_env` field. The value is never logged or put in errors."""
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"{what}: environment variable {var} is not set")
    return value


# --- servers --------------------------------------------------------------------------------
class MqttConfig(_Model):
    host: str = Field("127.0.0.1", title="Host", description="MQTT broker host.")
    port: int = Field(1883, ge=1, le=65535, title="Port", description="MQTT broker port.")
    username: str | None = Field(
        None, title="Username", description="MQTT username, if the broker wants one."
    )
    password_env: str | None = Field(
        None, title="Password variable", description="Environment variable holding the MQTT password."
    )
    topic_prefix: str = Field(
        "gridwatch",
        pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$",
        title="Topic prefix",
        description="First level(s) of every gridwatch MQTT topic: `{prefix}/sensors/{id}/reading`.",
    )
    client_id: str = Field(
        "gridwatch-bridge",
        title="Client id",
        description="MQTT client id of the bridge. Stable, so its persistent session survives restarts.",
    )
    keepalive_s: int = Field(30, ge=5, title="Keepalive", description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        86_400,
        ge=0,
        title="Session expiry",
        description="How long the broker keeps the bridge's session and queued QoS 1 messages while it is "
        "away (MQTT v5 session expiry interval).",
    )
    receive_maximum: int = Field(
        20_000,
        ge=10,
        le=65_535,
        title="Receive maximum",
        description="QoS 1 messages the broker may have in flight to the bridge. Each is acknowledged only "
        "after Kafka has it, so this must cover rate x Kafka round trip (20k/s x 0.1 s = 2,000) with margin.",
    )
    reconnect_min_s: float = Field(0.5, gt=0, title="Reconnect backoff min", description="First retry delay.")
    reconnect_max_s: float = Field(
        30, gt=0, title="Reconnect backoff max", description="Longest retry delay."
    )


KafkaProfile = Literal["production", "dev"]


class KafkaConfig(_Model):
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", title="Bootstrap servers", description="Comma-separated host:port list."
    )
    profile: KafkaProfile = Field(
        "production",
        title="Profile",
        description="'production' for Apache Kafka / Redpanda. 'dev' honours the quirks of the embedded Tansu "
        "broker: one record per produce request (its ListOffsets 'latest' is wrong otherwise, and Faust then "
        "fails a rebalance with ConsistencyError) and a short session timeout (its group join waits half of it).",
    )
    readings_partitions: int = Field(
        4,
        ge=1,
        le=1024,
        title="Readings partitions",
        description="Partitions of the readings topic: the most stream workers that can share the load.",
    )
    replication_factor: int = Field(1, ge=1, title="Replication factor", description="For created topics.")
    session_timeout_ms: int | None = Field(
        None,
        ge=1000,
        title="Session timeout",
        description="Consumer group session timeout. Default: 6000 in the dev profile, 30000 in production.",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        title="Producer max batch size",
        description="aiokafka max_batch_size in bytes. Default: 1 in the dev profile (one record per request), "
        "1 MiB in production.",
    )
    linger_ms: int | None = Field(
        None, ge=0, title="Producer linger", description="Default 0 dev, 5 production."
    )
    fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        title="Consumer fetch max wait",
        description="How long a stream worker's fetch may wait for data. Default: 100 in the dev profile "
        "(Tansu does not end a waiting fetch when data arrives, so Faust's fixed 1,500 ms made every record "
        "wait ~0.4 s on average); Faust's own 1,500 in production.",
    )

    def effective_session_timeout_ms(self) -> int:
        return self.session_timeout_ms or (6000 if self.profile == "dev" else 30_000)

    def effective_max_batch_size(self) -> int:
        return self.max_batch_size or (1 if self.profile == "dev" else 1 << 20)

    def effective_fetch_max_wait_ms(self) -> int:
        return self.fetch_max_wait_ms or (100 if self.profile == "dev" else 1500)

    def effective_linger_ms(self) -> int:
        if self.linger_ms is not None:
            return self.linger_ms
        return 0 if self.profile == "dev" else 5


class InfluxConfig(_Model):
    url: str = Field("http://127.0.0.1:8086", title="URL", description="InfluxDB base URL (v2 write API).")
    org: str = Field("gridwatch", title="Organisation", description="InfluxDB organisation.")
    bucket: str = Field(
        "gridwatch",
        title="Bucket",
        description="Bucket (2.x/3.x) or 'database/retention' (1.8+ compatibility).",
    )
    token_env: str | None = Field(
        None, title="Token variable", description="Environment variable holding the API token."
    )
    batch_max_lines: int = Field(5000, ge=1, title="Batch size", description="Lines per write request.")
    flush_interval_ms: int = Field(250, ge=10, title="Flush interval", description="Longest a line waits.")
    max_buffer_lines: int = Field(
        500_000,
        ge=1000,
        title="Memory buffer bound",
        description="Lines held in memory while InfluxDB is unreachable; beyond this, batches spill to disk.",
    )
    spill_dir: Path | None = Field(
        None,
        title="Spill directory",
        description="Where batches spill during a long outage, replayed on recovery. None: no spilling, and "
        "lines beyond the memory bound are dropped and counted.",
    )
    max_spill_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        title="Spill bound",
        description="Disk the spill may use; beyond it, drops are counted.",
    )
    retry_min_s: float = Field(0.2, gt=0, title="Retry backoff min", description="First retry delay.")
    retry_max_s: float = Field(10, gt=0, title="Retry backoff max", description="Longest retry delay.")
    timeout_s: float = Field(10, gt=0, title="Request timeout", description="Per write request.")


# --- pipeline stages -------------------------------------------------------------------------
class BridgeConfig(_Model):
    batch_max_readings: int = Field(
        1000,
        ge=1,
        le=10_000,
        title="Readings per record",
        description="Readings packed into one Kafka record (per partition).",
    )
    flush_interval_ms: int = Field(50, ge=1, title="Flush interval", description="Longest a reading waits.")
    max_payload_bytes: int = Field(
        2048, ge=64, title="Max payload", description="Larger payloads are dead-lettered as oversize."
    )
    max_future_s: float = Field(
        300, ge=0, title="Max future skew", description="Readings stamped further ahead of now are refused."
    )
    max_past_s: float = Field(
        7 * 86_400, ge=0, title="Max age", description="Readings stamped further back than this are refused."
    )
    health_interval_s: float = Field(5, gt=0, title="Health interval", description="Health metrics period.")


class StreamsConfig(_Model):
    app_id: str = Field("gridwatch-streams", title="App id", description="Faust app id (consumer group).")
    window_s: int = Field(
        60, ge=1, le=86_400, title="Window", description="Tumbling window length in seconds."
    )
    window_grace_s: int = Field(
        10, ge=0, title="Window grace", description="How long after its end a window waits for late readings."
    )
    tick_s: float = Field(
        1.0, gt=0, title="Tick", description="How often silence and window closes are checked."
    )
    web_port: int | None = Field(
        None, title="Web port", description="Faust's web server port (metrics); None disables it."
    )
    data_dir: Path | None = Field(
        None, title="Data dir", description="Faust data directory (default: a temp dir)."
    )


# --- sensors and rules -----------------------------------------------------------------------
class ThresholdRule(_Model):
    """Raise when the value crosses `above` (or falls under `below`); clear only past the clear level."""

    above: float | None = Field(None, title="Above", description="Raise when value > above.")
    clear_below: float | None = Field(
        None, title="Clear below", description="Episode ends when value < clear_below (hysteresis)."
    )
    below: float | None = Field(None, title="Below", description="Raise when value < below.")
    clear_above: float | None = Field(
        None, title="Clear above", description="Low episode ends when value > clear_above."
    )
    severity: Severity = Field(Severity.HIGH, title="Severity", description="Severity of the candidate.")

    @model_validator(mode="after")
    def _hysteresis_makes_sense(self) -> ThresholdRule:
        if self.above is None and self.below is None:
            raise ValueError("give 'above' or 'below' (or both)")
        if self.above is not None:
            if self.clear_below is None:
                raise ValueError("'above' needs 'clear_below' (the level at which the episode ends)")
            if self.clear_below > self.above:
                raise ValueError(f"clear_below ({self.clear_below}) must be <= above ({self.above})")
        if self.below is not None:
            if self.clear_above is None:
                raise ValueError("'below' needs 'clear_above' (the level at which the episode ends)")
            if self.clear_above < self.below:
                raise ValueError(f"clear_above ({self.clear_above}) must be >= below ({self.below})")
        return self


class RateRule(_Model):
    """Raise when the value changes faster than `max_per_s` between consecutive readings."""

    max_per_s: float = Field(gt=0, title="Max rate", description="Largest normal |change| per second.")
    quiet_s: float = Field(
        60, ge=0, title="Quiet period", description="Episode ends after this long without a fast change."
    )
    severity: Severity = Field(Severity.MEDIUM, title="Severity", description="Severity of the candidate.")


class SilenceRule(_Model):
    """Raise when a sensor has not reported for `periods` x its expected period."""

    periods: float = Field(3, ge=1, title="Periods", description="Missed periods before it counts as silent.")
    severity: Severity = Field(Severity.LOW, title="Severity", description="Severity of the candidate.")


class RulesConfig(_Model):
    threshold: ThresholdRule | None = Field(
        None, title="Threshold", description="Level rule with hysteresis."
    )
    rate: RateRule | None = Field(None, title="Rate of change", description="Jump rule.")
    silence: SilenceRule | None = Field(
        SilenceRule(), title="Silence", description="Silent-sensor rule; null disables it."
    )


class SensorTypeConfig(_Model):
    unit: str = Field(
        title="Unit", description="Unit every sensor of this type reports in, e.g. 'm', 'dB(A)'."
    )
    category: Category = Field(title="Category", description="Incident category its anomalies raise.")
    name_zh: str | None = Field(None, title="Chinese name", description="Shown on screens.")
    valid_min: float | None = Field(
        None, title="Physical minimum", description="Values below are dead-lettered."
    )
    valid_max: float | None = Field(
        None, title="Physical maximum", description="Values above are dead-lettered."
    )
    rules: RulesConfig = Field(default_factory=RulesConfig, title="Rules", description="Rules for this type.")


class SensorLocation(_Model):
    lon: float = Field(ge=-180, le=180, title="Longitude", description="WGS84 degrees.")
    lat: float = Field(ge=-90, le=90, title="Latitude", description="WGS84 degrees.")


class SensorConfig(_Model):
    id: str = Field(pattern=SENSOR_ID_PATTERN, title="Id", description="Sensor id, as in its MQTT topic.")
    type: str = Field(title="Type", description="A key of `sensor_types`.")
    unit: str | None = Field(None, title="Unit", description="Must equal the type's unit if given.")
    period_s: float = Field(gt=0, title="Reporting period", description="Expected seconds between readings.")
    location: SensorLocation = Field(title="Location", description="Where it is mounted.")
    grid: str | None = Field(
        None,
        title="Grid override",
        description="Grid id; default: looked up from the location on the city map.",
    )
    name: str | None = Field(None, title="Name", description="Human-readable name.")
    rules: RulesConfig | None = Field(None, title="Rules override", description="Replaces the type's rules.")


# --- dispatch (issue 4) --------------------------------------------------------------------
LevelName = Literal["grid", "community", "town", "district"]
_TIME_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"


class CalendarConfig(_Model):
    """When deadline clocks run. `always`: every second; `working_hours`: only in office hours."""

    kind: Literal["always", "working_hours"] = Field(
        title="Kind", description="`always` (24/7) or `working_hours` (days and hours below)."
    )
    start: str = Field("08:30", pattern=_TIME_PATTERN, title="Opens", description="HH:MM local time.")
    end: str = Field("17:30", pattern=_TIME_PATTERN, title="Closes", description="HH:MM local time.")
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"],
        title="Working weekdays",
        description="Days of the week whose hours count.",
    )
    holidays: list[date] = Field(
        default_factory=list, title="Holidays", description="Dates that do not count (YYYY-MM-DD)."
    )
    extra_workdays: list[date] = Field(
        default_factory=list,
        title="Make-up working days",
        description="Weekend dates that count (调休), YYYY-MM-DD.",
    )

    @model_validator(mode="after")
    def _order(self) -> CalendarConfig:
        if self.kind == "working_hours" and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class StepDeadlines(_Model):
    """Deadlines at one level, in counted seconds from the moment the level is assigned."""

    ack_s: float = Field(gt=0, title="Acknowledge within", description="Seconds to acknowledge.")
    arrive_s: float = Field(gt=0, title="Arrive within", description="Seconds to report arrival on site.")
    resolve_s: float = Field(gt=0, title="Resolve within", description="Seconds to resolve.")

    @model_validator(mode="after")
    def _order(self) -> StepDeadlines:
        if not (self.ack_s <= self.arrive_s <= self.resolve_s):
            raise ValueError("deadlines must satisfy ack_s <= arrive_s <= resolve_s")
        return self


class TriggerRule(_Model):
    """One line of the trigger list (启动清单): who is called first for a kind of matter."""

    categories: list[Category | Literal["*"]] = Field(
        min_length=1, title="Categories", description="Categories this line covers; `*` matches any."
    )
    min_severity: Severity = Field(
        Severity.LOW, title="Minimum severity", description="Applies to candidates at least this severe."
    )
    first_level: LevelName = Field(
        "grid", title="First level", description="Level of the ladder that is called first."
    )
    platform: str = Field(
        title="Platform",
        description="Work platform or department that owns the matter, e.g. '综合执法' (law enforcement).",
    )
    calendar: str = Field("always", title="Calendar", description="A key of `dispatch.calendars`.")
    deadlines: dict[LevelName, StepDeadlines] = Field(
        title="Deadlines per level",
        description="Deadlines at each level from `first_level` up; a level without an entry uses "
        "the nearest entry below it.",
    )
    review: Literal["always", "auto"] = Field(
        "auto",
        title="Review",
        description="`always`: an operator confirms before dispatch; `auto`: dispatch at once "
        "when confidence >= `auto_min_confidence`.",
    )
    auto_min_confidence: float = Field(
        0.0, ge=0, le=1, title="Auto-dispatch confidence", description="Below it, review first."
    )

    @model_validator(mode="after")
    def _first_level_has_deadlines(self) -> TriggerRule:
        if self.first_level not in self.deadlines:
            raise ValueError(f"deadlines: needs an entry for first_level {self.first_level!r}")
        return self


class FusionRule(_Model):
    radius_m: float = Field(
        150, ge=0, title="Radius", description="Candidates within this distance may be one incident."
    )
    window_s: float = Field(
        1800, gt=0, title="Window", description="...and within this time of the incident's latest evidence."
    )
    same_grid_only: bool = Field(
        False, title="Same grid only", description="Only merge candidates in the same grid."
    )
    cooldown_s: float = Field(
        600,
        ge=0,
        title="Cooldown",
        description="After an incident closes, candidates of its category and place within this time "
        "are attached to it (recorded, not re-dispatched).",
    )


class FusionConfig(_Model):
    default: FusionRule = Field(default_factory=FusionRule, title="Default", description="All categories.")
    per_category: dict[Category, FusionRule] = Field(
        default_factory=dict, title="Per category", description="Overrides of `default`."
    )
    severity_rise_sources: int = Field(
        3,
        ge=2,
        title="Sources to raise severity",
        description="Distinct sources that raise an incident's severity one step (again at each multiple).",
    )

    def rule(self, category: Category) -> FusionRule:
        return self.per_category.get(category, self.default)


WEBHOOK_TEMPLATE_KEYS = (
    "event", "event_zh", "incident_id", "category", "category_zh", "severity", "summary", "node_id",
    "node_name", "level", "state", "platform", "lat", "lon", "map_url", "evidence_url", "ack_url",
    "note", "deadline_ack",
)  # fmt: skip


class WebhookConfig(_Model):
    name: str = Field(title="Name", description="Shown in delivery records.")
    format: Literal["generic", "dingtalk", "wecom", "feishu"] = Field(
        "generic", title="Format", description="Body format: gridwatch JSON or a chat robot's."
    )
    url_env: str = Field(
        title="URL variable",
        description="Environment variable holding the webhook URL (it carries the robot's token).",
    )
    nodes: list[str] = Field(
        default_factory=lambda: ["*"],
        title="Nodes",
        description="Ladder node ids whose pushes go to this webhook; `*` = all.",
    )
    template: str | None = Field(
        None,
        title="Message template",
        description="Markdown body for the chat-robot formats, with {placeholders}: "
        + ", ".join(f"{{{k}}}" for k in WEBHOOK_TEMPLATE_KEYS)
        + ". Default: gridwatch's Chinese summary with location, evidence and action links.",
    )

    @field_validator("template")
    @classmethod
    def _template_keys(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import string

        try:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as e:
            raise ValueError(f"not a valid template: {e}") from None
        unknown = sorted(n for n in names if n not in WEBHOOK_TEMPLATE_KEYS)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(unknown)} (known: {', '.join(WEBHOOK_TEMPLATE_KEYS)})"
            )
        return v


class PushConfig(_Model):
    qos: Literal[1, 2] = Field(1, title="MQTT QoS", description="QoS of team alert pushes.")
    retry_min_s: float = Field(0.5, gt=0, title="Retry min", description="First retry delay.")
    retry_max_s: float = Field(60, gt=0, title="Retry max", description="Longest retry delay.")
    max_attempts: int = Field(
        12, ge=1, title="Max attempts", description="After this many failures a delivery is marked failed."
    )
    webhooks: list[WebhookConfig] = Field(
        default_factory=list, title="Webhooks", description="Extra push channels."
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        title="Public URL",
        description="Base URL of the gridwatch API as teams reach it (links in pushes).",
    )
    map_url: str = Field(
        "https://uri.amap.com/marker?position={lon},{lat}",
        title="Map link",
        description="Template of the map link in pushes; {lon} and {lat} are filled in.",
    )


class ApiCredential(_Model):
    """Who may use the HTTP API, with which role. Tokens are stored hashed, never in clear."""

    name: str = Field(
        title="Name", description="Who this is (a team, an operator); shown in the audit trail."
    )
    role: Literal["team", "operator", "supervisor", "viewer"] = Field(
        title="Role",
        description="team: acts on its own node's incidents; operator: dispatches, escalates by hand; "
        "supervisor: also verifies closures; viewer: reads only.",
    )
    node: str | None = Field(None, title="Node", description="Ladder node id of the team (role `team` only).")
    token_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        title="Token hash",
        description="sha256 (hex) of the API token; `gridwatch dispatch token NAME` makes a pair.",
    )

    @model_validator(mode="after")
    def _team_has_node(self) -> ApiCredential:
        if (self.role == "team") != (self.node is not None):
            raise ValueError("`node` is required for role team and only allowed for it")
        return self


class DispatchConfig(_Model):
    ledger_url: str = Field(
        "sqlite:///var/gridwatch-ledger.db",
        title="Ledger URL",
        description="SQLAlchemy URL of the ledger: sqlite:///path (embedded) or "
        "postgresql+psycopg://user@host/db (production; password from `ledger_password_env`).",
    )
    ledger_password_env: str | None = Field(
        None, title="Ledger password variable", description="Environment variable with the DB password."
    )
    calendars: dict[str, CalendarConfig] = Field(
        default_factory=lambda: {"always": CalendarConfig(kind="always")},
        title="Calendars",
        description="Named deadline calendars.",
    )
    triggers: list[TriggerRule] = Field(
        default_factory=list,
        title="Trigger list",
        description="First matching line wins (category, then severity). A candidate no line matches "
        "is dead-lettered.",
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig, title="Fusion", description="Merging.")
    push: PushConfig = Field(default_factory=PushConfig, title="Push", description="Alerts to teams.")
    credentials: list[ApiCredential] = Field(
        default_factory=list, title="API credentials", description="API tokens (hashed) and their roles."
    )
    credentials_file: Path | None = Field(
        None,
        title="Credentials file",
        description="YAML list of more credentials in the same form (kept out of the main file).",
    )
    verify_clear_s: float = Field(
        60,
        gt=0,
        title="Camera verification time",
        description="A resolved camera incident is verified when its zone stays clear this long.",
    )
    scheduler_max_sleep_s: float = Field(
        0.5, gt=0, title="Scheduler wake-up", description="Longest the deadline scheduler sleeps."
    )
    mqtt_username: str | None = Field(
        None,
        title="MQTT username",
        description="The dispatch service's own MQTT user (publishes every team's alerts); default `mqtt.username`.",
    )
    mqtt_password_env: str | None = Field(
        None, title="MQTT password variable", description="Environment variable with that user's password."
    )
    consumer_group: str = Field(
        "gridwatch-dispatch", title="Consumer group", description="Kafka group of the dispatch workers."
    )
    api_host: str = Field("127.0.0.1", title="API host", description="Address the HTTP API listens on.")
    api_port: int = Field(8080, ge=0, le=65535, title="API port", description="0 = no HTTP API.")
    kpi_interval_s: float = Field(
        10, gt=0, title="KPI interval", description="How often KPIs are computed and written to InfluxDB."
    )
    hard_examples_dir: Path | None = Field(
        Path("var/hard-examples"),
        title="Hard-example store",
        description="Where operators' verdicts on camera candidates (false alarm, confirmed, verified) "
        "are kept with their evidence for retraining (gridwatch/dataset/hard_examples.py); null: not kept.",
    )

    @model_validator(mode="after")
    def _calendars_known(self) -> DispatchConfig:
        for i, t in enumerate(self.triggers):
            if t.calendar not in self.calendars:
                known = ", ".join(sorted(self.calendars))
                raise ValueError(f"triggers[{i}].calendar: unknown calendar {t.calendar!r} (known: {known})")
        return self


# --- cameras (issue 3) ----------------------------------------------------------------------
def _camera_models() -> tuple[Any, ...]:
    # Imported here, not at the top: the camera models pull in OpenCV, supervision and onnxruntime.
    from gridwatch.detectors.base import detector_config_union
    from gridwatch.detectors.evidence import EvidenceConfig
    from gridwatch.detectors.motion import MotionConfig
    from gridwatch.detectors.nanodet import NanoDetConfig
    from gridwatch.detectors.scene_rules import CameraRulesConfig
    from gridwatch.ingest.camera_config import CameraSourceConfig

    return (
        detector_config_union(),
        EvidenceConfig,
        MotionConfig,
        NanoDetConfig,
        CameraRulesConfig,
        CameraSourceConfig,
    )


(_DetectorUnion, _EvidenceConfig, _MotionConfig, _NanoDetConfig, _CameraRulesConfig, _CameraSourceConfig) = (
    _camera_models()
)


class CameraConfig(_Model):
    """One camera: its stream, where it stands, and the zones its rules watch."""

    source: _CameraSourceConfig = Field(  # type: ignore[valid-type]
        title="Stream", description="RTSP URL, credentials, analysed frame rate, timeouts."
    )
    location: SensorLocation | None = Field(
        None, title="Location", description="Where the camera stands (for the map and fusion)."
    )
    rules: _CameraRulesConfig = Field(  # type: ignore[valid-type]
        title="Rules", description="Frame size, zones (each mapped to a grid), tracker and background model."
    )
    detect: bool = Field(
        True,
        title="Object detector",
        description="Run the object detector on this camera (off: the background-model rules only).",
    )

    @model_validator(mode="after")
    def _ids_agree(self) -> CameraConfig:
        if self.rules.camera.camera_id != self.source.id:
            raise ValueError(
                f"rules.camera.camera_id {self.rules.camera.camera_id!r} differs from source.id {self.source.id!r}"
            )
        return self


class VerifierConfig(_Model):
    """The false-alarm verifier (docs/TRAINING.md): a second stage on the detector's own features."""

    model_dir: Path | None = Field(
        None,
        title="Verifier directory",
        description="A verifier model directory made by `gridwatch train verifier` for the detector in use "
        "(refused if trained on another detector); null: no verifier. Relative to the config file.",
    )
    min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        title="Minimum score",
        description="Detections scoring below are dropped before tracking; default: the trained threshold "
        "(chosen to keep 99 % of real detections).",
    )
    drop: bool = Field(
        True, title="Drop", description="false: only score detections (data['verifier_score']), drop nothing."
    )


class ShadowConfig(_Model):
    """The shadow run (docs/MODELS.md "Shadow runs"): the registry's `shadow` detector beside production."""

    enabled: bool = Field(
        False,
        title="Shadow run",
        description="Run the detector the registry's `shadow` alias points at (`models.registry_dir`) beside "
        "production on the same frames; its candidates are recorded, never dispatched. The pointer is polled "
        "every `registry_poll_s`: a shadow version that appears, changes or is removed starts, swaps or "
        "stops the shadow without a restart.",
    )
    frame_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        title="Frame share",
        description="Share of each camera's analysed frames the shadow also sees, picked deterministically "
        "(0.5: every second frame; 1: every frame). Its tracker runs at the matching rate.",
    )
    cameras: list[str] | None = Field(
        None,
        title="Cameras",
        description="Ids of the cameras that run the shadow (default: every camera with the detector on).",
    )
    record_dir: Path = Field(
        Path("var/shadow"),
        title="Record directory",
        description="Where the shadow's and production's candidates and cost figures are written "
        "(`<camera>/<YYYY-MM-DD>.jsonl`, UTC days) for `gridwatch models compare`; relative to the config file.",
    )


class CamerasConfig(_Model):
    detector: _DetectorUnion = Field(  # type: ignore[valid-type]
        default_factory=lambda: _NanoDetConfig(),
        title="Detector",
        description="The object detector every camera uses (a registered type: `nanodet`, ...).",
    )
    motion: _MotionConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: _MotionConfig(),
        title="Motion gate",
        description="Inference runs when something moves, and at least every `max_interval_s`.",
    )
    evidence: _EvidenceConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: _EvidenceConfig(directory=Path("var/evidence")),
        title="Evidence store",
        description="Where annotated snapshots are written.",
    )
    inference_slots: int = Field(
        0,
        ge=0,
        le=64,
        title="Concurrent inferences",
        description="How many frames may be in the detector at once across cameras (0: the number of cores).",
    )
    health_interval_s: float = Field(5, gt=0, title="Health interval", description="Camera health period.")
    verifier: VerifierConfig = Field(
        default_factory=VerifierConfig,
        title="False-alarm verifier",
        description="Second stage after the detector (docs/TRAINING.md); off unless model_dir is set.",
    )
    follow_registry: bool = Field(
        False,
        title="Follow the model registry",
        description="Run the detector the registry's `production` alias points at (`models.registry_dir`, "
        "docs/MODELS.md) instead of `detector.model_dir`, and switch to a newly promoted or rolled-back "
        "version without a restart.",
    )
    registry_poll_s: float = Field(
        5, gt=0, title="Registry poll", description="How often the registry's production pointer is read."
    )
    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig,
        title="Shadow run",
        description="A second detector (the registry's `shadow` alias) beside production, recorded and never "
        "dispatched (docs/MODELS.md).",
    )
    feeds: list[CameraConfig] = Field(default_factory=list, title="Cameras", description="The cameras.")

    @model_validator(mode="after")
    def _unique(self) -> CamerasConfig:
        seen: set[str] = set()
        for i, c in enumerate(self.feeds):
            if c.source.id in seen:
                raise ValueError(f"feeds[{i}].source.id: duplicate camera id {c.source.id!r}")
            seen.add(c.source.id)
        for i, cid in enumerate(self.shadow.cameras or ()):
            if cid not in seen:
                raise ValueError(f"shadow.cameras[{i}]: no camera {cid!r} in feeds")
        return self


class ModelsConfig(_Model):
    """The model registry (docs/MODELS.md): detector and verifier versions, aliases, lineage."""

    registry_dir: Path = Field(
        Path("var/models"),
        title="Registry directory",
        description="MLflow registry (SQLite + file artifacts) and the `deployed/` pointers camera "
        "workers read; relative to the config file.",
    )


class ConsoleConfig(_Model):
    """The operator console (docs/CONSOLE.md), served by the dispatch service under /console."""

    users: list[ConsoleUser] = Field(
        default_factory=list, title="Users", description="Who may log in (password hashes only)."
    )
    cookie_secure: bool = Field(
        False, title="Secure cookies", description="Set when the console is served over HTTPS."
    )
    grafana_url: str | None = Field(
        None,
        title="Grafana URL",
        description="Base URL of the centre's Grafana (e.g. https://grafana.city.example): the console "
        "links each incident to the drill-down of its town, community and grid, and the header to the "
        "city wall. Unset: no links.",
    )


class SiteConfig(_Model):
    name: str = Field("gridwatch", title="Name", description="Name of the command centre.")
    timezone: str = Field("Asia/Shanghai", title="Time zone", description="Centre's time zone (IANA name).")


class CityConfig(_Model):
    geojson: Path = Field(
        title="City map", description="GeoJSON file of the district/town/community/grid ladder."
    )


class GridwatchConfig(_Model):
    """Root of gridwatch.yaml."""

    version: Literal[1] = Field(title="Config version", description="Always 1.")
    site: SiteConfig = Field(default_factory=SiteConfig, title="Site", description="The command centre.")
    city: CityConfig = Field(title="City", description="The city model.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, title="MQTT", description="Sensor broker.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, title="Kafka", description="Event broker.")
    influx: InfluxConfig = Field(default_factory=InfluxConfig, title="InfluxDB", description="Time series.")
    bridge: BridgeConfig = Field(default_factory=BridgeConfig, title="Bridge", description="MQTT -> Kafka.")
    streams: StreamsConfig = Field(
        default_factory=StreamsConfig, title="Streams", description="Faust workers."
    )
    sensor_types: dict[str, SensorTypeConfig] = Field(
        default_factory=dict, title="Sensor types", description="Keyed by type name."
    )
    sensors: list[SensorConfig] = Field(default_factory=list, title="Sensors", description="The registry.")
    dispatch: DispatchConfig = Field(
        default_factory=DispatchConfig, title="Dispatch", description="Fusion, routing, pushes, deadlines."
    )
    cameras: CamerasConfig = Field(
        default_factory=CamerasConfig, title="Cameras", description="Camera feeds, detector, evidence."
    )
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, title="Operator console", description="Users of the web console."
    )
    models: ModelsConfig = Field(
        default_factory=ModelsConfig, title="Models", description="The model registry (retraining loop)."
    )
    sensor_files: list[Path] = Field(
        default_factory=list,
        title="Sensor files",
        description="More YAML files, each a list of sensors in the same form as `sensors`.",
    )

    @field_validator("sensor_types")
    @classmethod
    def _type_names(cls, v: dict[str, SensorTypeConfig]) -> dict[str, SensorTypeConfig]:
        for name in v:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"sensor type name {name!r} must be letters, digits and underscores")
        return v

    @model_validator(mode="after")
    def _sensors_consistent(self) -> GridwatchConfig:
        _check_sensors(self.sensors, self.sensor_types, prefix="sensors")
        return self

    def sensor_type(self, sensor: SensorConfig) -> SensorTypeConfig:
        return self.sensor_types[sensor.type]

    def rules_for(self, sensor: SensorConfig) -> RulesConfig:
        return sensor.rules or self.sensor_types[sensor.type].rules


def _check_sensors(sensors: list[SensorConfig], types: dict[str, SensorTypeConfig], *, prefix: str) -> None:
    seen: set[str] = set()
    for i, s in enumerate(sensors):
        where = f"{prefix}[{i}] (id {s.id!r})"
        if s.type not in types:
            known = ", ".join(sorted(types)) or "none defined"
            raise ValueError(f"{where}.type: unknown sensor type {s.type!r} (known: {known})")
        if s.unit is not None and s.unit != types[s.type].unit:
            raise ValueError(
                f"{where}.unit: {s.unit!r} differs from type {s.type!r}'s unit {types[s.type].unit!r}"
            )
        if s.id in seen:
            raise ValueError(f"{where}.id: duplicate sensor id {s.id!r}")
        seen.add(s.id)


# --- loading ---------------------------------------------------------------------------------
def _format_validation_error(file: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling)"
        lines.append(f"{file}: {path}: {msg}")
    return "\n".join(lines)


def _read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{file}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> GridwatchConfig:
    """Load and validate a gridwatch YAML file (and the sensor files it names).

    `overrides` is a nested dict merged over the file before validation (the demo uses it
    to point at the ports of the servers it started).
    """
    file = Path(path).resolve()
    data = _read_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: (top level): expected a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = _deep_merge(data, overrides)
    base = file.parent
    _resolve_paths(data, base)
    try:
        cfg = GridwatchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(file, e)) from None
    if cfg.dispatch.credentials_file is not None:
        cf = cfg.dispatch.credentials_file
        items = _read_yaml(cf)
        if not isinstance(items, list):
            raise ConfigError(
                f"{cf}: (top level): expected a list of credentials, got {type(items).__name__}"
            )
        creds = []
        for i, item in enumerate(items):
            try:
                creds.append(ApiCredential.model_validate(item))
            except ValidationError as e:
                raise ConfigError(
                    _format_validation_error(cf, e).replace(f"{cf}: ", f"{cf}: [{i}].")
                ) from None
        cfg = cfg.model_copy(
            update={
                "dispatch": cfg.dispatch.model_copy(update={"credentials": cfg.dispatch.credentials + creds})
            }
        )
    extra: list[SensorConfig] = []
    for sf in cfg.sensor_files:
        items = _read_yaml(sf)
        if not isinstance(items, list):
            raise ConfigError(f"{sf}: (top level): expected a list of sensors, got {type(items).__name__}")
        for i, item in enumerate(items):
            try:
                extra.append(SensorConfig.model_validate(item))
            except ValidationError as e:
                raise ConfigError(
                    _format_validation_error(sf, e).replace(f"{sf}: ", f"{sf}: [{i}].")
                ) from None
    if extra:
        try:
            _check_sensors(cfg.sensors + extra, cfg.sensor_types, prefix="sensors+sensor_files")
        except ValueError as e:
            raise ConfigError(f"{file}: {e}") from None
        cfg = cfg.model_copy(update={"sensors": cfg.sensors + extra})
    return cfg


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    city = data.get("city")
    if isinstance(city, dict) and isinstance(city.get("geojson"), str):
        city["geojson"] = str(_resolve(city["geojson"], base))
    if isinstance(data.get("sensor_files"), list):
        data["sensor_files"] = [
            str(_resolve(p, base)) if isinstance(p, str) else p for p in data["sensor_files"]
        ]
    dispatch = data.get("dispatch")
    if isinstance(dispatch, dict) and isinstance(dispatch.get("credentials_file"), str):
        dispatch["credentials_file"] = str(_resolve(dispatch["credentials_file"], base))
    if isinstance(dispatch, dict) and isinstance(dispatch.get("hard_examples_dir"), str):
        dispatch["hard_examples_dir"] = str(_resolve(dispatch["hard_examples_dir"], base))
    if isinstance(dispatch, dict) and isinstance(dispatch.get("ledger_url"), str):
        # sqlite:///relative/path is relative to the config file, like every other path in it
        url = dispatch["ledger_url"]
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
            dispatch["ledger_url"] = "sqlite:///" + str(_resolve(url.removeprefix("sqlite:///"), base))
    cams = data.get("cameras")
    if isinstance(cams, dict):
        ev = cams.get("evidence")
        if isinstance(ev, dict) and isinstance(ev.get("directory"), str):
            ev["directory"] = str(_resolve(ev["directory"], base))
        for key in ("detector", "verifier"):
            sec = cams.get(key)
            if isinstance(sec, dict) and isinstance(sec.get("model_dir"), str):
                sec["model_dir"] = str(_resolve(sec["model_dir"], base))
        shadow = cams.get("shadow")
        if isinstance(shadow, dict) and isinstance(shadow.get("record_dir"), str):
            shadow["record_dir"] = str(_resolve(shadow["record_dir"], base))
    for section, key in (("influx", "spill_dir"), ("streams", "data_dir"), ("models", "registry_dir")):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            sec[key] = str(_resolve(sec[key], base))


def _resolve(p: str, base: Path) -> Path:
    if p.startswith("package:"):
        # Files shipped inside the gridwatch package (the demo city and its sensors).
        return Path(__file__).parent / "data" / p.removeprefix("package:")
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base / q)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def demo_config_path() -> Path:
    """The embedded demo configuration shipped with the package."""
    return Path(__file__).parent / "data" / "demo" / "gridwatch.yaml"
