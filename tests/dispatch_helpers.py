"""Shared set-up for the dispatch tests: the demo config and city, candidates on real grids."""

from __future__ import annotations

import functools
from typing import Any

from gridwatch.city import CityModel
from gridwatch.clock import ManualClock
from gridwatch.config import GridwatchConfig, demo_config_path, load_config
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import Ledger
from gridwatch.schemas import IncidentCandidate, Location

# 2026-11-24 10:00 Asia/Shanghai, a Tuesday (inside office hours)
T0 = 1_795_485_600_000


@functools.cache
def demo_city() -> CityModel:
    return CityModel.load(demo_config(None).city.geojson)


def demo_config(ledger_url: str | None, **dispatch: Any) -> GridwatchConfig:
    if not dispatch and ledger_url is None:
        return _plain_demo_config()
    over: dict[str, Any] = {"dispatch": {"hard_examples_dir": None, **dispatch}}  # tests opt in
    if ledger_url:
        over["dispatch"]["ledger_url"] = ledger_url
    return load_config(demo_config_path(), overrides=over)


@functools.cache
def _plain_demo_config() -> GridwatchConfig:
    return load_config(demo_config_path(), overrides={"dispatch": {"hard_examples_dir": None}})


def grid_point(index: int = 0) -> tuple[str, float, float]:
    g = demo_city().grids()[index]
    p = g.geometry.representative_point()
    return g.id, p.x, p.y


def candidate(
    source_id: str = "smoke-1",
    *,
    t: int = T0,
    category: str = "smoke",
    severity: str = "high",
    grid: int = 0,
    kind: str = "sensor",
    offset_m: float = 0.0,
    rule: str = "threshold_high",
) -> IncidentCandidate:
    gid, lon, lat = grid_point(grid)
    lat += offset_m / 111_195.0
    return IncidentCandidate(
        candidate_id=IncidentCandidate.make_id(kind, source_id, rule, t),
        category=category,
        severity=severity,
        source_kind=kind,
        source_id=source_id,
        grid_id=gid,
        location=Location(lon=lon, lat=lat),
        observed_at=t,
        raised_at=t,
        rule=rule,
        summary=f"{category} at {gid}",
    )


def make_core(ledger_url: str, clock: ManualClock | None = None, **dispatch: Any) -> DispatchCore:
    cfg = demo_config(ledger_url, **dispatch)
    ledger = Ledger(cfg.dispatch.ledger_url)
    ledger.migrate()
    core = DispatchCore(cfg, demo_city(), ledger, clock or ManualClock(T0))
    core.load()
    return core
