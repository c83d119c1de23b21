"""The whole dev stack in one object: mosquitto + Tansu + influxd 1.6 + the v2-compat adapter.

Used by ``gridwatch demo`` and the end-to-end tests::

    with DevStack(workdir) as stack:
        stack.mosquitto.port, stack.kafka_bootstrap, stack.influx_url, stack.influx_v1_url

Start-up launches mosquitto, Tansu and influxd together and then waits for each (so it costs the
slowest, not the sum); the adapter starts once influxd answers.  If anything fails, whatever did
start is stopped before the error propagates.  Every server can still be driven individually
(``stack.influxdb.freeze()``, ``stack.mosquitto.restart()``, ...) for fault injection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from gridwatch.devservers.influx_v1_adapter import InfluxV2CompatAdapter
from gridwatch.devservers.influxdb import InfluxDB1Server
from gridwatch.devservers.mosquitto import MosquittoServer
from gridwatch.devservers.process import DevServer, ServerStartError
from gridwatch.devservers.tansu import TansuServer

__all__ = ["DevStack", "DevStackEndpoints"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevStackEndpoints:
    """Plain values to hand to configuration / child processes."""

    mqtt_host: str
    mqtt_port: int
    kafka_bootstrap: str
    influx_url: str  # v2-compatible (the adapter): what production code is configured with
    influx_v1_url: str  # the raw InfluxDB 1.6 HTTP API (InfluxQL queries)


class DevStack:
    """Start/stop the four dev servers under ``workdir`` (``mosquitto/``, ``tansu/``, ``influxdb/``, ``adapter/``)."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        mosquitto: MosquittoServer | None = None,
        tansu: TansuServer | None = None,
        influxdb: InfluxDB1Server | None = None,
        adapter_timeout: float = 5.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Pre-built servers may be passed in to customise them (queue limits, ports...).
        self.mosquitto = mosquitto or MosquittoServer(self.workdir / "mosquitto")
        self.tansu = tansu or TansuServer(self.workdir / "tansu")
        self.influxdb = influxdb or InfluxDB1Server(self.workdir / "influxdb")
        self._adapter_timeout = adapter_timeout
        self.adapter: InfluxV2CompatAdapter | None = None
        #: Seconds the last start() took.
        self.startup_seconds: float | None = None

    @property
    def servers(self) -> list[DevServer]:
        return [s for s in (self.mosquitto, self.tansu, self.influxdb, self.adapter) if s is not None]

    def start(self, timeout: float | None = None) -> Self:
        """Start all four; on any failure stop what started and re-raise."""
        t0 = time.monotonic()
        base = [self.mosquitto, self.tansu, self.influxdb]
        try:
            for s in base:
                s.launch()
            for s in base:
                try:
                    s.wait_ready(timeout)
                except ServerStartError as exc:
                    if not exc.exited:
                        raise
                    # Probably lost the port race: DevServer.start() retries on new ports.
                    log.warning("%s died during start-up, retrying", s.name)
                    s.stop(grace=2.0)
                    s.start(timeout)
            self.adapter = InfluxV2CompatAdapter(
                self.influxdb.url, workdir=self.workdir / "adapter", timeout=self._adapter_timeout
            )
            self.adapter.start(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("dev stack ready in %.2fs: %s", self.startup_seconds, self.endpoints)
        return self

    def stop(self) -> None:
        """Stop everything (adapter first, so it never reports an outage that is just our shutdown)."""
        for s in reversed(self.servers):
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("failed to stop %s", s.name)

    @property
    def alive(self) -> bool:
        return bool(self.servers) and all(s.alive for s in self.servers)

    @property
    def pids(self) -> dict[str, int | None]:
        return {s.name: s.pid for s in self.servers}

    # ---- endpoints -------------------------------------------------------------------------------

    @property
    def mqtt_host(self) -> str:
        return self.mosquitto.host

    @property
    def mqtt_port(self) -> int:
        return self.mosquitto.port

    @property
    def kafka_bootstrap(self) -> str:
        return self.tansu.bootstrap_servers

    @property
    def influx_url(self) -> str:
        """The v2-compatible URL (adapter) that production code should use."""
        if self.adapter is None:
            raise RuntimeError("DevStack not started")
        return self.adapter.url

    @property
    def influx_v1_url(self) -> str:
        return self.influxdb.url

    @property
    def endpoints(self) -> DevStackEndpoints:
        return DevStackEndpoints(
            mqtt_host=self.mqtt_host,
            mqtt_port=self.mqtt_port,
            kafka_bootstrap=self.kafka_bootstrap,
            influx_url=self.influx_url,
            influx_v1_url=self.influx_v1_url,
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
