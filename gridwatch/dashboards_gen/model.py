"""A small, typed builder for Grafana dashboard JSON (Grafana 11.x, dashboard schemaVersion 39).

Why our own and not grafana-foundation-sdk: see docs/DASHBOARDS.md ("The builder"). In short, the
SDK is alpha, its PyPI versions are epoch-prefixed per Grafana release (an unpinned install picks
the 10.1 build), and the few panel kinds the wall screens use fit in this page.

Only what gridwatch's dashboards use is modelled; anything else goes through the `options`,
`custom` and `overrides` escape hatches as plain JSON. Every object renders with `to_json()`;
the output is deterministic (insertion order, no timestamps), so the committed JSON can be
compared with a fresh build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DS_INFLUX",
    "DS_LEDGER",
    "SCHEMA_VERSION",
    "Annotation",
    "Dashboard",
    "DatasourceRef",
    "Folder",
    "GridPos",
    "InfluxQL",
    "Panel",
    "SQL",
    "Step",
    "Target",
    "Variable",
]

# Grafana 11.x's dashboard schema (what grafana-foundation-sdk's 11.3 build emits); Grafana
# migrates older versions forward on load and never rewrites a provisioned file.
SCHEMA_VERSION = 39
PLUGIN_VERSION = "11.3.1"


@dataclass(frozen=True, slots=True)
class DatasourceRef:
    """A datasource by uid (fixed by our provisioning, so dashboards never depend on names)."""

    type: str
    uid: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "uid": self.uid}


DS_INFLUX = DatasourceRef("influxdb", "gridwatch-influxql")
DS_LEDGER = DatasourceRef("grafana-postgresql-datasource", "gridwatch-ledger")


@dataclass(frozen=True, slots=True)
class InfluxQL:
    """A raw InfluxQL query (`rawQuery: true`): runs on InfluxDB 1.x, 2.x (v1 API + DBRP) and 3.x."""

    query: str
    alias: str = ""
    result_format: Literal["time_series", "table"] = "time_series"
    ref_id: str = "A"
    hide: bool = False

    datasource = DS_INFLUX

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refId": self.ref_id,
            "datasource": DS_INFLUX.to_json(),
            "rawQuery": True,
            "query": self.query,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        if self.hide:
            out["hide"] = True
        return out


@dataclass(frozen=True, slots=True)
class SQL:
    """A PostgreSQL query on the ledger (code mode)."""

    sql: str
    format: Literal["table", "time_series"] = "table"
    ref_id: str = "A"

    datasource = DS_LEDGER

    def to_json(self) -> dict[str, Any]:
        return {
            "refId": self.ref_id,
            "datasource": DS_LEDGER.to_json(),
            "editorMode": "code",
            "rawQuery": True,
            "rawSql": self.sql,
            "format": self.format,
        }


Target = InfluxQL | SQL


@dataclass(frozen=True, slots=True)
class Step:
    """One threshold step: from `value` up (None: the base colour) the colour is `color`."""

    color: str
    value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"color": self.color, "value": self.value}


@dataclass(frozen=True, slots=True)
class GridPos:
    """Position on Grafana's 24-column grid; one row unit is 30 px plus an 8 px gap."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if not (self.x >= 0 and self.w >= 1 and self.x + self.w <= 24 and self.h >= 1 and self.y >= 0):
            raise ValueError(f"panel does not fit the 24-column grid: {self}")

    def to_json(self) -> dict[str, int]:
        return {"h": self.h, "w": self.w, "x": self.x, "y": self.y}


@dataclass(slots=True)
class Panel:
    """One panel. `options`, `custom` (fieldConfig.defaults.custom) and `overrides` are plain JSON."""

    type: str
    title: str
    pos: GridPos
    targets: list[Target] = field(default_factory=list)
    description: str = ""
    unit: str | None = None
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    steps: list[Step] | None = None
    color_mode: str | None = None
    mappings: list[dict[str, Any]] = field(default_factory=list)
    no_value: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    interval: str | None = None
    max_data_points: int | None = None
    repeat: str | None = None
    repeat_direction: Literal["h", "v"] = "h"
    max_per_row: int | None = None

    def datasource(self) -> DatasourceRef | None:
        kinds = {t.datasource for t in self.targets}
        if len(kinds) > 1:
            raise ValueError(f"panel {self.title!r} mixes datasources; split it")
        return next(iter(kinds), None)

    def to_json(self, panel_id: int) -> dict[str, Any]:
        if self.type == "row":  # a section header: no data, no field config
            pos = self.pos.to_json()
            return {
                "id": panel_id,
                "type": "row",
                "title": self.title,
                "gridPos": pos,
                "collapsed": False,
                "panels": [],
            }
        ds = self.datasource()
        defaults: dict[str, Any] = {}
        if self.unit is not None:
            defaults["unit"] = self.unit
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        if self.color_mode is not None:
            defaults["color"] = {"mode": self.color_mode}
        if self.steps is not None:
            defaults["thresholds"] = {"mode": "absolute", "steps": [s.to_json() for s in self.steps]}
        defaults["mappings"] = self.mappings
        if self.no_value is not None:
            defaults["noValue"] = self.no_value
        if self.custom:
            defaults["custom"] = self.custom
        out: dict[str, Any] = {"id": panel_id, "type": self.type, "title": self.title}
        if self.description:
            out["description"] = self.description
        if ds is not None:
            out["datasource"] = ds.to_json()
        out["gridPos"] = self.pos.to_json()
        if self.interval:
            out["interval"] = self.interval
        if self.max_data_points:
            out["maxDataPoints"] = self.max_data_points
        if self.repeat:
            out["repeat"] = self.repeat
            out["repeatDirection"] = self.repeat_direction
            if self.max_per_row:
                out["maxPerRow"] = self.max_per_row
        out["fieldConfig"] = {"defaults": defaults, "overrides": self.overrides}
        out["options"] = self.options
        out["targets"] = [t.to_json() for t in self.targets]
        if self.transformations:
            out["transformations"] = self.transformations
        if self.links:
            out["links"] = self.links
        out["pluginVersion"] = PLUGIN_VERSION
        return out


@dataclass(frozen=True, slots=True)
class Variable:
    """A query template variable. `depends_on` lists the variables its query uses (chaining)."""

    name: str
    label: str
    datasource: DatasourceRef
    query: str
    multi: bool = False
    include_all: bool = False
    # What "All" stands for. Set it (`.*`) only on a variable that depends on no other: a chained
    # variable's "All" must expand to its listed values, or it would not narrow anything.
    all_value: str | None = None
    depends_on: tuple[str, ...] = ()
    sort: int = 1  # alphabetical, ascending
    hide: int = 0

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"allValue": self.all_value} if self.all_value is not None else {}
        return {
            **extra,
            "type": "query",
            "name": self.name,
            "label": self.label,
            "datasource": self.datasource.to_json(),
            "query": self.query,
            "definition": self.query,
            "refresh": 1,  # on dashboard load: a wall screen left open for weeks sees new nodes on reload
            "regex": "",
            "sort": self.sort,
            "multi": self.multi,
            "includeAll": self.include_all,
            "current": {},
            "options": [],
            "hide": self.hide,
            "skipUrlSync": False,
        }


@dataclass(frozen=True, slots=True)
class Annotation:
    """InfluxQL annotations (Grafana 11's target form of the InfluxDB annotation editor)."""

    name: str
    query: str
    text_column: str
    tags_column: str
    icon_color: str = "red"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datasource": DS_INFLUX.to_json(),
            "enable": True,
            "hide": False,
            "iconColor": self.icon_color,
            "target": {
                "refId": "Anno",
                "query": self.query,
                "rawQuery": True,
                "fromAnnotations": True,
                "textColumn": self.text_column,
                "tagsColumn": self.tags_column,
            },
        }


_BUILTIN_ANNOTATION: dict[str, Any] = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


@dataclass(frozen=True, slots=True)
class Folder:
    """A Grafana folder; `directory` is its sub-directory under dashboards/."""

    uid: str
    title: str
    directory: str


@dataclass(slots=True)
class Dashboard:
    uid: str
    title: str
    folder: Folder
    description: str
    panels: list[Panel]
    tags: tuple[str, ...] = ("gridwatch",)
    variables: list[Variable] = field(default_factory=list)
    annotations: list[Annotation] = field(default_factory=list)
    time_from: str = "now-6h"
    time_to: str = "now"
    refresh: str = "30s"
    timezone: str = "browser"
    links: list[dict[str, Any]] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return f"{self.folder.directory}/{self.uid}.json"

    def to_json(self) -> dict[str, Any]:
        names = [v.name for v in self.variables]
        for i, v in enumerate(self.variables):  # Grafana resolves variables in list order
            missing = [d for d in v.depends_on if d not in names[:i]]
            if missing:
                raise ValueError(f"{self.uid}: variable {v.name!r} uses {missing} before they are defined")
        return {
            "id": None,
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": self.timezone,
            "editable": False,  # provisioned from files: edit the generator, not the UI
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "weekStart": "monday",
            "liveNow": False,
            "time": {"from": self.time_from, "to": self.time_to},
            "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "links": self.links,
            "annotations": {"list": [_BUILTIN_ANNOTATION, *(a.to_json() for a in self.annotations)]},
            "templating": {"list": [v.to_json() for v in self.variables]},
            "panels": [p.to_json(i) for i, p in enumerate(self.panels, start=1)],
        }
