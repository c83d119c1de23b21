"""The one place that names topics: Kafka topics and the MQTT topic convention.

Every producer and consumer imports its topic names from here, so a rename is one edit
and `gridwatch topics` can list (and create) all of them up front. Creating topics up
front matters: auto-created topics get the broker's default partition count (4 on the
embedded Tansu broker), which would silently break co-partitioning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KafkaTopic:
    name: str
    description: str
    schema: str
    """Name of the event schema its records follow (see docs/SCHEMAS.md)."""


# --- Kafka ---------------------------------------------------------------------------------
SENSOR_READINGS = KafkaTopic(
    "gridwatch.sensor.readings",
    "Validated sensor readings, packed many per record (keyed by partition bucket).",
    "sensor_reading_batch",
)
DEAD_LETTERS = KafkaTopic(
    "gridwatch.deadletter",
    "Anything that could not be processed: raw bytes (base64), source and reason.",
    "dead_letter",
)
INCIDENT_CANDIDATES = KafkaTopic(
    "gridwatch.incident.candidates",
    "Incident candidates from sensor rules, camera detectors and citizen reports; one per episode.",
    "incident_candidate",
)
DETECTIONS = KafkaTopic(
    "gridwatch.camera.detections",
    "Per-frame object detections from camera workers (issue 3).",
    "detection",
)

CAMERA_EVENTS = KafkaTopic(
    "gridwatch.camera.events",
    "A camera went down or came back (camera id, time, reason with credentials masked).",
    "camera_event",
)

VERIFY_REQUESTS = KafkaTopic(
    "gridwatch.incident.verify",
    "Dispatch asks the camera that saw a resolved incident to verify the zone is clear.",
    "verify_request",
)
INCIDENT_COMMANDS = KafkaTopic(
    "gridwatch.incident.commands",
    "Commands for dispatch from other services (a camera's verification result).",
    "incident_command",
)

ALL_KAFKA_TOPICS: tuple[KafkaTopic, ...] = (
    SENSOR_READINGS,
    DEAD_LETTERS,
    INCIDENT_CANDIDATES,
    DETECTIONS,
    CAMERA_EVENTS,
    VERIFY_REQUESTS,
    INCIDENT_COMMANDS,
)


# --- MQTT ----------------------------------------------------------------------------------
def sensor_reading_topic(prefix: str, sensor_id: str) -> str:
    """Topic a sensor publishes its readings on: `{prefix}/sensors/{sensor_id}/reading`."""
    return f"{prefix}/sensors/{sensor_id}/reading"


def sensor_reading_subscription(prefix: str) -> str:
    """Subscription filter of the bridge: the whole `{prefix}/sensors` subtree.

    Wider than the reading convention on purpose: a sensor publishing on a malformed topic
    (`.../sensors/id`, `.../sensors/id/reading/x`) is dead-lettered as `bad_topic` and
    counted, instead of being invisible to gridwatch.
    """
    return f"{prefix}/sensors/#"


BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of messages dropped by its queue limits (the bridge reports it as health)."""


def parse_sensor_reading_topic(prefix: str, topic: str) -> str | None:
    """Sensor id of a reading topic, or None if the topic does not follow the convention."""
    head = f"{prefix}/sensors/"
    if not topic.startswith(head) or not topic.endswith("/reading"):
        return None
    sensor_id = topic[len(head) : -len("/reading")]
    if not sensor_id or "/" in sensor_id:
        return None
    return sensor_id


def team_alert_topic(prefix: str, team_id: str) -> str:
    """Topic a grid team's terminals subscribe to for alert pushes (issue 4)."""
    return f"{prefix}/teams/{team_id}/alerts"


def team_feedback_topic(prefix: str, team_id: str) -> str:
    """Topic a grid team's terminals publish commands on (acknowledge, arrive, resolve, ...)."""
    return f"{prefix}/teams/{team_id}/feedback"


def team_feedback_subscription(prefix: str) -> str:
    """What the dispatch service subscribes to: every team's feedback topic."""
    return f"{prefix}/teams/+/feedback"


def team_feedback_result_topic(prefix: str, team_id: str) -> str:
    """Where the dispatch service answers a team's command (accepted, or refused and why)."""
    return f"{prefix}/teams/{team_id}/feedback/result"


def parse_team_topic(prefix: str, topic: str) -> str | None:
    """Team node id of a `{prefix}/teams/{id}/...` topic, or None."""
    head = f"{prefix}/teams/"
    if not topic.startswith(head):
        return None
    rest = topic[len(head) :].split("/")
    return rest[0] or None


def sensor_partition(sensor_id: str, partitions: int) -> int:
    """Partition of the readings topic that carries a sensor (Kafka's murmur2 on the id).

    The bridge packs each record with readings of one partition, and a stream worker owning
    partition P owns exactly the sensors this function maps to P (for the silence rule).
    """
    from aiokafka.partitioner import murmur2

    return (murmur2(sensor_id.encode()) & 0x7FFFFFFF) % partitions
