"""The operator console (gridwatch/console): log-in, CSRF, who sees and does what, the audit trail,
live events, languages, the evidence guard and the review queue.

Everything runs on a SQLite ledger in tmp_path with a ManualClock (tests/dispatch_helpers.py);
the live-event test serves the console with uvicorn on a free port and reads the stream with httpx.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gridwatch.clock import ManualClock
from gridwatch.config import demo_config_path, load_config
from gridwatch.console import ConsoleUser, build_console_router, hash_password, verify_password
from gridwatch.console.demo import bulk_incidents, free_port, start_server
from gridwatch.console.feed import ChangeFeed
from gridwatch.console.i18n import LABELS
from gridwatch.dataset.hard_examples import HardExampleStore
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import Ledger
from gridwatch.dispatch.machine import Command, CommandKind
from gridwatch.dispatch.models import TransitionRow
from gridwatch.schemas import EvidenceRef
from tests.dispatch_helpers import T0, candidate, demo_city, grid_point, make_core

PW = "s3cret-pw"
STATIC = Path(__file__).resolve().parents[1] / "gridwatch" / "console" / "static"


@pytest.fixture(scope="module")
def pw_hash() -> str:
    return hash_password(PW)  # scrypt is slow on purpose: once per module


@pytest.fixture
def core(tmp_path: Path) -> Iterator[DispatchCore]:
    c = make_core(f"sqlite:///{tmp_path}/ledger.db")
    yield c
    c.ledger.close()


def users_for(core: DispatchCore, h: str) -> list[ConsoleUser]:
    g0 = core.city.grids()[0].id
    return [
        ConsoleUser(name="op", display_name="值班员 李娜", role="operator", password_hash=h),
        ConsoleUser(name="sup", display_name="督办 王强", role="supervisor", password_hash=h),
        ConsoleUser(name="team0", display_name="网格员 赵磊", role="team", node=g0, password_hash=h),
        ConsoleUser(name="view", display_name="Visitor", role="viewer", password_hash=h),
    ]


def make_app(core: DispatchCore, h: str, **kw: Any) -> tuple[FastAPI, Any]:
    app = FastAPI()
    router = build_console_router(core, users_for(core, h), timezone="Asia/Shanghai", **kw)
    app.include_router(router)
    return app, router


def login(client: TestClient | httpx.Client, name: str, password: str = PW) -> Any:
    client.get("/console/login")
    token = client.cookies.get("gw_login")
    return client.post(
        "/console/login",
        data={"name": name, "password": password, "login_token": token, "next": ""},
        follow_redirects=False,
    )


def csrf_of(client: TestClient, path: str = "/console/") -> str:
    html = client.get(path).text
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def incident(core: DispatchCore, source: str = "s-1", grid: int = 0, **kw: Any) -> str:
    return core.handle_candidate(candidate(source, grid=grid, **kw)).incident_id


# --- passwords and log-in ---------------------------------------------------------------------------


def test_password_hash_format_and_check() -> None:
    h = hash_password("pässwort")
    assert h.startswith("scrypt$16384$8$1$")
    assert verify_password("pässwort", h)
    assert not verify_password("passwort", h)
    assert not verify_password("x", "not-a-hash")
    assert hash_password("pässwort") != h  # fresh salt per hash


def test_login_ok_bad_password_and_logout(core: DispatchCore, pw_hash: str) -> None:
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    assert c.get("/console/", follow_redirects=False).headers["location"].startswith("/console/login")
    bad = login(c, "op", "wrong")
    assert bad.status_code == 401 and "用户名或密码错误" in bad.text
    assert login(c, "nobody", "wrong").status_code == 401
    assert "gw_session" not in c.cookies
    ok = login(c, "op")
    assert ok.status_code == 303 and ok.headers["location"] == "/console/"
    cookie = ok.headers["set-cookie"]
    assert "gw_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = c.get("/console/")
    assert page.status_code == 200 and "值班员 李娜" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Log-out needs the CSRF token too, and ends the session.
    assert c.post("/console/logout", data={}, follow_redirects=False).status_code == 403
    out = c.post("/console/logout", data={"csrf": csrf_of(c)}, follow_redirects=False)
    assert out.status_code == 303
    assert c.get("/console/api/incidents").status_code == 401


def test_login_form_needs_its_token_and_next_stays_local(core: DispatchCore, pw_hash: str) -> None:
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    r = c.post("/console/login", data={"name": "op", "password": PW}, follow_redirects=False)
    assert r.status_code == 403  # no double-submit token: a cross-site log-in form
    c.get("/console/login")
    r = c.post(
        "/console/login",
        data={
            "name": "op",
            "password": PW,
            "login_token": c.cookies.get("gw_login"),
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/"


def test_repeated_bad_passwords_lock_the_name(core: DispatchCore, pw_hash: str) -> None:
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    for _ in range(5):
        assert login(c, "sup", "nope").status_code == 401
    assert login(c, "sup").status_code == 429  # even the right password, for a minute
    assert login(c, "op").status_code == 303  # other users are not affected


# --- CSRF, authorisation, audit trail --------------------------------------------------------------


def test_csrf_refused_without_token(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    r = c.post(f"/console/incidents/{iid}/act", data={"command": "acknowledge"}, follow_redirects=False)
    assert r.status_code == 403
    r = c.post(f"/console/incidents/{iid}/act", data={"command": "acknowledge", "csrf": "forged"})
    assert r.status_code == 403
    r = c.post(f"/console/api/incidents/{iid}/act", json={"command": "acknowledge"})
    assert r.status_code == 403
    r = c.post("/console/lang", data={"lang": "en"}, follow_redirects=False)
    assert r.status_code == 403
    assert core.ledger.incident_row(iid).state == "dispatched"
    assert [t.kind for t in core.ledger.transitions(iid)] == ["dispatch"]


def test_team_sees_and_acts_only_on_its_own_incidents(core: DispatchCore, pw_hash: str) -> None:
    mine = incident(core, "s-mine", grid=0)
    other = incident(core, "s-other", grid=5)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "team0")
    rows = c.get("/console/api/incidents").json()
    assert [r["id"] for r in rows["rows"]] == [mine] and rows["total"] == 1
    assert [m[0] for m in c.get("/console/api/markers").json()["markers"]] == [mine]
    q = c.get("/console/api/review").json()  # review decisions are the centre's, not a team's
    assert q["rows"] == [] and not q["can_review"] and q["can_note"]
    assert c.get(f"/console/incidents/{other}").status_code == 403
    csrf = csrf_of(c, f"/console/incidents/{mine}")
    r = c.post(f"/console/incidents/{other}/act", data={"command": "acknowledge", "csrf": csrf})
    assert r.status_code == 403
    r = c.post(
        f"/console/api/incidents/{other}/act", json={"command": "acknowledge"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 403 and "not assigned" in r.json()["detail"]
    # ... nor escalate (not a team's action), but acknowledging its own works
    r = c.post(
        f"/console/api/incidents/{mine}/act", json={"command": "escalate"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 403
    r = c.post(
        f"/console/api/incidents/{mine}/act", json={"command": "acknowledge"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert core.ledger.incident_row(other).state == "dispatched"
    last = core.ledger.transitions(mine)[-1]
    assert (last.actor, last.by) == ("team", "team0")


def test_viewer_reads_but_may_not_act(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "view")
    page = c.get(f"/console/incidents/{iid}")
    assert page.status_code == 200 and 'name="command"' not in page.text
    r = c.post(f"/console/incidents/{iid}/act", data={"command": "acknowledge", "csrf": csrf_of(c)})
    assert r.status_code == 403


def test_operator_action_lands_in_the_audit_trail_with_the_user(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)
    node = core.ledger.incident_row(iid).node_id
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    page = c.get(f"/console/incidents/{iid}")
    # the role's actions for this state: the operator acts for the team, escalates, re-dispatches
    offered = re.findall(r'name="command" value="(\w+)"', page.text)
    assert {"acknowledge", "escalate", "redispatch", "false_alarm"} <= set(offered)
    assert "verify" not in offered  # not while dispatched
    cmd_id = re.search(r'name="command_id" value="([^"]+)"', page.text).group(1)
    form = {"command": "acknowledge", "csrf": csrf_of(c), "command_id": cmd_id}
    r = c.post(f"/console/incidents/{iid}/act", data=form)
    assert r.status_code == 200 and "已执行：签收" in r.text
    again = c.post(f"/console/incidents/{iid}/act", data=form)  # a double submit
    assert "该操作已执行过" in again.text
    trail = core.ledger.transitions(iid)
    assert [t.kind for t in trail] == ["dispatch", "acknowledge"]
    ack = trail[-1]
    assert (ack.actor, ack.by, ack.to_state) == ("team", "op", "acknowledged")
    assert ack.params == {"via": "console", "on_behalf_of": node}
    assert re.search(r"<td class='by'>op</td>", c.get(f"/console/incidents/{iid}").text)

    # resolve for the team, then the supervisor verifies: not fixed -> reopened, then fixed -> closed
    c.post(
        f"/console/incidents/{iid}/act", data={"command": "resolve", "note": "清理完毕", "csrf": csrf_of(c)}
    )
    s = TestClient(app)
    login(s, "sup")
    assert "verify" in re.findall(r'name="command" value="(\w+)"', s.get(f"/console/incidents/{iid}").text)
    s.post(f"/console/incidents/{iid}/act", data={"command": "verify", "ok": "0", "csrf": csrf_of(s)})
    assert core.ledger.incident_row(iid).state == "dispatched"
    c.post(f"/console/incidents/{iid}/act", data={"command": "resolve", "csrf": csrf_of(c)})
    s.post(f"/console/incidents/{iid}/act", data={"command": "verify", "ok": "1", "csrf": csrf_of(s)})
    trail = core.ledger.transitions(iid)
    assert core.ledger.incident_row(iid).state == "closed"
    assert [(t.kind, t.by) for t in trail[-2:]] == [("resolve", "op"), ("verify", "sup")]
    # an illegal command is refused with the machine's reason, and changes nothing
    r = c.post(f"/console/incidents/{iid}/act", data={"command": "escalate", "csrf": csrf_of(c)})
    assert "无法执行" in r.text and len(core.ledger.transitions(iid)) == len(trail)


def test_escalate_and_redispatch_by_hand(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)
    row = core.ledger.incident_row(iid)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    h = {"X-CSRF-Token": csrf_of(c)}
    r = c.post(f"/console/api/incidents/{iid}/act", json={"command": "escalate", "reason": "重大"}, headers=h)
    assert r.status_code == 200
    up = core.ledger.incident_row(iid)
    assert up.level == "community" and up.node_id == core.city.node(row.node_id).parent
    r = c.post(
        f"/console/api/incidents/{iid}/act", json={"command": "redispatch", "to_node": "nope"}, headers=h
    )
    assert r.status_code == 422
    target = core.city.grids()[3].id
    r = c.post(
        f"/console/api/incidents/{iid}/act", json={"command": "redispatch", "to_node": target}, headers=h
    )
    assert r.status_code == 200 and core.ledger.incident_row(iid).node_id == target
    kinds = [(t.kind, t.actor, t.by) for t in core.ledger.transitions(iid)]
    assert kinds[-2:] == [("escalate", "operator", "op"), ("redispatch", "operator", "op")]


# --- review queue ---------------------------------------------------------------------------------


@pytest.fixture
def review_core(tmp_path: Path) -> Iterator[DispatchCore]:
    """Every trigger line says `review: always`: sensor and camera candidates wait for an operator."""
    from tests.dispatch_helpers import demo_config

    triggers = [
        {**t.model_dump(mode="json"), "review": "always"} for t in demo_config(None).dispatch.triggers
    ]
    c = make_core(
        f"sqlite:///{tmp_path}/ledger.db", triggers=triggers, hard_examples_dir=str(tmp_path / "hard")
    )
    yield c
    c.ledger.close()


def test_review_queue_is_fifo_and_confirm_dispatches(review_core: DispatchCore, pw_hash: str) -> None:
    core = review_core
    a = incident(core, "cam-1", grid=1, kind="camera")
    core.clock.advance(5)  # type: ignore[attr-defined]
    b = incident(core, "s-2", grid=2)
    assert core.ledger.incident_row(a).state == "pending_review"
    assert core.ledger.deliveries(a) == []  # nobody told yet
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    q = c.get("/console/api/review").json()
    assert [r["id"] for r in q["rows"]] == [a, b] and q["total"] == 2  # oldest first
    assert q["can_review"] and q["can_note"]
    src = q["rows"][0]["source_list"][0]
    assert (src["kind"], src["confidence"]) == ("camera", 1.0)
    # the detail page offers the review decisions (and a note) while pending
    offered = re.findall(r'name="command" value="(\w+)"', c.get(f"/console/incidents/{a}").text)
    assert {"confirm", "recategorise", "merge", "false_alarm", "note"} <= set(offered)
    assert "acknowledge" not in offered and "escalate" not in offered
    h = {"X-CSRF-Token": csrf_of(c)}
    r = c.post(f"/console/api/incidents/{a}/act", json={"command": "confirm"}, headers=h)
    assert r.status_code == 200 and r.json()["state"] == "dispatched"
    row = core.ledger.incident_row(a)
    assert row.next_due_at is not None and row.chain == [row.node_id]
    conf = core.ledger.transitions(a)[-1]
    assert (conf.kind, conf.actor, conf.by, conf.to_state) == ("confirm", "operator", "op", "dispatched")
    assert [d.node_id for d in core.ledger.deliveries(a) if d.event == "dispatched"]  # the team's push
    assert [r["id"] for r in c.get("/console/api/review").json()["rows"]] == [b]
    # confirming twice is refused by the state machine (409), and changes nothing
    r = c.post(f"/console/api/incidents/{a}/act", json={"command": "confirm"}, headers=h)
    assert r.status_code == 409
    # viewers see the queue but may not decide; teams may not confirm
    v = TestClient(app)
    login(v, "view")
    q = v.get("/console/api/review").json()
    assert [r["id"] for r in q["rows"]] == [b] and not q["can_review"] and not q["can_note"]
    t = TestClient(app)
    login(t, "team0")
    r = t.post(f"/console/api/incidents/{b}/act", json={"command": "confirm"},
               headers={"X-CSRF-Token": csrf_of(t)})  # fmt: skip
    assert r.status_code == 403


def test_review_dismiss_recategorise_merge_and_note(
    review_core: DispatchCore, pw_hash: str, tmp_path: Path
) -> None:
    core = review_core
    cam = incident(core, "cam-9", grid=1, kind="camera", category="illegal_dumping")
    other = incident(core, "s-3", grid=3, category="water_level")
    dup = incident(core, "s-4", grid=4, category="smoke")
    target = incident(core, "s-5", grid=4, category="smoke", offset_m=300)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    h = {"X-CSRF-Token": csrf_of(c)}
    act = lambda iid, **body: c.post(f"/console/api/incidents/{iid}/act", json=body, headers=h)  # noqa: E731
    # dismiss (false alarm while pending review): the operator's own decision, reason required
    assert act(cam, command="false_alarm").status_code == 409
    r = act(cam, command="false_alarm", reason="阴影")
    assert r.status_code == 200 and r.json()["state"] == "false_alarm"
    fa = core.ledger.transitions(cam)[-1]
    assert (fa.kind, fa.actor, fa.by, fa.note) == ("false_alarm", "operator", "op", "阴影")
    assert "on_behalf_of" not in fa.params
    store = HardExampleStore(tmp_path / "hard")  # the camera's candidate is a hard example now
    assert [(x.data["incident_id"], x.verdict) for x in store] == [(cam, "false_alarm")]
    # recategorise: re-routed by the trigger list, still pending
    assert act(other, command="recategorise", category="nonsense").status_code == 422
    r = act(other, command="recategorise", category="noise")
    assert r.status_code == 200 and r.json()["state"] == "pending_review"
    assert core.ledger.incident_row(other).category == "noise"
    # merge: suggestions are the nearest open incidents of the same category
    near = c.get(f"/console/api/incidents/{dup}/nearby").json()["rows"]
    assert near[0]["id"] == target and 250 < near[0]["dist_m"] < 350
    assert act(dup, command="merge", into="inc-nope").status_code == 422
    r = act(dup, command="merge", into=target)
    assert r.status_code == 200 and r.json()["state"] == "merged"
    assert core.ledger.incident_row(target).source_count == 2
    q = c.get("/console/api/review").json()
    assert [r["id"] for r in q["rows"]] == [other, target]
    assert q["rows"][1]["merged_in"][0]["from"] == dup
    # a note changes nothing but the audit trail
    r = act(target, command="note", note="已电话联系")
    assert r.status_code == 200 and r.json()["state"] == "pending_review"
    n = core.ledger.transitions(target)[-1]
    assert (n.kind, n.actor, n.by, n.note, n.from_state, n.to_state) == (
        "note", "operator", "op", "已电话联系", "pending_review", "pending_review",
    )  # fmt: skip
    # the board and the detail page know the new states in both languages
    page = c.get(f"/console/incidents/{dup}").text
    assert "已合并" in page and "合并" in page
    states = c.get("/console/api/incidents", params={"state": "merged"}).json()["rows"]
    assert [r["id"] for r in states] == [dup]


def test_team_may_note_its_own_incident(core: DispatchCore, pw_hash: str) -> None:
    mine = incident(core, "s-mine", grid=0)
    other = incident(core, "s-other", grid=5)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "team0")
    offered = re.findall(r'name="command" value="(\w+)"', c.get(f"/console/incidents/{mine}").text)
    assert "note" in offered and "confirm" not in offered
    csrf = csrf_of(c, f"/console/incidents/{mine}")
    r = c.post(f"/console/incidents/{mine}/act", data={"command": "note", "note": "路口东侧", "csrf": csrf})
    assert r.status_code == 200 and "已执行：备注" in r.text
    n = core.ledger.transitions(mine)[-1]
    assert (n.kind, n.actor, n.by, n.note) == ("note", "team", "team0", "路口东侧")
    r = c.post(
        f"/console/api/incidents/{other}/act", json={"command": "note", "note": "x"},
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert r.status_code == 403
    assert [t.kind for t in core.ledger.transitions(other)] == ["dispatch"]


# --- a miss by a camera ----------------------------------------------------------------------------


def cam_feed(cam: str, grid: int, where: tuple[float, float] | None, label: str) -> dict[str, Any]:
    gid = grid_point(grid)[0]
    return {
        "source": {"id": cam, "url": "rtsp://127.0.0.1:9/none", "analysed_fps": 2, "stall_timeout_s": 4},
        "location": {"lon": where[0], "lat": where[1]} if where else None,
        "rules": {
            "camera": {
                "camera_id": cam, "frame_size": [768, 576],
                "zones": [{"kind": "gathering", "id": "z1", "label": label, "grid_id": gid, "max_people": 50,
                           "dwell_s": 4, "polygon": [[0, 200], [768, 200], [768, 576], [0, 576]]}],
            },
            "tracker": {"fps": 2},
        },
    }  # fmt: skip


@pytest.fixture
def camera_core(tmp_path: Path) -> Iterator[DispatchCore]:
    """Three cameras, in config order: one far from grid 0, one with no location, one ~60 m from
    grid 0's point; misses become hard examples under tmp_path/hx."""
    _, lon0, lat0 = grid_point(0)
    _, lon5, lat5 = grid_point(5)
    feeds = [
        cam_feed("cam-0905", 5, (lon5, lat5), "北门广场"),
        cam_feed("cam-0907", 7, None, "停车场入口"),
        cam_feed("cam-0900", 0, (lon0, lat0 + 60 / 111_195.0), "东门垃圾站"),
    ]
    cfg = load_config(
        demo_config_path(),
        overrides={
            "dispatch": {"ledger_url": f"sqlite:///{tmp_path}/cam-ledger.db", "hard_examples_dir": str(tmp_path / "hx")},
            "cameras": {"feeds": feeds},
        },
    )  # fmt: skip
    ledger = Ledger(cfg.dispatch.ledger_url)
    ledger.migrate()
    c = DispatchCore(cfg, demo_city(), ledger, ManualClock(T0))
    c.load()
    yield c
    ledger.close()


def offered(html: str) -> list[str]:
    return re.findall(r'name="command" value="(\w+)"', html)


def test_detail_offers_missed_to_an_operator_with_the_cameras_nearest_first(
    camera_core: DispatchCore, core: DispatchCore, pw_hash: str
) -> None:
    iid = incident(camera_core, "s-1", grid=0)
    app, _ = make_app(camera_core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    html = c.get(f"/console/incidents/{iid}").text
    assert "missed" in offered(html) and 'id="missed-dialog"' in html and 'id="missed-open"' in html
    assert ">漏检</button>" in html and "报告摄像头漏检" in html
    # the time defaults to the incident's creation, as a wall-clock time of the centre (10:00 Shanghai)
    assert 'id="missed-at" step="1" required value="2026-11-24T10:00:00"' in html
    cfg = json.loads(re.search(r'id="gw-config">(.*?)</script>', html).group(1))
    assert cfg["created_at"] == T0 and cfg["labels"]["missed_dist"] == "距事件 {m} 米"
    # the cameras: the nearest first, then the farther, then the one with no location
    cams = c.get(f"/console/api/incidents/{iid}/cameras").json()
    assert [r["id"] for r in cams["rows"]] == ["cam-0900", "cam-0905", "cam-0907"]
    near, far, nowhere = cams["rows"]
    assert 50 <= near["dist_m"] <= 70 < far["dist_m"] and nowhere["dist_m"] is None
    assert near["zones"] == ["东门垃圾站"] and near["grids"] == [grid_point(0)[0]]
    assert cams["created_at"] == T0
    # a team member (and a viewer) is not offered it, gets no dialog and no camera list
    for name in ("team0", "view"):
        o = TestClient(app)
        login(o, name)
        page = o.get(f"/console/incidents/{iid}").text
        assert "missed" not in offered(page) and "missed-dialog" not in page, name
        assert o.get(f"/console/api/incidents/{iid}/cameras").status_code == 403, name
    # the English page has its labels
    r = c.post("/console/lang", data={"lang": "en", "csrf": csrf_of(c), "back": f"/console/incidents/{iid}"})
    assert ">Missed by a camera</button>" in r.text and "Report a miss by a camera" in r.text
    # with no camera configured there is nothing to report (the API refuses any camera)
    plain = incident(core, "s-1", grid=0)
    p = TestClient(make_app(core, pw_hash)[0])
    login(p, "op")
    assert "missed" not in offered(p.get(f"/console/incidents/{plain}").text)


def test_missed_from_the_console_is_audited_and_becomes_a_hard_example(
    camera_core: DispatchCore, pw_hash: str, tmp_path: Path
) -> None:
    core = camera_core
    iid = incident(core, "s-1", grid=0)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    h = {"X-CSRF-Token": csrf_of(c)}
    act = lambda iid, **body: c.post(f"/console/api/incidents/{iid}/act", json=body, headers=h)  # noqa: E731
    at = T0 - 60_000
    r = act(
        iid,
        command="missed",
        command_id="console-m1",
        camera_id="cam-0900",
        at_ms=at,
        note="白色面包车倒垃圾",
    )
    assert r.status_code == 200 and r.json() == {
        "ok": True, "command": "missed", "duplicate": False, "state": "dispatched",
    }  # fmt: skip
    tr = core.ledger.transitions(iid)[-1]
    assert (tr.kind, tr.actor, tr.by, tr.from_state, tr.to_state) == (
        "missed", "operator", "op", "dispatched", "dispatched",
    )  # fmt: skip
    assert tr.params == {"via": "console", "camera_id": "cam-0900", "at_ms": at, "note": "白色面包车倒垃圾"}
    store = HardExampleStore(tmp_path / "hx")
    [ex] = list(store)
    assert (ex.verdict, ex.data["camera_id"], ex.data["observed_at"], ex.data["verdict"]["by"]) == (
        "missed", "cam-0900", at, "op",
    )  # fmt: skip
    assert [(q.example_id, q.at_ms) for q in store.frame_requests(["cam-0900"])] == [
        (ex.path.parent.name, at)
    ]
    # the trail shows the translated audit line
    page = c.get(f"/console/incidents/{iid}").text
    assert "<td>漏检</td>" in page
    assert "摄像头 cam-0900 于 2026-11-24T01:59:00.000Z 漏检: 白色面包车倒垃圾" in page
    # the API's refusals come back as 422 with its reason, and nothing is audited
    n = len(core.ledger.transitions(iid))
    for body, why in (
        ({"camera_id": "cam-nope", "at_ms": T0}, "is not a camera of this config"),
        ({"camera_id": "cam-0900", "at_ms": T0 + 3_600_000}, "3600 s in the future"),
        ({"camera_id": "cam-0900", "at_ms": T0 - 8 * 86_400_000}, "8.0 days ago"),
        ({"camera_id": "cam-0900", "at_ms": "yesterday"}, "at_ms must be epoch milliseconds"),
        ({"at_ms": T0}, "params.camera_id"),
    ):
        r = act(iid, command="missed", **body)
        assert r.status_code == 422 and why in r.json()["detail"], (body, r.text)
    # ... and the form route (no script) flashes it
    r = c.post(
        f"/console/incidents/{iid}/act",
        data={"command": "missed", "camera_id": "cam-nope", "at_ms": str(T0), "csrf": h["X-CSRF-Token"]},
    )
    assert "无法执行" in r.text and "is not a camera of this config" in r.text
    assert len(core.ledger.transitions(iid)) == n
    # a team may not report a miss
    t = TestClient(app)
    login(t, "team0")
    r = t.post(
        f"/console/api/incidents/{iid}/act", json={"command": "missed", "camera_id": "cam-0900", "at_ms": T0},
        headers={"X-CSRF-Token": csrf_of(t)},
    )  # fmt: skip
    assert r.status_code == 403
    # a merged incident: not offered, refused (the miss belongs to the incident it merged into)
    other = incident(core, "s-2", grid=5)
    assert act(other, command="merge", into=iid).status_code == 200
    assert "missed" not in offered(c.get(f"/console/incidents/{other}").text)
    r = act(other, command="missed", camera_id="cam-0900", at_ms=T0)
    assert r.status_code == 409 and "report the miss on the incident it merged into" in r.json()["detail"]
    # the incident it merged into still offers it
    assert "missed" in offered(c.get(f"/console/incidents/{iid}").text)
    assert len(list(store)) == 1


# --- languages ---------------------------------------------------------------------------------------


def test_language_switch_changes_labels(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    zh = c.get("/console/").text
    assert "事件看板" in zh and "Incident board" not in zh and '<html lang="zh-CN">' in zh
    r = c.post("/console/lang", data={"lang": "en", "csrf": csrf_of(c), "back": f"/console/incidents/{iid}"})
    assert r.url.path == f"/console/incidents/{iid}"
    assert "Audit trail" in r.text and "处置轨迹" not in r.text
    en = c.get("/console/").text
    assert "Incident board" in en and "事件看板" not in en
    cfg = json.loads(re.search(r'id="gw-config">(.*?)</script>', en).group(1))
    assert (
        cfg["lang"] == "en" and cfg["labels"]["state_on_site"] == "On site" and cfg["tz"] == "Asia/Shanghai"
    )
    # the choice is kept for the next log-in in this browser (cookie) ...
    c.post("/console/logout", data={"csrf": csrf_of(c)})
    assert "Log in" in c.get("/console/login").text
    login(c, "op")
    assert "Incident board" in c.get("/console/").text
    # ... and a fresh browser starts in Chinese
    d = TestClient(app)
    login(d, "op")
    assert "事件看板" in d.get("/console/").text


def test_links_to_grafana_drilldown_and_wall(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)
    row = core.ledger.incident_row(iid)
    c = TestClient(make_app(core, pw_hash)[0])
    login(c, "op")
    assert "/d/gridwatch-" not in c.get(f"/console/incidents/{iid}").text  # no Grafana configured: no links
    c = TestClient(make_app(core, pw_hash, grafana_url="https://grafana.city.example/")[0])
    login(c, "op")
    html = c.get(f"/console/incidents/{iid}").text
    want = (
        f"https://grafana.city.example/d/gridwatch-drilldown/?var-town={row.town_id}"
        f"&amp;var-community={row.community_id}&amp;var-grid={row.grid_id}"
    )
    assert want in html and "在 Grafana 中查看该网格" in html
    assert 'href="https://grafana.city.example/d/gridwatch-wall?kiosk"' in c.get("/console/").text


def test_times_are_shown_in_the_centre_time_zone(core: DispatchCore, pw_hash: str) -> None:
    iid = incident(core)  # created at T0 = 2026-11-24 10:00 Asia/Shanghai (02:00 UTC)
    app, _ = make_app(core, pw_hash)
    c = TestClient(app)
    login(c, "op")
    assert "2026-11-24 10:00:00" in c.get(f"/console/incidents/{iid}").text


def test_every_label_in_both_languages_and_no_text_in_scripts() -> None:
    for key, pair in LABELS.items():
        assert len(pair) == 2 and all(p.strip() for p in pair), key
        # the same placeholders (word order may differ between the languages)
        assert sorted(re.findall(r"{(\w+)}", pair[0])) == sorted(re.findall(r"{(\w+)}", pair[1])), key
    # Scripts take every label from the page's table: no Chinese text of their own.
    for js in STATIC.glob("*.js"):
        assert not re.search(r"[\u4e00-\u9fff]", js.read_text(encoding="utf-8")), js.name


# --- evidence ----------------------------------------------------------------------------------------


def test_evidence_route_serves_only_images_under_the_evidence_dir(
    core: DispatchCore, pw_hash: str, tmp_path: Path
) -> None:
    ev_dir = tmp_path / "evidence"
    (ev_dir / "cam-1").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    (ev_dir / "cam-1" / "ok.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(b"secret")
    (ev_dir / "cam-1" / "link.png").symlink_to(tmp_path / "secret.png")
    (ev_dir / "cam-1" / "notes.txt").write_text("hi")
    refs = [
        (ev_dir / "cam-1" / "ok.png").as_uri(),  # 0: fine
        "file:///etc/passwd",  # 1: outside
        f"file://{ev_dir}/cam-1/../../secret.png",  # 2: climbs out
        (ev_dir / "cam-1" / "link.png").as_uri(),  # 3: symlink out
        (ev_dir / "cam-1" / "notes.txt").as_uri(),  # 4: not an image
        "file://otherhost/x.png",  # 5: not local
        "https://cam.example/snap.jpg",  # 6: shown directly, never proxied
    ]
    cand = candidate("cam-1", kind="camera").model_copy(
        update={"evidence": [EvidenceRef(kind="snapshot", ref=r) for r in refs]}
    )
    iid = core.handle_candidate(cand).incident_id
    cid = cand.candidate_id
    app, _ = make_app(core, pw_hash, evidence_dir=ev_dir)
    c = TestClient(app)
    assert c.get(f"/console/incidents/{iid}/evidence/{cid}/0").status_code == 401
    login(c, "op")
    ok = c.get(f"/console/incidents/{iid}/evidence/{cid}/0")
    assert ok.status_code == 200 and ok.content == png and ok.headers["content-type"] == "image/png"
    assert [c.get(f"/console/incidents/{iid}/evidence/{cid}/{n}").status_code for n in range(1, 8)] == [
        403, 403, 403, 403, 404, 404, 404,
    ]  # fmt: skip
    page = c.get(f"/console/incidents/{iid}").text
    assert f'src="/console/incidents/{iid}/evidence/{cid}/0"' in page
    assert 'src="https://cam.example/snap.jpg"' in page
    # another team may not fetch this incident's evidence
    t = TestClient(make_app(core, pw_hash, evidence_dir=ev_dir)[0])
    other_grid_incident = incident(core, "s-far", grid=9)
    login(t, "team0")
    assert t.get(f"/console/incidents/{iid}/evidence/{cid}/0").status_code == 200  # grid 0: its own
    assert t.get(f"/console/incidents/{other_grid_incident}").status_code == 403
    # without an evidence directory nothing local is served
    n = TestClient(make_app(core, pw_hash)[0])
    login(n, "op")
    assert n.get(f"/console/incidents/{iid}/evidence/{cid}/0").status_code == 404


# --- the change feed ---------------------------------------------------------------------------------


def test_feed_delivers_a_late_commit_with_a_lower_seq(core: DispatchCore) -> None:
    # PostgreSQL may commit seq n+1 before seq n: the gap is remembered and filled later.
    import asyncio

    iid = incident(core)
    feed = ChangeFeed(core.ledger)
    feed.last_seq = max(t.seq for t in core.ledger.transitions(iid))
    base = feed.last_seq

    def add(seq: int) -> None:
        with core.ledger.session() as s:
            s.add(TransitionRow(seq=seq, incident_id=iid, command_id=f"late-{seq}", kind="escalate",
                                actor="system", by="test", from_state="dispatched", to_state="dispatched",
                                from_node="x", to_node="x", level="grid", at_ms=0, note="", changed=False,
                                version=1, params={}))  # fmt: skip

    add(base + 2)
    assert [e["seq"] for e in feed._poll()] == [base + 2]
    assert feed._poll() == []
    add(base + 1)  # the late commit
    got = feed._poll()
    assert [e["seq"] for e in got] == [base + 1] and got[0]["incident"]["id"] == iid
    assert feed._poll() == []
    asyncio.run(asyncio.sleep(0))


def _sse_reader(
    client: httpx.Client, headers: dict[str, str], out: queue.Queue[Any], stop: threading.Event
) -> None:
    with client.stream("GET", "/console/events", headers=headers, timeout=httpx.Timeout(10, read=30)) as r:
        out.put(("status", r.status_code, time.monotonic()))
        event, data = "message", ""
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":
                if data:
                    out.put((event, json.loads(data), time.monotonic()))
                event, data = "message", ""


def _next(out: queue.Queue[Any], kind: str, timeout: float = 5.0) -> tuple[Any, float]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ev = out.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            break
        if ev[0] == kind:
            return ev[1], ev[2]
    raise AssertionError(f"no {kind!r} event within {timeout} s")


def test_sse_delivers_a_change_within_2s_with_10000_open_incidents(
    core: DispatchCore, pw_hash: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bulk_ids = bulk_incidents(core, 10_000)
    iid = incident(core, "s-live", grid=0)
    app, router = make_app(core, pw_hash)
    port = free_port()
    server, th = start_server(app, port)
    stop = threading.Event()
    clients: list[httpx.Client] = []
    try:
        base = f"http://127.0.0.1:{port}"
        op = httpx.Client(base_url=base)
        team = httpx.Client(base_url=base)
        clients += [op, team]
        assert login(op, "op").status_code == 303
        assert login(team, "team0").status_code == 303

        # the board pages through 10,000 incidents; nothing sends the whole list
        t0 = time.monotonic()
        page = op.get("/console/api/incidents", params={"limit": 100, "offset": 9_900}).json()
        assert page["total"] == 10_001 and len(page["rows"]) == 100
        assert time.monotonic() - t0 < 1.0

        out: queue.Queue[Any] = queue.Queue()
        tout: queue.Queue[Any] = queue.Queue()
        for cl, q in ((op, out), (team, tout)):
            threading.Thread(target=_sse_reader, args=(cl, {}, q, stop), daemon=True).start()
        _next(out, "hello")
        _next(tout, "hello")

        latencies = []
        for i, kind in enumerate((CommandKind.ACKNOWLEDGE, CommandKind.ARRIVE, CommandKind.RESOLVE)):
            node = core.ledger.incident_row(iid).node_id
            t_cmd = time.monotonic()
            core.command(iid, Command(f"live-{i}", kind, "team", "王婷", node))
            ev, t_seen = _next(out, "change", 2.0)
            latencies.append(t_seen - t_cmd)
            assert ev["incident_id"] == iid and ev["kind"] == kind.value and ev["by"] == "王婷"
            assert ev["incident"]["id"] == iid  # the delta: one incident's board row, not the list
        assert max(latencies) < 2.0
        # the team's stream carries its own incident's changes, and only those
        g0 = core.city.grids()[0].id
        other = next(i for i in bulk_ids if core.ledger.incident_row(i).node_id != g0)
        core.command(
            other,
            Command(
                "live-other", CommandKind.ACKNOWLEDGE, "team", "x", core.ledger.incident_row(other).node_id
            ),
        )
        seen_team = [_next(tout, "change", 2.0)[0]["incident_id"] for _ in range(3)]
        assert seen_team == [iid] * 3
        ev, _ = _next(out, "change", 2.0)
        assert ev["incident_id"] == other
        with pytest.raises(AssertionError):
            _next(tout, "change", 1.0)

        # a browser that reconnects resumes after its Last-Event-ID ...
        resumed: queue.Queue[Any] = queue.Queue()
        last = ev["seq"]
        threading.Thread(
            target=_sse_reader, args=(op, {"Last-Event-ID": str(last - 1)}, resumed, stop), daemon=True
        ).start()
        assert _next(resumed, "change")[0]["seq"] == last
        # ... or is told to reload when it is too far behind to replay
        behind: queue.Queue[Any] = queue.Queue()
        threading.Thread(
            target=_sse_reader, args=(op, {"Last-Event-ID": "1"}, behind, stop), daemon=True
        ).start()
        _next(behind, "resync")
        with capsys.disabled():
            print(
                f"\nconsole SSE latency, command -> event at the client (10,001 open incidents): "
                f"{', '.join(f'{x * 1000:.0f} ms' for x in latencies)}"
            )
    finally:
        stop.set()
        router.close()  # ends the open streams, so uvicorn stops at once
        server.should_exit = True
        th.join(5)
        for cl in clients:
            cl.close()
    assert not th.is_alive()
