"""Issue 8 part 6: the shadow run and `gridwatch models compare`.

Pure parts (frame selection, budget, pairing, the report against the operators' verdicts in a real
SQLite ledger) and a camera worker on real RTSP footage with a shadow pointer in a real registry:
shadow candidates recorded beside production's, none on Kafka, half the frames shadowed, a
version swap without restart, a broken version counted while production runs on, the pointer
removed, then `gridwatch models compare` on what was recorded."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import supervision as sv
import yaml

from gridwatch.clock import ManualClock
from gridwatch.codec import decode_event
from gridwatch.detectors.base import Detector
from gridwatch.detectors.pipeline import PipelineStep
from gridwatch.detectors.shadow import ShadowBudget, ShadowRecorder, ShadowRun, frame_selected, shadow_rules
from gridwatch.detectors.worker import CameraWorker
from gridwatch.dispatch.machine import Command, CommandKind
from gridwatch.localrun import read_topic
from gridwatch.model_compare import (
    LedgerVerdicts,
    MissedReport,
    Records,
    compare_clip_results,
    compare_records,
    ledger_verdicts,
    pair_candidates,
    read_records,
)
from gridwatch.schemas import IncidentCandidate
from gridwatch.topics import INCIDENT_CANDIDATES
from tests.dispatch_helpers import T0, candidate, demo_city, make_core
from tests.helpers import WorkerThread
from tests.test_camera_worker import camera_cfg

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "nanodet-g-416"


# --- pure ------------------------------------------------------------------------------------
def test_frame_selection_is_deterministic_and_even() -> None:
    assert [i for i in range(8) if frame_selected(i, 0.5)] == [0, 2, 4, 6]
    assert [i for i in range(8) if frame_selected(i, 0.25)] == [0, 4]
    assert all(frame_selected(i, 1.0) for i in range(10)) and not any(frame_selected(i, 0) for i in range(10))
    for share in (0.1, 0.3, 0.7, 0.9):
        n = sum(frame_selected(i, share) for i in range(1000))
        assert abs(n - 1000 * share) <= 1, (share, n)


def test_budget_skips_a_shadow_call_that_would_pass_the_frame_period() -> None:
    b = ShadowBudget(period_ms=500)
    assert b.allows(480)  # nothing measured yet: the first call measures
    b.observe(100)
    assert b.allows(400) and not b.allows(401)
    b.observe(600)  # slower now: the estimate moves towards it
    assert b.expected_ms == 200 and b.allows(300) and not b.allows(301)
    # one slow call must not switch the shadow off for good: after 10 skips in a row, a trial call
    b.observe(10_000)
    assert [b.allows(400) for _ in range(10)] == [False] * 9 + [True]
    before = b.expected_ms
    b.observe(50)  # the trial was fast: the estimate comes down, the count starts again
    assert b.skipped_in_a_row == 0 and b.expected_ms < before
    b.reset()  # a new model: no estimate
    assert b.expected_ms is None and b.allows(10_000)


class _CrashingDetector(Detector):
    """A shadow model that fails at run time (a bad export, a corrupt session): the double stands
    for a model we cannot make crash on purpose; the code around it is real."""

    model_version = "crashing@0"

    def detect(self, frame_bgr: np.ndarray) -> sv.Detections:
        raise RuntimeError("onnxruntime: invalid output shape")

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("person",)


def test_a_shadow_that_fails_at_run_time_is_counted_and_production_goes_on(tmp_path: Path) -> None:
    cfg = camera_cfg("rtsp://127.0.0.1:9/x", demo_city().grids()[7].id, tmp_path, "127.0.0.1:9", "http://x")
    feed = cfg.cameras.feeds[0]
    run = ShadowRun({feed.source.id: (feed.rules, 2.0)}, cfg.cameras.motion, ShadowRecorder(tmp_path / "rec"),
                    frame_share=1.0, inference=threading.Semaphore(1))  # fmt: skip
    run.set_detector(_CrashingDetector(), 7)
    w, h = feed.rules.camera.frame_size
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(5):
        step = PipelineStep(ts_ms=T0 + i * 500, detected=True, candidates=[], detections=sv.Detections.empty(),
                            image=frame, infer_ms=40.0)  # fmt: skip
        assert run.observe(feed.source.id, step, 40.0) == []
    st = run.stats()
    # every frame the motion gate sent to the detector failed (the gate skips unchanged frames)
    assert st["shadow_errors"] >= 1 and st["shadow_errors"] + st["shadow_frames"] == 5
    assert st["shadow_candidates"] == 0
    # the inference slot was given back every time: production can still take it
    assert run.inference.acquire(blocking=False)


def test_shadow_rules_track_at_the_shadowed_rate(tmp_path: Path) -> None:
    cfg = camera_cfg("rtsp://127.0.0.1:9/x", demo_city().grids()[7].id, tmp_path, "127.0.0.1:9", "http://x")
    rules = cfg.cameras.feeds[0].rules
    assert shadow_rules(rules, 1.0) is rules
    half = shadow_rules(rules, 0.5)
    assert half.tracker.fps == rules.tracker.fps / 2 and half.camera == rules.camera


def test_shadow_config_errors_name_the_field_and_paths_resolve(tmp_path: Path) -> None:
    from gridwatch.config import ConfigError, demo_config_path, load_config

    with pytest.raises(ConfigError, match=r"cameras: shadow.cameras\[0\]: no camera 'nope' in feeds"):
        load_config(demo_config_path(), overrides={"cameras": {"shadow": {"cameras": ["nope"]}}})
    with pytest.raises(
        ConfigError, match=r"cameras.shadow.frame_share: Input should be less than or equal to 1"
    ):
        load_config(demo_config_path(), overrides={"cameras": {"shadow": {"frame_share": 2}}})
    data = yaml.safe_load(demo_config_path().read_text(encoding="utf-8"))
    data["sensor_files"] = [
        str((demo_config_path().parent / p).resolve()) for p in data.get("sensor_files", [])
    ]
    data["cameras"] = {"shadow": {"enabled": True, "record_dir": "records/shadow"}}
    conf = tmp_path / "gridwatch.yaml"
    conf.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    shadow = load_config(conf).cameras.shadow
    assert shadow.record_dir == tmp_path / "records" / "shadow" and shadow.frame_share == 0.5


def rec(role: str, ts: int, cid: str, *, zone: str = "road", category: str = "gathering", **kw: Any) -> dict:
    return {"kind": "candidate", "role": role, "camera": "cam-1", "ts": ts, "model_version": f"{role}@x",
            "registry_version": kw.pop("version", None), "category": category, "zone": zone,
            "grid_id": kw.pop("grid", "g1"), "candidate_id": cid, "confidence": 0.8, "observed_at": ts, **kw}  # fmt: skip


def test_pairing_by_camera_category_zone_and_time() -> None:
    prod = [
        rec("production", 1_000, "p1"),
        rec("production", 60_000, "p2"),
        rec("production", 90_000, "p3", zone="verge"),
    ]
    shad = [rec("shadow", 4_000, "s1"), rec("shadow", 75_000, "s2"), rec("shadow", 91_000, "s3", zone="road")]  # fmt: skip
    pairs, p_only, s_only = pair_candidates(prod, shad, 10_000)
    assert [(p["candidate_id"], s["candidate_id"]) for p, s in pairs] == [("p1", "s1")]
    assert [p["candidate_id"] for p in p_only] == ["p2", "p3"]  # p2: 15 s apart; p3: another zone
    assert [s["candidate_id"] for s in s_only] == ["s2", "s3"]
    # each candidate pairs once: two production candidates near one shadow candidate -> one pair
    pairs, p_only, _ = pair_candidates([rec("production", 0, "a"), rec("production", 2_000, "b")],
                                       [rec("shadow", 1_500, "s")], 10_000)  # fmt: skip
    assert [(p["candidate_id"], s["candidate_id"]) for p, s in pairs] == [("a", "s")] and len(p_only) == 1


def test_a_condition_production_held_when_the_shadow_started_is_agreement() -> None:
    """The van parked since before the shadow started: production's rules hold its episode (the
    start record says so), the shadow (fresh rules) raises it after its own dwell. Within `carry_s`
    of the start that is agreement; a zone production did not hold, or a candidate past carry_s,
    stays shadow-only."""
    cost = {"kind": "cost", "camera": "cam-1", "from_ts": 100_000, "to_ts": 400_000, "shadow_version": 2,
            "frames": 10, "shadow_frames": 10, "production_ms": 1.0, "shadow_ms": 1.0}  # fmt: skip
    start = {"kind": "start", "camera": "cam-1", "ts": 100_000, "shadow_version": 2,
             "open": [{"zone": "road", "category": "gathering"}, {"zone": "square", "category": "gathering"}]}  # fmt: skip
    records = Records(
        candidates=[
            rec("shadow", 120_000, "van-again", version=2),  # held at the start: carried over
            rec("shadow", 130_000, "verge", version=2, zone="verge"),  # not held at the start
            rec("shadow", 395_000, "square-late", version=2, zone="square"),  # past carry_s
            rec(
                "production", 200_000, "other-camera", camera="cam-2", zone="verge"
            ),  # not this camera's span
        ],
        costs=[cost],
        starts=[start],
    )
    out = compare_records(records, shadow_version=2, carry_s=180)
    assert (out["agreement"], out["carried_over"], out["production_only"], out["shadow_only"]) == (1, 1, 0, 2)
    # another version's start record carries nothing over
    other = compare_records(
        Records(records.candidates, [cost], [{**start, "shadow_version": 3}]), shadow_version=2
    )
    assert (other["carried_over"], other["shadow_only"]) == (0, 3)


def test_pairing_takes_the_most_pairs() -> None:
    """Nearest-first would pair production@0 with shadow@5 and leave production@8 alone; the
    earliest free shadow candidate in each window pairs both."""
    pairs, p_only, s_only = pair_candidates(
        [rec("production", 0, "p0"), rec("production", 8_000, "p8")],
        [rec("shadow", -9_000, "s-9"), rec("shadow", 5_000, "s5")],
        10_000,
    )
    assert [(p["candidate_id"], s["candidate_id"]) for p, s in pairs] == [("p0", "s-9"), ("p8", "s5")]
    assert p_only == [] and s_only == []


def test_compare_counts_false_alarms_avoided_and_misses_caught_from_a_real_ledger(tmp_path: Path) -> None:
    """Verdicts come from a real (SQLite) dispatch ledger: a camera gathering dismissed as a false
    alarm, a confirmed one, and a gathering a citizen reported that no camera raised."""
    clock = ManualClock(T0)
    review = {"grid": {"ack_s": 300, "arrive_s": 900, "resolve_s": 3600}}
    triggers = [{"categories": ["*"], "platform": "综合治理", "review": "always", "deadlines": review}]
    core = make_core(f"sqlite:///{tmp_path / 'ledger.db'}", clock, triggers=triggers)
    hour = 3_600_000  # apart beyond fusion's window and cooldown: one incident each

    def cam(t: int) -> IncidentCandidate:
        c = candidate(
            "cam-1", kind="camera", category="gathering", rule="gathering_dwell", t=t, severity="medium"
        )
        return c.model_copy(update={"confidence": 0.9, "details": {"zone_id": "road"}})

    def handle(c: IncidentCandidate) -> str:
        clock.advance((c.observed_at - clock.now_ms()) / 1000)
        return core.handle_candidate(c).incident_id

    fa_seen = cam(T0)  # false alarm, the shadow raised it too
    fa_avoided = cam(T0 + hour)  # false alarm the shadow did not raise
    real = cam(T0 + 2 * hour)  # a real gathering both raised
    report = candidate("citizen-42", kind="citizen", category="gathering", rule="report", t=T0 + 3 * hour)
    grid = fa_seen.grid_id
    try:
        ids = [handle(c) for c in (fa_seen, fa_avoided, real, report)]
        assert len(set(ids)) == 4
        for i in (0, 1):
            core.command(ids[i], Command(f"fa{i}", CommandKind.FALSE_ALARM, "operator", "李娜", None,
                                         {"reason": "passers-by"}))  # fmt: skip
        verdicts = ledger_verdicts(core.ledger)
    finally:
        core.ledger.close()
    assert verdicts.false_alarm_candidates == {fa_seen.candidate_id, fa_avoided.candidate_id}
    assert [(m.category, m.grid_id, m.reported_at) for m in verdicts.missed] == [
        ("gathering", grid, T0 + 3 * hour)
    ]

    def r(role: str, c: IncidentCandidate | None, ts: int, cid: str = "") -> dict:
        return rec(role, ts, c.candidate_id if c else cid, grid=grid)

    records = Records(
        candidates=[
            r("production", fa_seen, T0), r("shadow", None, T0 + 2_000, "s-a"),
            r("production", fa_avoided, T0 + hour),
            r("production", real, T0 + 2 * hour), r("shadow", None, T0 + 2 * hour + 1_000, "s-b"),
            r("shadow", None, T0 + 3 * hour - 100_000, "s-c"),  # 100 s before the citizen's report: caught
        ],
        costs=[{"kind": "cost", "camera": "cam-1", "from_ts": T0, "to_ts": T0 + 60_000, "frames": 120,
                "shadow_frames": 50, "shadow_skipped": 10, "production_ms": 2400.0, "paired_production_ms": 1250.0,
                "shadow_ms": 1500.0, "shadow_version": 2}],
    )  # fmt: skip
    out = compare_records(records, verdicts, window_s=10, miss_window_s=600)
    assert (out["agreement"], out["production_only"], out["shadow_only"]) == (2, 1, 1)
    assert (out["false_alarms"], out["false_alarms_avoided"], out["false_alarms_shared"]) == (2, 1, 1)
    assert out["false_alarms_avoided_ids"] == [fa_avoided.candidate_id]
    assert (out["missed"], out["misses_caught"]) == (1, 1)
    assert out["cost"] == {
        "frames": 120, "shadow_frames": 50, "shadow_skipped": 10, "share_shadowed": 0.417,
        "production_ms_per_frame": 20.0, "production_ms_per_shadowed_frame": 25.0, "shadow_ms_per_frame": 30.0,
    }  # fmt: skip
    # the same through the command line: records read from files, verdicts from the ledger's URL
    from typer.testing import CliRunner

    from gridwatch.cli import app

    day = tmp_path / "records" / "cam-1" / "2026-11-24.jsonl"
    day.parent.mkdir(parents=True)
    day.write_text("".join(json.dumps(x) + "\n" for x in [*records.candidates, *records.costs]) + "{cut\n")
    args = [
        "models",
        "compare",
        "--records",
        str(day.parent.parent),
        "--ledger",
        f"sqlite:///{tmp_path / 'ledger.db'}",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output.strip().splitlines()[-1])
    assert {k: cli[k] for k in ("agreement", "false_alarms_avoided", "misses_caught", "bad_lines")} == {
        "agreement": 2, "false_alarms_avoided": 1, "misses_caught": 1, "bad_lines": 1
    }  # fmt: skip
    # a shorter miss window: the shadow's candidate came too early to count
    assert compare_records(records, verdicts, miss_window_s=60)["misses_caught"] == 0
    # without a ledger the verdict figures are unknown, not zero
    assert compare_records(records)["false_alarms_avoided"] is None
    # a missed incident on a grid no shadowed camera watches is not the shadow's to catch
    other = LedgerVerdicts(set(), [MissedReport("x", "gathering", "elsewhere", T0)])
    assert compare_records(records, other)["missed"] == 0


def test_compare_on_clip_results_counts_events_and_false_positives() -> None:
    events = [
        ("a", "gathering", "sq", 10.0),
        ("a", "illegal_dumping", "v", 30.0),
        ("b", "gathering", "sq", 5.0),
    ]

    def result(missed: list[tuple[str, str, str, float]], fps: list[tuple[str, float]], ms: float) -> dict:
        per_clip = [
            {"clip": clip, "missed": [{"category": c, "zone": z, "start_s": t} for (cl, c, z, t) in missed if cl == clip],
             "candidates": [{"category": "gathering", "zone": "sq", "t_s": t, "outcome": "fp"} for cl, t in fps if cl == clip]}
            for clip in ("a", "b")
        ]  # fmt: skip
        return {"per_clip": per_clip, "fps": 1.0, "detector": "m", "frames_analysed": 100, "inferences": 50,
                "infer_ms_mean": ms, "overall": {"f1": 0.9}}  # fmt: skip

    prod = result([events[1]], [("a", 50.0), ("b", 20.0)], 40.0)
    shadow = result([events[2]], [("a", 52.0)], 30.0)
    out = compare_clip_results(prod, shadow, events)
    assert (out["events_both_caught"], out["events_production_only"], out["events_shadow_only"]) == (1, 1, 1)
    assert out["events_caught_by_shadow_missed_by_production"] == ["a/illegal_dumping/v@30s"]
    assert (out["false_positives_shared"], out["false_positives_avoided"], out["false_positives_new"]) == (
        1,
        1,
        0,
    )
    assert out["production"]["ms_per_frame"] == 20.0 and out["shadow"]["ms_per_frame"] == 15.0


# --- a camera worker on real footage ------------------------------------------------------------
def _variant(tmp_path: Path, name: str) -> Path:
    """The bundled weights under another name: a distinct model_version string."""
    d = tmp_path / name
    shutil.copytree(BUNDLED, d)
    manifest = yaml.safe_load((d / "model.yaml").read_text(encoding="utf-8"))
    manifest["name"] = name
    (d / "model.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    return d


def _broken(tmp_path: Path) -> Path:
    """A model directory the registry accepts (one .onnx) but the detector cannot load."""
    d = tmp_path / "broken"
    shutil.copytree(BUNDLED, d)
    next(d.glob("*.onnx")).write_bytes(b"not an onnx graph")
    return d


def _shadow_cfg(cfg: Any, registry: Path, record_dir: Path, **shadow: Any) -> Any:
    cams = cfg.cameras.model_copy(
        update={
            "follow_registry": True,
            "registry_poll_s": 0.3,
            "shadow": cfg.cameras.shadow.model_copy(
                update={"enabled": True, "record_dir": record_dir, "frame_share": 0.5, **shadow}
            ),
        }
    )
    return cfg.model_copy(
        update={"cameras": cams, "models": cfg.models.model_copy(update={"registry_dir": registry})}
    )


def _wait(cond: Any, timeout: float, what: str, worker: CameraWorker) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s: {worker.stats()}")


@pytest.mark.parametrize("pointer", ["broken model", "corrupt pointer"])
def test_a_shadow_that_does_not_load_is_counted_and_production_starts(tmp_path: Path, pointer: str) -> None:
    """The shadow pointer names a broken model (or is not JSON) at start: logged, counted,
    production unaffected."""
    reg = tmp_path / "registry"
    (reg / "deployed").mkdir(parents=True)
    broken = _broken(tmp_path)
    (reg / "deployed" / "detector.shadow.json").write_text("{not json" if pointer == "corrupt pointer" else json.dumps(
        {"kind": "detector", "alias": "shadow", "version": 7, "path": str(broken), "sha256": "0" * 64, "at_ms": 0}
    ))  # fmt: skip
    cfg = camera_cfg("rtsp://127.0.0.1:9/x", demo_city().grids()[7].id, tmp_path, "127.0.0.1:9", "http://x")
    cfg = _shadow_cfg(cfg, reg, tmp_path / "shadow")
    cfg = cfg.model_copy(update={"cameras": cfg.cameras.model_copy(update={"follow_registry": False})})
    worker = CameraWorker(cfg, kafka=False)
    try:
        s = worker.stats()
        assert s["shadow_errors"] == 1 and s["shadow_model_version"] == "" and s["shadow_frames"] == 0
        assert worker.detector is not None and s["model_version"].startswith("nanodet-g-416@")
    finally:
        worker.detector.close()


def test_shadow_beside_production_on_real_footage(
    rtsp_server, footage, fresh_tansu, influxdb, influx_v2, tmp_path: Path, capsys
) -> None:
    from gridwatch.model_registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    reg.promote("detector", reg.register(BUNDLED, kind="detector").version)
    v2 = reg.register(_variant(tmp_path, "nanodet-shadow-a"), kind="detector", parent="1").version
    v3 = reg.register(_variant(tmp_path, "nanodet-shadow-b"), kind="detector", parent="1").version
    v4 = reg.register(_broken(tmp_path), kind="detector").version
    reg.promote("detector", v2, alias="shadow")

    server = rtsp_server({"/cam1": footage["vtest.h264.mp4"]})
    tansu = fresh_tansu()
    influxdb.create_database("cameras_e2e")
    record_dir = tmp_path / "shadow-records"
    cfg = camera_cfg(
        server.url("/cam1"), demo_city().grids()[7].id, tmp_path, tansu.bootstrap_servers, influx_v2.url
    )
    cfg = _shadow_cfg(cfg, reg.root, record_dir)
    worker = CameraWorker(cfg)
    assert worker.shadow is not None and worker.shadow.version == v2
    running = WorkerThread(worker)
    try:
        _wait(lambda: worker.stats()["shadow_candidates"] >= 1 and worker.counters["candidates_sent"] >= 1,
              60, "a shadow and a production candidate", worker)  # fmt: skip
        s = worker.stats()
        assert s["shadow_model_version"].startswith("nanodet-shadow-a@") and s["shadow_ms_per_frame"] > 0
        # half the analysed frames were selected for the shadow (run or skipped by the budget)
        frames = worker.pipelines["cam-vtest"].stats.frames
        assert abs(s["shadow_frames"] + s["shadow_skipped"] - frames / 2) <= 1.5, s
        assert s["shadow_frames"] >= frames / 2 - 3, s  # one camera on two cores: hardly ever skipped

        # nothing from the shadow reaches Kafka: every candidate there is production's
        on_kafka = [
            decode_event(r, IncidentCandidate)
            for r in read_topic(tansu.bootstrap_servers, INCIDENT_CANDIDATES.name, 2)
        ]
        assert on_kafka and all(c.model_version.startswith("nanodet-g-416@") for c in on_kafka)  # fmt: skip
        recorded = read_records(record_dir).candidates
        assert [r["model_version"] for r in recorded if r["role"] == "shadow"][0].startswith(
            "nanodet-shadow-a@"
        )
        # Kafka holds exactly the production candidates recorded (the shadow's carry the same id when
        # it started the episode on the same frame: the same incident, so agreement is exact)
        assert {c.candidate_id for c in on_kafka} == {
            r["candidate_id"] for r in recorded if r["role"] == "production"
        }

        # a broken version in the shadow: counted, the running shadow and production go on
        inferences = worker.stats()["inferences"]
        reg.promote("detector", v4, alias="shadow")
        _wait(lambda: worker.stats()["shadow_errors"] == 1, 15, "the broken shadow counted", worker)
        assert worker.shadow.version == v2
        _wait(lambda: worker.stats()["inferences"] >= inferences + 3, 10, "production inferences", worker)

        # another version: swapped without restart
        reg.promote("detector", v3, alias="shadow")
        _wait(lambda: worker.shadow.version == v3, 15, "the shadow swap", worker)
        shadowed = worker.stats()["shadow_frames"]
        assert worker.stats()["shadow_model_version"].startswith("nanodet-shadow-b@")
        _wait(lambda: worker.stats()["shadow_frames"] >= shadowed + 3, 10, "frames on the new shadow", worker)

        # the pointer removed: the shadow stops, production does not
        (reg.root / "deployed" / "detector.shadow.json").unlink()
        _wait(lambda: worker.shadow.detector is None, 15, "the shadow stopped", worker)
        assert worker.stats()["shadow_model_version"] == ""
        assert worker.counters["errors"] == 0 and worker.counters["model_swap_errors"] == 0
        assert worker.detector.model_version.startswith("nanodet-g-416@")
    finally:
        running.stop()

    records = read_records(record_dir)
    # cost lines per shadow version (a window is closed at each change)
    assert {c["shadow_version"] for c in records.costs} == {v2, v3}, records.costs
    v3_costs = [c for c in records.costs if c["shadow_version"] == v3]
    assert all(c["shadow_model"].startswith("nanodet-shadow-b@") for c in v3_costs)
    assert sum(c["shadow_frames"] for c in v3_costs) >= 3
    assert all(c["production_model"].startswith("nanodet-g-416@") for c in records.costs)
    prod = [r for r in records.candidates if r["role"] == "production"]
    assert prod and all(r["model_version"].startswith("nanodet-g-416@") for r in prod)
    assert all(r["boxes"]["n"] >= 1 and r["zone"] == "road" for r in records.candidates)

    # `gridwatch models compare` end to end on what was recorded (the embedded demo config)
    from typer.testing import CliRunner

    from gridwatch.cli import app

    r = CliRunner().invoke(app, ["models", "compare", "--records", str(record_dir), "--no-ledger"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["agreement"] >= 1, out  # the same weights: the crowd on the road raised by both
    assert out["cost"]["shadow_ms_per_frame"] > 0 and out["cost"]["production_ms_per_frame"] > 0
    assert 0.4 <= out["cost"]["share_shadowed"] <= 0.6 and out["false_alarms_avoided"] is None


def test_compare_offline_on_a_labelled_clip(tmp_path: Path) -> None:
    """`--clips`: both models through run_eval on the same clip; a cheaper input size as the shadow."""
    src = Path(__file__).resolve().parents[1] / "var" / "eval-clips"
    if not (src / "crowd_square.mp4").is_file():
        pytest.skip(
            "var/eval-clips missing: run `gridwatch eval detectors` once (tests/test_eval_detectors.py)"
        )
    clips = tmp_path / "clips"
    clips.mkdir()
    for ext in ("mp4", "json"):
        shutil.copy(src / f"crowd_square.{ext}", clips / f"crowd_square.{ext}")
    small = _variant(tmp_path, "nanodet-g-320")
    manifest = yaml.safe_load((small / "model.yaml").read_text(encoding="utf-8"))
    manifest["input"].update({"width": 320, "height": 320})
    (small / "model.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    from typer.testing import CliRunner

    from gridwatch.cli import app

    args = ["models", "compare", "--clips", str(clips), "--production", str(BUNDLED), "--shadow", str(small)]
    res = CliRunner().invoke(app, [*args, "--fps", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["events"] == 1 and out["fps"] == 1.0
    assert out["production"]["detector"].startswith("nanodet-g-416@")
    assert out["shadow"]["detector"].startswith("nanodet-g-320@")
    caught = out["events_both_caught"] + out["events_production_only"]
    assert (
        caught == out["production"]["tp"]
        and out["events_both_caught"] + out["events_shadow_only"] == out["shadow"]["tp"]
    )
    assert out["shadow"]["ms_per_frame"] > 0 and out["production"]["ms_per_frame"] > 0
    # a reference that is neither a directory, an alias nor a version is refused by name
    res = CliRunner().invoke(app, [*args[:-1], "nope"])
    assert res.exit_code == 2 and "'nope'" in res.output
