"""Pushes: webhook formats, retries with backoff, every attempt recorded; Open311 reports.

DingTalk, WeCom and Feishu are cloud services that cannot run here: a local HTTP server stands in
for their robot endpoints (answering as they do: HTTP 200 with an error code in the body), so the
real httpx client, formats and retry loop are exercised. Everything else is real (ledger on SQLite).
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridwatch.clock import ManualClock
from gridwatch.config import PushConfig
from gridwatch.dispatch.api import build_api, hash_token
from gridwatch.dispatch.push import DeliveryWorker, format_webhook
from tests.dispatch_helpers import T0, candidate, demo_city, make_core


class RobotServer:
    """Answers like a chat robot: the first `fail` requests get an error code, then success."""

    def __init__(self, fmt: str, fail: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = fail
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                bad = len(outer.bodies) <= outer.fail
                if fmt == "feishu":
                    ans = {"code": 9499 if bad else 0, "msg": "too many requests" if bad else "success"}
                else:
                    ans = {"errcode": 130101 if bad else 0, "errmsg": "send too fast" if bad else "ok"}
                data = json.dumps(ans).encode()
                # a generic endpoint signals failure by status; robots by a code in a 200 body
                self.send_response(503 if (bad and fmt == "generic") else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/robot/send?access_token=SECRET-TOKEN-123"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.mark.parametrize("fmt", ["dingtalk", "wecom", "feishu", "generic"])
def test_webhook_formats_retries_and_attempt_log(fmt: str, tmp_path, caplog) -> None:
    robot = RobotServer(fmt, fail=2)
    os.environ["GW_TEST_ROBOT_URL"] = robot.url
    clock = ManualClock(T0)
    try:
        core = make_core(
            f"sqlite:///{tmp_path / 'l.db'}",
            clock,
            push={"webhooks": [{"name": "town-robot", "format": fmt, "url_env": "GW_TEST_ROBOT_URL"}],
                  "retry_min_s": 1, "retry_max_s": 4, "max_attempts": 5},
        )  # fmt: skip
        iid = core.handle_candidate(candidate("s1")).incident_id
        worker = DeliveryWorker(
            core.ledger, core.cfg.dispatch.push, "gridwatch", None, clock.now_ms, demo_city()
        )
        hook = lambda: [d for d in core.ledger.deliveries(iid) if d.channel == "webhook:town-robot"][0]  # noqa: E731
        for _ in range(3):
            worker.run_once()
            clock.advance(5)
        d = hook()
        assert d.status == "sent" and d.attempts == 3
        attempts = core.ledger.attempts(d.delivery_id)
        assert [a.ok for a in attempts] == [False, False, True]
        assert any(m in attempts[0].error for m in ("errcode 130101", "code 9499", "HTTP 503"))
        # the MQTT delivery has no broker here: it fails, is retried, and is recorded too
        mq = [x for x in core.ledger.deliveries(iid) if x.channel == "mqtt"][0]
        assert mq.status == "pending" and mq.attempts >= 1 and "no MQTT publisher" in mq.last_error
        body = robot.bodies[-1]
        if fmt == "dingtalk":
            assert body["msgtype"] == "markdown" and "烟感报警" in body["markdown"]["title"]
            assert "地图" in body["markdown"]["text"] and iid in body["markdown"]["text"]
        elif fmt == "wecom":
            assert body["msgtype"] == "markdown" and "责任单位" in body["markdown"]["content"]
        elif fmt == "feishu":
            assert body["msg_type"] == "interactive" and body["card"]["elements"][0]["tag"] == "markdown"
        else:
            assert body["incident_id"] == iid and body["event"] == "dispatched"
        assert "SECRET-TOKEN-123" not in caplog.text
        assert all("SECRET-TOKEN-123" not in (a.error or "") for a in attempts)
    finally:
        robot.close()


def test_delivery_gives_up_after_max_attempts_and_counts_it(tmp_path) -> None:
    robot = RobotServer("dingtalk", fail=100)
    os.environ["GW_TEST_ROBOT_URL"] = robot.url
    clock = ManualClock(T0)
    try:
        core = make_core(
            f"sqlite:///{tmp_path / 'l.db'}", clock,
            push={"webhooks": [{"name": "r", "format": "dingtalk", "url_env": "GW_TEST_ROBOT_URL"}],
                  "retry_min_s": 1, "retry_max_s": 2, "max_attempts": 3},
        )  # fmt: skip
        iid = core.handle_candidate(candidate("s1")).incident_id
        worker = DeliveryWorker(core.ledger, core.cfg.dispatch.push, "gridwatch", None, clock.now_ms)
        for _ in range(6):
            worker.run_once()
            clock.advance(3)
        d = [x for x in core.ledger.deliveries(iid) if x.channel == "webhook:r"][0]
        assert d.status == "failed" and d.attempts == 3
        assert worker.failed >= 1
    finally:
        robot.close()


def test_format_webhook_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown webhook format 'slack'"):
        format_webhook("slack", {}, None)


def test_open311_report_joins_the_same_loop(tmp_path) -> None:
    clock = ManualClock(T0)
    core = make_core(f"sqlite:///{tmp_path / 'l.db'}", clock)
    submitted = []

    async def submit(c) -> None:  # in the service this produces to Kafka; here straight to the core
        submitted.append(c)
        core.handle_candidate(c)

    token = "op-token-x"
    creds = [core.cfg.dispatch.credentials[0]] if core.cfg.dispatch.credentials else []
    from gridwatch.config import ApiCredential

    creds.append(ApiCredential(name="op", role="operator", token_sha256=hash_token(token)))
    client = TestClient(build_api(core, creds, submit))
    services = client.get("/open311/v2/services.json").json()
    assert {"service_code": "dumping"}.items() <= services[0].items()
    g = demo_city().grids()[3]
    p = g.geometry.representative_point()
    r = client.post("/open311/v2/requests.json", data={"service_code": "dumping", "lat": p.y, "long": p.x,
                                                       "description": "一堆建筑垃圾 construction waste"})  # fmt: skip
    assert r.status_code == 200, r.text
    rid = r.json()[0]["service_request_id"]
    assert submitted[0].grid_id == g.id and submitted[0].source_kind == "citizen"
    st = client.get(f"/open311/v2/requests/{rid}.json").json()[0]
    assert st["status"] == "open" and st["agency_responsible"] == g.id
    bad = client.post("/open311/v2/requests.json", data={"service_code": "ufo", "lat": 1, "long": 1})
    assert bad.status_code == 400 and "not offered" in bad.json()[0]["description"]
    assert client.get("/open311/v2/requests/nope.json").status_code == 404
    # the operator sees it in the incident list; without a token nobody does
    assert client.get("/api/v1/incidents").status_code == 401
    lst = client.get("/api/v1/incidents", headers={"Authorization": f"Bearer {token}"}).json()
    assert lst[0]["category"] == "illegal_dumping" and lst[0]["source_kind"] == "citizen"
    assert client.get("/openapi.json").json()["info"]["title"] == "gridwatch dispatch API"


def test_push_config_is_validated() -> None:
    with pytest.raises(ValueError):
        PushConfig(webhooks=[{"name": "x", "format": "slack", "url_env": "X"}])


def test_webhook_template_fills_placeholders_and_bad_keys_are_refused(tmp_path) -> None:
    core = make_core(f"sqlite:///{tmp_path / 'l.db'}")
    iid = core.handle_candidate(candidate("s1")).incident_id
    alert = [d for d in core.ledger.deliveries(iid) if d.channel == "mqtt"][0].payload
    body = format_webhook(
        "wecom", alert, demo_city(), "【{event_zh}】{category_zh} @ {node_name}: {summary} [签收]({ack_url})"
    )
    text = body["markdown"]["content"]
    assert text.startswith("【新派单】烟感报警 @ 第1网格") and f"/incidents/{iid}/acknowledge" in text
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) nmae"):
        PushConfig(webhooks=[{"name": "x", "format": "wecom", "url_env": "X", "template": "{nmae}"}])
