"""Kafka clients built from config: one place that applies the dev / production profile.

The 'dev' profile honours the embedded Tansu broker's measured quirks (one record per
produce request; short session timeouts). Production settings suit Apache Kafka / Redpanda.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from gridwatch.config import KafkaConfig
from gridwatch.topics import ALL_KAFKA_TOPICS, SENSOR_READINGS

log = logging.getLogger(__name__)


def producer_settings(cfg: KafkaConfig) -> dict[str, Any]:
    return {
        "bootstrap_servers": cfg.bootstrap_servers,
        "acks": "all",
        "linger_ms": cfg.effective_linger_ms(),
        "max_batch_size": cfg.effective_max_batch_size(),
        "max_request_size": 8 << 20,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 200,
    }


def consumer_settings(cfg: KafkaConfig, group_id: str) -> dict[str, Any]:
    """A plain aiokafka consumer that commits by hand (after its work is stored)."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": cfg.effective_session_timeout_ms(),
        "heartbeat_interval_ms": max(500, cfg.effective_session_timeout_ms() // 3),
        "fetch_max_wait_ms": cfg.effective_fetch_max_wait_ms(),
        "max_partition_fetch_bytes": 8 << 20,
    }


def make_producer(cfg: KafkaConfig, **overrides: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**{**producer_settings(cfg), **overrides})


def topic_partitions(cfg: KafkaConfig) -> dict[str, int]:
    """Every gridwatch topic and its partition count."""
    out = {t.name: 1 for t in ALL_KAFKA_TOPICS}
    out[SENSOR_READINGS.name] = cfg.readings_partitions
    out["gridwatch.incident.candidates"] = cfg.readings_partitions
    return out


async def ensure_topics(cfg: KafkaConfig, extra: dict[str, int] | None = None, timeout_s: float = 30) -> None:
    """Create gridwatch's topics up front (auto-created topics get the broker's default partitions)."""
    wanted = {**topic_partitions(cfg), **(extra or {})}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, num_partitions=n, replication_factor=cfg.replication_factor)
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            resp = None
            with contextlib.suppress(TopicAlreadyExistsError):
                resp = await admin.create_topics(new)
            # CreateTopics reports per-topic errors in its body; aiokafka does not raise them
            for topic_error in getattr(resp, "topic_errors", None) or []:
                name, code = topic_error[0], topic_error[1]
                if code not in (0, 36):  # 36: already exists (a concurrent creator): fine
                    raise TopicSetupError(f"kafka: cannot create topic {name!r}: error code {code}")
            log.info("created topics: %s", ", ".join(t.name for t in new))
        # A topic made earlier with another partition count breaks the sensor -> partition
        # mapping (the bridge would retry a send to a missing partition forever): refuse to start.
        for t in await admin.describe_topics(list(wanted)):
            have, want = len(t.get("partitions", [])), wanted.get(t["topic"])
            if want is not None and t.get("error_code", 0) == 0 and have != want:
                raise TopicSetupError(
                    f"kafka: topic {t['topic']!r} has {have} partitions but the config wants {want} "
                    "(kafka.readings_partitions): recreate the topic or set the config to match"
                )
    finally:
        await admin.close()


class TopicSetupError(RuntimeError):
    """Kafka topics are missing or shaped differently from what the config says."""


def ensure_topics_sync(cfg: KafkaConfig) -> None:
    asyncio.run(ensure_topics(cfg))
