"""Small builders shared by tests."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import yaml

from gridwatch.city import CityModel
from gridwatch.config import GridwatchConfig, demo_config_path, load_config
from gridwatch.registry import SensorInfo, build_sensor_registry

DEMO_CITY = Path(demo_config_path()).parent.parent / "demo_city.geojson"


def demo_config(**overrides: Any) -> GridwatchConfig:
    return load_config(demo_config_path(), overrides=overrides or None)


_city: CityModel | None = None


def demo_city() -> CityModel:
    global _city
    if _city is None:
        _city = CityModel.load(DEMO_CITY)
    return _city


def demo_registry(cfg: GridwatchConfig | None = None) -> dict[str, SensorInfo]:
    return build_sensor_registry(cfg or demo_config(), demo_city())


def write_config(tmp: Path, data: dict[str, Any], name: str = "gridwatch.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


class WorkerThread:
    """A camera worker's `run()` on its own event loop in a daemon thread (as `gridwatch cameras
    worker` runs it), for tests that watch it from outside; `stop()` ends and joins it."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self._started.set()
            await self.worker.run(self._stop)

        self.loop.run_until_complete(main())

    def stop(self, timeout: float = 30) -> None:
        self._started.wait(10)
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)
