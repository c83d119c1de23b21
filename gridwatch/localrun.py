"""Run gridwatch's own services as child processes against a `DevStack` (demo, tests, benchmarks).

    with DevStack(workdir) as stack:
        pipe = LocalPipeline(stack, workdir)          # writes workdir/gridwatch.yaml for the stack
        pipe.start_bridge(); pipe.start_streams()
        ...
        pipe.stop()

The bridge and the stream worker run as real `gridwatch bridge` / `gridwatch streams worker`
processes, so tests can SIGKILL them exactly as an operator's machine would.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gridwatch.config import GridwatchConfig, _deep_merge, demo_config_path, load_config
from gridwatch.console.auth import hash_password
from gridwatch.devservers.process import ManagedProcess, free_port
from gridwatch.devservers.stack import DevStack
from gridwatch.dispatch.api import hash_token


class LocalPipeline:
    def __init__(
        self,
        stack: DevStack,
        workdir: Path,
        *,
        base_config: Path | None = None,
        overrides: dict[str, Any] | None = None,
        database: str = "gridwatch",
    ) -> None:
        self.stack = stack
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database = database
        base = Path(base_config or demo_config_path()).resolve()
        data = yaml.safe_load(base.read_text(encoding="utf-8"))
        # the copy lives in workdir: make its relative paths still point next to the original
        if isinstance(data.get("sensor_files"), list):
            data["sensor_files"] = [str((base.parent / p).resolve()) for p in data["sensor_files"]]
        city = data.get("city", {}).get("geojson")
        if isinstance(city, str) and not city.startswith("package:"):
            data["city"]["geojson"] = str((base.parent / city).resolve())
        self.api_port = free_port()
        # A supervisor token for the local API (the demo's verifier; tests' operator). Local only.
        self.supervisor_token = secrets.token_urlsafe(18)
        # console log-ins for the person running the demo (printed by the demo; local only)
        self.console_password = secrets.token_urlsafe(9)
        console_users = [
            {
                "name": name,
                "display_name": display,
                "role": role,
                "password_hash": hash_password(self.console_password),
            }
            for name, display, role in (
                ("operator", "值班员 (demo)", "operator"),
                ("supervisor", "值班长 (demo)", "supervisor"),
            )
        ]
        endpoints = {
            "dispatch": {
                "ledger_url": f"sqlite:///{self.workdir / 'ledger.db'}",
                "hard_examples_dir": str(self.workdir / "hard-examples"),
                "api_port": self.api_port,
                "push": {"public_url": f"http://127.0.0.1:{self.api_port}"},
                "credentials": [
                    {
                        "name": "local supervisor",
                        "role": "supervisor",
                        "token_sha256": hash_token(self.supervisor_token),
                    }
                ],
            },
            "console": {"users": console_users},
            "mqtt": {"host": stack.mqtt_host, "port": stack.mqtt_port},
            "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
            "influx": {"url": stack.influx_url, "bucket": database, "spill_dir": str(self.workdir / "spill")},
            "streams": {"data_dir": str(self.workdir / "faust")},
        }
        data = _deep_merge(data, _deep_merge(endpoints, overrides or {}))
        self.config_path = self.workdir / "gridwatch.yaml"
        self.config_path.write_text(
            yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        self.cfg: GridwatchConfig = load_config(self.config_path)
        stack.influxdb.create_database(database)
        self.bridge = ManagedProcess("gridwatch-bridge", stop_grace=15)
        self.streams = ManagedProcess("gridwatch-streams", stop_grace=15)
        self.dispatch = ManagedProcess("gridwatch-dispatch", stop_grace=15)
        self.cameras = ManagedProcess("gridwatch-cameras", stop_grace=15)

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gridwatch.cli", *args, "--config", str(self.config_path)]

    def start_bridge(self, timeout: float = 60) -> None:
        log = self.workdir / "bridge.log"
        marker = _count(log, "connected to MQTT")  # a restart appends to the same log
        self.bridge.start(self._cli("bridge"), log_path=log)
        self.bridge.wait_ready(lambda: _count(log, "connected to MQTT") > marker, timeout)

    def start_streams(self, timeout: float = 90) -> None:
        log = self.workdir / "streams.log"
        marker = _count(log, "streams: {")
        self.streams.start(self._cli("streams", "worker"), log_path=log)
        # ready once it has written its first health line after this start (assigned and running)
        self.streams.wait_ready(lambda: _count(log, "streams: {") > marker, timeout)

    def start_dispatch(self, timeout: float = 60) -> None:
        log = self.workdir / "dispatch.log"
        marker = _count(log, "dispatch: ready")
        self.dispatch.start(self._cli("dispatch", "serve"), log_path=log)
        self.dispatch.wait_ready(lambda: _count(log, "dispatch: ready") > marker, timeout)

    def start_cameras(self, timeout: float = 60) -> None:
        log = self.workdir / "cameras.log"
        marker = _count(log, "cameras: ready")
        self.cameras.start(self._cli("cameras", "worker"), log_path=log)
        self.cameras.wait_ready(lambda: _count(log, "cameras: ready") > marker, timeout)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def stop(self) -> None:
        for p in (self.cameras, self.dispatch, self.bridge, self.streams):
            if p.alive:
                p.stop()

    # --- reading results back -----------------------------------------------------------------
    def influxql(self, q: str) -> list[dict[str, Any]]:
        """Run an InfluxQL query on the real InfluxDB and return its series."""
        r = httpx.get(
            f"{self.stack.influx_v1_url}/query",
            params={"db": self.database, "q": q, "epoch": "ms"},
            timeout=30,
        )
        r.raise_for_status()
        body = r.json()
        res = body.get("results", [{}])[0]
        if "error" in res:
            raise RuntimeError(f"InfluxQL error: {res['error']} in {q!r}")
        return res.get("series", [])

    def count(self, measurement: str, where: str = "") -> int:
        field = {"sensor_reading": "value", "sensor_window": "count", "rule_firing": "episode_start"}.get(
            measurement, "value"
        )
        series = self.influxql(f"SELECT count({field}) FROM {measurement} {where}")
        return int(series[0]["values"][0][1]) if series else 0

    def wait_for(self, predicate, timeout: float, interval: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _count(p: Path, needle: str) -> int:
    return _read(p).count(needle)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every record value of a topic, from the beginning to its current end (no consumer group)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def main() -> list[bytes]:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await c.start()
        try:
            parts = c.partitions_for_topic(topic) or set()
            if not parts:
                await c._client.force_metadata_update()  # noqa: SLF001 - freshly created topic
                parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return []
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            out: list[bytes] = []
            deadline = asyncio.get_running_loop().time() + timeout_s
            while asyncio.get_running_loop().time() < deadline:
                behind = [tp for tp in tps if await c.position(tp) < ends[tp]]
                if not behind:
                    break
                batch = await c.getmany(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(m.value for m in msgs if m.value is not None)
            return out
        finally:
            await c.stop()

    return asyncio.run(main())
