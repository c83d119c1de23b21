"""Generate gridwatch's demo city: ``gridwatch/data/demo_city.geojson``.

The demo city copies the shape of one reformed Chengdu district from published accounts of the
grid-governance reforms (see DOMAIN.md, "The jurisdiction ladder"): 1 district, 7 towns /
sub-districts, 83 communities / villages and 279 comprehensive grids. Everything is invented (names, leaders, phone numbers), but the structure
is what a real deployment loads, so every other part of gridwatch can be developed and tested
against it.

How it is built, deterministically from ``SEED``:

1. An irregular district outline, about 15 km x 12 km, centred near lon 104.06 / lat 30.66.
   Everything is computed in a local kilometre plane and projected to WGS84 at the end.
2. 279 seed points, denser near an "old town" core (urban grids are smaller than rural ones),
   smoothed by a few Lloyd iterations, then a Voronoi tessellation clipped to the outline. Each
   clipped cell is one grid, so grids tile the district without gaps or overlaps.
3. Grids are grouped into 83 contiguous communities of 3 or 4 grids each (greedy region growing
   that always extends the most constrained cell first, retried with a new seed if it strands
   a cell), and communities into 7 contiguous towns (balanced region growing from far-apart
   seeds).
4. Coordinates are rounded to 6 decimals (~0.1 m) *before* communities, towns and the district
   are formed as unions of their grids, so parents are exactly the union of their children in
   the committed file, not just approximately.

The script checks its own output (topology, counts, and that ``gridwatch.city.CityModel`` loads
it) and fails loudly rather than write a subtly broken city.

Run: ``.venv/bin/python scripts/make_demo_city.py`` (about a second). Commit the output.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPoint, Point, Polygon, mapping

SEED = 279
OUT = Path(__file__).resolve().parent.parent / "gridwatch" / "data" / "demo_city.geojson"

LON0, LAT0 = 104.06, 30.66
KM_PER_DEG_LAT = 110.574
KM_PER_DEG_LON = 111.320 * math.cos(math.radians(LAT0))
WIDTH_KM, HEIGHT_KM = 15.0, 12.0

N_TOWNS, N_COMMUNITIES, N_GRIDS = 7, 83, 279
# Where the old urban core sits in the local km plane; grids are densest here and the towns
# nearest to it become sub-districts (街道) while the outer ones stay towns (镇).
CORE_KM = (-2.0, 1.0)
N_SUBDISTRICTS = 4

DISTRICT = ("锦城区", "Jincheng District")
SUBDISTRICT_NAMES = [("锦江", "Jinjiang"), ("东湖", "Donghu"), ("柳江", "Liujiang"), ("沙河", "Shahe")]
TOWN_NAMES = [("青龙", "Qinglong"), ("三圣", "Sansheng"), ("白鹭", "Bailu")]
# Community/village name stems: (hanzi, pinyin). More than 83 so the shuffle has choice.
COMMUNITY_STEMS = [
    ("和平", "Heping"), ("新华", "Xinhua"), ("红星", "Hongxing"), ("光明", "Guangming"),
    ("桂花", "Guihua"), ("莲花", "Lianhua"), ("金沙", "Jinsha"), ("玉林", "Yulin"),
    ("芳草", "Fangcao"), ("翠竹", "Cuizhu"), ("双桥", "Shuangqiao"), ("水井", "Shuijing"),
    ("书院", "Shuyuan"), ("青石", "Qingshi"), ("荷塘", "Hetang"), ("杏林", "Xinglin"),
    ("梅林", "Meilin"), ("望江", "Wangjiang"), ("合江", "Hejiang"), ("东风", "Dongfeng"),
    ("朝阳", "Chaoyang"), ("新民", "Xinmin"), ("永丰", "Yongfeng"), ("复兴", "Fuxing"),
    ("长顺", "Changshun"), ("宽巷", "Kuanxiang"), ("文殊", "Wenshu"), ("草堂", "Caotang"),
    ("浣花", "Huanhua"), ("百花", "Baihua"), ("清水", "Qingshui"), ("石桥", "Shiqiao"),
    ("高升", "Gaosheng"), ("万福", "Wanfu"), ("太平", "Taiping"), ("安顺", "Anshun"),
    ("兴隆", "Xinglong"), ("同心", "Tongxin"), ("团结", "Tuanjie"), ("胜利", "Shengli"),
    ("建设", "Jianshe"), ("幸福", "Xingfu"), ("和美", "Hemei"), ("锦绣", "Jinxiu"),
    ("牡丹", "Mudan"), ("芙蓉", "Furong"), ("银杏", "Yinxing"), ("枫林", "Fenglin"),
    ("柏树", "Baishu"), ("松林", "Songlin"), ("竹园", "Zhuyuan"), ("花园", "Huayuan"),
    ("果园", "Guoyuan"), ("龙井", "Longjing"), ("凤凰", "Fenghuang"), ("麒麟", "Qilin"),
    ("白塔", "Baita"), ("黄桷", "Huangjue"), ("红花", "Honghua"), ("金桥", "Jinqiao"),
    ("银河", "Yinhe"), ("星光", "Xingguang"), ("晨曦", "Chenxi"), ("东升", "Dongsheng"),
    ("西城", "Xicheng"), ("南苑", "Nanyuan"), ("北湖", "Beihu"), ("中和", "Zhonghe"),
    ("天府", "Tianfu"), ("蜀锦", "Shujin"), ("盐井", "Yanjing"), ("马鞍", "Ma'an"),
    ("狮子", "Shizi"), ("观音", "Guanyin"), ("大石", "Dashi"), ("小河", "Xiaohe"),
    ("长林", "Changlin"), ("平安", "Ping'an"), ("丰收", "Fengshou"), ("五星", "Wuxing"),
    ("七里", "Qili"), ("十里", "Shili"), ("三元", "Sanyuan"), ("双河", "Shuanghe"),
    ("柳荫", "Liuyin"), ("碧水", "Bishui"), ("清泉", "Qingquan"), ("白云", "Baiyun"),
    ("青山", "Qingshan"), ("金鸡", "Jinji"), ("玉带", "Yudai"), ("宝山", "Baoshan"),
]  # fmt: skip
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐"
GIVEN_NAMES = [
    "建国", "丽华", "志强", "秀英", "海燕", "晓东", "玉兰", "德明", "春梅", "国庆", "文斌", "桂芳",
    "永刚", "静", "磊", "敏", "勇", "婷", "军", "红梅", "小平", "建华", "淑珍", "佳怡", "子涵", "浩然",
]  # fmt: skip


# --- geometry helpers ---------------------------------------------------------------------------


def district_outline(rng: np.random.Generator) -> Polygon:
    """An irregular, gently lobed outline scaled to WIDTH_KM x HEIGHT_KM (local km plane)."""
    theta = np.linspace(0.0, 2.0 * np.pi, 120, endpoint=False)
    r = np.ones_like(theta)
    for k, amp in ((2, 0.07), (3, 0.06), (5, 0.035), (7, 0.02)):
        r += amp * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    r += rng.normal(0.0, 0.006, theta.size)  # a little roughness, like a surveyed boundary
    x, y = r * np.cos(theta), r * np.sin(theta)
    x = (x - x.min()) / np.ptp(x) * WIDTH_KM - WIDTH_KM / 2
    y = (y - y.min()) / np.ptp(y) * HEIGHT_KM - HEIGHT_KM / 2
    outline = Polygon(np.column_stack([x, y]))
    assert outline.is_valid, shapely.is_valid_reason(outline)
    return outline


def seed_points(outline: Polygon, rng: np.random.Generator) -> np.ndarray:
    """N_GRIDS points inside the outline, about three times denser at the core than at the edge."""
    minx, miny, maxx, maxy = outline.bounds
    shapely.prepare(outline)
    points: list[tuple[float, float]] = []
    while len(points) < N_GRIDS:
        x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        d2 = (x - CORE_KM[0]) ** 2 + (y - CORE_KM[1]) ** 2
        density = 0.3 + math.exp(-d2 / (2 * 3.5**2))  # relative to its maximum of 1.3
        if rng.uniform(0, 1.3) < density and outline.contains(Point(x, y)):
            points.append((x, y))
    return np.array(points)


def voronoi_cells(points: np.ndarray, outline: Polygon) -> np.ndarray:
    """Voronoi cells of ``points`` clipped to ``outline``, in the order of ``points``."""
    envelope = outline.buffer(5.0).envelope
    cells = shapely.voronoi_polygons(MultiPoint(points), extend_to=envelope, ordered=True)
    return shapely.intersection(np.asarray(cells.geoms), outline)


def lloyd(points: np.ndarray, outline: Polygon, iterations: int) -> np.ndarray:
    """Move each point to its cell's centroid: evens out cell shapes (no slivers, no needles)."""
    for _ in range(iterations):
        cells = voronoi_cells(points, outline)
        points = shapely.get_coordinates(shapely.centroid(cells))
    return points


def to_wgs84(geom):
    """Project from the local km plane to lon/lat, rounded to 6 decimals (~0.1 m).

    Python's round() is correctly rounded, so the JSON writer prints short decimals, and the
    same input vertex always lands on the same output vertex: shared edges stay shared.
    """

    def project(coords: np.ndarray) -> np.ndarray:
        lon = LON0 + coords[:, 0] / KM_PER_DEG_LON
        lat = LAT0 + coords[:, 1] / KM_PER_DEG_LAT
        return np.array([[round(a, 6), round(b, 6)] for a, b in zip(lon.tolist(), lat.tolist(), strict=True)])

    return shapely.transform(geom, project)


def adjacency(geoms: list) -> dict[int, set[int]]:
    """Indices of geometries sharing an edge (not just a corner) with each geometry."""
    tree = shapely.STRtree(geoms)
    adj: dict[int, set[int]] = defaultdict(set)
    for i, g in enumerate(geoms):
        for j in tree.query(g, predicate="intersects"):
            j = int(j)
            if j != i and shapely.length(shapely.intersection(g.boundary, geoms[j].boundary)) > 1e-9:
                adj[i].add(j)
    return adj


# --- grouping -----------------------------------------------------------------------------------


def connected(cells: list[int], adj: dict[int, set[int]]) -> bool:
    """True if ``cells`` form one edge-connected group."""
    members, seen, todo = set(cells), {cells[0]}, [cells[0]]
    while todo:
        for d in adj[todo.pop()]:
            if d in members and d not in seen:
                seen.add(d)
                todo.append(d)
    return len(seen) == len(members)


def group_into_towns(
    centroids: np.ndarray, adj: dict[int, set[int]], n_towns: int, rng: np.random.Generator
) -> list[list[int]]:
    """Partition grids into ``n_towns`` compact, connected towns.

    k-means on grid centroids (clusters of Voronoi cells are compact and nearly always
    connected); an attempt whose towns are disconnected or badly unbalanced is retried from
    new far-apart starting centres.
    """
    n = len(centroids)
    for _attempt in range(200):
        centres = [centroids[int(rng.integers(n))]]
        while len(centres) < n_towns:  # farthest-point start: no two towns begin side by side
            dist = np.min([np.hypot(*(centroids - c).T) for c in centres], axis=0)
            centres.append(centroids[int(np.argmax(dist))])
        centres_arr = np.array(centres)
        for _ in range(50):
            label = np.argmin(
                np.hypot(*(centroids[:, None, :] - centres_arr[None]).transpose(2, 0, 1)), axis=1
            )
            centres_arr = np.array([centroids[label == t].mean(axis=0) for t in range(n_towns)])
        towns = [np.flatnonzero(label == t).tolist() for t in range(n_towns)]
        sizes = [len(t) for t in towns]
        if min(sizes) >= 30 and max(sizes) <= 50 and all(connected(t, adj) for t in towns):
            return towns
    raise RuntimeError("could not group grids into towns; change SEED")


def communities_per_town(town_sizes: list[int], total: int) -> list[int]:
    """How many communities each town gets: proportional to its grids, 3 or 4 grids each."""
    counts = [max(math.ceil(n / 4), round(n * total / sum(town_sizes))) for n in town_sizes]
    while sum(counts) != total:  # nudge the town with the most slack until the totals agree
        step = 1 if sum(counts) < total else -1
        slack = [
            (n // 3 - k) if step > 0 else (k - math.ceil(n / 4))
            for n, k in zip(town_sizes, counts, strict=True)
        ]
        counts[int(np.argmax(slack))] += step
    assert all(3 * k <= n <= 4 * k for n, k in zip(town_sizes, counts, strict=True))
    return counts


def group_into_pieces(
    cells: list[int], centroids: np.ndarray, adj: dict[int, set[int]], n_pieces: int, rng: np.random.Generator
) -> list[list[int]]:
    """Partition ``cells`` into ``n_pieces`` connected pieces of 3 or 4 cells each.

    Greedy region growing. A new piece starts at the free cell with the fewest free neighbours
    (ties: westmost, so pieces sweep across the town) and grows by the most constrained free
    neighbour, then the nearest. Growing the most constrained cells first is what keeps cells
    from being stranded; when one still is, the attempt restarts with a different tie-break.
    """
    for _attempt in range(5000):
        jitter = dict(zip(cells, rng.uniform(0, 0.002, len(cells)).tolist(), strict=True))  # degrees
        free = set(cells)
        pieces: list[list[int]] = []

        def free_degree(c: int) -> int:
            return sum(1 for d in adj[c] if d in free)  # noqa: B023 - free is rebound per attempt

        ok = True
        while free and ok:
            pieces_left = n_pieces - len(pieces)
            fours_left = len(free) - 3 * pieces_left
            if pieces_left <= 0 or not 0 <= fours_left <= pieces_left:
                ok = False
                break
            want = 4 if rng.uniform() < fours_left / pieces_left else 3
            start = min(free, key=lambda c: (free_degree(c), centroids[c, 0] + jitter[c]))  # noqa: B023
            piece = [start]
            free.discard(start)
            while len(piece) < want:
                frontier = {d for c in piece for d in adj[c] if d in free}
                if not frontier:
                    break
                centre = centroids[piece].mean(axis=0)
                nxt = min(
                    frontier,
                    key=lambda d: (free_degree(d), float(np.hypot(*(centroids[d] - centre)))),  # noqa: B023
                )
                piece.append(nxt)
                free.discard(nxt)
            if len(piece) < 3 or (len(piece) == 3 and want == 4 and fours_left > pieces_left - 1):
                ok = False
                break
            # A free cell with no free neighbour can never join a piece of three: restart now.
            if any(free_degree(c) == 0 for d in piece for c in adj[d] if c in free):
                ok = False
                break
            pieces.append(piece)
        if ok and not free and len(pieces) == n_pieces:
            return pieces
    raise RuntimeError("could not partition a town's grids into communities; change SEED")


# --- names and teams ----------------------------------------------------------------------------


class People:
    """Deterministic invented leader names and placeholder phone numbers.

    Phone numbers are in the 138-0000-xxxx range, the Chinese equivalent of "555" numbers used
    in examples, so the demo never points at a real person.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.phones = 0

    def leader(self) -> str:
        while True:
            name = SURNAMES[int(self.rng.integers(len(SURNAMES)))] + str(self.rng.choice(GIVEN_NAMES))
            if name not in self.used:
                self.used.add(name)
                return name

    def team(self, node_id: str, name_zh: str, name_en: str) -> dict:
        self.phones += 1
        return {
            "name_zh": name_zh,
            "name_en": name_en,
            "leader": self.leader(),
            "contacts": [
                {"channel": "mqtt", "address": f"gridwatch/teams/{node_id}/alerts"},
                {"channel": "phone", "address": f"+86-138-0000-{self.phones:04d}"},
            ],
        }


def reading_order(indices: list[int], centroids: np.ndarray, row_km: float) -> list[int]:
    """Sort north-west to south-east in rows of ``row_km``, like reading a map."""
    return sorted(indices, key=lambda i: (-round(centroids[i, 1] / row_km), centroids[i, 0]))


def oriented(geom):
    """RFC 7946 ring order: exterior counter-clockwise, holes clockwise."""
    return shapely.orient_polygons(geom, exterior_cw=False)


# --- build --------------------------------------------------------------------------------------


def build() -> dict:
    rng = np.random.default_rng(SEED)
    outline = district_outline(rng)
    points = lloyd(seed_points(outline, rng), outline, iterations=3)
    cells_km = voronoi_cells(points, outline)
    bad = [i for i, c in enumerate(cells_km) if c.geom_type != "Polygon"]
    assert not bad, f"Voronoi cells {bad} are split by the outline; change SEED"

    grids = list(to_wgs84(cells_km))
    assert all(g.is_valid and not g.is_empty for g in grids), "rounding broke a grid polygon"
    grid_centroids = shapely.get_coordinates(shapely.centroid(grids))
    grid_adj = adjacency(grids)

    town_grids = group_into_towns(grid_centroids, grid_adj, N_TOWNS, rng)
    n_communities = communities_per_town([len(t) for t in town_grids], N_COMMUNITIES)
    communities: list[list[int]] = []  # grid indices per community
    towns: list[list[int]] = []  # community indices per town
    for cells, k in zip(town_grids, n_communities, strict=True):
        pieces = group_into_pieces(cells, grid_centroids, grid_adj, k, rng)
        towns.append(list(range(len(communities), len(communities) + k)))
        communities.extend(pieces)
    community_geoms = [shapely.union_all([grids[i] for i in c]) for c in communities]
    community_centroids = shapely.get_coordinates(shapely.centroid(community_geoms))
    town_geoms = [shapely.union_all([community_geoms[i] for i in t]) for t in towns]
    district_geom = shapely.union_all(grids)

    # Town numbering: t-01.. by distance of the town's centroid from the core, so the inner
    # towns (the sub-districts) come first.
    core = np.array([LON0 + CORE_KM[0] / KM_PER_DEG_LON, LAT0 + CORE_KM[1] / KM_PER_DEG_LAT])
    town_centroids = shapely.get_coordinates(shapely.centroid(town_geoms))
    town_order = sorted(range(N_TOWNS), key=lambda t: float(np.hypot(*(town_centroids[t] - core))))

    stems = list(COMMUNITY_STEMS)
    rng.shuffle(stems)
    people = People(rng)
    features: list[tuple[dict, object]] = []

    def add(node_id: str, level: str, parent: str | None, name_zh: str, name_en: str, team, geom) -> None:
        props = {"id": node_id, "level": level, "parent": parent, "name_zh": name_zh, "name_en": name_en}
        props["team"] = team
        features.append((props, geom))

    d_id = "d-01"
    add(
        d_id,
        "district",
        None,
        *DISTRICT,
        people.team(d_id, f"{DISTRICT[0]}智慧治理中心", f"{DISTRICT[1]} Smart Governance Centre"),
        district_geom,
    )
    names = iter(SUBDISTRICT_NAMES + TOWN_NAMES)
    for t_no, t in enumerate(town_order, start=1):
        t_id = f"t-{t_no:02d}"
        stem_zh, stem_en = next(names)
        urban = t_no <= N_SUBDISTRICTS
        t_zh, t_en = (
            (f"{stem_zh}街道", f"{stem_en} Subdistrict") if urban else (f"{stem_zh}镇", f"{stem_en} Town")
        )
        add(
            t_id,
            "town",
            d_id,
            t_zh,
            t_en,
            people.team(t_id, f"{t_zh}指挥分中心", f"{t_en} Command Sub-centre"),
            town_geoms[t],
        )
        t_centre = town_centroids[t]
        # In a town (镇) the communities nearest the town centre are urban communities (社区),
        # the rest villages (村); sub-districts (街道) only have communities.
        by_distance = sorted(towns[t], key=lambda c: float(np.hypot(*(community_centroids[c] - t_centre))))
        villages = set() if urban else set(by_distance[len(by_distance) // 3 :])
        for c_no, c in enumerate(reading_order(towns[t], community_centroids, 0.01), start=1):
            c_id = f"c-{t_no:02d}-{c_no:02d}"
            stem_zh, stem_en = stems.pop()
            c_zh, c_en = (
                (f"{stem_zh}村", f"{stem_en} Village")
                if c in villages
                else (f"{stem_zh}社区", f"{stem_en} Community")
            )
            add(
                c_id,
                "community",
                t_id,
                c_zh,
                c_en,
                people.team(c_id, f"{c_zh}工作站", f"{c_en} Work Station"),
                community_geoms[c],
            )
            for g_no, g in enumerate(reading_order(communities[c], grid_centroids, 0.004), start=1):
                g_id = f"{c_id.replace('c-', 'g-', 1)}-{g_no:02d}"
                add(
                    g_id,
                    "grid",
                    c_id,
                    f"第{g_no}网格",
                    f"Grid {g_no}",
                    people.team(g_id, f"{c_zh}第{g_no}网格工作组", f"{c_en} Grid {g_no} Team"),
                    grids[g],
                )
    check(features)
    return {
        "type": "FeatureCollection",
        "name": "gridwatch demo city",
        "features": [
            {"type": "Feature", "properties": props, "geometry": mapping(oriented(geom))}
            for props, geom in features
        ],
    }


def check(features: list[tuple[dict, object]]) -> None:
    """Fail unless the ladder tiles exactly: counts, contiguity, no overlaps, parents == unions."""
    by_level: dict[str, list] = defaultdict(list)
    children: dict[str, list] = defaultdict(list)
    for props, geom in features:
        by_level[props["level"]].append(geom)
        if props["parent"]:
            children[props["parent"]].append(geom)
    counts = {level: len(geoms) for level, geoms in by_level.items()}
    assert counts == {"district": 1, "town": N_TOWNS, "community": N_COMMUNITIES, "grid": N_GRIDS}, counts
    for props, geom in features:
        assert geom.is_valid, (props["id"], shapely.is_valid_reason(geom))
        assert geom.geom_type == "Polygon", f"{props['id']} is not one contiguous polygon"
        if props["level"] != "grid":
            diff = shapely.symmetric_difference(geom, shapely.union_all(children[props["id"]])).area
            assert diff < 1e-12, f"{props['id']} differs from the union of its children by {diff}"
    grids = by_level["grid"]
    overlap = sum(
        a.intersection(b).area for i, a in enumerate(grids) for b in grids[i + 1 :] if a.intersects(b)
    )
    assert overlap < 1e-12, f"grids overlap by {overlap} deg²"
    assert len(by_level["district"][0].interiors) == 0, "district has holes"


def write(collection: dict, path: Path) -> None:
    """One feature per line: small, and a change to one node is a one-line diff."""
    lines = [json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in collection["features"]]
    header = json.dumps({"type": collection["type"], "name": collection["name"]}, ensure_ascii=False)
    text = header[:-1] + ',"features":[\n' + ",\n".join(lines) + "\n]}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main() -> int:
    collection = build()
    write(collection, OUT)
    sys.path.insert(0, str(OUT.parent.parent.parent))
    from gridwatch.city import CityModel  # the real loader is the final check

    city = CityModel.load(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {city.counts()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
