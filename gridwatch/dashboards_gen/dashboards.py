"""gridwatch's dashboards: the city wall screen (1080p and 4K), drill-down, sensors, cameras,
pipeline and the monthly KPIs. Measurements: docs/INFLUX_SCHEMA.md; ledger: docs/DISPATCH.md.

Query conventions (docs/DASHBOARDS.md has the reasons):

* InfluxQL in raw mode, only what InfluxDB 1.x, 2.x (v1 API + DBRP) and 3.x all run: no SLIMIT,
  SOFFSET, SHOW SERIES, INTEGRAL(), SAMPLE() or holt_winters();
* "now" panels (open incidents, cameras up, today's KPIs) read the last value written in the last
  `fresh` minutes rather than in the dashboard's range: a stopped writer shows "–", not an old
  number that looks live;
* counters are cumulative per process, so increases are `non_negative_difference()` per series
  (a restart's drop to zero is skipped) and summed over series in an outer query;
* ledger times are epoch milliseconds (BIGINT), so SQL filters use Grafana's `$__from` / `$__to`
  (also epoch ms) directly on the indexed columns, not `$__timeFilter()`, which wants timestamps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gridwatch.dashboards_gen.model import (
    DS_INFLUX,
    DS_LEDGER,
    SQL,
    Annotation,
    Dashboard,
    Folder,
    GridPos,
    Panel,
    Step,
    Variable,
)
from gridwatch.dashboards_gen.panels import (
    LEVEL_COLOURS,
    bargauge,
    category_mappings,
    display_names,
    gauge,
    geomap,
    higher_is_better,
    influx,
    level_mappings,
    lower_is_better,
    row,
    stat,
    state_timeline,
    table,
    timeseries,
)
from gridwatch.dispatch.report import CATEGORY_ZH

__all__ = ["FOLDERS", "OPS", "AlertSettings", "DashboardSettings", "KpiTargets", "build_dashboards"]

WALL = Folder("gridwatch-wall", "gridwatch 大屏 Wall screens", "wall")
OPS = Folder("gridwatch-ops", "gridwatch 运行 Operations", "operations")
FOLDERS = (WALL, OPS)

_DURATION = r"^[1-9][0-9]*[smhdw]$"


class KpiTargets(BaseModel):
    """The targets the wall screens colour against (docs/DOMAIN.md "How they are judged")."""

    model_config = ConfigDict(extra="forbid")

    closure_rate: float = Field(
        0.98, ge=0, le=1, title="Closure rate", description="Green from here (one district reports 98%)."
    )
    self_disposal_rate: float = Field(
        0.98, ge=0, le=1, title="Self-disposal rate", description="Green from here (98% reported)."
    )
    on_time_ack_rate: float = Field(
        0.95, ge=0, le=1, title="On-time acknowledgement rate", description="Green from here."
    )
    rate_margin: float = Field(
        0.05, gt=0, le=1, title="Amber band", description="Rates this far below target are amber, lower red."
    )
    mean_response_s: float = Field(
        300, gt=0, title="Mean response", description="Amber from here, red from twice this (seconds)."
    )
    open_warn: int = Field(20, ge=1, title="Open incidents: amber", description="Backlog amber from here.")
    open_alarm: int = Field(50, ge=1, title="Open incidents: red", description="Backlog red from here.")
    oldest_warn_s: float = Field(
        4 * 3600, gt=0, title="Oldest open: amber", description="Age of the oldest open incident (s)."
    )
    oldest_alarm_s: float = Field(24 * 3600, gt=0, title="Oldest open: red", description="Seconds.")
    escalated_warn: int = Field(1, ge=1, title="Escalated today: amber", description="Count.")
    escalated_alarm: int = Field(5, ge=1, title="Escalated today: red", description="Count.")


class AlertSettings(BaseModel):
    """Thresholds and windows of the alert rules (`alerts.py`; docs/DASHBOARDS.md "Alert rules")."""

    model_config = ConfigDict(extra="forbid")

    camera_down_minutes: int = Field(
        10, ge=1, le=1440, title="Camera down", description="Alert when a camera has had no frame this long."
    )
    silent_sensors_at_once: int = Field(
        5,
        ge=2,
        title="Sensors silent at once",
        description="Alert when this many sensors of one community fall silent within the window below.",
    )
    silent_window_minutes: int = Field(
        30, ge=1, le=1440, title="Silence burst window", description="Minutes (a gateway going down)."
    )
    lag_records: int = Field(
        10_000,
        ge=1,
        title="Consumer lag",
        description="Alert when the readings lag never fell below this in the lag window and is still rising.",
    )
    lag_window_minutes: int = Field(15, ge=2, le=1440, title="Lag window", description="Minutes.")
    dead_letters_per_window: int = Field(
        100, ge=1, title="Dead letters", description="Alert above this many dead letters of one component."
    )
    dead_letters_window_minutes: int = Field(
        10, ge=1, le=1440, title="Dead-letter window", description="Minutes."
    )
    heartbeat_minutes: int = Field(
        3,
        ge=1,
        le=60,
        title="Heartbeat window",
        description="A service with no health point this long is down.",
    )
    heartbeat_components: list[Literal["bridge", "streams", "dispatch", "cameras"]] = Field(
        default_factory=lambda: ["bridge", "streams", "dispatch", "cameras"],
        title="Services watched",
        description="Components whose silence alerts (leave out `cameras` in a centre without camera workers).",
    )
    contact_type: Literal["webhook", "dingding", "wecom"] = Field(
        "webhook",
        title="Contact point type",
        description="Grafana integration of the one contact point: a generic webhook (Grafana's JSON, for a relay), "
        "or Grafana's own DingTalk (`dingding`) / WeCom (`wecom`) robot integrations. URL from "
        "GRAFANA_ALERT_WEBHOOK_URL.",
    )


class DashboardSettings(BaseModel):
    """What a deployment may change in the generated dashboards (`python -m gridwatch.dashboards_gen`)."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(
        "Asia/Shanghai",
        title="Time zone",
        description="The centre's time zone (`site.timezone`): the dashboards' clock, 'today' and days.",
    )
    targets: KpiTargets = Field(default_factory=KpiTargets, title="KPI targets", description="Colours.")
    fresh: str = Field(
        "15m",
        pattern=_DURATION,
        title="Freshness window",
        description="'Now' panels show the last value written within this window (InfluxQL duration).",
    )
    silence_lookback: str = Field(
        "7d",
        pattern=_DURATION,
        title="Silent-sensor look-back",
        description="How far back a silence episode still counts as open (InfluxQL duration).",
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings, title="Alert rules", description="Thresholds and windows."
    )
    console_url: str = Field(
        "http://localhost:8080/console",
        title="Console URL",
        description="The operator console (served by the dispatch API): every incident id in a ledger "
        "table or on the map links to its page there.",
    )


# --- InfluxQL fragments ------------------------------------------------------------------------
TODAY = "\"period\" = 'today' AND \"scope\" = 'district' AND \"category\" = 'all'"
MONTH = "\"period\" = 'month' AND \"scope\" = 'district' AND \"category\" = 'all'"
SENSOR_FILTER = '"type" =~ /^$type$/ AND "grid" =~ /^$grid$/ AND "sensor_id" =~ /^$sensor$/'

# --- ledger SQL fragments ----------------------------------------------------------------------
OPEN_SQL = (
    "state NOT IN ('closed', 'false_alarm', 'merged')"  # as kpi.py: resolved-but-unverified is still open
)
NOW_MS = "(extract(epoch FROM now()) * 1000)::bigint"
SEVERITY_RANK = "CASE severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 ELSE 1 END"


def _kpi_last(field: str, where: str, window: str) -> str:
    return f'SELECT last("{field}") FROM "dispatch_kpi" WHERE {where} AND {window}'


def _increase(field: str, measurement: str, where: str = "") -> str:
    """Total increase of a cumulative counter over the dashboard range, summed over its series."""
    cond = f"{where} AND $timeFilter" if where else "$timeFilter"
    return (
        f'SELECT sum("n") FROM (SELECT non_negative_difference("{field}") AS "n" FROM "{measurement}" '
        f'WHERE {cond} GROUP BY "component", "instance")'
    )


def _per_interval(fields: dict[str, str], where: str = "", group: str = '"instance"') -> str:
    """Increase of cumulative counters per interval, per series (alias -> field)."""
    sel = ", ".join(f'non_negative_difference(last("{f}")) AS "{a}"' for a, f in fields.items())
    cond = f"{where} AND $timeFilter" if where else "$timeFilter"
    return f'SELECT {sel} FROM "pipeline_health" WHERE {cond} GROUP BY time($__interval), {group} fill(none)'


def _rate(fields: dict[str, str], where: str) -> str:
    """Per-second rate of cumulative counters, per instance."""
    sel = ", ".join(f'non_negative_derivative(last("{f}"), 1s) AS "{a}"' for a, f in fields.items())
    return (
        f'SELECT {sel} FROM "pipeline_health" WHERE {where} AND $timeFilter '
        'GROUP BY time($__interval), "instance" fill(none)'
    )


@dataclass(frozen=True)
class Screen:
    """A wall layout. Grafana's grid is 24 columns wide whatever the screen, and a row unit is
    30 px + 8 px gap: 27 units fill 1080 px in kiosk mode, 55 fill 2160 px. `scale` multiplies
    type and marker sizes (a 4K screen at 100% zoom needs twice the pixels for the same letters)."""

    uid: str
    title: str
    scale: int
    top: int  # the big numbers
    middle: int  # map and gauges
    bottom: int  # escalations, trend, sensors, pipeline
    extra: int = 0  # 4K only: towns, teams, categories

    def sizes(self, title: int, value: int) -> tuple[int, int]:
        return (title * self.scale, value * self.scale)

    @property
    def rows(self) -> int:
        return self.top + self.middle + self.bottom + self.extra


SCREENS = (
    Screen("gridwatch-wall", "城市运行大屏 City wall (1920x1080)", scale=1, top=5, middle=14, bottom=8),
    Screen(
        "gridwatch-wall-4k",
        "城市运行大屏 City wall (3840x2160)",
        scale=2,
        top=8,
        middle=24,
        bottom=11,
        extra=12,
    ),
)


# --- the city wall screen ------------------------------------------------------------------------
def wall(s: DashboardSettings, screen: Screen) -> Dashboard:
    t = s.targets
    fresh = f"time > now() - {s.fresh}"
    big = screen.sizes(20, 64)
    mid = screen.sizes(18, 40)
    top, y_mid, y_bot = screen.top, screen.top, screen.top + screen.middle
    half = screen.middle // 2

    def top_stat(i: int) -> GridPos:
        return GridPos(4 * i, 0, 4, top)

    def gauge_pos(col: int, second_row: bool) -> GridPos:
        y = y_mid + (half if second_row else 0)
        return GridPos(14 + 5 * col, y, 5, screen.middle - half if second_row else half)

    rate_steps = {
        "closure_rate": higher_is_better(t.closure_rate, t.rate_margin),
        "self_disposal_rate": higher_is_better(t.self_disposal_rate, t.rate_margin),
        "on_time_ack_rate": higher_is_better(t.on_time_ack_rate, t.rate_margin),
    }
    backlog = "\"scope\" = 'district'"
    panels: list[Panel] = [
        stat(
            "在办事件 Open incidents",
            top_stat(0),
            influx(f'SELECT last("open") FROM "dispatch_backlog" WHERE {backlog} AND {fresh}'),
            steps=lower_is_better(t.open_warn, t.open_alarm),
            sizes=big,
            decimals=0,
            description="Incidents not closed (resolved but not yet verified counts as open).",
        ),
        stat(
            "最久未结 Oldest open",
            top_stat(1),
            influx(f'SELECT last("oldest_age_s") FROM "dispatch_backlog" WHERE {backlog} AND {fresh}'),
            unit="s",
            decimals=1,
            steps=lower_is_better(t.oldest_warn_s, t.oldest_alarm_s),
            sizes=big,
        ),
        stat(
            "今日受理 Received today",
            top_stat(2),
            influx(_kpi_last("received", TODAY, fresh)),
            sizes=big,
            decimals=0,
        ),
        stat(
            "今日结案 Closed today",
            top_stat(3),
            influx(_kpi_last("closed", TODAY, fresh)),
            steps=[Step("green")],
            sizes=big,
            decimals=0,
        ),
        stat(
            "今日升级 Escalated today",
            top_stat(4),
            influx(_kpi_last("escalated", TODAY, fresh)),
            steps=lower_is_better(t.escalated_warn, t.escalated_alarm),
            sizes=big,
            decimals=0,
            description="Incidents received today that a missed deadline moved up the ladder.",
        ),
        _cameras_up_down(top_stat(5), fresh, screen.sizes(16, 40)),
        geomap(
            "在办事件分布 Open incidents (ring: level reached; dot: category, size: severity)",
            GridPos(0, y_mid, 14, screen.middle),
            SQL(
                "SELECT incident_id, lon AS longitude, lat AS latitude, level, category, severity,\n"
                f"  {SEVERITY_RANK} AS severity_rank,\n"
                "  state, node_id, summary, to_timestamp(created_at / 1000.0) AS received\n"
                f"FROM incidents\nWHERE {OPEN_SQL} AND lon IS NOT NULL AND lat IS NOT NULL\n"
                "ORDER BY created_at DESC\nLIMIT 2000"
            ),
            scale=screen.scale,
        ),
        gauge(
            "今日结案率 Closure rate",
            gauge_pos(0, False),
            influx(_kpi_last("closure_rate", TODAY, fresh)),
            unit="percentunit",
            decimals=1,
            steps=rate_steps["closure_rate"],
            min=0,
            max=1,
            sizes=mid,
            description=f"Closed / received today. Target {t.closure_rate:.0%}.",
        ),
        gauge(
            "今日自处置率 Self-disposal",
            gauge_pos(1, False),
            influx(_kpi_last("self_disposal_rate", TODAY, fresh)),
            unit="percentunit",
            decimals=1,
            steps=rate_steps["self_disposal_rate"],
            min=0,
            max=1,
            sizes=mid,
            description=f"Closed without escalation / closed. Target {t.self_disposal_rate:.0%}.",
        ),
        gauge(
            "按时签收率 On-time acknowledgement",
            gauge_pos(0, True),
            influx(_kpi_last("on_time_ack_rate", TODAY, fresh)),
            unit="percentunit",
            decimals=1,
            steps=rate_steps["on_time_ack_rate"],
            min=0,
            max=1,
            sizes=mid,
            description=f"Acknowledged before the deadline. Target {t.on_time_ack_rate:.0%}.",
        ),
        gauge(
            "平均响应 Mean response",
            gauge_pos(1, True),
            influx(_kpi_last("mean_response_s", TODAY, fresh)),
            unit="s",
            decimals=0,
            steps=lower_is_better(t.mean_response_s, 2 * t.mean_response_s),
            min=0,
            max=3 * t.mean_response_s,
            sizes=mid,
            description=f"Dispatch -> acknowledgement, incidents received today. Target {t.mean_response_s:.0f} s.",
        ),
        _escalations_table(GridPos(0, y_bot, 8, screen.bottom)),
        timeseries(
            "今日趋势 Today",
            GridPos(8, y_bot, 6, screen.bottom),
            influx(
                'SELECT last("received") AS "受理 received", last("closed") AS "结案 closed", '
                f'last("escalated") AS "升级 escalated" FROM "dispatch_kpi" WHERE {TODAY} AND $timeFilter '
                "GROUP BY time($__interval) fill(previous)"
            ),
            decimals=0,
            min=0,
        ),
        _sensors_up_down(GridPos(14, y_bot, 4, screen.bottom), s, screen.sizes(16, 36)),
        _pipeline_stat(GridPos(18, y_bot, 6, screen.bottom), s, screen.sizes(14, 28)),
    ]
    if screen.extra:
        panels += _wall_extras(s, fresh, y_bot + screen.bottom, screen.extra, screen.sizes(14, 20))
    return Dashboard(
        uid=screen.uid,
        title=screen.title,
        folder=WALL,
        description="The district command centre's wall screen: open it with ?kiosk (dark theme). "
        "Generated by gridwatch.dashboards_gen; do not edit in Grafana.",
        panels=panels,
        tags=("gridwatch", "wall"),
        time_from="now/d",
        time_to="now",
        refresh="30s",
        timezone=s.timezone,
        links=_links(),
    )


def _cameras_up_down(pos: GridPos, fresh: str, sizes: tuple[int, int]) -> Panel:
    def count(up: str) -> str:
        return (
            'SELECT count("last") FROM (SELECT last("up") FROM "camera_health" '
            f'WHERE {fresh} GROUP BY "camera_id") WHERE "last" = {up}'
        )

    return stat(
        "摄像头 Cameras",
        pos,
        influx(count("true"), "在线 up", ref="A"),
        influx(count("false"), "离线 down", ref="B"),
        text_mode="value_and_name",
        sizes=sizes,
        decimals=0,
        steps=[Step("green")],
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": "B"},
                "properties": [
                    {
                        "id": "thresholds",
                        "value": {
                            "mode": "absolute",
                            "steps": [Step("green").to_json(), Step("red", 1).to_json()],
                        },
                    },  # fmt: skip
                    {"id": "noValue", "value": "0"},
                ],
            }
        ],
        description="Cameras whose last health report says up / down (camera_health).",
    )


def _sensors_up_down(pos: GridPos, s: DashboardSettings, sizes: tuple[int, int]) -> Panel:
    reporting = (
        'SELECT count("last") FROM (SELECT last("value") FROM "sensor_reading" '
        f'WHERE time > now() - {s.fresh} GROUP BY "sensor_id")'
    )
    silent = (
        'SELECT count("last") FROM (SELECT last("episode_start"), "state" FROM "rule_firing" '
        f'WHERE "rule" = \'silence\' AND time > now() - {s.silence_lookback} GROUP BY "sensor_id") '
        "WHERE \"state\" = 'raised'"
    )
    return stat(
        "传感器 Sensors",
        pos,
        influx(reporting, "在报 reporting", ref="A"),
        influx(silent, "静默 silent", ref="B"),
        text_mode="value_and_name",
        sizes=sizes,
        decimals=0,
        steps=[Step("green")],
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": "B"},
                "properties": [
                    {
                        "id": "thresholds",
                        "value": {
                            "mode": "absolute",
                            "steps": [Step("green").to_json(), Step("red", 1).to_json()],
                        },
                    },  # fmt: skip
                    {"id": "noValue", "value": "0"},
                ],
            }
        ],
        description=f"Sensors with a reading in the last {s.fresh}; sensors whose silence rule is raised.",
    )


def _pipeline_stat(pos: GridPos, s: DashboardSettings, sizes: tuple[int, int]) -> Panel:
    lag = (
        'SELECT sum("lag") FROM (SELECT last("consumer_lag") AS "lag" FROM "pipeline_health" '
        f'WHERE "component" = \'streams\' AND time > now() - {s.fresh} GROUP BY "instance")'
    )
    red_from_one = {
        "id": "thresholds",
        "value": {"mode": "absolute", "steps": [Step("green").to_json(), Step("red", 1).to_json()]},
    }
    return stat(
        "数据链路 Pipeline",
        pos,
        influx(lag, "积压 consumer lag", ref="A"),
        influx(_increase("dead_letters", "pipeline_health"), "死信 dead letters", ref="B"),
        influx(
            _increase("influx_write_errors", "pipeline_health", "\"component\" = 'streams'"),
            "写入错误 write errors",
            ref="C",
        ),
        influx(
            _increase("deliveries_failed", "pipeline_health", "\"component\" = 'dispatch'"),
            "推送失败 delivery failures",
            ref="D",
        ),
        text_mode="value_and_name",
        sizes=sizes,
        decimals=0,
        steps=lower_is_better(1000, 10000),
        overrides=[
            {"matcher": {"id": "byFrameRefID", "options": ref}, "properties": [red_from_one]} for ref in "BCD"
        ],
        description="Stream consumer lag now (records); dead letters, InfluxDB write errors and push "
        "deliveries given up, over the dashboard's range.",
    )


def _escalations_table(pos: GridPos) -> Panel:
    return table(
        "升级 Escalations",
        pos,
        SQL(
            'SELECT to_timestamp(t.at_ms / 1000.0) AS "time", i.category, t.from_node, t.to_node, t.level,\n'
            "  i.incident_id\nFROM transitions t JOIN incidents i ON i.incident_id = t.incident_id\n"
            "WHERE t.kind = 'escalate' AND t.changed AND t.at_ms BETWEEN $__from AND $__to\n"
            "ORDER BY t.at_ms DESC\nLIMIT 50"
        ),
        overrides=[
            *display_names({"time": "时间 time", "from_node": "从 from", "to_node": "到 to"}),
            *_mapped_column("category", "类别 category", category_mappings()),
            *_mapped_column("level", "层级 level", level_mappings()),
        ],
        description="Deadlines missed in silence: each row moved an incident one level up the ladder.",
    )


def _mapped_column(name: str, shown: str, mappings: list[dict]) -> list[dict]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [
                {"id": "displayName", "value": shown},
                {"id": "mappings", "value": mappings},
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        }
    ]


def _category_names() -> list[dict]:
    return display_names({c: f"{zh} {c}" for c, zh in CATEGORY_ZH.items()})


def _wall_extras(s: DashboardSettings, fresh: str, y: int, h: int, sizes: tuple[int, int]) -> list[Panel]:
    """The 4K screen's extra band: towns today, the busiest teams, today's categories."""
    t = s.targets
    return [
        bargauge(
            "各镇街今日结案率 Closure rate by town today",
            GridPos(0, y, 8, h),
            influx(
                'SELECT last("closure_rate") FROM "dispatch_kpi" WHERE "period" = \'today\' AND '
                f'"scope" = \'town\' AND "category" = \'all\' AND {fresh} GROUP BY "node"',
                "$tag_node",
            ),
            unit="percentunit",
            min=0,
            max=1,
            decimals=0,
            steps=higher_is_better(t.closure_rate, t.rate_margin),
            sizes=sizes,
        ),
        bargauge(
            "工作量最多的队伍 Busiest teams (open incidents)",
            GridPos(8, y, 8, h),
            influx(
                'SELECT top("open", "node", 10) FROM (SELECT last("open") AS "open" FROM "team_workload" '
                f'WHERE {fresh} GROUP BY "node")',
                table=True,
            ),
            rows=True,
            decimals=0,
            steps=lower_is_better(3, 6),
            sizes=sizes,
            overrides=display_names({"top": "${__data.fields.node}"}),
        ),
        bargauge(
            "今日各类事件 Received today by category",
            GridPos(16, y, 8, h),
            influx(
                'SELECT last("received") FROM "dispatch_kpi" WHERE "period" = \'today\' AND '
                f'"scope" = \'district\' AND "category" != \'all\' AND {fresh} GROUP BY "category"',
                "$tag_category",
            ),
            decimals=0,
            sizes=sizes,
            overrides=_category_names(),
        ),
    ]


def _links() -> list[dict]:
    return [
        {
            "type": "dashboards",
            "tags": ["gridwatch"],
            "asDropdown": True,
            "title": "gridwatch",
            "includeVars": False,
            "keepTime": True,
            "targetBlank": False,
            "icon": "external link",
            "tooltip": "",
            "url": "",
        }
    ]


# --- town and grid drill-down ----------------------------------------------------------------------
def _ledger_vars() -> list[Variable]:
    return [
        Variable(
            "town",
            "镇街 Town",
            DS_LEDGER,
            "SELECT DISTINCT town_id FROM incidents WHERE town_id IS NOT NULL ORDER BY 1",
        ),
        Variable(
            "community",
            "社区 Community",
            DS_LEDGER,
            "SELECT DISTINCT community_id FROM incidents WHERE town_id = '$town' AND community_id IS NOT NULL "
            "ORDER BY 1",
            multi=True,
            include_all=True,
            depends_on=("town",),
        ),
        Variable(
            "grid",
            "网格 Grid",
            DS_LEDGER,
            "SELECT DISTINCT grid_id FROM incidents WHERE community_id IN ($community) AND grid_id IS NOT NULL "
            "ORDER BY 1",
            multi=True,
            include_all=True,
            depends_on=("community",),
        ),
    ]


AREA_SQL = "town_id = '$town' AND community_id IN ($community) AND grid_id IN ($grid)"


def drilldown(s: DashboardSettings) -> Dashboard:
    t = s.targets
    fresh = f"time > now() - {s.fresh}"
    town_today = "\"period\" = 'today' AND \"scope\" = 'town' AND \"category\" = 'all' AND \"node\" = '$town'"
    stats = [
        ("今日受理 Received", "received", "short", 0, None),
        ("今日结案 Closed", "closed", "short", 0, [Step("green")]),
        (
            "结案率 Closure rate",
            "closure_rate",
            "percentunit",
            1,
            higher_is_better(t.closure_rate, t.rate_margin),
        ),
        (
            "自处置率 Self-disposal",
            "self_disposal_rate",
            "percentunit",
            1,
            higher_is_better(t.self_disposal_rate, t.rate_margin),
        ),
        ("今日升级 Escalated", "escalated", "short", 0, lower_is_better(t.escalated_warn, t.escalated_alarm)),
        (
            "平均响应 Mean response",
            "mean_response_s",
            "s",
            0,
            lower_is_better(t.mean_response_s, 2 * t.mean_response_s),
        ),
    ]
    panels: list[Panel] = [
        stat(
            title,
            GridPos(4 * i, 0, 4, 4),
            influx(_kpi_last(f, town_today, fresh)),
            unit=u,
            decimals=d,
            steps=st,
        )
        for i, (title, f, u, d, st) in enumerate(stats)
    ]
    panels += [
        table(
            "在办事件 Open incidents in $town",
            GridPos(0, 4, 16, 10),
            SQL(
                "SELECT incident_id, category, severity, state, level, node_id, grid_id,\n"
                "  to_timestamp(created_at / 1000.0) AS received, next_due_step,\n"
                "  to_timestamp(next_due_at / 1000.0) AS due,\n"
                f"  (next_due_at - {NOW_MS}) / 1000 AS due_in_s, escalations, summary\n"
                f"FROM incidents\nWHERE {AREA_SQL} AND {OPEN_SQL}\n"
                "ORDER BY next_due_at NULLS LAST\nLIMIT 500"
            ),
            sort_by=None,
            overrides=[
                *_mapped_column("category", "类别 category", category_mappings()),
                *_mapped_column("level", "层级 level", level_mappings()),
                *display_names(
                    {"received": "受理 received", "due": "时限 due", "next_due_step": "步骤 step"}
                ),
                {
                    "matcher": {"id": "byName", "options": "due_in_s"},
                    "properties": [
                        {"id": "displayName", "value": "剩余 due in"},
                        {"id": "unit", "value": "s"},
                        {
                            "id": "thresholds",
                            "value": {
                                "mode": "absolute",
                                "steps": [
                                    Step("red").to_json(),
                                    Step("orange", 0).to_json(),
                                    Step("green", 900).to_json(),
                                ],
                            },
                        },  # fmt: skip
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
            ],
            description="Soonest deadline first. Red: overdue (escalation is due); amber: under 15 minutes.",
        ),
        bargauge(
            "时限分布 Deadline ageing",
            GridPos(16, 4, 8, 10),
            SQL(
                'SELECT b.label AS "bucket", count(i.incident_id) AS "incidents"\n'
                "FROM (VALUES (1, '超时 overdue'), (2, '< 15 min'), (3, '< 1 h'), (4, '< 4 h'),\n"
                "             (5, '更晚 later'), (6, '无时限 no clock')) AS b(ord, label)\n"
                "LEFT JOIN (\n"
                "  SELECT incident_id, CASE\n"
                "    WHEN next_due_at IS NULL THEN 6\n"
                f"    WHEN next_due_at < {NOW_MS} THEN 1\n"
                f"    WHEN next_due_at < {NOW_MS} + 900000 THEN 2\n"
                f"    WHEN next_due_at < {NOW_MS} + 3600000 THEN 3\n"
                f"    WHEN next_due_at < {NOW_MS} + 14400000 THEN 4\n"
                "    ELSE 5 END AS ord\n"
                f"  FROM incidents WHERE {AREA_SQL} AND {OPEN_SQL}\n"
                ") i ON i.ord = b.ord\n"
                "GROUP BY b.ord, b.label\nORDER BY b.ord"
            ),
            rows=True,
            decimals=0,
            steps=[Step("blue")],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "incidents"},
                    "properties": [{"id": "displayName", "value": "${__data.fields.bucket}"}],
                }
            ],
            description="Open incidents by time left on their pending step (next_due_at vs now).",
        ),
        bargauge(
            "队伍工作量 Workload per team (now)",
            GridPos(0, 14, 8, 9),
            influx(
                'SELECT last("open") FROM "team_workload" WHERE "node" =~ /^($grid|$community|$town)$/ '
                f'AND {fresh} GROUP BY "node"',
                "$tag_node",
            ),
            decimals=0,
            steps=lower_is_better(3, 6),
            description="Open incidents per team node in the selection (grids, their communities, the town).",
        ),
        timeseries(
            "工作量趋势 Workload over time",
            GridPos(8, 14, 16, 9),
            influx(
                'SELECT last("open") FROM "team_workload" WHERE "node" =~ /^($grid|$community|$town)$/ '
                'AND $timeFilter GROUP BY time($__interval), "node" fill(previous)',
                "$tag_node",
            ),
            decimals=0,
            min=0,
        ),
        table(
            "网格本月指标 Grids this month",
            GridPos(0, 23, 24, 9),
            influx(_ranking_query("grid", '"node" =~ /^$grid$/'), table=True),
            transformations=_ranking_transforms(),
            sort_by=("结案率 closure", True),
            overrides=_ranking_overrides(s),
        ),
        table(
            "本时段受理 Received in the time range",
            GridPos(0, 32, 24, 10),
            SQL(
                "SELECT to_timestamp(created_at / 1000.0) AS received, incident_id, category, severity, state,\n"
                "  level, node_id, grid_id, source_kind, source_count, escalations,\n"
                "  to_timestamp(closed_at / 1000.0) AS closed, summary\n"
                f"FROM incidents\nWHERE {AREA_SQL} AND created_at BETWEEN $__from AND $__to\n"
                "ORDER BY created_at DESC\nLIMIT 1000"
            ),
            overrides=[
                *_mapped_column("category", "类别 category", category_mappings()),
                *_mapped_column("level", "层级 level", level_mappings()),
                *display_names({"received": "受理 received", "closed": "结案 closed"}),
            ],
        ),
    ]
    return Dashboard(
        uid="gridwatch-drilldown",
        title="镇街 · 网格 Town and grid drill-down",
        folder=OPS,
        description="One town's incidents, deadlines, team workload and KPIs; narrow to communities and grids.",
        panels=panels,
        variables=_ledger_vars(),
        time_from="now-24h",
        refresh="1m",
        timezone=s.timezone,
        links=_links(),
    )


def _ranking_query(scope: str, extra: str = "", period: str = "month") -> str:
    fields = [
        "received",
        "closed",
        "closure_rate",
        "self_disposal_rate",
        "on_time_ack_rate",
        "escalated",
        "mean_response_s",
    ]
    sel = ", ".join(f'last("{f}") AS "{f}"' for f in fields)
    return (
        f'SELECT {sel} FROM "dispatch_kpi" WHERE "period" = \'{period}\' AND "scope" = \'{scope}\' '
        f'AND "category" = \'all\' AND {extra + " AND " if extra else ""}$timeFilter GROUP BY "node"'
    )


def _ranking_transforms() -> list[dict]:
    return [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "indexByName": {"node": 0}}},
        {"id": "sortBy", "options": {"sort": [{"field": "closure_rate", "desc": True}]}},
    ]


def _ranking_overrides(s: DashboardSettings, link_town: bool = False) -> list[dict]:
    t = s.targets
    out = display_names(
        {
            "node": "节点 node",
            "received": "受理 received",
            "closed": "结案 closed",
            "escalated": "升级 escalated",
        }
    )
    for name, shown, target in (
        ("closure_rate", "结案率 closure", t.closure_rate),
        ("self_disposal_rate", "自处置率 self-disposal", t.self_disposal_rate),
        ("on_time_ack_rate", "按时签收 on-time ack", t.on_time_ack_rate),
    ):
        out.append(
            {
                "matcher": {"id": "byName", "options": name},
                "properties": [
                    {"id": "displayName", "value": shown},
                    {"id": "unit", "value": "percentunit"},
                    {"id": "decimals", "value": 1},
                    {
                        "id": "thresholds",
                        "value": {
                            "mode": "absolute",
                            "steps": [st.to_json() for st in higher_is_better(target, t.rate_margin)],
                        },
                    },  # fmt: skip
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ],
            }
        )
    out += display_names({"mean_response_s": "平均响应 mean response"}, unit="s", decimals=0)
    if link_town:
        out.append(
            {
                "matcher": {"id": "byName", "options": "node"},
                "properties": [
                    {
                        "id": "links",
                        "value": [
                            {
                                "title": "镇街详情 Drill down",
                                "url": "/d/gridwatch-drilldown/?var-town=${__value.raw}&${__url_time_range}",
                            }
                        ],
                    }
                ],
            }
        )
    return out


# --- sensors ---------------------------------------------------------------------------------------
def _sensor_vars() -> list[Variable]:
    def tag(key: str, where: str = "") -> str:
        return f'SHOW TAG VALUES FROM "sensor_reading" WITH KEY = "{key}"' + (
            f" WHERE {where}" if where else ""
        )

    return [
        Variable("type", "类型 Type", DS_INFLUX, tag("type"), multi=True, include_all=True, all_value=".*"),
        Variable("town", "镇街 Town", DS_INFLUX, tag("town"), multi=True, include_all=True, all_value=".*"),
        Variable(
            "community",
            "社区 Community",
            DS_INFLUX,
            tag("community", '"town" =~ /^$town$/'),
            multi=True,
            include_all=True,
            depends_on=("town",),
        ),
        Variable(
            "grid",
            "网格 Grid",
            DS_INFLUX,
            tag("grid", '"community" =~ /^$community$/'),
            multi=True,
            include_all=True,
            depends_on=("community",),
        ),
        Variable(
            "sensor",
            "传感器 Sensor",
            DS_INFLUX,
            tag("sensor_id", '"type" =~ /^$type$/ AND "grid" =~ /^$grid$/'),
            multi=True,
            include_all=True,
            depends_on=("type", "grid"),
        ),
    ]


def sensors(s: DashboardSettings) -> Dashboard:
    f = SENSOR_FILTER
    reporting = (
        'SELECT count("last") FROM (SELECT last("value") FROM "sensor_reading" '
        f'WHERE {f} AND time > now() - {s.fresh} GROUP BY "sensor_id")'
    )
    silent = (
        'SELECT count("last") FROM (SELECT last("episode_start"), "state" FROM "rule_firing" '
        f'WHERE "rule" = \'silence\' AND {f} AND time > now() - {s.silence_lookback} GROUP BY "sensor_id") '
        "WHERE \"state\" = 'raised'"
    )
    panels: list[Panel] = [
        stat(
            "在报传感器 Reporting", GridPos(0, 0, 4, 4), influx(reporting), decimals=0, steps=[Step("green")]
        ),
        stat(
            "静默传感器 Silent",
            GridPos(4, 0, 4, 4),
            influx(silent),
            decimals=0,
            no_value="0",
            steps=[Step("green"), Step("red", 1)],
        ),
        stat(
            "规则触发 Rule firings",
            GridPos(8, 0, 4, 4),
            influx(
                f'SELECT count("episode_start") FROM "rule_firing" WHERE "state" = \'raised\' AND {f} AND $timeFilter'
            ),
            decimals=0,
            no_value="0",
            description="Episodes raised in the time range (each raised one incident candidate).",
        ),
        bargauge(
            "各类在报 Reporting by type",
            GridPos(12, 0, 12, 4),
            influx(
                'SELECT count("last") FROM (SELECT last("value") FROM "sensor_reading" '
                f'WHERE {f} AND time > now() - {s.fresh} GROUP BY "sensor_id", "type") GROUP BY "type"',
                "$tag_type",
            ),
            decimals=0,
        ),
        timeseries(
            "$type",
            GridPos(0, 4, 12, 9),
            influx(
                f'SELECT mean("value") FROM "sensor_reading" WHERE {f} AND $timeFilter '
                'GROUP BY time($__interval), "sensor_id" fill(none)',
                "$tag_sensor_id",
            ),
            repeat="type",
            max_per_row=2,
            description="Readings per sensor (mean per interval). Red marks: rule firings (annotations).",
        ),
        timeseries(
            "窗口统计 Windows: min / mean / max by type",
            GridPos(0, 13, 24, 8),
            influx(
                'SELECT min("min") AS "min", mean("mean") AS "mean", max("max") AS "max" FROM "sensor_window" '
                f'WHERE {f} AND $timeFilter GROUP BY time($__interval), "type" fill(none)',
                "$tag_type $col",
            ),
            description="The streams worker's tumbling windows (sensor_window), across the selected sensors.",
        ),
        timeseries(
            "规则触发 Firings by rule",
            GridPos(0, 21, 12, 8),
            influx(
                f'SELECT count("episode_start") FROM "rule_firing" WHERE "state" = \'raised\' AND {f} '
                'AND $timeFilter GROUP BY time($__interval), "rule" fill(0)',
                "$tag_rule",
            ),
            bars=True,
            stack=True,
            decimals=0,
        ),
        table(
            "静默中的传感器 Silent sensors",
            GridPos(12, 21, 12, 8),
            influx(
                'SELECT "since", "grid", "type" FROM (SELECT last("episode_start") AS "since", "state", "grid", '
                f'"type" FROM "rule_firing" WHERE "rule" = \'silence\' AND {f} '
                f'AND time > now() - {s.silence_lookback} GROUP BY "sensor_id") '
                'WHERE "state" = \'raised\' GROUP BY "sensor_id"',
                table=True,
            ),
            transformations=[{"id": "merge", "options": {}}, _hide_time()],
            overrides=[
                *display_names({"since": "静默起 silent since"}, unit="dateTimeAsLocal"),
                *display_names({"sensor_id": "传感器 sensor", "grid": "网格 grid", "type": "类型 type"}),
            ],
        ),
        table(
            "规则触发记录 Rule firings",
            GridPos(0, 29, 24, 10),
            influx(
                'SELECT "sensor_id", "type", "rule", "state", "category", "grid", "value", "candidate_id" '
                f'FROM "rule_firing" WHERE {f} AND $timeFilter ORDER BY time DESC LIMIT 500',
                table=True,
            ),
            overrides=_mapped_column("category", "类别 category", category_mappings()),
        ),
    ]
    return Dashboard(
        uid="gridwatch-sensors",
        title="传感器 Sensors by type",
        folder=OPS,
        description="IoT sensor readings, windows and rule firings (streams worker output).",
        panels=panels,
        variables=_sensor_vars(),
        annotations=[
            Annotation(
                "规则触发 Rule firings",
                'SELECT "candidate_id", "value", "sensor_id", "rule", "category" FROM "rule_firing" '
                f"WHERE \"state\" = 'raised' AND {f} AND $timeFilter",
                text_column="sensor_id",
                tags_column="rule,category",
            )
        ],
        time_from="now-6h",
        refresh="1m",
        timezone=s.timezone,
        links=_links(),
    )


def _hide_time() -> dict:
    return {"id": "organize", "options": {"excludeByName": {"Time": True}}}


# --- cameras --------------------------------------------------------------------------------------
def cameras(s: DashboardSettings) -> Dashboard:
    fresh = f"time > now() - {s.fresh}"
    c = '"camera_id" =~ /^$camera$/'
    up_mappings = [
        {
            "type": "value",
            "options": {
                "true": {"index": 0, "text": "在线 up", "color": "green"},
                "false": {"index": 1, "text": "离线 down", "color": "red"},
                "1": {"index": 2, "text": "在线 up", "color": "green"},
                "0": {"index": 3, "text": "离线 down", "color": "red"},
            },
        }
    ]

    def count(up: str) -> str:
        return (
            'SELECT count("last") FROM (SELECT last("up") FROM "camera_health" '
            f'WHERE {c} AND {fresh} GROUP BY "camera_id") WHERE "last" = {up}'
        )

    panels: list[Panel] = [
        stat("在线 Up", GridPos(0, 0, 4, 4), influx(count("true")), decimals=0, steps=[Step("green")]),
        stat(
            "离线 Down",
            GridPos(4, 0, 4, 4),
            influx(count("false")),
            decimals=0,
            no_value="0",
            steps=[Step("green"), Step("red", 1)],
        ),
        stat(
            "重连 Reconnects",
            GridPos(8, 0, 4, 4),
            influx(
                'SELECT sum("n") FROM (SELECT non_negative_difference("reconnects") AS "n" FROM "camera_health" '
                f'WHERE {c} AND $timeFilter GROUP BY "camera_id")'
            ),
            decimals=0,
            steps=lower_is_better(1, 10),
            description="Successful re-openings in the time range.",
        ),
        stat(
            "丢弃旧帧 Stale frames dropped",
            GridPos(12, 0, 4, 4),
            influx(
                'SELECT sum("n") FROM (SELECT non_negative_difference("stale_dropped") AS "n" FROM "camera_health" '
                f'WHERE {c} AND $timeFilter GROUP BY "camera_id")'
            ),
            decimals=0,
            description="Backlog frames discarded so that analysis stays on the live picture.",
        ),
        stat(
            "分析延迟 Frame latency p99",
            GridPos(16, 0, 8, 4),
            influx(
                'SELECT max("frame_latency_p99_ms") FROM "pipeline_health" WHERE "component" = \'cameras\' '
                "AND $timeFilter"
            ),
            unit="ms",
            decimals=0,
            steps=lower_is_better(1000, 5000),
            description="Camera worker: frame captured -> analysed, worst 99th percentile in the range.",
        ),
        table(
            "摄像头状态 Cameras now",
            GridPos(0, 4, 24, 8),
            influx(
                'SELECT last("up") AS "up", last("fps") AS "fps", last("reconnects") AS "reconnects", '
                'last("last_frame_age_s") AS "last_frame_age_s", last("stale_dropped") AS "stale_dropped" '
                f'FROM "camera_health" WHERE {c} AND {fresh} GROUP BY "camera_id"',
                table=True,
            ),
            transformations=[{"id": "merge", "options": {}}, _hide_time()],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "up"},
                    "properties": [
                        {"id": "displayName", "value": "状态 state"},
                        {"id": "mappings", "value": up_mappings},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
                *display_names({"camera_id": "摄像头 camera", "fps": "帧率 fps"}),
                *display_names({"last_frame_age_s": "末帧 last frame age"}, unit="s"),
            ],
        ),
        state_timeline(
            "在线时间线 Up / down",
            GridPos(0, 12, 24, 7),
            influx(
                f'SELECT last("up") FROM "camera_health" WHERE {c} AND $timeFilter '
                'GROUP BY time($__interval), "camera_id" fill(previous)',
                "$tag_camera_id",
            ),
            mappings=up_mappings,
            interval="10s",
        ),
        timeseries(
            "帧率 Frames per second",
            GridPos(0, 19, 12, 8),
            influx(
                f'SELECT mean("fps") FROM "camera_health" WHERE {c} AND $timeFilter '
                'GROUP BY time($__interval), "camera_id" fill(none)',
                "$tag_camera_id",
            ),
            interval="10s",
        ),
        timeseries(
            "末帧时长 Age of last frame",
            GridPos(12, 19, 12, 8),
            influx(
                f'SELECT max("last_frame_age_s") FROM "camera_health" WHERE {c} AND $timeFilter '
                'GROUP BY time($__interval), "camera_id" fill(none)',
                "$tag_camera_id",
            ),
            unit="s",
            interval="10s",
        ),
        timeseries(
            "重连 Reconnects per interval",
            GridPos(0, 27, 12, 8),
            influx(
                'SELECT non_negative_difference(last("reconnects")) FROM "camera_health" '
                f'WHERE {c} AND $timeFilter GROUP BY time($__interval), "camera_id" fill(none)',
                "$tag_camera_id",
            ),
            bars=True,
            decimals=0,
            interval="1m",
        ),
        timeseries(
            "分析延迟趋势 Frame latency (capture -> analysed)",
            GridPos(12, 27, 12, 8),
            influx(
                'SELECT median("frame_latency_p50_ms") AS "p50", max("frame_latency_p99_ms") AS "p99" '
                'FROM "pipeline_health" WHERE "component" = \'cameras\' AND $timeFilter '
                'GROUP BY time($__interval), "instance" fill(none)',
                "$tag_instance $col",
            ),
            unit="ms",
            interval="10s",
        ),
    ]
    return Dashboard(
        uid="gridwatch-cameras",
        title="摄像头 Cameras",
        folder=OPS,
        description="Camera readers' health (camera_health) and the camera worker's latency.",
        panels=panels,
        variables=[
            Variable(
                "camera",
                "摄像头 Camera",
                DS_INFLUX,
                'SHOW TAG VALUES FROM "camera_health" WITH KEY = "camera_id"',
                multi=True,
                include_all=True,
                all_value=".*",
            )
        ],
        time_from="now-6h",
        refresh="30s",
        timezone=s.timezone,
        links=_links(),
    )


# --- pipeline -------------------------------------------------------------------------------------
def pipeline(s: DashboardSettings) -> Dashboard:
    fresh = f"time > now() - {s.fresh}"
    bridge = "\"component\" = 'bridge'"
    streams = "\"component\" = 'streams'"
    dispatch = "\"component\" = 'dispatch'"
    iv = "10s"  # the health interval: finer intervals would only show gaps
    red_from_one = [Step("green"), Step("red", 1)]
    connected = [
        {
            "type": "value",
            "options": {
                "true": {"index": 0, "text": "已连接 connected", "color": "green"},
                "false": {"index": 1, "text": "断开 disconnected", "color": "red"},
                "1": {"index": 2, "text": "已连接 connected", "color": "green"},
                "0": {"index": 3, "text": "断开 disconnected", "color": "red"},
            },
        }
    ]
    panels: list[Panel] = [
        stat(
            "积压 Consumer lag",
            GridPos(0, 0, 4, 4),
            influx(
                'SELECT sum("lag") FROM (SELECT last("consumer_lag") AS "lag" FROM "pipeline_health" '
                f'WHERE {streams} AND {fresh} GROUP BY "instance")'
            ),
            decimals=0,
            steps=lower_is_better(1000, 10000),
            description="Readings records waiting for the stream workers, all partitions.",
        ),
        stat(
            "死信 Dead letters",
            GridPos(4, 0, 4, 4),
            influx(_increase("dead_letters", "pipeline_health")),
            decimals=0,
            no_value="0",
            steps=red_from_one,
        ),
        stat(
            "写入错误 InfluxDB write errors",
            GridPos(8, 0, 4, 4),
            influx(_increase("influx_write_errors", "pipeline_health", streams)),
            decimals=0,
            no_value="0",
            steps=red_from_one,
        ),
        stat(
            "丢弃行 Lines dropped",
            GridPos(12, 0, 4, 4),
            influx(_increase("influx_dropped_lines", "pipeline_health", streams)),
            decimals=0,
            no_value="0",
            steps=red_from_one,
            description="Lines lost after memory buffer and disk spill were both full.",
        ),
        stat(
            "推送失败 Deliveries failed",
            GridPos(16, 0, 4, 4),
            influx(_increase("deliveries_failed", "pipeline_health", dispatch)),
            decimals=0,
            no_value="0",
            steps=red_from_one,
            description="Pushes given up after max_attempts (GET /api/v1/deliveries?status=failed).",
        ),
        stat(
            "MQTT 桥接 Bridge MQTT",
            GridPos(20, 0, 4, 4),
            influx(
                f'SELECT last("connected") FROM "pipeline_health" WHERE {bridge} AND {fresh} GROUP BY "instance"',
                "$tag_instance",
            ),
            mappings=connected,
            steps=[Step("green")],
        ),
        row("桥接 Bridge (MQTT -> Kafka)", 4),
        timeseries(
            "读数 Readings per second",
            GridPos(0, 5, 12, 8),
            influx(_rate({"received": "received", "forwarded": "forwarded"}, bridge), "$tag_instance $col"),
            unit="reqps",
            interval=iv,
        ),
        timeseries(
            "连接与错误 Connections and errors",
            GridPos(12, 5, 12, 8),
            influx(
                _per_interval(
                    {
                        "mqtt disconnects": "mqtt_disconnects",
                        "mqtt connect failures": "mqtt_connect_failures",
                        "kafka send errors": "kafka_send_errors",
                        "dead letters": "dead_letters",
                    },
                    bridge,
                ),
                "$tag_instance $col",
            ),
            bars=True,
            decimals=0,
            interval="1m",
        ),
        row("流处理 Streams (Faust workers)", 13),
        timeseries(
            "处理速率 Readings processed per second",
            GridPos(0, 14, 8, 8),
            influx(_rate({"readings": "readings", "firings": "firings"}, streams), "$tag_instance $col"),
            unit="reqps",
            interval=iv,
        ),
        timeseries(
            "积压 Consumer lag",
            GridPos(8, 14, 8, 8),
            influx(
                f'SELECT last("consumer_lag") FROM "pipeline_health" WHERE {streams} AND $timeFilter '
                'GROUP BY time($__interval), "instance" fill(none)',
                "$tag_instance",
            ),
            decimals=0,
            interval=iv,
        ),
        timeseries(
            "端到端延迟 Latency (publish -> stored)",
            GridPos(16, 14, 8, 8),
            influx(
                'SELECT median("latency_p50_ms") AS "p50", max("latency_p99_ms") AS "p99" FROM "pipeline_health" '
                f'WHERE {streams} AND $timeFilter GROUP BY time($__interval), "instance" fill(none)',
                "$tag_instance $col",
            ),
            unit="ms",
            interval=iv,
            steps=[Step("green"), Step("red", 2000)],
        ),
        timeseries(
            "写入器 InfluxDB writer",
            GridPos(0, 22, 12, 8),
            influx(
                _per_interval(
                    {
                        "write errors": "influx_write_errors",
                        "retries": "influx_retries",
                        "rejected": "influx_rejected_lines",
                        "spilled": "influx_spilled_lines",
                        "dropped": "influx_dropped_lines",
                    },
                    streams,
                ),
                "$tag_instance $col",
            ),
            bars=True,
            decimals=0,
            interval="1m",
        ),
        timeseries(
            "缓冲 Buffered in memory / on disk",
            GridPos(12, 22, 12, 8),
            influx(
                'SELECT last("influx_buffered_lines") AS "buffered lines" FROM "pipeline_health" '
                f'WHERE {streams} AND $timeFilter GROUP BY time($__interval), "instance" fill(none)',
                "$tag_instance $col",
                ref="A",
            ),
            influx(
                'SELECT last("influx_spilled_bytes") AS "spilled bytes" FROM "pipeline_health" '
                f'WHERE {streams} AND $timeFilter GROUP BY time($__interval), "instance" fill(none)',
                "$tag_instance $col",
                ref="B",
            ),
            interval=iv,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "unit", "value": "bytes"}],
                }
            ],
        ),
        row("死信 Dead letters", 30),
        timeseries(
            "原因 By reason",
            GridPos(0, 31, 12, 8),
            influx(
                'SELECT non_negative_difference(last("count")) FROM "dead_letters" WHERE $timeFilter '
                'GROUP BY time($__interval), "component", "reason" fill(none)',
                "$tag_component $tag_reason",
            ),
            bars=True,
            stack=True,
            decimals=0,
            interval="1m",
        ),
        timeseries(
            "组件 By component",
            GridPos(12, 31, 12, 8),
            influx(
                _per_interval({"dead letters": "dead_letters"}, group='"component", "instance"'),
                "$tag_component $tag_instance",
            ),
            bars=True,
            stack=True,
            decimals=0,
            interval="1m",
        ),
        row("派遣 Dispatch", 39),
        timeseries(
            "事件流 Candidates and incidents",
            GridPos(0, 40, 8, 8),
            influx(
                _per_interval(
                    {
                        "candidates": "candidates_in",
                        "incidents": "incidents_created",
                        "attached": "attached",
                        "duplicates": "duplicates",
                        "unroutable": "unroutable",
                    },
                    dispatch,
                ),
                "$col",
            ),
            bars=True,
            decimals=0,
            interval="1m",
        ),
        timeseries(
            "推送 Deliveries",
            GridPos(8, 40, 8, 8),
            influx(
                _per_interval(
                    {
                        "sent": "deliveries_sent",
                        "failed attempts": "delivery_failed_attempts",
                        "given up": "deliveries_failed",
                    },
                    dispatch,
                ),
                "$col",
            ),
            bars=True,
            decimals=0,
            interval="1m",
        ),
        timeseries(
            "升级延迟 Escalation lag",
            GridPos(16, 40, 8, 8),
            influx(
                'SELECT max("escalation_lag_p50_ms") AS "p50", max("escalation_lag_p99_ms") AS "p99" '
                f'FROM "pipeline_health" WHERE {dispatch} AND $timeFilter GROUP BY time($__interval) fill(none)',
                "$col",
            ),
            unit="ms",
            interval=iv,
            description="Deadline passed -> escalation applied.",
        ),
        state_timeline(
            "连接 Connections",
            GridPos(0, 48, 24, 5),
            influx(
                'SELECT last("mqtt_connected") FROM "pipeline_health" WHERE "component" = \'dispatch\' '
                'AND $timeFilter GROUP BY time($__interval), "component", "instance" fill(previous)',
                "$tag_component $tag_instance",
                ref="A",
            ),
            influx(
                f'SELECT last("connected") FROM "pipeline_health" WHERE {bridge} AND $timeFilter '
                'GROUP BY time($__interval), "component", "instance" fill(previous)',
                "$tag_component $tag_instance",
                ref="B",
            ),
            mappings=connected,
            interval=iv,
        ),
    ]
    return Dashboard(
        uid="gridwatch-pipeline",
        title="数据链路 Pipeline health",
        folder=OPS,
        description="Bridge, stream workers, InfluxDB writer, dead letters and dispatch (pipeline_health).",
        panels=panels,
        time_from="now-6h",
        refresh="30s",
        timezone=s.timezone,
        links=_links(),
    )


# --- monthly KPIs and rankings ---------------------------------------------------------------------
def monthly(s: DashboardSettings) -> Dashboard:
    t = s.targets
    month = lambda f: _kpi_last(f, MONTH, "$timeFilter")  # noqa: E731 - a query per KPI below
    kpis = [
        ("受理 Received", "received", "short", 0, None),
        ("结案 Closed", "closed", "short", 0, [Step("green")]),
        (
            "结案率 Closure rate",
            "closure_rate",
            "percentunit",
            1,
            higher_is_better(t.closure_rate, t.rate_margin),
        ),
        (
            "自处置率 Self-disposal",
            "self_disposal_rate",
            "percentunit",
            1,
            higher_is_better(t.self_disposal_rate, t.rate_margin),
        ),
        (
            "按时签收率 On-time ack",
            "on_time_ack_rate",
            "percentunit",
            1,
            higher_is_better(t.on_time_ack_rate, t.rate_margin),
        ),
        ("升级率 Escalation rate", "escalation_rate", "percentunit", 1, lower_is_better(0.02, 0.1)),
        ("误报率 False alarms", "false_alarm_rate", "percentunit", 1, lower_is_better(0.1, 0.3)),
        (
            "平均响应 Mean response",
            "mean_response_s",
            "s",
            0,
            lower_is_better(t.mean_response_s, 2 * t.mean_response_s),
        ),
    ]
    panels: list[Panel] = [
        stat(title, GridPos(3 * i, 0, 3, 5), influx(month(f)), unit=u, decimals=d, steps=st, sizes=(14, 36))
        for i, (title, f, u, d, st) in enumerate(kpis)
    ]
    levels = {
        "grid": "网格 grid",
        "community": "社区 community",
        "town": "镇街 town",
        "district": "区 district",
    }
    resolved = ", ".join(f'last("resolved_at_{lv}") AS "{shown}"' for lv, shown in levels.items())
    panels += [
        table(
            "镇街排名 Towns ranked (this month)",
            GridPos(0, 5, 16, 10),
            influx(_ranking_query("town"), table=True),
            transformations=_ranking_transforms(),
            sort_by=("结案率 closure", True),
            overrides=_ranking_overrides(s, link_town=True),
            cell_height="md",
            description="Ranked by closure rate (the monthly bulletin also breaks ties by on-time "
            "acknowledgement and self-disposal). Click a town to drill down.",
        ),
        Panel(
            "piechart",
            "结案层级 Resolved at level",
            GridPos(16, 5, 8, 10),
            [influx(f'SELECT {resolved} FROM "dispatch_kpi" WHERE {MONTH} AND $timeFilter')],
            description="Small matters don't leave the grid: the share closed at each level.",
            color_mode="palette-classic",
            overrides=[
                {
                    "matcher": {"id": "byName", "options": shown},
                    "properties": [
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": LEVEL_COLOURS[lv]}}
                    ],
                }
                for lv, shown in levels.items()
            ],
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "pieType": "donut",
                "displayLabels": ["percent"],
                "legend": {
                    "displayMode": "table",
                    "placement": "right",
                    "showLegend": True,
                    "values": ["value"],
                },
                "tooltip": {"mode": "single", "sort": "none"},
            },
        ),
        table(
            "网格排名 Grids ranked in $town (this month)",
            GridPos(0, 15, 16, 12),
            influx(_ranking_query("grid", '"node" =~ /^$grid$/'), table=True),
            transformations=_ranking_transforms(),
            sort_by=("结案率 closure", True),
            overrides=_ranking_overrides(s),
        ),
        bargauge(
            "各类事件 Received by category",
            GridPos(16, 15, 8, 12),
            influx(
                'SELECT last("received") FROM "dispatch_kpi" WHERE "period" = \'month\' AND "scope" = \'district\' '
                'AND "category" != \'all\' AND $timeFilter GROUP BY "category"',
                "$tag_category",
            ),
            decimals=0,
            overrides=_category_names(),
        ),
        timeseries(
            "每日受理与结案 Received and closed per day",
            GridPos(0, 27, 12, 8),
            influx(
                'SELECT last("received") AS "受理 received", last("closed") AS "结案 closed" FROM "dispatch_kpi" '
                f"WHERE {TODAY} AND $timeFilter GROUP BY time(1d) fill(none) tz('{s.timezone}')"
            ),
            bars=True,
            decimals=0,
            description="Each day's final 'today' figures (days in the centre's time zone).",
        ),
        timeseries(
            "月累计比率 Month-to-date rates",
            GridPos(12, 27, 12, 8),
            influx(
                'SELECT last("closure_rate") AS "结案率 closure", last("self_disposal_rate") AS "自处置率 self-disposal", '
                f'last("on_time_ack_rate") AS "按时签收 on-time ack" FROM "dispatch_kpi" WHERE {MONTH} '
                "AND $timeFilter GROUP BY time($__interval) fill(none)"
            ),
            unit="percentunit",
            min=0,
            max=1,
            steps=[Step("green"), Step("red", t.closure_rate)],
        ),
    ]
    return Dashboard(
        uid="gridwatch-monthly",
        title="月度考核 Monthly KPIs and rankings",
        folder=OPS,
        description="This month's reform KPIs, towns and grids ranked (dispatch_kpi period=month). For a "
        "past month pick it in the time picker (e.g. 'Previous month').",
        panels=panels,
        variables=[
            Variable(
                "town",
                "镇街 Town",
                DS_LEDGER,
                "SELECT DISTINCT town_id FROM incidents WHERE town_id IS NOT NULL ORDER BY 1",
                multi=True,
                include_all=True,
            ),
            Variable(
                "grid",
                "网格 Grid",
                DS_LEDGER,
                "SELECT DISTINCT grid_id FROM incidents WHERE town_id IN ($town) AND grid_id IS NOT NULL ORDER BY 1",
                multi=True,
                include_all=True,
                depends_on=("town",),
                hide=2,  # follows $town; the ranking lists every grid of the chosen towns
            ),
        ],
        time_from="now/M",
        time_to="now",
        refresh="5m",
        timezone=s.timezone,
        links=_links(),
    )


def console_link(console_url: str) -> dict:
    """Field override: the `incident_id` column opens the incident's page in the operator console."""
    return {
        "matcher": {"id": "byName", "options": "incident_id"},
        "properties": [
            {
                "id": "links",
                "value": [
                    {
                        "title": "控制台处置 Open in the console",
                        "url": console_url.rstrip("/") + "/incidents/${__value.raw}",
                        "targetBlank": True,
                    }
                ],
            }
        ],
    }


def _selects_incident_id(p: Panel) -> bool:
    return any(
        isinstance(t, SQL) and re.search(r"\bincident_id\b", t.sql.split("\nFROM")[0]) for t in p.targets
    )


def build_dashboards(settings: DashboardSettings | None = None) -> list[Dashboard]:
    """Every gridwatch dashboard, in a stable order."""
    s = settings or DashboardSettings()
    out = [
        *(wall(s, screen) for screen in SCREENS),
        drilldown(s),
        sensors(s),
        cameras(s),
        pipeline(s),
        monthly(s),
    ]
    for d in out:  # every incident shown from the ledger links to the console, where operators act
        for p in d.panels:
            if _selects_incident_id(p):
                p.overrides = [*p.overrides, console_link(s.console_url)]
    return out
