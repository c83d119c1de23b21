"""Tests for gridwatch.city: the demo city's topology, point lookup, and load-time validation."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Point

from gridwatch.city import DEMO_CITY_PATH, LEVELS, CityModel, CityModelError, Level

AREA_EPS = 1e-12  # deg²; about 0.01 m² at this latitude


@pytest.fixture(scope="module")
def city() -> CityModel:
    return CityModel.load(DEMO_CITY_PATH)


@pytest.fixture(scope="module")
def district(city: CityModel):
    (node,) = [n for n in city.nodes.values() if n.level is Level.DISTRICT]
    return node


def random_points_inside(geom, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = geom.bounds
    xs, ys = [], []
    while sum(len(x) for x in xs) < n:
        x, y = rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)
        inside = shapely.contains_xy(geom, x, y)
        xs.append(x[inside])
        ys.append(y[inside])
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


# --- the demo city ------------------------------------------------------------------------------


def test_demo_city_counts(city: CityModel) -> None:
    assert city.counts() == {"district": 1, "town": 7, "community": 83, "grid": 279}
    assert list(city.counts()) == [str(level) for level in LEVELS]


def test_demo_city_ids_are_readable(city: CityModel) -> None:
    patterns = {
        "district": r"d-\d\d",
        "town": r"t-\d\d",
        "community": r"c-\d\d-\d\d",
        "grid": r"g-\d\d-\d\d-\d\d",
    }
    for node in city.nodes.values():
        assert re.fullmatch(patterns[node.level], node.id), node.id
        if node.level is Level.GRID:
            # g-TT-CC-NN sits in community c-TT-CC
            assert node.parent == "c-" + node.id[2:7]


def test_every_grid_has_a_team_with_its_mqtt_topic(city: CityModel) -> None:
    for grid in city.grids():
        assert grid.team is not None and grid.team.leader and grid.name_zh.endswith("网格")
        mqtt = [c.address for c in grid.team.contacts if c.channel == "mqtt"]
        assert mqtt == [f"gridwatch/teams/{grid.id}/alerts"]
        assert any(c.channel == "phone" for c in grid.team.contacts)


def test_communities_have_three_or_four_grids(city: CityModel) -> None:
    sizes = [len(city.children(n.id)) for n in city.nodes.values() if n.level is Level.COMMUNITY]
    assert set(sizes) <= {3, 4} and sum(sizes) == 279


def test_grids_do_not_overlap(city: CityModel) -> None:
    geoms = [g.geometry for g in city.grids()]
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(np.take(geoms, left[pairs]), np.take(geoms, right[pairs])))
    assert pairs.sum() > 279  # neighbours do touch: this is a tiling, not scattered islands
    assert overlap.max() < AREA_EPS


def test_grids_cover_the_district_exactly(city: CityModel, district) -> None:
    union = shapely.union_all([g.geometry for g in city.grids()])
    assert shapely.symmetric_difference(union, district.geometry).area < AREA_EPS
    assert district.geometry.geom_type == "Polygon" and not district.geometry.interiors


def test_parents_are_contiguous_unions_of_their_children(city: CityModel) -> None:
    for node in city.nodes.values():
        assert node.geometry.geom_type == "Polygon", f"{node.id} is not contiguous"
        if node.level is Level.GRID:
            continue
        kids = city.children(node.id)
        assert kids
        union = shapely.union_all([k.geometry for k in kids])
        assert union.geom_type == "Polygon", f"children of {node.id} are not contiguous"
        assert shapely.symmetric_difference(union, node.geometry).area < AREA_EPS, node.id


def test_demo_city_is_near_chengdu_and_district_sized(district) -> None:
    minx, miny, maxx, maxy = district.geometry.bounds
    km_x = (maxx - minx) * 111.32 * np.cos(np.radians(30.66))
    km_y = (maxy - miny) * 110.574
    assert 103.9 < minx < maxx < 104.2 and 30.5 < miny < maxy < 30.8
    assert 13 < km_x < 17 and 10 < km_y < 14


def test_committed_demo_city_matches_its_generator(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "make_demo_city.py"
    spec = importlib.util.spec_from_file_location("make_demo_city", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "demo_city.geojson"
    module.write(module.build(), out)
    assert out.read_bytes() == DEMO_CITY_PATH.read_bytes(), "re-run scripts/make_demo_city.py and commit"
    assert DEMO_CITY_PATH.stat().st_size < 2_000_000


# --- lookups ------------------------------------------------------------------------------------


def test_grid_at_matches_brute_force(city: CityModel, district) -> None:
    lons, lats = random_points_inside(district.geometry, 2000, seed=1)
    grids = city.grids()
    for lon, lat in zip(lons, lats, strict=True):
        p = Point(lon, lat)
        containing = [g.id for g in grids if g.geometry.covers(p)]
        found = city.grid_at(lon, lat)
        assert found is not None
        assert found.id == min(containing)


def test_grid_at_outside_is_none(city: CityModel, district) -> None:
    minx, miny, maxx, maxy = district.geometry.bounds
    assert city.grid_at(minx - 0.01, miny - 0.01) is None
    assert city.grid_at(0.0, 0.0) is None
    # Inside the bounding box but outside the irregular outline (the corners).
    rng = np.random.default_rng(2)
    x, y = rng.uniform(minx, maxx, 5000), rng.uniform(miny, maxy, 5000)
    outside = ~shapely.intersects_xy(district.geometry, x, y)
    assert outside.sum() > 100
    assert all(city.grid_at(a, b) is None for a, b in zip(x[outside], y[outside], strict=True))


def test_grid_ids_at_agrees_with_grid_at(city: CityModel, district) -> None:
    minx, miny, maxx, maxy = district.geometry.bounds
    rng = np.random.default_rng(3)
    lons, lats = rng.uniform(minx - 0.01, maxx + 0.01, 3000), rng.uniform(miny - 0.01, maxy + 0.01, 3000)
    expected = [(g.id if (g := city.grid_at(a, b)) else None) for a, b in zip(lons, lats, strict=True)]
    assert city.grid_ids_at(lons, lats) == expected
    assert None in expected and len({e for e in expected if e}) > 200
    assert city.grid_ids_at(np.array([]), np.array([])) == []
    with pytest.raises(ValueError, match="1-D"):
        city.grid_ids_at(np.zeros(3), np.zeros(4))


def test_point_on_shared_edge_goes_to_smallest_id(city: CityModel) -> None:
    grids = city.grids()
    tree = shapely.STRtree([g.geometry for g in grids])
    checked = 0
    for g in grids[:40]:
        # Every polygon vertex of a grid that another grid also covers is on a shared edge.
        for lon, lat in shapely.get_coordinates(g.geometry.exterior):
            hits = tree.query(Point(lon, lat), predicate="intersects")
            if len(hits) > 1:
                expected = min(grids[i].id for i in hits)
                assert city.grid_at(lon, lat).id == expected
                assert city.grid_ids_at(np.array([lon]), np.array([lat])) == [expected]
                checked += 1
    assert checked > 50


def test_grid_at_is_fast(city: CityModel, district) -> None:
    lons, lats = random_points_inside(district.geometry, 5000, seed=4)
    pairs = list(zip(lons.tolist(), lats.tolist(), strict=True))
    best = float("inf")
    for _ in range(3):  # best of three: the target is about gridwatch, not about a busy CI box
        start = time.perf_counter()
        for lon, lat in pairs:
            city.grid_at(lon, lat)
        best = min(best, (time.perf_counter() - start) / len(pairs))
    assert best < 50e-6, f"{best * 1e6:.1f} µs per lookup"


# --- navigation ---------------------------------------------------------------------------------


def test_ancestors_go_bottom_up(city: CityModel) -> None:
    grid = city.node("g-01-01-01")
    chain = city.ancestors(grid.id)
    assert [n.level for n in chain] == ["grid", "community", "town", "district"]
    assert [n.id for n in chain] == ["g-01-01-01", "c-01-01", "t-01", "d-01"]
    assert city.ancestors("c-01-01")[0].id == "c-01-01"
    assert [n.id for n in city.ancestors("d-01")] == ["d-01"]


def test_children_and_levels(city: CityModel) -> None:
    towns = city.children("d-01")
    assert [t.id for t in towns] == [f"t-{i:02d}" for i in range(1, 8)]
    assert all(city.level_of(t.id) is Level.TOWN for t in towns)
    community = city.node("c-01-01")
    assert [g.parent for g in city.children(community.id)] == ["c-01-01"] * len(city.children("c-01-01"))
    assert city.children("g-01-01-01") == []
    assert [g.id for g in city.grids()] == sorted(g.id for g in city.grids())


def test_unknown_node_raises_clear_key_error(city: CityModel) -> None:
    with pytest.raises(KeyError, match="g-99-99-99"):
        city.node("g-99-99-99")
    with pytest.raises(KeyError, match="no node with id"):
        city.ancestors("nope")
    with pytest.raises(KeyError):
        city.children("nope")


def test_nodes_are_immutable(city: CityModel) -> None:
    with pytest.raises(ValueError):
        city.node("t-01").name_zh = "x"  # type: ignore[misc]


# --- validation errors --------------------------------------------------------------------------


def square(x: float, y: float, size: float = 0.01) -> dict:
    ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
    return {"type": "Polygon", "coordinates": [ring]}


def feature(node_id: str, level: str, parent: str | None, geometry: dict, team: bool = False) -> dict:
    props = {"id": node_id, "level": level, "parent": parent, "name_zh": f"{node_id}名"}
    if team:
        props["team"] = {
            "name_zh": "队",
            "leader": "王建国",
            "contacts": [{"channel": "mqtt", "address": f"gridwatch/teams/{node_id}/alerts"}],
        }
    return {"type": "Feature", "properties": props, "geometry": geometry}


def tiny_city() -> dict:
    """Features 0..4: district, town, community, and two side-by-side grids g-1, g-2."""
    whole = {"type": "Polygon", "coordinates": [[[0, 0], [0.02, 0], [0.02, 0.01], [0, 0.01], [0, 0]]]}
    return {
        "type": "FeatureCollection",
        "features": [
            feature("d-1", "district", None, whole),
            feature("t-1", "town", "d-1", whole),
            feature("c-1", "community", "t-1", whole),
            feature("g-1", "grid", "c-1", square(0, 0), team=True),
            feature("g-2", "grid", "c-1", square(0.01, 0), team=True),
        ],
    }


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "city.geojson"
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def load_error(tmp_path: Path, data: dict | str) -> tuple[Path, str]:
    path = write(tmp_path, data)
    with pytest.raises(CityModelError) as info:
        CityModel.load(path)
    return path, str(info.value)


def test_tiny_city_loads(tmp_path: Path) -> None:
    city = CityModel.load(write(tmp_path, tiny_city()))
    assert city.counts() == {"district": 1, "town": 1, "community": 1, "grid": 2}
    assert city.grid_at(0.005, 0.005).id == "g-1"
    assert city.grid_at(0.01, 0.005).id == "g-1"  # on the shared edge: smallest id wins
    assert city.grid_at(0.015, 0.005).id == "g-2"
    assert city.grid_at(0.03, 0.005) is None


def test_tiny_city_from_dict() -> None:
    assert CityModel.from_geojson(tiny_city()).counts()["grid"] == 2


def mutate_name_zh_missing(d: dict) -> None:
    del d["features"][3]["properties"]["name_zh"]


def mutate_unknown_parent(d: dict) -> None:
    d["features"][3]["properties"]["parent"] = "c-404"


def mutate_wrong_level_step(d: dict) -> None:
    d["features"][3]["properties"]["parent"] = "t-1"


def mutate_grid_without_team(d: dict) -> None:
    del d["features"][3]["properties"]["team"]


def mutate_bad_channel(d: dict) -> None:
    d["features"][3]["properties"]["team"]["contacts"][0]["channel"] = "sms"


def mutate_duplicate_id(d: dict) -> None:
    d["features"][4]["properties"]["id"] = "g-1"


def mutate_invalid_polygon(d: dict) -> None:
    bow_tie = [[0, 0], [0.01, 0.01], [0.01, 0], [0, 0.01], [0, 0]]
    d["features"][3]["geometry"] = {"type": "Polygon", "coordinates": [bow_tie]}


def mutate_unknown_property(d: dict) -> None:
    d["features"][3]["properties"]["team"]["contacts"][0]["priority"] = 1


def mutate_bad_level(d: dict) -> None:
    d["features"][3]["properties"]["level"] = "street"


def mutate_id_with_slash(d: dict) -> None:
    d["features"][3]["properties"]["id"] = "g/1"


def mutate_point_geometry(d: dict) -> None:
    d["features"][3]["geometry"] = {"type": "Point", "coordinates": [0, 0]}


def mutate_projected_coordinates(d: dict) -> None:
    d["features"][3]["geometry"] = square(400_000, 3_400_000, 500)


def mutate_town_without_parent(d: dict) -> None:
    d["features"][1]["properties"]["parent"] = None


def mutate_district_with_parent(d: dict) -> None:
    d["features"][0]["properties"]["parent"] = "t-1"


@pytest.mark.parametrize(
    ("mutate", "feature_label", "path", "fragments"),
    [
        (mutate_name_zh_missing, "feature 3 (id 'g-1')", "properties.name_zh", ["required"]),
        (mutate_unknown_parent, "feature 3 (id 'g-1')", "properties.parent", ["unknown parent 'c-404'"]),
        (
            mutate_wrong_level_step,
            "feature 3 (id 'g-1')",
            "properties.parent",
            ["is a town", "must be a community"],
        ),
        (mutate_grid_without_team, "feature 3 (id 'g-1')", "properties.team", ["required on grid"]),
        (
            mutate_bad_channel,
            "feature 3 (id 'g-1')",
            "properties.team.contacts[0].channel",
            ["must be one of", "'mqtt'", "'feishu'", "got 'sms'"],
        ),
        (mutate_duplicate_id, "feature 4 (id 'g-1')", "properties.id", ["duplicate id", "feature 3"]),
        (
            mutate_invalid_polygon,
            "feature 3 (id 'g-1')",
            "geometry",
            ["invalid Polygon", "Self-intersection"],
        ),
        (
            mutate_unknown_property,
            "feature 3 (id 'g-1')",
            "properties.team.contacts[0].priority",
            ["unknown"],
        ),
        (mutate_bad_level, "feature 3 (id 'g-1')", "properties.level", ["'district'", "got 'street'"]),
        (mutate_id_with_slash, "feature 3 (id 'g/1')", "properties.id", ["not a valid id"]),
        (mutate_point_geometry, "feature 3 (id 'g-1')", "geometry.type", ["'Polygon' or 'MultiPolygon'"]),
        (mutate_projected_coordinates, "feature 3 (id 'g-1')", "geometry.coordinates", ["WGS84"]),
        (
            mutate_town_without_parent,
            "feature 1 (id 't-1')",
            "properties.parent",
            ["needs a parent district"],
        ),
        (mutate_district_with_parent, "feature 0 (id 'd-1')", "properties.parent", ["must be null"]),
    ],
)
def test_bad_file_error_names_file_feature_and_field(
    tmp_path: Path, mutate, feature_label: str, path: str, fragments: list[str]
) -> None:
    data = copy.deepcopy(tiny_city())
    mutate(data)
    file, message = load_error(tmp_path, data)
    line = next((ln for ln in message.splitlines() if f"{feature_label}: {path}:" in ln), None)
    assert line is not None, message
    assert line.startswith(f"{file}: {feature_label}: {path}: ")
    for fragment in fragments:
        assert fragment in line, line


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = tiny_city()
    mutate_bad_channel(data)
    mutate_name_zh_missing(data)
    data["features"][4]["properties"]["parent"] = "c-404"
    _, message = load_error(tmp_path, data)
    assert len(message.splitlines()) == 3, message


def test_broken_parent_is_reported_once_not_on_every_child(tmp_path: Path) -> None:
    data = tiny_city()
    del data["features"][2]["properties"]["name_zh"]  # the community is broken...
    _, message = load_error(tmp_path, data)
    assert message.splitlines() == [message]  # ...and its grids don't add "unknown parent" noise
    assert "feature 2 (id 'c-1'): properties.name_zh" in message


def test_error_is_a_value_error_with_problem_list(tmp_path: Path) -> None:
    data = tiny_city()
    mutate_grid_without_team(data)
    with pytest.raises(ValueError) as info:
        CityModel.load(write(tmp_path, data))
    assert isinstance(info.value, CityModelError) and len(info.value.problems) == 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"type": "FeatureCollection", "features": [', "not valid JSON: line 1"),
        ('{"type": "Feature"}', "not a GeoJSON FeatureCollection"),
        ('{"type": "FeatureCollection", "features": {}}', "'features' must be a list"),
        ('{"type": "FeatureCollection", "features": []}', "no grid features"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, fragment: str) -> None:
    file, message = load_error(tmp_path, text)
    assert message.startswith(f"{file}: ")
    assert fragment in message


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CityModel.load(tmp_path / "nope.geojson")
