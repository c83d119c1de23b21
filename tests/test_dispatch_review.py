"""Review before dispatch: pending_review, confirm, dismiss, recategorise, merge, note, and the
hard-example store the verdicts fill. On embedded SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridwatch.clock import ManualClock
from gridwatch.dataset.hard_examples import HardExampleStore
from gridwatch.dispatch.api import build_api, hash_token
from gridwatch.dispatch.machine import Command, CommandKind, IllegalTransition, State
from gridwatch.schemas import EvidenceRef, IncidentCandidate
from tests.dispatch_helpers import T0, candidate, demo_city, make_core

GRID = demo_city().grids()[0]
DEADLINES = {"grid": {"ack_s": 300, "arrive_s": 900, "resolve_s": 3600}}
TRIGGERS: list[dict[str, Any]] = [
    {"categories": ["illegal_dumping"], "platform": "综合执法", "review": "always", "deadlines": DEADLINES},
    {"categories": ["gathering"], "platform": "综合治理", "review": "auto", "auto_min_confidence": 0.7,
     "deadlines": DEADLINES},
    {"categories": ["road_blockage"], "first_level": "community", "platform": "交通",
     "deadlines": {"community": {"ack_s": 120, "arrive_s": 600, "resolve_s": 1800}}},
    {"categories": ["*"], "platform": "公共服务", "deadlines": DEADLINES},
]  # fmt: skip


def camera_candidate(
    cam: str, category: str, *, t: int = T0, confidence: float = 0.9, evidence: Path | None = None, **kw: Any
) -> IncidentCandidate:
    c = candidate(
        cam, kind="camera", category=category, rule=f"{category}_dwell", t=t, severity="medium", **kw
    )
    upd: dict[str, Any] = {"confidence": confidence, "details": {"zone_id": "verge", "box": [10, 20, 60, 90]}}
    if evidence is not None:
        upd["evidence"] = [EvidenceRef(kind="snapshot", ref=evidence.resolve().as_uri())]
    return c.model_copy(update=upd)


def op(cid: str, kind: CommandKind, actor: str = "operator", **params: Any) -> Command:
    return Command(cid, kind, actor, "李娜", GRID.id if actor == "team" else None, params)  # type: ignore[arg-type]


@pytest.fixture
def core(ledger_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    c = make_core(ledger_url, ManualClock(T0), triggers=TRIGGERS, hard_examples_dir=str(tmp_path / "hx"))
    yield c
    c.ledger.close()


def test_review_always_holds_the_incident_and_tells_nobody(core) -> None:  # type: ignore[no-untyped-def]
    iid = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping")).incident_id
    row = core.ledger.incident_row(iid)
    assert row.state == "pending_review" and row.chain == [] and row.next_due_at is None
    assert core.ledger.deliveries(iid) == []
    assert core.stats.held_for_review == 1
    # a team cannot act on it (it is not on its chain), nor acknowledge it at all
    with pytest.raises(IllegalTransition, match="not assigned"):
        core.command(iid, op("t-ack", CommandKind.ACKNOWLEDGE, "team"))
    with pytest.raises(IllegalTransition, match="not assigned"):
        core.command(iid, op("t-fa", CommandKind.FALSE_ALARM, "team", reason="x"))
    # no deadline runs: nothing escalates however long it waits
    core.clock.advance(86_400)
    assert core.escalate_due() == []
    # a citizen's report of the same category is not a detector's guess: dispatched at once
    cit = candidate("r-1", kind="citizen", category="illegal_dumping", grid=5, rule="open311")
    assert core.ledger.incident_row(core.handle_candidate(cit).incident_id).state == "dispatched"


def test_confirm_dispatches_with_fresh_clocks_and_pushes_to_the_team(core) -> None:  # type: ignore[no-untyped-def]
    iid = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping")).incident_id
    core.clock.advance(60)
    with pytest.raises(IllegalTransition, match="operator's or supervisor's"):
        core.command(iid, op("c0", CommandKind.CONFIRM, "team"))
    res = core.command(iid, op("c1", CommandKind.CONFIRM))
    assert res.incident.state is State.DISPATCHED and res.incident.chain == (GRID.id,)
    row = core.ledger.incident_row(iid)
    assert row.next_due_at == T0 + 60_000 + 300_000  # the clock starts at the confirmation
    dels = core.ledger.deliveries(iid)
    assert {(d.node_id, d.payload.get("event")) for d in dels if d.channel == "mqtt"} == {
        (GRID.id, "dispatched")
    }
    assert core.command(iid, op("c1", CommandKind.CONFIRM)).duplicate
    with pytest.raises(IllegalTransition, match="cannot confirm while dispatched"):
        core.command(iid, op("c2", CommandKind.CONFIRM))
    # the team acts on it now
    assert (
        core.command(iid, op("t-ack", CommandKind.ACKNOWLEDGE, "team")).incident.state is State.ACKNOWLEDGED
    )


def test_auto_dispatch_only_above_the_confidence(core) -> None:  # type: ignore[no-untyped-def]
    low = core.handle_candidate(camera_candidate("cam-1", "gathering", confidence=0.5)).incident_id
    high = core.handle_candidate(camera_candidate("cam-2", "gathering", confidence=0.8, grid=7)).incident_id
    assert core.ledger.incident_row(low).state == "pending_review"
    assert core.ledger.incident_row(high).state == "dispatched"


def test_dismissal_lands_camera_sources_in_the_hard_example_store(core, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    snap = tmp_path / "snap.jpg"
    snap.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg, but bytes to copy")
    iid = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping", evidence=snap)).incident_id
    with pytest.raises(IllegalTransition, match="needs a reason"):
        core.command(iid, op("fa0", CommandKind.FALSE_ALARM))
    res = core.command(iid, op("fa1", CommandKind.FALSE_ALARM, reason="树影 shadow of a tree"))
    assert res.incident.state is State.FALSE_ALARM
    store = HardExampleStore(tmp_path / "hx")
    (ex,) = list(store)
    assert ex.verdict == "false_alarm" and ex.data["incident_id"] == iid
    assert (
        ex.data["camera_id"] == "cam-1"
        and ex.data["zone_id"] == "verge"
        and ex.data["box"] == [10, 20, 60, 90]
    )
    assert ex.data["verdict"]["by"] == "李娜" and "shadow" in ex.data["verdict"]["reason"]
    copied = ex.path.parent / ex.data["evidence"][0]["file"]
    assert copied.read_bytes() == snap.read_bytes()
    assert core.stats.hard_examples == 1
    # the transition is in the audit trail with the operator as actor
    tr = core.ledger.transitions(iid)[-1]
    assert (tr.kind, tr.actor, tr.by, tr.from_state) == ("false_alarm", "operator", "李娜", "pending_review")
    # a sensor's false alarm adds no example (no picture to learn from)
    s = core.handle_candidate(candidate("smoke-9", grid=3)).incident_id
    core.command(
        s,
        op("fa2", CommandKind.FALSE_ALARM, "team", reason="测试 test").__class__(
            "fa2",
            CommandKind.FALSE_ALARM,
            "team",
            "王婷",
            core.ledger.incident_row(s).node_id,
            {"reason": "test"},
        ),
    )
    assert len(list(store)) == 1


def test_confirmed_then_verified_keeps_the_history(core, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    iid = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping")).incident_id
    core.command(iid, op("c1", CommandKind.CONFIRM))
    core.command(iid, op("r1", CommandKind.RESOLVE, "team", note="cleared"))
    core.command(iid, op("v1", CommandKind.VERIFY, "supervisor", ok=True))
    (ex,) = list(HardExampleStore(tmp_path / "hx"))
    assert ex.verdict == "verified" and [h["label"] for h in ex.data["history"]] == ["confirmed"]


def test_recategorise_reroutes_by_the_new_category(core) -> None:  # type: ignore[no-untyped-def]
    iid = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping")).incident_id
    with pytest.raises(IllegalTransition, match="unknown category 'bogus'"):
        core.command(iid, op("rc0", CommandKind.RECATEGORISE, category="bogus"))
    with pytest.raises(IllegalTransition, match="already illegal_dumping"):
        core.command(iid, op("rc1", CommandKind.RECATEGORISE, category="illegal_dumping"))
    res = core.command(
        iid, op("rc2", CommandKind.RECATEGORISE, category="road_blockage", note="a van, not rubbish")
    )
    row = core.ledger.incident_row(iid)
    community = demo_city().ancestors(GRID.id)[1].id
    assert (row.category, row.platform, row.node_id, row.level) == (
        "road_blockage",
        "交通",
        community,
        "community",
    )
    assert res.incident.state is State.PENDING_REVIEW
    assert (
        core.ledger.transitions(iid)[-1].note
        == "category illegal_dumping -> road_blockage: a van, not rubbish"
    )
    # confirming now uses the new line's deadlines (community, ack 120 s)
    core.command(iid, op("c", CommandKind.CONFIRM))
    assert core.ledger.incident_row(iid).next_due_at == T0 + 120_000
    # fusion knows the new category: a road blockage nearby attaches to it
    near = camera_candidate("cam-2", "road_blockage", t=T0 + 5000, offset_m=20)
    assert core.handle_candidate(near).incident_id == iid


def test_merge_moves_the_sources_and_audits_both(core) -> None:  # type: ignore[no-untyped-def]
    a = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping")).incident_id
    b = core.handle_candidate(camera_candidate("cam-7", "illegal_dumping", grid=9)).incident_id
    core.command(a, op("c", CommandKind.CONFIRM))
    with pytest.raises(IllegalTransition, match="into itself"):
        core.command(b, op("m0", CommandKind.MERGE, into=b))
    with pytest.raises(IllegalTransition, match="no incident 'inc-nope'"):
        core.command(b, op("m1", CommandKind.MERGE, into="inc-nope"))
    res = core.command(b, op("m2", CommandKind.MERGE, into=a, note="same pile, two cameras"))
    assert res.incident.state is State.MERGED
    assert [s.source_id for s in core.ledger.sources(a)] == ["cam-1", "cam-7"]
    assert core.ledger.sources(b) == []
    assert core.ledger.incident_row(a).source_count == 2
    into_tr = core.ledger.transitions(a)[-1]
    assert into_tr.kind == "merged_in" and b in into_tr.note
    assert core.ledger.transitions(b)[-1].note == f"merged into {a}: same pile, two cameras"
    # a merged incident is no longer open: nothing more on it but notes; merging into it is refused
    with pytest.raises(IllegalTransition, match="merged"):
        core.command(b, op("c2", CommandKind.CONFIRM))
    c = core.handle_candidate(camera_candidate("cam-8", "illegal_dumping", grid=11)).incident_id
    with pytest.raises(IllegalTransition, match="is merged; merge into an open one"):
        core.command(c, op("m3", CommandKind.MERGE, into=b))
    # merged incidents are not counted twice in KPIs
    assert b not in {r.incident_id for r in core.ledger.kpi_rows(0)}
    # b is gone from fusion's memory, live and after a restart (the index is rebuilt from the ledger)
    assert core.fusion.get(b) is None and core.fusion.get(a).sources == {"camera:cam-1", "camera:cam-7"}
    core2 = make_core(core.ledger.url, core.clock, triggers=TRIGGERS)
    assert core2.fusion.get(b) is None and core2.fusion.get(a).sources == {"camera:cam-1", "camera:cam-7"}


def test_notes_in_any_state_by_anyone_allowed(core) -> None:  # type: ignore[no-untyped-def]
    iid = core.handle_candidate(candidate("smoke-1")).incident_id
    res = core.command(iid, op("n1", CommandKind.NOTE, "team", note="到场前电话确认 phoned the shop"))
    assert res.incident.state is State.DISPATCHED
    core.command(iid, op("fa", CommandKind.FALSE_ALARM, "team", reason="test alarm"))
    core.command(iid, op("n2", CommandKind.NOTE, note="检测器维护 sensor serviced"))
    assert [t.kind for t in core.ledger.transitions(iid)][-3:] == ["note", "false_alarm", "note"]
    with pytest.raises(IllegalTransition, match="needs params.note"):
        core.command(iid, op("n3", CommandKind.NOTE))


def test_api_review_endpoints_and_roles(core) -> None:  # type: ignore[no-untyped-def]
    creds = [
        {"name": "op", "role": "operator", "token_sha256": hash_token("op-token")},
        {"name": "team", "role": "team", "node": GRID.id, "token_sha256": hash_token("team-token")},
        {"name": "wall", "role": "viewer", "token_sha256": hash_token("wall-token")},
    ]
    from gridwatch.config import ApiCredential

    async def submit(_c: IncidentCandidate) -> None:
        raise AssertionError("not used")

    app = build_api(core, [ApiCredential(**c) for c in creds], submit)
    http = TestClient(app)

    def post(token: str, iid: str, cmd: str, **body: Any) -> Any:
        return http.post(
            f"/api/v1/incidents/{iid}/{cmd}", json={"command_id": f"{cmd}-{token}-{json.dumps(body)}"[:120], **body},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip

    iid = core.handle_candidate(camera_candidate("cam-1", "illegal_dumping")).incident_id
    assert post("team-token", iid, "confirm").status_code == 403
    assert post("wall-token", iid, "confirm").status_code == 403
    r = post("team-token", iid, "false_alarm", reason="x")
    assert r.status_code == 403 and "may not review" in r.json()["detail"]
    assert post("op-token", iid, "recategorise").status_code == 422
    r = post("op-token", iid, "recategorise", category="gathering")
    assert r.status_code == 200 and r.json()["incident"]["category"] == "gathering"
    r = post("op-token", iid, "confirm")
    assert r.status_code == 200 and r.json()["incident"]["state"] == "dispatched"
    assert post("team-token", iid, "note", note="on my way").status_code == 200
    assert post("wall-token", iid, "note", note="hi").status_code == 403
    assert post("op-token", iid, "bogus").status_code == 404
    other = core.handle_candidate(camera_candidate("cam-2", "illegal_dumping", grid=20)).incident_id
    r = post("op-token", other, "merge", into=iid)
    assert r.status_code == 200 and r.json()["incident"]["state"] == "merged"
