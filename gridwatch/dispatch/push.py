"""Pushes to teams: what is sent (pure), and the senders (MQTT, webhooks) with retries.

Every transition that concerns a team writes `deliveries` rows in the same ledger transaction
(`build_outbox` decides which); `DeliveryWorker` sends due rows, records every attempt, and
retries with capped, jittered exponential backoff until `push.max_attempts`, after which the
delivery is `failed` (visible in the ledger, counted in the health series).

Channels: MQTT `{prefix}/teams/{node_id}/alerts` (QoS 1, payload `team_alert` v1, see
docs/SCHEMAS.md), and webhooks in four formats: gridwatch JSON (`generic`) and the chat-robot
formats of DingTalk, WeCom (企业微信) and Feishu (飞书). A webhook URL carries the robot's token, so
it is read from the environment at send time and never logged or stored.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt

from gridwatch.city import CityModel
from gridwatch.config import MqttConfig, PushConfig, WebhookConfig, secret_from_env
from gridwatch.dispatch.ledger import Ledger, Outbox, OutboxItem
from gridwatch.dispatch.models import DeliveryRow, IncidentRow, TransitionRow
from gridwatch.schemas import AlertAction, EvidenceRef, Location, TeamAlert, VerifyRequest
from gridwatch.topics import team_alert_topic

log = logging.getLogger(__name__)

__all__ = ["DeliveryWorker", "MqttTeamLink", "build_outbox", "format_webhook", "render_text"]

TEAM_COMMANDS = ("acknowledge", "arrive", "resolve", "reject", "transfer", "false_alarm")

_CATEGORY_ZH = {
    "illegal_dumping": "乱倒垃圾",
    "gathering": "人员聚集",
    "road_blockage": "道路阻塞",
    "water_level": "水位异常",
    "smoke": "烟感报警",
    "air_quality": "空气质量",
    "noise": "噪声超标",
    "manhole_cover": "井盖异常",
    "bin_overflow": "垃圾桶满溢",
    "sensor_anomaly": "传感器异常",
    "sensor_offline": "传感器离线",
}
_EVENT_ZH = {
    "dispatched": "新派单",
    "escalated": "升级派单",
    "escalated_away": "已升级至上级",
    "transferred": "转派",
    "transferred_away": "已转出",
    "reopened": "核查未通过，重新派单",
    "severity_raised": "等级提升",
    "overdue_at_top": "区级超时",
    "merged": "已合并至其他事件",
}


def _event_for(tr: TransitionRow, node: str) -> str:
    kind = tr.kind
    if kind == "dispatch":
        return "dispatched"
    if kind == "escalate":
        if tr.to_node == tr.from_node:
            return "overdue_at_top"
        return "escalated" if node == tr.to_node else "escalated_away"
    if kind in ("transfer", "redispatch"):
        return "transferred" if node == tr.to_node else "transferred_away"
    if kind == "verify":
        return "reopened"
    if kind == "attach":
        return "severity_raised"
    if kind == "merge":
        return "merged"
    return "dispatched"  # dispatch, confirm (after review)


def build_outbox(push: PushConfig, verify_clear_s: float = 60.0) -> Outbox:
    """The `Outbox` the ledger calls: one MQTT alert per node, plus matching webhooks; and for a
    resolved camera incident, a verification request to the camera that saw it."""

    def outbox(
        row: IncidentRow,
        tr: TransitionRow,
        nodes: tuple[str, ...],
        evidence_refs: list[dict[str, Any]],
        sources: list[dict[str, Any]],
    ) -> list[OutboxItem]:
        items: list[OutboxItem] = []
        if tr.kind == "resolve":
            cam = next((x for x in sources if x["source_kind"] == "camera" and x.get("zone_id")), None)
            if cam is not None:
                req = VerifyRequest(
                    incident_id=row.incident_id,
                    camera_id=cam["source_id"],
                    zone_id=cam["zone_id"],
                    category=row.category,
                    clear_s=verify_clear_s,
                    timeout_s=verify_clear_s * 3,
                    requested_at=tr.at_ms,
                    resolution=tr.command_id,
                )
                items.append(
                    OutboxItem(
                        f"{tr.command_id}>{cam['source_id']}#verify",
                        cam["source_id"],
                        "camera-verify",
                        "verify_request",
                        req.model_dump(mode="json"),
                    )  # fmt: skip
                )
        evidence = [EvidenceRef(**e) for e in evidence_refs[:10]]
        loc = Location(lon=row.lon, lat=row.lat) if row.lon is not None and row.lat is not None else None
        for node in dict.fromkeys(nodes):
            event = _event_for(tr, node)
            base = push.public_url.rstrip("/")
            alert = TeamAlert(
                alert_id=f"{tr.command_id}>{node}",
                event=event,  # type: ignore[arg-type]
                incident_id=row.incident_id,
                node_id=node,
                responsible_node=row.node_id,
                level=row.level,
                state=row.state,
                category=row.category,
                severity=row.severity,
                summary=row.summary,
                platform=row.platform,
                location=loc,
                map_url=push.map_url.format(lon=row.lon, lat=row.lat) if loc else None,
                grid_id=row.grid_id,
                evidence=evidence,
                deadlines={k: int(v) for k, v in row.deadlines.items()},
                actions=[
                    AlertAction(command=c, url=f"{base}/api/v1/incidents/{row.incident_id}/{c}")
                    for c in TEAM_COMMANDS
                ],
                note=tr.note,
                sent_at=tr.at_ms,
            )
            payload = alert.model_dump(mode="json")
            items.append(OutboxItem(f"{alert.alert_id}#mqtt", node, "mqtt", event, payload))
            for hook in push.webhooks:
                if "*" in hook.nodes or node in hook.nodes:
                    items.append(
                        OutboxItem(
                            f"{alert.alert_id}#{hook.name}", node, f"webhook:{hook.name}", event, payload
                        )
                    )
        return items

    return outbox


def render_text(alert: dict[str, Any], city: CityModel | None = None) -> tuple[str, str]:
    """(title, markdown body) of an alert, in Chinese first, for chat robots."""
    cat = alert["category"]
    title = (
        f"【{_EVENT_ZH.get(alert['event'], alert['event'])}】{_CATEGORY_ZH.get(cat, cat)} {alert['severity']}"
    )
    node = alert["node_id"]
    if city is not None and node in city.nodes:
        node = f"{city.nodes[node].name_zh} ({node})"
    lines = [f"### {title}", f"- 事项: {alert['summary']}", f"- 责任单位: {node} / {alert['platform']}"]
    if alert.get("location"):
        loc = alert["location"]
        lines.append(f"- 位置: {loc['lat']:.5f}, {loc['lon']:.5f} [地图]({alert['map_url']})")
    for e in alert.get("evidence", [])[:3]:
        lines.append(f"- 证据: [{e['kind']}]({e['ref']})")
    if alert.get("note"):
        lines.append(f"- 说明: {alert['note']}")
    acts = " | ".join(f"[{a['command']}]({a['url']})" for a in alert["actions"][:3])
    lines.append(f"- 处置: {acts}")
    lines.append(f"- 事件编号: {alert['incident_id']}")
    return title, "\n".join(lines)


def template_values(alert: dict[str, Any], city: CityModel | None = None) -> dict[str, str]:
    """The placeholders a webhook `template` may use (config: WEBHOOK_TEMPLATE_KEYS)."""
    import datetime as dt

    loc = alert.get("location") or {}
    node = alert["node_id"]
    ack = alert.get("deadlines", {}).get("ack")
    actions = {a["command"]: a["url"] for a in alert.get("actions", [])}
    evidence = alert.get("evidence") or []
    return {
        "event": alert["event"],
        "event_zh": _EVENT_ZH.get(alert["event"], alert["event"]),
        "incident_id": alert["incident_id"],
        "category": alert["category"],
        "category_zh": _CATEGORY_ZH.get(alert["category"], alert["category"]),
        "severity": alert["severity"],
        "summary": alert["summary"],
        "node_id": node,
        "node_name": city.nodes[node].name_zh if city is not None and node in city.nodes else node,
        "level": alert["level"],
        "state": alert["state"],
        "platform": alert["platform"],
        "lat": f"{loc['lat']:.5f}" if loc else "",
        "lon": f"{loc['lon']:.5f}" if loc else "",
        "map_url": alert.get("map_url") or "",
        "evidence_url": evidence[0]["ref"] if evidence else "",
        "ack_url": actions.get("acknowledge", ""),
        "note": alert.get("note") or "",
        "deadline_ack": dt.datetime.fromtimestamp(ack / 1000, dt.UTC).isoformat() if ack else "",
    }


def format_webhook(
    fmt: str, alert: dict[str, Any], city: CityModel | None = None, template: str | None = None
) -> dict[str, Any]:
    """The request body for a webhook format (`template`: the configured markdown body, if any)."""
    if fmt not in ("generic", "dingtalk", "wecom", "feishu"):
        raise ValueError(f"unknown webhook format {fmt!r}")
    if fmt == "generic":
        return alert
    title, md = render_text(alert, city)
    if template is not None:
        md = template.format(**template_values(alert, city))
    if fmt == "dingtalk":
        return {"msgtype": "markdown", "markdown": {"title": title, "text": md}}
    if fmt == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": md}}
    if fmt == "feishu":
        return {
            "msg_type": "interactive",
            "card": {
                "header": {"title": {"tag": "plain_text", "content": title}},
                "elements": [{"tag": "markdown", "content": md}],
            },
        }
    raise ValueError(f"unknown webhook format {fmt!r}")


def _robot_error(fmt: str, body: Any) -> str | None:
    """Chat robots answer HTTP 200 with an error code in the body."""
    if not isinstance(body, dict):
        return None
    if fmt in ("dingtalk", "wecom") and body.get("errcode", 0) != 0:
        return f"errcode {body.get('errcode')}: {body.get('errmsg', '')}"
    if fmt == "feishu" and body.get("code", 0) != 0:
        return f"code {body.get('code')}: {body.get('msg', '')}"
    return None


class MqttTeamLink:
    """The dispatch service's MQTT connection: publishes alerts (waiting for PUBACK) and receives
    team feedback. A persistent session (clean_session off, fixed client id) makes the broker
    queue QoS 1 feedback while the service is away, so a restart loses no acknowledgement."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        *,
        username: str | None = None,
        password_env: str | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        subscriptions: tuple[str, ...] = (),
    ) -> None:
        self.cfg = cfg
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
        )
        user = username or cfg.username
        if user:
            secret = secret_from_env(password_env or cfg.password_env, what="dispatch.mqtt_password_env")
            self._client.username_pw_set(user, secret)
        self._client.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)), max(1, int(cfg.reconnect_max_s)))
        self._client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self._subs = subscriptions
        self._on_message = on_message
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._client.on_message = lambda c, u, m: (
            self._on_message(m.topic, m.payload) if self._on_message else None
        )
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self._client.loop_start()

    def _handle_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        if rc.is_failure:
            log.warning("dispatch MQTT connection refused: %s", rc)
            return
        for topic in self._subs:
            client.subscribe(topic, qos=1)
        self._connected.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes, qos: int, timeout_s: float = 5.0) -> None:
        if not self._connected.wait(timeout_s):
            raise ConnectionError(f"MQTT broker {self.cfg.host}:{self.cfg.port} not connected")
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK within {timeout_s} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class DeliveryWorker:
    """Sends due deliveries from the outbox and records every attempt."""

    def __init__(
        self,
        ledger: Ledger,
        push: PushConfig,
        topic_prefix: str,
        mqtt_publisher: MqttTeamLink | None,
        now_ms: Callable[[], int],
        city: CityModel | None = None,
        http: httpx.Client | None = None,
        verify_sender: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.verify_sender = verify_sender
        self.ledger = ledger
        self.push = push
        self.prefix = topic_prefix
        self.mqtt = mqtt_publisher
        self.now_ms = now_ms
        self.city = city
        self.http = http or httpx.Client(timeout=5.0)
        self._hooks: dict[str, WebhookConfig] = {h.name: h for h in push.webhooks}
        self.sent = 0
        self.failed_attempts = 0
        self.failed = 0

    def _backoff_ms(self, attempts: int) -> int:
        delay = min(self.push.retry_max_s, self.push.retry_min_s * (2 ** max(0, attempts - 1)))
        return int(delay * 1000 * random.uniform(0.8, 1.2))

    def send(self, d: DeliveryRow) -> None:
        if d.channel == "camera-verify":
            if self.verify_sender is None:
                raise ConnectionError("no Kafka producer for camera verification requests")
            self.verify_sender(d.payload)
            return
        if d.channel == "mqtt":
            if self.mqtt is None:
                raise ConnectionError("no MQTT publisher configured")
            self.mqtt.publish(
                team_alert_topic(self.prefix, d.node_id), orjson.dumps(d.payload), self.push.qos
            )
            return
        name = d.channel.removeprefix("webhook:")
        hook = self._hooks.get(name)
        if hook is None:
            raise LookupError(f"webhook {name!r} is no longer configured")
        url = secret_from_env(hook.url_env, what=f"dispatch.push.webhooks[{name}].url_env")
        try:
            r = self.http.post(url, json=format_webhook(hook.format, d.payload, self.city, hook.template))
        except httpx.HTTPError as e:
            # httpx puts the URL (and its token) in some messages: report the type only.
            raise ConnectionError(f"webhook {name}: {type(e).__name__}") from None
        if r.status_code >= 300:
            raise ConnectionError(f"webhook {name}: HTTP {r.status_code}")
        try:
            body = r.json()
        except ValueError:
            body = None
        err = _robot_error(hook.format, body)
        if err:
            raise ConnectionError(f"webhook {name}: {err}")

    def run_once(self, limit: int = 200) -> int:
        """Send what is due now; returns how many deliveries were attempted."""
        due = self.ledger.due_deliveries(self.now_ms(), limit)
        for d in due:
            t0 = time.perf_counter()
            try:
                self.send(d)
                ok, err = True, None
            except Exception as e:  # any failure is recorded and retried, never raised
                ok, err = False, f"{type(e).__name__}: {e}"
            now = self.now_ms()
            status = self.ledger.record_attempt(
                d.delivery_id,
                ok=ok,
                error=err,
                now_ms=now,
                duration_ms=(time.perf_counter() - t0) * 1000,
                retry_at=now + self._backoff_ms(d.attempts + 1),
                max_attempts=self.push.max_attempts,
            )
            if ok:
                self.sent += 1
            else:
                self.failed_attempts += 1
                log.warning(
                    "push %s to %s via %s failed (attempt %d): %s",
                    d.event,
                    d.node_id,
                    d.channel,
                    d.attempts + 1,
                    err,
                )
                if status == "failed":
                    self.failed += 1
        return len(due)
