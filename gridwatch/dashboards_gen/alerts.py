"""gridwatch's Grafana alert rules, contact point and notification policy, as code.

`alert_rules(settings)` is the list of rules; `rules_file()` and `notifications_file()` are the
Grafana 11.3 alerting file-provisioning documents written to
`dashboards/provisioning/alerting/` (docker-compose mounts them); `rule_payloads()` is the same
rules in the form of Grafana's HTTP provisioning API (`/api/v1/provisioning/alert-rules`), which
`push.py` sends. docs/DASHBOARDS.md "Alert rules" says why each rule exists.

Every data query is raw InfluxQL in the same portable subset as the dashboards (InfluxDB 1.x, 2.x
through the v1 API, 3.x); alert queries have no dashboard variables and no `$__interval`: Grafana
expands only `$timeFilter`, from the query's `relativeTimeRange`. The condition is built from
Grafana's server-side expressions (datasource `__expr__`): `reduce` (one number per series),
`threshold`, and once `math`.

Grafana's file provisioning expands environment variables (`$VAR`, `${VAR}`) in titles, labels
and contact-point settings, not in annotations or in query models. So titles and labels here
contain no `$`; annotations use Grafana's alert templates (`{{ $labels.x }}`, `{{ $values.B }}`);
the webhook URL is the one deliberate variable, `${GRAFANA_ALERT_WEBHOOK_URL}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gridwatch.dashboards_gen.dashboards import DashboardSettings, build_dashboards
from gridwatch.dashboards_gen.model import DS_INFLUX, Folder

__all__ = [
    "ALERTS_FOLDER",
    "ALERT_ENV",
    "CONTACT_POINT",
    "EXPR_UID",
    "RULE_GROUP",
    "AlertRule",
    "Math",
    "Query",
    "Reduce",
    "Threshold",
    "alert_rules",
    "notifications_file",
    "rule_payloads",
    "rules_file",
]

#: Alert rules live in a folder of their own: Grafana provisions alerting before dashboards and
#: finds a rule group's folder by title, so sharing a dashboard folder's title would give that
#: folder a random uid on a fresh Grafana. `push.py` creates this one with its fixed uid.
ALERTS_FOLDER = Folder("gridwatch-alerts", "gridwatch 告警 Alerts", "")
RULE_GROUP = "gridwatch"
RULE_INTERVAL = "1m"  # how often Grafana evaluates the group
EXPR_UID = "__expr__"  # Grafana's server-side expressions
CONTACT_POINT = "gridwatch 值班 Duty officers"
CONTACT_UID = "gridwatch-duty"
#: Environment variables the alerting files use (Grafana expands them when it reads the files).
ALERT_ENV: dict[str, str] = {
    "GRAFANA_ALERT_WEBHOOK_URL": "where Grafana sends alerts: a relay taking Grafana's webhook JSON, or the "
    "DingTalk / WeCom robot URL when `alerts.contact_type` is dingding / wecom (docs/DEPLOY.md)",
}

Severity = Literal["critical", "warning"]


# --- the nodes of a rule ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """An InfluxQL query over the last `seconds` (its `relativeTimeRange`)."""

    ref: str
    influxql: str
    seconds: int

    def model(self) -> dict[str, Any]:
        return {
            "refId": self.ref,
            "datasource": DS_INFLUX.to_json(),
            "rawQuery": True,
            "query": self.influxql,
            "resultFormat": "time_series",
            "intervalMs": 1000,
            "maxDataPoints": 43200,
        }

    def data(self) -> dict[str, Any]:
        return {
            "refId": self.ref,
            "relativeTimeRange": {"from": self.seconds, "to": 0},
            "datasourceUid": DS_INFLUX.uid,
            "model": self.model(),
        }


def _expr(ref: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "refId": ref,
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": EXPR_UID,
        "model": {"refId": ref, "datasource": {"type": EXPR_UID, "uid": EXPR_UID}, **body},
    }


@dataclass(frozen=True)
class Reduce:
    """One number per series: `reducer` over its points, non-numbers dropped (`dropNN`)."""

    ref: str
    of: str
    reducer: Literal["last", "min", "max", "mean", "sum", "count"] = "last"

    def data(self) -> dict[str, Any]:
        return _expr(
            self.ref,
            {
                "type": "reduce",
                "expression": self.of,
                "reducer": self.reducer,
                "settings": {"mode": "dropNN"},
            },
        )


@dataclass(frozen=True)
class Threshold:
    """1 where the reduced value is `gt` / `lt` the value, else 0."""

    ref: str
    of: str
    op: Literal["gt", "lt"]
    value: float

    def data(self) -> dict[str, Any]:
        return _expr(
            self.ref,
            {
                "type": "threshold",
                "expression": self.of,
                "conditions": [{"evaluator": {"type": self.op, "params": [self.value]}}],
            },
        )


@dataclass(frozen=True)
class Math:
    """Grafana's math expression over other nodes (`$B > 100 && $C >= $D`)."""

    ref: str
    expression: str

    def data(self) -> dict[str, Any]:
        return _expr(self.ref, {"type": "math", "expression": self.expression})


Node = Query | Reduce | Threshold | Math


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str  # "中文 English", as the panel titles
    component: str  # label: what to look at (sensors, cameras, streams, dispatch, ...); policies group by it
    severity: Severity
    nodes: tuple[Node, ...]
    summary: tuple[str, str]  # (zh, en), may use {{ $labels.x }} / {{ $values.X }}
    description: tuple[str, str]
    runbook: str  # what the duty officer does first
    dashboard: str  # uid of the dashboard to open
    panel: str  # title of the panel on it
    for_: str = "0s"  # how long the condition must hold before it fires
    no_data: Literal["OK", "NoData", "Alerting"] = "OK"
    condition: str = ""  # ref of the node that decides; default: the last one
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def condition_ref(self) -> str:
        return self.condition or self.nodes[-1].ref

    @property
    def queries(self) -> list[Query]:
        return [n for n in self.nodes if isinstance(n, Query)]

    def labels(self) -> dict[str, str]:
        return {
            "system": "gridwatch",
            "component": self.component,
            "severity": self.severity,
            **self.extra_labels,
        }

    def annotations(self, panel_id: int) -> dict[str, str]:
        zh, en = self.summary
        dzh, den = self.description
        return {
            "summary": f"{zh} / {en}",
            "description": f"{dzh}\n{den}",
            "runbook": self.runbook,
            "dashboard": f"/d/{self.dashboard}?viewPanel={panel_id}",
            # Grafana links the rule to the panel from these two (file and API alike) and puts the
            # dashboard's and panel's full URLs into every notification
            "__dashboardUid__": self.dashboard,
            "__panelId__": str(panel_id),
        }


# --- InfluxQL fragments ------------------------------------------------------------------------------
def _increase(fld: str, where: str = "") -> str:
    """Increase of a cumulative counter over the rule's range, summed per component (restarts skipped)."""
    cond = f"{where} AND $timeFilter" if where else "$timeFilter"
    return (
        f'SELECT sum("n") FROM (SELECT non_negative_difference("{fld}") AS "n" FROM "pipeline_health" '
        f'WHERE {cond} GROUP BY "component", "instance") GROUP BY "component"'
    )


#: A field every health point of a component carries (its heartbeat).
HEARTBEAT_FIELD = {
    "bridge": "received",
    "streams": "readings",
    "dispatch": "candidates_in",
    "cameras": "frames",
}
HEARTBEAT_PANEL = {
    "bridge": ("gridwatch-pipeline", "连接 Connections"),
    "streams": ("gridwatch-pipeline", "处理速率 Readings processed per second"),
    "dispatch": ("gridwatch-pipeline", "连接 Connections"),
    "cameras": ("gridwatch-cameras", "分析延迟趋势 Frame latency (capture -> analysed)"),
}
SERVICE_ZH = {"bridge": "MQTT 桥接", "streams": "流处理", "dispatch": "派遣服务", "cameras": "摄像头分析"}
SERVICE_COMMAND = {
    "bridge": "gridwatch bridge",
    "streams": "gridwatch streams worker",
    "dispatch": "gridwatch dispatch serve",
    "cameras": "gridwatch cameras worker",
}


def alert_rules(settings: DashboardSettings | None = None) -> list[AlertRule]:
    """The rules, in evaluation-group order."""
    a = (settings or DashboardSettings()).alerts
    cam_s = a.camera_down_minutes * 60
    rules = [
        AlertRule(
            uid="gridwatch-camera-down",
            title=f"摄像头离线 Camera down for {a.camera_down_minutes} min",
            component="cameras",
            severity="warning",
            nodes=(
                # fps is the reader's frame rate (a number; `up` is a boolean, which reduce cannot take):
                # its maximum over the window is 0 only if not one frame arrived in all that time
                Query(
                    "A",
                    'SELECT max("fps") FROM "camera_health" WHERE $timeFilter GROUP BY "camera_id"',
                    cam_s,
                ),
                Reduce("B", "A", "max"),
                Threshold("C", "B", "lt", 0.01),
            ),
            summary=(
                f"摄像头 {{{{ $labels.camera_id }}}} 已 {a.camera_down_minutes} 分钟无画面",
                f"Camera {{{{ $labels.camera_id }}}} has had no frame for {a.camera_down_minutes} min",
            ),
            description=(
                "该点位的视频分析已停止：拥堵、聚集、乱倒垃圾在此处不会被发现。",
                "The camera worker gets no frames from it: crowds, stopped vehicles and dumping there go unseen.",
            ),
            runbook="Check the camera's power and network and its RTSP URL and credentials (camera worker log: "
            "'no frame for'); the worker reconnects by itself once the stream is back.",
            dashboard="gridwatch-cameras",
            panel="在线时间线 Up / down",
        ),
        AlertRule(
            uid="gridwatch-sensors-silent-burst",
            title="多个传感器同时静默 Many sensors silent at once (gateway down?)",
            component="sensors",
            severity="critical",
            nodes=(
                Query(
                    "A",
                    'SELECT count("episode_start") FROM "rule_firing" WHERE "rule" = \'silence\' AND '
                    '"state" = \'raised\' AND $timeFilter GROUP BY "community"',
                    a.silent_window_minutes * 60,
                ),
                Reduce("B", "A", "last"),
                Threshold("C", "B", "gt", a.silent_sensors_at_once - 0.5),
            ),
            summary=(
                f"社区 {{{{ $labels.community }}}} {a.silent_window_minutes} 分钟内 {{{{ $values.B.Value }}}} 个传感器静默",
                f"{{{{ $values.B.Value }}}} sensors of community {{{{ $labels.community }}}} fell silent within "
                f"{a.silent_window_minutes} min",
            ),
            description=(
                "同一区域多个传感器同时失联，多为网关、基站或供电故障，而非单个设备。",
                "Several sensors of one area going silent together points at a gateway, base station or power "
                "cut, not at the sensors.",
            ),
            runbook="Check the community's LoRa/NB-IoT gateway and its uplink; the silent sensors are listed on "
            "the linked panel. One silent sensor is a maintenance ticket (the silence rule raises it).",
            dashboard="gridwatch-sensors",
            panel="静默中的传感器 Silent sensors",
        ),
        AlertRule(
            uid="gridwatch-district-overdue",
            title="事件升级至区级未结 Incidents overdue up to the district",
            component="dispatch",
            severity="critical",
            nodes=(
                # what the district holds: incidents that missed every deadline below it (team_workload is
                # written every KPI pass, 0 once the district's last one closes)
                Query(
                    "A",
                    'SELECT last("open") FROM "team_workload" WHERE "level" = \'district\' AND $timeFilter '
                    'GROUP BY "node"',
                    int(settings_fresh_s(settings)),
                ),
                Reduce("B", "A", "last"),
                Threshold("C", "B", "gt", 0),
            ),
            summary=(
                "{{ $values.B.Value }} 件事件已逐级升级至区级仍未办结",
                "{{ $values.B.Value }} incidents climbed grid -> community -> town -> district and are still open",
            ),
            description=(
                "网格、社区、街镇均已超时无人处置；区级是最后一级，不会再自动升级。",
                "Grid, community and town all let their deadlines pass; the district is the top of the ladder "
                "and nothing escalates further by itself.",
            ),
            runbook="Open the incidents on the wall map (red rings) and call the responsible district office; "
            "the district team was pushed `overdue_at_top` when its own deadline passed.",
            dashboard="gridwatch-wall",
            panel="在办事件分布 Open incidents (ring: level reached; dot: category, size: severity)",
        ),
        AlertRule(
            uid="gridwatch-consumer-lag",
            title="读数积压持续增长 Stream consumer lag growing",
            component="streams",
            severity="warning",
            nodes=(
                Query(
                    "A",
                    'SELECT sum("lag") FROM (SELECT last("consumer_lag") AS "lag" FROM "pipeline_health" '
                    'WHERE "component" = \'streams\' AND $timeFilter GROUP BY time(1m), "instance") '
                    "WHERE $timeFilter GROUP BY time(1m) fill(none)",
                    a.lag_window_minutes * 60,
                ),
                Reduce("LOW", "A", "min"),
                Reduce("NOW", "A", "last"),
                Reduce("AVG", "A", "mean"),
                # never below the threshold in the window, and now at or above the window's mean
                Math("C", f"$LOW > {a.lag_records} && $NOW >= $AVG"),
            ),
            summary=(
                f"读数积压 {{{{ $values.NOW.Value }}}} 条，{a.lag_window_minutes} 分钟内未回落",
                f"Readings lag {{{{ $values.NOW.Value }}}} records, not draining for {a.lag_window_minutes} min",
            ),
            description=(
                "流处理跟不上传感器上报：告警、静默检测与大屏数据都在延后。",
                "The stream workers fall behind the sensors: rule firings, silence detection and the screens lag.",
            ),
            runbook="Check the stream workers' CPU and InfluxDB write latency; add workers "
            "(docker compose up -d --scale streams=N, at most kafka.readings_partitions).",
            dashboard="gridwatch-pipeline",
            panel="积压 Consumer lag",
        ),
        AlertRule(
            uid="gridwatch-dead-letters",
            title="死信激增 Dead letters surging",
            component="pipeline",
            severity="warning",
            nodes=(
                Query("A", _increase("dead_letters"), a.dead_letters_window_minutes * 60),
                Reduce("B", "A", "last"),
                Threshold("C", "B", "gt", a.dead_letters_per_window),
            ),
            summary=(
                f"{{{{ $labels.component }}}} {a.dead_letters_window_minutes} 分钟内 {{{{ $values.B.Value }}}} 条死信",
                f"{{{{ $labels.component }}}}: {{{{ $values.B.Value }}}} dead letters in "
                f"{a.dead_letters_window_minutes} min",
            ),
            description=(
                "大量消息无法解析或无法路由，常见于设备固件升级或配置错误。",
                "Many messages are malformed or unroutable: a firmware rollout or a configuration error, usually.",
            ),
            runbook="See the reasons on the linked panel; read a few from the gridwatch.deadletter topic "
            "(rpk topic consume gridwatch.deadletter -n 5).",
            dashboard="gridwatch-pipeline",
            panel="原因 By reason",
        ),
        AlertRule(
            uid="gridwatch-influx-dropped",
            title="数据丢失 InfluxDB lines dropped",
            component="influxdb",
            severity="critical",
            nodes=(
                Query("A", _increase("influx_dropped_lines"), 600),
                Reduce("B", "A", "last"),
                Threshold("C", "B", "gt", 0),
            ),
            summary=(
                "{{ $labels.component }} 丢弃了 {{ $values.B.Value }} 行数据",
                "{{ $labels.component }} dropped {{ $values.B.Value }} lines",
            ),
            description=(
                "内存缓冲与磁盘溢写均已满，数据已丢失。",
                "Memory buffer and disk spill were both full: these points are lost.",
            ),
            runbook="InfluxDB has been unreachable or refusing writes for long: check it first, then the "
            "writers' spill directory (influx.spill_dir) and its size limit.",
            dashboard="gridwatch-pipeline",
            panel="丢弃行 Lines dropped",
        ),
        AlertRule(
            uid="gridwatch-influx-write-errors",
            title="写入错误 InfluxDB write errors",
            component="influxdb",
            severity="warning",
            for_="5m",
            nodes=(
                Query("A", _increase("influx_write_errors"), 600),
                Reduce("B", "A", "last"),
                Threshold("C", "B", "gt", 0),
            ),
            summary=(
                "{{ $labels.component }} 写入 InfluxDB 持续失败（{{ $values.B.Value }} 次/10 分钟）",
                "{{ $labels.component }} keeps failing to write to InfluxDB ({{ $values.B.Value }} in 10 min)",
            ),
            description=(
                "写入正在重试并溢写到磁盘；若持续，数据将被丢弃。",
                "Writes are retried and spilled to disk; if it goes on, lines will be dropped.",
            ),
            runbook="Check InfluxDB (docker compose ps influxdb, its disk, the token); the writers replay the "
            "spill once writes succeed.",
            dashboard="gridwatch-pipeline",
            panel="写入器 InfluxDB writer",
        ),
        AlertRule(
            uid="gridwatch-deliveries-failed",
            title="推送失败 Team pushes failing",
            component="dispatch",
            severity="critical",
            nodes=(
                Query("A", _increase("deliveries_failed", "\"component\" = 'dispatch'"), 900),
                Reduce("B", "A", "last"),
                Threshold("C", "B", "gt", 0),
            ),
            summary=(
                "{{ $values.B.Value }} 条派单推送最终失败",
                "{{ $values.B.Value }} pushes to teams were given up",
            ),
            description=(
                "网格员未收到派单：事件会因超时而升级。",
                "Teams did not receive their dispatches: those incidents will escalate on their deadlines.",
            ),
            runbook="GET /api/v1/deliveries?status=failed on the dispatch API names the channel and error "
            "(a DingTalk/WeCom token, an unreachable webhook); phone the team meanwhile.",
            dashboard="gridwatch-pipeline",
            panel="推送 Deliveries",
        ),
    ]
    hb_s = a.heartbeat_minutes * 60
    for comp in a.heartbeat_components:
        dash, panel = HEARTBEAT_PANEL[comp]
        rules.append(
            AlertRule(
                uid=f"gridwatch-heartbeat-{comp}",
                title=f"{SERVICE_ZH[comp]}无心跳 {comp} not reporting",
                component=comp,
                severity="critical",
                # no point at all is NoData, which fires (the query has no series to be missing)
                no_data="Alerting",
                for_="2m",
                nodes=(
                    Query(
                        "A",
                        f'SELECT count("{HEARTBEAT_FIELD[comp]}") FROM "pipeline_health" '
                        f"WHERE \"component\" = '{comp}' AND $timeFilter",
                        hb_s,
                    ),
                    Reduce("B", "A", "last"),
                    Threshold("C", "B", "lt", 1),
                ),
                summary=(
                    f"{SERVICE_ZH[comp]} {a.heartbeat_minutes} 分钟未上报健康数据",
                    f"{comp}: no health report for {a.heartbeat_minutes} min",
                ),
                description=(
                    "服务已停止、卡死或无法写入 InfluxDB。",
                    f"`{SERVICE_COMMAND[comp]}` is stopped, hung, or cannot write to InfluxDB.",
                ),
                runbook=f"docker compose ps {comp}; docker compose logs --tail 200 {comp} (the container's health "
                "check is the same heartbeat); if InfluxDB alerts too, start there.",
                dashboard=dash,
                panel=panel,
            )
        )
    return rules


def settings_fresh_s(settings: DashboardSettings | None) -> int:
    """The dashboards' freshness window in seconds (the "now" of the district rule)."""
    fresh = (settings or DashboardSettings()).fresh
    return int(fresh[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[fresh[-1]]


def _panel_ids(settings: DashboardSettings | None) -> dict[tuple[str, str], int]:
    return {(d.uid, p["title"]): p["id"] for d in build_dashboards(settings) for p in d.to_json()["panels"]}


def _rule_body(r: AlertRule, panels: dict[tuple[str, str], int]) -> dict[str, Any]:
    try:
        panel_id = panels[(r.dashboard, r.panel)]
    except KeyError:
        raise ValueError(f"alert {r.uid}: no panel {r.panel!r} on {r.dashboard}") from None
    return {
        "uid": r.uid,
        "title": r.title,
        "condition": r.condition_ref,
        "data": [n.data() for n in r.nodes],
        "noDataState": r.no_data,
        # a failing query (InfluxDB down, a refused query) raises Grafana's own DatasourceError alert
        "execErrState": "Error",
        "for": r.for_,
        "annotations": r.annotations(panel_id),
        "labels": r.labels(),
        "isPaused": False,
    }


def rules_file(settings: DashboardSettings | None = None) -> dict[str, Any]:
    """`provisioning/alerting/gridwatch-alerts.yaml`: one rule group in the alerts folder."""
    panels = _panel_ids(settings)
    rules = []
    for r in alert_rules(settings):
        body = _rule_body(r, panels)
        # the file format's own link fields (the API takes the annotations only)
        body = {
            **{k: body[k] for k in ("uid", "title", "condition", "data")},
            "dashboardUid": r.dashboard,
            "panelId": int(body["annotations"]["__panelId__"]),
            **{k: v for k, v in body.items() if k not in ("uid", "title", "condition", "data")},
        }
        rules.append(body)
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": RULE_GROUP,
                "folder": ALERTS_FOLDER.title,
                "interval": RULE_INTERVAL,
                "rules": rules,
            }
        ],
    }


def rule_payloads(settings: DashboardSettings | None = None) -> list[dict[str, Any]]:
    """The rules as `POST/PUT /api/v1/provisioning/alert-rules` bodies (folder and group included)."""
    panels = _panel_ids(settings)
    return [
        {**_rule_body(r, panels), "folderUID": ALERTS_FOLDER.uid, "ruleGroup": RULE_GROUP}
        for r in alert_rules(settings)
    ]


def notifications_file(settings: DashboardSettings | None = None) -> dict[str, Any]:
    """`provisioning/alerting/gridwatch-notifications.yaml`: the contact point and the policy tree."""
    kind = (settings or DashboardSettings()).alerts.contact_type
    return {
        "apiVersion": 1,
        "contactPoints": [
            {
                "orgId": 1,
                "name": CONTACT_POINT,
                "receivers": [
                    {
                        "uid": CONTACT_UID,
                        "type": kind,
                        # expanded by Grafana from its environment when it reads the file
                        "settings": {"url": "${GRAFANA_ALERT_WEBHOOK_URL}"}
                        | ({"httpMethod": "POST"} if kind == "webhook" else {}),
                        "disableResolveMessage": False,
                    }
                ],
            }
        ],
        # The whole tree of the organisation (file provisioning replaces it): everything goes to the
        # duty officers, one notification per component; critical ones are repeated sooner.
        "policies": [
            {
                "orgId": 1,
                "receiver": CONTACT_POINT,
                "group_by": ["component"],
                "group_wait": "30s",
                "group_interval": "5m",
                "repeat_interval": "4h",
                "routes": [
                    {
                        "receiver": CONTACT_POINT,
                        "object_matchers": [["severity", "=", "critical"]],
                        "group_by": ["component"],
                        "repeat_interval": "1h",
                    }
                ],
            }
        ],
    }
