"""Small builders shared by tests."""

from __future__ import annotations

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
