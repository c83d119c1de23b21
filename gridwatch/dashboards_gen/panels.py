"""Panel factories and shared vocabulary (labels, colours, thresholds) for gridwatch's dashboards.

Each factory returns a `model.Panel` with the options gridwatch wants everywhere (dark wall
screens: big type, background-coloured stats, no sparklines that cannot be read from 5 m).
"""

from __future__ import annotations

from typing import Any, Literal

from gridwatch.dashboards_gen.model import GridPos, InfluxQL, Panel, Step, Target
from gridwatch.dispatch.report import CATEGORY_ZH

__all__ = [
    "CATEGORY_COLOURS",
    "LEVEL_COLOURS",
    "LEVEL_ZH",
    "bargauge",
    "category_mappings",
    "display_names",
    "gauge",
    "geomap",
    "higher_is_better",
    "level_mappings",
    "lower_is_better",
    "row",
    "stat",
    "state_timeline",
    "table",
    "text",
    "timeseries",
]

LEVEL_ZH = {"grid": "网格", "community": "社区", "town": "镇街", "district": "区"}
# Escalation stage: the further up the ladder, the hotter the colour.
LEVEL_COLOURS = {"grid": "#73BF69", "community": "#FADE2A", "town": "#FF9830", "district": "#F2495C"}
CATEGORY_COLOURS = {
    "illegal_dumping": "#8F3BB8",
    "gathering": "#F2CC0C",
    "road_blockage": "#FF780A",
    "water_level": "#1F60C4",
    "smoke": "#E02F44",
    "air_quality": "#96D98D",
    "noise": "#CA95E5",
    "manhole_cover": "#8AB8FF",
    "bin_overflow": "#A0522D",
    "sensor_anomaly": "#9E9E9E",
    "sensor_offline": "#5A5A5A",
}


def _value_mappings(labels: dict[str, str], colours: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                key: {"index": i, "text": f"{labels.get(key, key)} {key}", "color": colours[key]}
                for i, key in enumerate(colours)
            },
        }
    ]


def category_mappings() -> list[dict[str, Any]]:
    """Category code -> "中文 code" with the category's colour."""
    return _value_mappings(CATEGORY_ZH, CATEGORY_COLOURS)


def level_mappings() -> list[dict[str, Any]]:
    """Ladder level -> "中文 level" with the level's colour."""
    return _value_mappings(LEVEL_ZH, LEVEL_COLOURS)


def higher_is_better(target: float, margin: float = 0.05) -> list[Step]:
    """Red below target - margin, amber up to the target, green from the target (rates 0..1)."""
    return [Step("red"), Step("orange", round(target - margin, 6)), Step("green", target)]


def lower_is_better(warn: float, alarm: float) -> list[Step]:
    """Green below `warn`, amber up to `alarm`, red from `alarm` (counts, durations)."""
    return [Step("green"), Step("orange", warn), Step("red", alarm)]


def display_names(names: dict[str, str], **props: Any) -> list[dict[str, Any]]:
    """Field overrides renaming fields (by name) and optionally setting more properties."""
    out = []
    for field_name, shown in names.items():
        properties = [{"id": "displayName", "value": shown}]
        properties += [{"id": k, "value": v} for k, v in props.items()]
        out.append({"matcher": {"id": "byName", "options": field_name}, "properties": properties})
    return out


def _text(sizes: tuple[int, int] | None) -> dict[str, int]:
    return {} if sizes is None else {"titleSize": sizes[0], "valueSize": sizes[1]}


def stat(
    title: str,
    pos: GridPos,
    *targets: Target,
    unit: str = "short",
    steps: list[Step] | None = None,
    decimals: int | None = None,
    sizes: tuple[int, int] | None = None,
    text_mode: Literal["value", "value_and_name", "name", "auto"] = "value",
    color_mode: Literal["background", "value", "none"] = "background",
    no_value: str = "–",
    description: str = "",
    mappings: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    calc: str = "lastNotNull",
) -> Panel:
    """A big number. No sparkline: from across the room it is noise."""
    return Panel(
        "stat",
        title,
        pos,
        list(targets),
        description=description,
        unit=unit,
        decimals=decimals,
        steps=steps or [Step("blue")],
        color_mode="thresholds",
        no_value=no_value,
        mappings=mappings or [],
        overrides=overrides or [],
        options={
            "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "none",
            "justifyMode": "center",
            "orientation": "auto",
            "textMode": text_mode,
            "wideLayout": True,
            "showPercentChange": False,
            "text": _text(sizes),
        },
    )


def gauge(
    title: str,
    pos: GridPos,
    target: Target,
    *,
    unit: str,
    steps: list[Step],
    min: float,
    max: float,
    decimals: int | None = None,
    sizes: tuple[int, int] | None = None,
    description: str = "",
) -> Panel:
    return Panel(
        "gauge",
        title,
        pos,
        [target],
        description=description,
        unit=unit,
        decimals=decimals,
        min=min,
        max=max,
        steps=steps,
        color_mode="thresholds",
        no_value="–",
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
            "sizing": "auto",
            "minVizHeight": 75,
            "minVizWidth": 75,
            "text": _text(sizes),
        },
    )


def bargauge(
    title: str,
    pos: GridPos,
    *targets: Target,
    unit: str = "short",
    steps: list[Step] | None = None,
    min: float | None = 0,
    max: float | None = None,
    rows: bool = False,
    decimals: int | None = None,
    sizes: tuple[int, int] | None = None,
    description: str = "",
    overrides: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    display_mode: Literal["gradient", "lcd", "basic"] = "basic",
) -> Panel:
    """Horizontal bars. `rows=True`: one bar per row of a table result (named by its text column)."""
    return Panel(
        "bargauge",
        title,
        pos,
        list(targets),
        description=description,
        unit=unit,
        decimals=decimals,
        min=min,
        max=max,
        steps=steps or [Step("blue")],
        color_mode="thresholds",
        no_value="–",
        overrides=overrides or [],
        transformations=transformations or [],
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": rows},
            "orientation": "horizontal",
            "displayMode": display_mode,
            "valueMode": "color",
            "namePlacement": "left",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
            "text": _text(sizes),
        },
    )


def timeseries(
    title: str,
    pos: GridPos,
    *targets: Target,
    unit: str = "short",
    bars: bool = False,
    stack: bool = False,
    min: float | None = None,
    max: float | None = None,
    decimals: int | None = None,
    interval: str | None = None,
    description: str = "",
    overrides: list[dict[str, Any]] | None = None,
    steps: list[Step] | None = None,
    legend: Literal["list", "table", "hidden"] = "list",
    repeat: str | None = None,
    max_per_row: int | None = None,
) -> Panel:
    return Panel(
        "timeseries",
        title,
        pos,
        list(targets),
        description=description,
        unit=unit,
        decimals=decimals,
        min=min,
        max=max,
        steps=steps or [Step("green")],
        color_mode="palette-classic",
        overrides=overrides or [],
        interval=interval,
        repeat=repeat,
        max_per_row=max_per_row,
        custom={
            "drawStyle": "bars" if bars else "line",
            "lineWidth": 2,
            "fillOpacity": 60 if bars else 10,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "axisPlacement": "auto",
            "thresholdsStyle": {"mode": "line" if steps else "off"},
        },
        options={
            "legend": {
                "displayMode": "list" if legend == "hidden" else legend,
                "placement": "bottom",
                "showLegend": legend != "hidden",
                "calcs": ["lastNotNull", "max"] if legend == "table" else [],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def state_timeline(
    title: str,
    pos: GridPos,
    *targets: Target,
    mappings: list[dict[str, Any]],
    interval: str | None = None,
    description: str = "",
) -> Panel:
    return Panel(
        "state-timeline",
        title,
        pos,
        list(targets),
        description=description,
        steps=[Step("green")],
        color_mode="thresholds",
        mappings=mappings,
        interval=interval,
        custom={"fillOpacity": 80, "lineWidth": 0},
        options={
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def table(
    title: str,
    pos: GridPos,
    *targets: Target,
    unit: str | None = None,
    description: str = "",
    overrides: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    sort_by: tuple[str, bool] | None = None,
    steps: list[Step] | None = None,
    cell_height: Literal["sm", "md", "lg"] = "sm",
) -> Panel:
    """A table. `sort_by=(displayed column name, descending)`."""
    options: dict[str, Any] = {
        "showHeader": True,
        "cellHeight": cell_height,
        "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
    }
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by[0], "desc": sort_by[1]}]
    return Panel(
        "table",
        title,
        pos,
        list(targets),
        description=description,
        unit=unit,
        steps=steps or [Step("text")],
        color_mode="thresholds",
        overrides=overrides or [],
        transformations=transformations or [],
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False, "filterable": True},
        options=options,
    )


def _marker_layer(
    name: str, colour_field: str, size: tuple[int, int, int], size_field: str
) -> dict[str, Any]:
    fixed, lo, hi = size
    style: dict[str, Any] = {
        "color": {"field": colour_field, "fixed": "dark-green"},
        "opacity": 0.9,
        "size": {"fixed": fixed, "min": lo, "max": hi, **({"field": size_field} if size_field else {})},
        "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
        "symbolAlign": {"horizontal": "center", "vertical": "center"},
        "rotation": {"fixed": 0, "mode": "mod", "min": -360, "max": 360},
        "textConfig": {
            "fontSize": 12,
            "offsetX": 0,
            "offsetY": 0,
            "textAlign": "center",
            "textBaseline": "middle",
        },
    }
    return {
        "type": "markers",
        "name": name,
        "tooltip": True,
        "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
        "config": {"showLegend": True, "style": style},
    }


def geomap(title: str, pos: GridPos, target: Target, *, scale: int = 1, description: str = "") -> Panel:
    """Open incidents as a ring (colour: level reached) around a dot (colour: category; size: severity).

    Needs columns `latitude`, `longitude`, `level`, `category`, `severity_rank` (1..4). The base
    map is Grafana's default one (`[geomap] default_baselayer_config`), so a centre without
    access to public tile servers sets its own tiles in one place, not in every dashboard.
    """
    return Panel(
        "geomap",
        title,
        pos,
        [target],
        description=description,
        steps=[Step("green")],
        color_mode="thresholds",
        overrides=[
            {
                "matcher": {"id": "byName", "options": "level"},
                "properties": [{"id": "mappings", "value": level_mappings()}],
            },
            {
                "matcher": {"id": "byName", "options": "category"},
                "properties": [{"id": "mappings", "value": category_mappings()}],
            },
        ],
        options={
            "view": {
                "id": "fit",
                "allLayers": True,
                "lastOnly": False,
                "padding": 12,
                "lat": 0,
                "lon": 0,
                "zoom": 12,
            },
            "controls": {
                "showZoom": False,
                "mouseWheelZoom": False,
                "showAttribution": True,
                "showScale": False,
                "showMeasure": False,
                "showDebug": False,
            },
            "basemap": {"type": "default", "name": "底图 Basemap", "config": {}},
            "layers": [
                _marker_layer("层级 Level reached", "level", (22 * scale, 22 * scale, 22 * scale), ""),
                _marker_layer(
                    "类别 Category", "category", (10 * scale, 8 * scale, 16 * scale), "severity_rank"
                ),
            ],
            "tooltip": {"mode": "details"},
        },
    )


def text(title: str, pos: GridPos, content: str) -> Panel:
    return Panel("text", title, pos, options={"mode": "markdown", "content": content, "code": {}})


def row(title: str, y: int) -> Panel:
    return Panel("row", title, GridPos(0, y, 24, 1))


def influx(query: str, alias: str = "", *, table: bool = False, ref: str = "A") -> InfluxQL:
    """Shorthand for an InfluxQL target."""
    return InfluxQL(query, alias=alias, result_format="table" if table else "time_series", ref_id=ref)
