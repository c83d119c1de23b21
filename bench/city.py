"""Benchmark: point -> grid lookup in the demo city, against shapely's raw limit.

Every camera frame, sensor reading and citizen report is placed on the grid map with
``CityModel.grid_at``, so it sits on the hot path of ingestion. This benchmark times it over
random points inside the demo city (279 grids) and, in the same run and on the same points,
the minimal loop any implementation must pay: ``shapely.Point(lon, lat)`` plus
``STRtree.query(point, predicate="intersects")`` on the same grid polygons. The two are timed in
alternating chunks so CPU frequency changes and noisy neighbours hit both alike.

``ratio`` is raw / gridwatch: 1.0 means gridwatch adds nothing over the bare query, 0.5 means it
takes twice as long. ``pass`` is gridwatch under ``target_us`` (50 µs) per lookup.

Run: ``gridwatch bench city`` or ``python -m gridwatch.bench.city``.
"""

from __future__ import annotations

import gc
import json
import time

import numpy as np
import shapely
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gridwatch.city import DEMO_CITY_PATH, CityModel, Level

TARGET_US = 50.0
CHUNK = 5_000


def _points_inside(city: CityModel, n: int, seed: int) -> tuple[list[float], list[float]]:
    """``n`` seeded uniform random points inside the district (rejection sampling on its bbox)."""
    district = next(node for node in city.nodes.values() if node.level is Level.DISTRICT).geometry
    minx, miny, maxx, maxy = district.bounds
    rng = np.random.default_rng(seed)
    lons: list[float] = []
    lats: list[float] = []
    while len(lons) < n:
        x = rng.uniform(minx, maxx, n)
        y = rng.uniform(miny, maxy, n)
        inside = shapely.contains_xy(district, x, y)
        lons.extend(x[inside].tolist())
        lats.extend(y[inside].tolist())
    return lons[:n], lats[:n]


def _time_gridwatch(city: CityModel, lons: list[float], lats: list[float]) -> int:
    grid_at = city.grid_at
    start = time.perf_counter_ns()
    for lon, lat in zip(lons, lats, strict=True):
        grid_at(lon, lat)
    return time.perf_counter_ns() - start


def _time_raw(tree: shapely.STRtree, lons: list[float], lats: list[float]) -> int:
    query, point = tree.query, shapely.Point
    start = time.perf_counter_ns()
    for lon, lat in zip(lons, lats, strict=True):
        query(point(lon, lat), predicate="intersects")
    return time.perf_counter_ns() - start


def _time_raw_query_only(tree: shapely.STRtree, points: list[shapely.Point]) -> int:
    query = tree.query
    start = time.perf_counter_ns()
    for p in points:
        query(p, predicate="intersects")
    return time.perf_counter_ns() - start


def run_city_bench(lookups: int = 100_000, seed: int = 0, *, show_progress: bool = True) -> dict:
    """Time ``CityModel.grid_at`` and the raw STRtree limit over ``lookups`` random points.

    Returns ``{"bench": "city", "grids", "lookups", "gridwatch_us_per_lookup",
    "raw_us_per_lookup", "ratio", "target_us", "pass"}`` plus two informative extras:
    ``raw_query_only_us_per_lookup`` (query on pre-built points, i.e. without creating the
    Point) and ``gridwatch_vectorised_us_per_lookup`` (``grid_ids_at`` on all points at once).
    """
    city = CityModel.load(DEMO_CITY_PATH)
    grids = city.grids()
    tree = shapely.STRtree([g.geometry for g in grids])
    lons, lats = _points_inside(city, lookups, seed)
    points = shapely.points(lons, lats).tolist()

    # Same answers, or the comparison means nothing. Checked on a sample, before timing.
    for lon, lat in zip(lons[:1000], lats[:1000], strict=True):
        hits = tree.query(shapely.Point(lon, lat), predicate="intersects")
        assert city.grid_at(lon, lat).id == grids[int(hits.min())].id

    # Warm up: the tree builds lazily and prepares the polygons on first query.
    _time_gridwatch(city, lons[:1000], lats[:1000])
    _time_raw(tree, lons[:1000], lats[:1000])
    _time_raw_query_only(tree, points[:1000])

    totals = {"gridwatch": 0, "raw": 0, "raw_query_only": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one side's chunk would skew the comparison
    try:
        with Progress(*columns, transient=True, disable=not show_progress) as progress:
            tasks = {
                "gridwatch": progress.add_task("gridwatch grid_at", total=lookups),
                "raw": progress.add_task("raw STRtree.query", total=lookups),
            }
            for lo in range(0, lookups, CHUNK):
                hi = min(lo + CHUNK, lookups)
                totals["gridwatch"] += _time_gridwatch(city, lons[lo:hi], lats[lo:hi])
                progress.advance(tasks["gridwatch"], hi - lo)
                totals["raw"] += _time_raw(tree, lons[lo:hi], lats[lo:hi])
                totals["raw_query_only"] += _time_raw_query_only(tree, points[lo:hi])
                progress.advance(tasks["raw"], hi - lo)
            start = time.perf_counter_ns()
            city.grid_ids_at(np.asarray(lons), np.asarray(lats))
            vectorised_ns = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()

    gridwatch_us = totals["gridwatch"] / lookups / 1000
    raw_us = totals["raw"] / lookups / 1000
    return {
        "bench": "city",
        "grids": len(grids),
        "lookups": lookups,
        "gridwatch_us_per_lookup": round(gridwatch_us, 3),
        "raw_us_per_lookup": round(raw_us, 3),
        "ratio": round(raw_us / gridwatch_us, 3),
        "target_us": TARGET_US,
        "pass": gridwatch_us < TARGET_US,
        "raw_query_only_us_per_lookup": round(totals["raw_query_only"] / lookups / 1000, 3),
        "gridwatch_vectorised_us_per_lookup": round(vectorised_ns / lookups / 1000, 3),
    }


if __name__ == "__main__":
    print(json.dumps(run_city_bench(), indent=2))
