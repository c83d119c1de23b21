"""The sensor registry: each configured sensor joined with its type, rules and place on the grid map.

Built once at start-up from the config and the city model; the bridge, the stream workers
and the demo all use this, so a sensor's grid is decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridwatch.city import CityModel
from gridwatch.config import ConfigError, GridwatchConfig, RulesConfig
from gridwatch.schemas import Category


@dataclass(frozen=True, slots=True)
class SensorInfo:
    id: str
    type: str
    unit: str
    category: Category
    period_s: float
    rules: RulesConfig
    lon: float
    lat: float
    grid_id: str | None
    community_id: str | None
    town_id: str | None
    name: str


def build_sensor_registry(cfg: GridwatchConfig, city: CityModel) -> dict[str, SensorInfo]:
    out: dict[str, SensorInfo] = {}
    for s in cfg.sensors:
        t = cfg.sensor_types[s.type]
        if s.grid is not None:
            if s.grid not in city.nodes or city.nodes[s.grid].level != "grid":
                raise ConfigError(f"sensors (id {s.id!r}).grid: {s.grid!r} is not a grid of the city map")
            grid_id: str | None = s.grid
        else:
            node = city.grid_at(s.location.lon, s.location.lat)
            grid_id = node.id if node else None
        community_id = town_id = None
        if grid_id:
            chain = {n.level: n.id for n in city.ancestors(grid_id)}
            community_id, town_id = chain.get("community"), chain.get("town")
        out[s.id] = SensorInfo(
            id=s.id,
            type=s.type,
            unit=t.unit,
            category=t.category,
            period_s=s.period_s,
            rules=cfg.rules_for(s),
            lon=s.location.lon,
            lat=s.location.lat,
            grid_id=grid_id,
            community_id=community_id,
            town_id=town_id,
            name=s.name or s.id,
        )
    return out
