"""The `missed` verdict (issue 8 part 3): an operator says camera X showed, at time T, what an
incident is about and no detector raised it. The command is audited on the incident; the
hard-example store gets an example without a frame and a frame request; the camera worker running
X fills it from its ring of recent frames (or marks it unavailable); the sampler turns a filled
miss into an image whose missed object an annotator must box.

Pure parts (machine, ring) are unit-tested; the API runs on SQLite and a real PostgreSQL; the
worker on real footage over a real RTSP server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import supervision as sv
from fastapi.testclient import TestClient

from gridwatch.city import Level
from gridwatch.clock import SYSTEM_CLOCK, ManualClock
from gridwatch.config import ApiCredential, GridwatchConfig, demo_config_path, load_config
from gridwatch.dataset.hard_examples import HardExampleStore
from gridwatch.dataset.sampler import SamplerParams, sample
from gridwatch.detectors.evidence import FrameRing, RingFrame, resolve_frame_request
from gridwatch.dispatch.api import build_api, command_action, hash_token
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import Ledger
from gridwatch.dispatch.machine import (
    Command,
    CommandKind,
    IllegalTransition,
    Incident,
    InvalidParams,
    Plan,
    State,
    apply,
)
from gridwatch.schemas import IncidentCandidate
from tests.dispatch_helpers import T0, candidate, demo_city
from tests.helpers import WorkerThread

CAM = "cam-vtest"
GRID = demo_city().grids()[7].id


def feed(url: str = "rtsp://127.0.0.1:9/none", fps: float = 2) -> dict[str, Any]:
    return {
        "source": {"id": CAM, "url": url, "analysed_fps": fps, "stall_timeout_s": 4},
        "rules": {
            "camera": {
                "camera_id": CAM,
                "frame_size": [768, 576],
                "zones": [
                    {"kind": "gathering", "id": "road", "polygon": [[0, 200], [768, 200], [768, 576], [0, 576]],
                     "grid_id": GRID, "max_people": 50, "dwell_s": 4},
                ],
            },
            "tracker": {"fps": fps},
        },
    }  # fmt: skip


def config(tmp: Path, ledger_url: str = "sqlite:///:memory:", url: str | None = None) -> GridwatchConfig:
    return load_config(
        demo_config_path(),
        overrides={
            "dispatch": {"ledger_url": ledger_url, "hard_examples_dir": str(tmp / "hx")},
            "cameras": {
                "feeds": [feed(url) if url else feed()],
                "evidence": {"directory": str(tmp / "evidence")},
                "health_interval_s": 1,
            },
            "influx": {"url": "http://127.0.0.1:9", "spill_dir": str(tmp / "spill")},
        },
    )


def make_core(cfg: GridwatchConfig, clock: Any) -> DispatchCore:
    ledger = Ledger(cfg.dispatch.ledger_url)
    ledger.migrate()
    core = DispatchCore(cfg, demo_city(), ledger, clock)
    core.load()
    return core


def citizen_report(t: int, grid: int = 7, n: str = "r-1") -> IncidentCandidate:
    return candidate(n, kind="citizen", category="illegal_dumping", grid=grid, rule="open311", t=t)


# --- pure: the machine ---------------------------------------------------------------------------
PLAN = Plan(lambda level, t: {"ack": t + 1000}, lambda node: None, lambda node: Level.GRID)


def incident(state: State) -> Incident:
    return Incident("inc-1", state, Level.GRID, "g-1", T0, {}, ("g-1",))


def missed(cid: str = "m1", actor: str = "operator", **params: Any) -> Command:
    return Command(cid, CommandKind.MISSED, actor, "李娜", "g-1" if actor == "team" else None, params)  # type: ignore[arg-type]


def test_machine_missed_is_audited_and_changes_no_state() -> None:
    for st in (State.DISPATCHED, State.PENDING_REVIEW, State.RESOLVED, State.CLOSED, State.FALSE_ALARM):
        new, tr = apply(
            incident(st), missed(camera_id="cam-1", at_ms=T0 - 90_000, note="白色面包车"), T0, PLAN
        )
        assert new.state is st and tr.to_state is st and tr.changed and tr.notify == ()
        assert tr.note == "missed by camera cam-1 at 2026-11-24T01:58:30.000Z: 白色面包车"
    with pytest.raises(IllegalTransition, match="is merged; report the miss"):
        apply(incident(State.MERGED), missed(camera_id="cam-1", at_ms=T0), T0, PLAN)
    with pytest.raises(IllegalTransition, match="operator's or supervisor's"):
        apply(incident(State.DISPATCHED), missed(actor="team", camera_id="cam-1", at_ms=T0), T0, PLAN)
    bad = [
        ({"at_ms": T0}, "params.camera_id"),
        ({"camera_id": "cam-1"}, "params.at_ms must be epoch milliseconds"),
        ({"camera_id": "cam-1", "at_ms": "yesterday"}, "params.at_ms must be"),
        ({"camera_id": "cam-1", "at_ms": T0 + 60_000}, "params.at_ms .* 60 s in the future"),
        ({"camera_id": "cam-1", "at_ms": T0 - 8 * 86_400_000}, "8.0 days ago"),
    ]
    for params, msg in bad:
        with pytest.raises(InvalidParams, match=msg):
            apply(incident(State.DISPATCHED), missed(**params), T0, PLAN)
    assert command_action("missed", "closed") == "review"
    # the console shows the audit line in both languages
    from gridwatch.console.i18n import LABELS, note_text

    assert LABELS["cmd_missed"] == ("漏检", "Missed by a camera")
    line = "missed by camera cam-1 at 2026-11-24T01:58:30.000Z: 白色面包车"
    assert note_text("zh", line) == "摄像头 cam-1 于 2026-11-24T01:58:30.000Z 漏检: 白色面包车"
    assert note_text("en", line) == line


# --- pure: the ring and the request --------------------------------------------------------------
def frame(ts: int, size: int = 1000) -> RingFrame:
    return RingFrame(ts, b"x" * size, 8, 6, sv.Detections.empty(), sv.Detections.empty(), "m@1")


def test_ring_bounds_age_and_memory_and_resolves_requests() -> None:
    ring = FrameRing(keep_s=10, max_bytes=5_500)
    for k in range(4):
        ring.add(frame(T0 + k * 500))
    assert len(ring) == 4 and ring.evicted_age == ring.evicted_memory == 0
    ring.add(frame(T0 + 2000))
    ring.add(frame(T0 + 2500))  # 6 kB > 5.5 kB: the oldest goes
    assert len(ring) == 5 and ring.evicted_memory == 1 and ring.bytes == 5000
    ring.add(frame(T0 + 13_000))  # 10 s window: all but this one and T0+... are too old
    assert [f.ts_ms for f in ring.snapshot()] == [T0 + 13_000] and ring.evicted_age == 5

    frames = [frame(T0 + k * 500) for k in range(10)]  # T0 .. T0+4.5 s, period 500 ms
    act, f, _ = resolve_frame_request(frames, T0 + 1_240, 500, T0 + 5_000, 120_000)
    assert act == "fill" and f is not None and f.ts_ms == T0 + 1_000
    act, f, why = resolve_frame_request(frames, T0 - 60_000, 500, T0 + 5_000, 120_000)
    assert act == "unavailable" and "older than the camera's recent frames" in why
    act, f, why = resolve_frame_request(frames[:3] + frames[7:], T0 + 2_000, 500, T0 + 5_000, 120_000)
    assert act == "unavailable" and "no analysed frame within 500 ms" in why  # a gap: camera down
    assert resolve_frame_request(frames, T0 + 5_400, 500, T0 + 5_500, 120_000)[0] == "wait"
    assert resolve_frame_request([], T0, 500, T0 + 1000, 120_000)[0] == "wait"
    assert resolve_frame_request([], T0, 500, T0 + 200_000, 120_000)[0] == "unavailable"
    assert "recent_frames_s: 0" in resolve_frame_request(frames, T0, 500, T0, 0)[2]


# --- the API, on SQLite and PostgreSQL -----------------------------------------------------------
def test_api_missed_command(ledger_url: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, ledger_url)
    core = make_core(cfg, ManualClock(T0))
    try:
        creds = [
            ApiCredential(name="op", role="operator", token_sha256=hash_token("op-token")),
            ApiCredential(name="team", role="team", node=GRID, token_sha256=hash_token("team-token")),
        ]

        async def submit(_c: IncidentCandidate) -> None:
            raise AssertionError("not used")

        http = TestClient(build_api(core, creds, submit))

        def post(token: str, iid: str, cid: str, **body: Any) -> Any:
            return http.post(f"/api/v1/incidents/{iid}/missed", json={"command_id": cid, **body},
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip

        iid = core.handle_candidate(citizen_report(T0 - 120_000)).incident_id
        seen = T0 - 100_000
        r = post("op-token", iid, "m0", camera_id="cam-nope", at_ms=seen)
        assert r.status_code == 422 and "params.camera_id 'cam-nope' is not a camera" in r.json()["detail"]
        r = post("op-token", iid, "m0", camera_id=CAM, at_ms=T0 + 3_600_000)
        assert (
            r.status_code == 422 and "params.at_ms" in r.json()["detail"] and "future" in r.json()["detail"]
        )
        r = post("op-token", iid, "m0", camera_id=CAM)
        assert r.status_code == 422 and "at_ms" in r.json()["detail"]
        r = post("team-token", iid, "m0", camera_id=CAM, at_ms=seen)
        assert r.status_code == 403 and "may not review" in r.json()["detail"]
        assert core.ledger.transitions(iid)[-1].kind == "dispatch"  # nothing refused was audited

        r = post("op-token", iid, "m1", camera_id=CAM, at_ms=seen, note="白色面包车倒垃圾 van dumping")
        assert r.status_code == 200 and not r.json()["duplicate"] and r.json()["changed"]
        assert r.json()["incident"]["state"] == "dispatched"
        tr = core.ledger.transitions(iid)[-1]
        assert (tr.kind, tr.actor, tr.by, tr.to_state) == ("missed", "operator", "op", "dispatched")
        assert tr.note.startswith(f"missed by camera {CAM} at 2026-11-24T01:58:20.000Z: 白色面包车")
        assert tr.params == {"camera_id": CAM, "at_ms": seen, "note": "白色面包车倒垃圾 van dumping"}
        # idempotent by command id: answered duplicate, audited once, one example
        r = post("op-token", iid, "m1", camera_id=CAM, at_ms=seen, note="白色面包车倒垃圾 van dumping")
        assert r.status_code == 200 and r.json()["duplicate"]
        assert [t.kind for t in core.ledger.transitions(iid)].count("missed") == 1

        store = HardExampleStore(tmp_path / "hx")
        (ex,) = list(store)
        assert ex.verdict == "missed" and ex.frame_path is None and ex.data["frame_status"] == "requested"
        assert (ex.data["incident_id"], ex.data["camera_id"], ex.data["observed_at"]) == (iid, CAM, seen)
        assert (ex.data["category"], ex.data["grid_id"], ex.data["verdict"]["by"]) == (
            "illegal_dumping",
            GRID,
            "op",
        )
        (req,) = store.frame_requests()
        assert (req.example_id, req.camera_id, req.at_ms, req.incident_id) == (
            ex.candidate_id,
            CAM,
            seen,
            iid,
        )
        assert store.frame_requests([CAM]) == [req] and store.frame_requests(["cam-other"]) == []
        assert core.stats.hard_examples == 1 and core.stats.missed_reports == 1

        # after closure too (operators notice late), but not on a merged incident
        core.command(iid, Command("fa", CommandKind.FALSE_ALARM, "operator", "op", None, {"reason": "x"}))
        r = post("op-token", iid, "m2", camera_id=CAM, at_ms=seen + 5000)
        assert r.status_code == 200 and r.json()["incident"]["state"] == "false_alarm"
        a = core.handle_candidate(citizen_report(T0, grid=3, n="r-2")).incident_id
        b = core.handle_candidate(citizen_report(T0, grid=20, n="r-3")).incident_id
        core.command(b, Command("mg", CommandKind.MERGE, "operator", "op", None, {"into": a}))
        r = post("op-token", b, "m3", camera_id=CAM, at_ms=seen)
        assert r.status_code == 409 and "is merged" in r.json()["detail"]
        assert len(store.frame_requests()) == 2
    finally:
        core.ledger.close()


# --- the camera worker on real footage, then the sampler -----------------------------------------
def test_worker_fills_or_marks_frame_requests_and_the_sampler_uses_them(
    rtsp_server, footage, tmp_path: Path
) -> None:
    from gridwatch.detectors.worker import CameraWorker

    server = rtsp_server({"/cam1": footage["vtest.h264.mp4"]})
    cfg = config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", server.url("/cam1"))
    core = make_core(cfg, SYSTEM_CLOCK)
    worker = CameraWorker(cfg, kafka=False)
    assert worker.frame_request_poll_s == 2.0  # the real period: "within a few seconds"
    ring = worker.recent_frames[CAM]
    running = WorkerThread(worker)
    store = HardExampleStore(tmp_path / "hx")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(ring) < 6:
            time.sleep(0.3)
        assert len(ring) >= 6, f"the ring holds no frames after 60 s: {worker.stats()}"
        iid = core.handle_candidate(citizen_report(SYSTEM_CLOCK.now_ms())).incident_id

        def report(cid: str, at_ms: int) -> None:
            core.command(iid, Command(cid, CommandKind.MISSED, "operator", "op", None,
                                      {"camera_id": CAM, "at_ms": at_ms, "note": "人员聚集"}))  # fmt: skip

        now = SYSTEM_CLOCK.now_ms()
        recent, old = now - 1500, now - 600_000  # 1.5 s ago; 10 min ago, beyond the 120 s ring
        report("m-recent", recent)
        report("m-old", old)
        # a request for a camera this worker does not run stays for its own worker
        store.record_missed(incident_id=iid, camera_id="cam-elsewhere", at_ms=recent, category="gathering",
                            grid_id=GRID, by="op", verdict_at_ms=now)  # fmt: skip
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and len(store.frame_requests()) > 1:
            time.sleep(0.2)
        took = time.monotonic() - t0
        print(f"requests answered in {took:.1f} s; ring {len(ring)} frames, {ring.bytes} bytes")
        (left,) = store.frame_requests()
        assert left.camera_id == "cam-elsewhere" and took < 5, took
        by_cam_time = {(e.data["camera_id"], e.data["observed_at"]): e for e in store}
        filled, marked = by_cam_time[(CAM, recent)], by_cam_time[(CAM, old)]
        assert filled.data["frame_status"] == "filled" and filled.frame_path is not None
        assert abs(filled.data["frame_ts_ms"] - recent) <= 500  # one analysed period at 2 fps
        img = cv2.imdecode(np.frombuffer(filled.frame_path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (576, 768, 3)
        side = filled.detections()
        assert (
            side is not None
            and side["format"] == "gridwatch-detections"
            and side["ts_ms"] == filled.data["frame_ts_ms"]
        )
        assert side["image"] == {"file": "frame.jpg", "width": 768, "height": 576}
        assert side["model_version"].startswith("nanodet") and side["detections"], side  # vtest: people
        assert marked.data["frame_status"] == "unavailable" and marked.frame_path is None
        assert "older than the camera's recent frames" in marked.data["frame_reason"]
        st = worker.stats()
        assert (st["missed_frames_filled"], st["missed_frames_unavailable"], st["missed_frame_errors"]) == (
            1,
            1,
            0,
        )
    finally:
        running.stop()
        core.ledger.close()

    # the sampler: the filled miss becomes an image to box; the others are skipped, counted
    v, summary = sample(tmp_path / "hx", tmp_path / "datasets", "city", SamplerParams(random_share=0))
    assert summary["new_per_reason"] == {"missed": 1}
    assert summary["skipped"] == {"missed_frame_requested": 1, "missed_frame_unavailable": 1}
    coco = v.coco()
    (im,) = coco["images"]
    ex = im["extra"]
    assert (ex["verdict"], ex["reason"], ex["camera_id"], ex["frame_ts_ms"]) == (
        "missed", "missed", CAM, filled.data["frame_ts_ms"],
    )  # fmt: skip
    (miss,) = ex["unlabelled"]
    assert miss["bbox"] is None and miss["category"] == "illegal_dumping" and miss["at_ms"] == recent
    assert miss["note"] == "人员聚集" and "annotator must box it" in miss["why"]
    assert len(coco["annotations"]) == len(side["detections"]) and all(
        a["extra"]["pseudo"] for a in coco["annotations"]
    )
    assert v.manifest["counts"]["needs_labelling"] == 1
    json.dumps(coco)  # plain JSON all through
