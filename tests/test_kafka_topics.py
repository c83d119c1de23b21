"""Topics are created up front with the configured partitions; a mismatch refuses to start."""

from __future__ import annotations

import asyncio

import pytest

from gridwatch.config import KafkaConfig
from gridwatch.kafka import TopicSetupError, ensure_topics, topic_partitions

pytestmark = pytest.mark.servers


def test_topics_created_with_configured_partitions(fresh_tansu):
    t = fresh_tansu()
    cfg = KafkaConfig(bootstrap_servers=t.bootstrap_servers, profile="dev", readings_partitions=3)
    asyncio.run(ensure_topics(cfg))
    counts = t.partition_counts(list(topic_partitions(cfg)))
    assert counts["gridwatch.sensor.readings"] == 3
    assert counts["gridwatch.deadletter"] == 1
    asyncio.run(ensure_topics(cfg))  # idempotent


def test_partition_mismatch_is_a_clear_error(fresh_tansu):
    t = fresh_tansu()
    asyncio.run(ensure_topics(KafkaConfig(bootstrap_servers=t.bootstrap_servers, readings_partitions=2)))
    with pytest.raises(TopicSetupError, match="has 2 partitions but the config wants 4"):
        asyncio.run(ensure_topics(KafkaConfig(bootstrap_servers=t.bootstrap_servers, readings_partitions=4)))
