"""`gridwatch eval detectors`: the matcher and scorer, sidecar validation, and real runs of the
camera pipeline (NanoDet) on the shipped clips (detectors/evaluate.py, detectors/eval_clips.py).

The real runs need var/footage/vtest.avi (scripts/fetch_footage.sh) and the NanoDet model; they
skip with a message otherwise. The CI gate runs the whole shipped set from the cached
var/eval-clips/ (built by the generator on first use, or whenever its MANIFEST.json says the
generator, the footage or a sidecar changed: ~1 min) and fails if precision or recall of a
category falls below what docs/EVALUATION.md reports, less `GATE_MARGIN`.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from rich.console import Console

from gridwatch.config import GridwatchConfig, demo_config_path, load_config
from gridwatch.detectors import eval_clips as E
from gridwatch.detectors.evaluate import (
    EvalError,
    Prediction,
    TruthEvent,
    load_clips,
    load_sidecar,
    main,
    match,
    rules_for_clip,
    run_eval,
    score,
)
from gridwatch.detectors.scenarios import detections_of
from gridwatch.detectors.scene_rules import CameraRules

REPO = Path(__file__).resolve().parent.parent
_FOOTAGE_DIR = Path(os.environ.get("GRIDWATCH_FOOTAGE_DIR", REPO / "var" / "footage"))
FOOTAGE = (_FOOTAGE_DIR if _FOOTAGE_DIR.is_absolute() else REPO / _FOOTAGE_DIR) / "vtest.avi"
CLIPS_DIR = Path(os.environ.get("GRIDWATCH_EVAL_CLIPS_DIR", E.OUT_DIR))

# the gate: precision and recall per category measured on the shipped set at 2 fps with NanoDet-g
# (docs/EVALUATION.md); each is a count over 3-5 events, so losing one event fails the gate
MEASURED = {
    "illegal_dumping": {"precision": 0.80, "recall": 0.80},
    "gathering": {"precision": 1.00, "recall": 1.00},
    "road_blockage": {"precision": 1.00, "recall": 1.00},
}
GATE_MARGIN = 0.05


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


# --- matcher and scorer --------------------------------------------------------------------------------
def _events() -> list[TruthEvent]:
    return [
        TruthEvent("a.mp4", "gathering", "square", 10.0, 40.0, 10.0),
        TruthEvent("a.mp4", "illegal_dumping", "paved", 5.0, 30.0, 10.0),
        TruthEvent("a.mp4", "road_blockage", "road", 12.0, 20.0, 5.0),
    ]


def _predictions() -> list[Prediction]:
    return [
        Prediction("a.mp4", "gathering", "square", 22.0),  # TP, 2 s past dwell
        Prediction("a.mp4", "gathering", "square", 30.0),  # duplicate
        Prediction("a.mp4", "gathering", "square", 42.0),  # duplicate: end + 2 s is still the event
        Prediction("a.mp4", "gathering", "square", 42.5),  # FP: past end + 2 s
        Prediction("a.mp4", "illegal_dumping", "paved", 4.0),  # FP: before the event started
        Prediction("a.mp4", "illegal_dumping", "paved", 18.0),  # TP, 3 s past dwell
        Prediction("a.mp4", "illegal_dumping", "lawn", 20.0),  # FP: another zone
        Prediction("b.mp4", "road_blockage", "road", 15.0),  # FP: another clip; the road event is missed
    ]


def test_match_outcomes():
    outcomes, missed = match(_predictions(), _events())
    got = [(o.prediction.video, o.prediction.category, o.prediction.t_s, o.kind, o.event) for o in outcomes]
    assert got == [
        ("a.mp4", "illegal_dumping", 4.0, "fp", None),
        ("a.mp4", "illegal_dumping", 18.0, "tp", 1),
        ("a.mp4", "illegal_dumping", 20.0, "fp", None),
        ("a.mp4", "gathering", 22.0, "tp", 0),
        ("a.mp4", "gathering", 30.0, "duplicate", 0),
        ("a.mp4", "gathering", 42.0, "duplicate", 0),
        ("a.mp4", "gathering", 42.5, "fp", None),
        ("b.mp4", "road_blockage", 15.0, "fp", None),
    ]
    assert [o.delay_s for o in outcomes if o.kind == "tp"] == [3.0, 2.0]
    assert missed == [2]


def test_score_figures():
    s = score(_predictions(), _events())
    g = s["categories"]["gathering"]
    assert (g["events"], g["candidates"], g["tp"], g["fp"], g["duplicates"], g["misses"]) == (
        1,
        4,
        1,
        3,
        2,
        0,
    )
    assert g["precision"] == 0.25 and g["recall"] == 1.0 and g["f1"] == pytest.approx(0.4)
    assert (g["delay_median_s"], g["delay_max_s"], g["delay_rmse_s"]) == (2.0, 2.0, 2.0)
    assert g["s_score"] == pytest.approx(0.4 * (1 - 2 / 300))

    d = s["categories"]["illegal_dumping"]
    assert (d["events"], d["tp"], d["fp"], d["duplicates"], d["misses"]) == (1, 1, 2, 0, 0)
    assert d["precision"] == pytest.approx(1 / 3) and d["recall"] == 1.0 and d["f1"] == pytest.approx(0.5)
    assert d["delay_rmse_s"] == 3.0 and d["s_score"] == pytest.approx(0.5 * (1 - 3 / 300))

    r = s["categories"]["road_blockage"]
    assert (r["events"], r["tp"], r["fp"], r["misses"]) == (1, 0, 1, 1)
    assert (r["precision"], r["recall"], r["f1"], r["s_score"]) == (0.0, 0.0, 0.0, 0.0)
    assert r["delay_rmse_s"] is None and r["delay_median_s"] is None

    o = s["overall"]
    assert (o["events"], o["candidates"], o["tp"], o["fp"], o["duplicates"], o["misses"]) == (
        3,
        8,
        2,
        6,
        2,
        1,
    )
    assert o["precision"] == 0.25 and o["recall"] == pytest.approx(2 / 3)
    assert o["f1"] == pytest.approx(4 / 11)  # 2PR / (P + R) = 2 x 0.25 x 2/3 / (0.25 + 2/3)
    assert o["delay_median_s"] == 2.5 and o["delay_max_s"] == 3.0
    assert o["delay_rmse_s"] == pytest.approx(math.sqrt((2**2 + 3**2) / 2))
    assert o["s_score"] == pytest.approx(4 / 11 * (1 - math.sqrt(6.5) / 300))


def test_window_edges_rmse_cap_and_empty():
    ev = [TruthEvent("a.mp4", "gathering", "sq", 10.0, 20.0, 5.0)]
    # exactly at start_s and exactly at end_s + 2: both inside (the second a duplicate)
    outcomes, _ = match(
        [Prediction("a.mp4", "gathering", "sq", 10.0), Prediction("a.mp4", "gathering", "sq", 22.0)], ev
    )
    assert [o.kind for o in outcomes] == ["tp", "duplicate"]
    assert outcomes[0].delay_s == -5.0  # raised before the dwell was up: a negative delay
    # RMSE is capped at 300 s: a true positive 400 s late scores S = 0 with F1 = 1
    late = score(
        [Prediction("a.mp4", "gathering", "sq", 415.0)], [TruthEvent("a.mp4", "gathering", "sq", 10, 500, 5)]
    )
    assert late["overall"]["f1"] == 1.0 and late["overall"]["delay_rmse_s"] == 400.0
    assert late["overall"]["s_score"] == 0.0
    # nothing labelled, nothing raised: no figure is made up
    empty = score([], [])["overall"]
    assert (empty["precision"], empty["recall"], empty["f1"], empty["s_score"]) == (None, None, None, None)
    # a negative clip with a false alarm: precision 0, recall undefined, F1 0
    fa = score([Prediction("n.mp4", "gathering", "sq", 12.0)], [])["categories"]["gathering"]
    assert (fa["precision"], fa["recall"], fa["f1"]) == (0.0, None, 0.0)


def test_two_events_in_one_zone_each_get_their_first_candidate():
    ev = [
        TruthEvent("a.mp4", "illegal_dumping", "z", 10.0, 60.0, 10.0),
        TruthEvent("a.mp4", "illegal_dumping", "z", 15.0, 60.0, 10.0),
    ]
    preds = [Prediction("a.mp4", "illegal_dumping", "z", t) for t in (24.0, 27.0, 40.0)]
    outcomes, missed = match(preds, ev)
    assert [(o.kind, o.event) for o in outcomes] == [("tp", 0), ("tp", 1), ("duplicate", 0)]
    assert [o.delay_s for o in outcomes[:2]] == [4.0, 2.0] and missed == []


# --- sidecars -----------------------------------------------------------------------------------------------
def _sidecar(**over: Any) -> dict[str, Any]:
    left, right = [[0, 0], [30, 0], [30, 20], [0, 20]], [[34, 0], [63, 0], [63, 47], [34, 47]]
    d: dict[str, Any] = {
        "version": 1,
        "video": "c.mp4",
        "fps": 10,
        "width": 64,
        "height": 48,
        "duration_s": 2.0,
        "zones": [
            {"id": "road", "kind": "roadway", "polygon": left, "dwell_s": 1},
            {
                "id": "verge",
                "kind": "no_dumping",
                "polygon": [[0, 25], [30, 25], [30, 47], [0, 47]],
                "dwell_s": 1,
            },
            {"id": "sq", "kind": "gathering", "polygon": right, "dwell_s": 1, "min_people": 5},
        ],
        "events": [
            {"category": "road_blockage", "zone": "road", "start_s": 0.5, "end_s": 2.0, "note": "van"}
        ],
        "source": {"package": "test", "version": "1", "path": "c.mp4", "licence": "CC0"},
        "notes": "",
    }
    d.update(over)
    return d


def _write(tmp_path: Path, data: dict[str, Any], name: str = "c") -> Path:
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(data))
    return p


def _video(path: Path, size: tuple[int, int] = (64, 48), frames: int = 20, fps: float = 10.0) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert w.isOpened()
    for i in range(frames):
        w.write(np.full((size[1], size[0], 3), 40 + i, np.uint8))
    w.release()


def test_valid_sidecar_loads(tmp_path):
    sc = load_sidecar(_write(tmp_path, _sidecar()))
    assert sc.zones[2].min_people == 5 and sc.events[0].category == "road_blockage"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "c.json: colour: Extra inputs are not permitted"),
        ({"version": 2}, "c.json: version: Input should be 1"),
        ({"fps": 0}, "c.json: fps: Input should be greater than 0"),
        ({"video": "other.mp4"}, "c.json: video: 'other.mp4' is not 'c.mp4'"),
        (
            {"events": [{"category": "fire", "zone": "road", "start_s": 0, "end_s": 2}]},
            "c.json: events[0].category:",
        ),
        (
            {"events": [{"category": "road_blockage", "zone": "lane", "start_s": 0, "end_s": 2}]},
            "c.json: events[0].zone: unknown zone 'lane' (zones: road, verge, sq)",
        ),
        (
            {"events": [{"category": "gathering", "zone": "road", "start_s": 0, "end_s": 2}]},
            "c.json: events[0].zone: a gathering event needs a gathering zone; 'road' is roadway",
        ),
        (
            {"events": [{"category": "road_blockage", "zone": "road", "start_s": 1.5, "end_s": 1.0}]},
            "c.json: events[0].end_s: 1 is not after start_s 1.5",
        ),
        (
            {"events": [{"category": "road_blockage", "zone": "road", "start_s": 1.5, "end_s": 2.0}]},
            "c.json: events[0]: lasts 0.5 s, less than the dwell_s of zone 'road' (1 s)",
        ),
        (
            {"events": [{"category": "road_blockage", "zone": "road", "start_s": 0, "end_s": 9}]},
            "c.json: events[0].end_s: 9 is after the clip's end (2 s)",
        ),
        ({"source": {"package": "x"}}, "c.json: source.version: Field required"),
    ],
)
def test_sidecar_errors_name_file_and_field(tmp_path, change, message):
    with pytest.raises(EvalError) as e:
        load_sidecar(_write(tmp_path, _sidecar(**change)))
    assert message in str(e.value)
    assert str(tmp_path / "c.json") in str(e.value)


def test_sidecar_zone_errors(tmp_path):
    zones = _sidecar()["zones"]
    sq = zones[2]
    cases = [
        ({**sq, "min_people": None}, "zones[2]: min_people: a gathering zone needs it"),
        ({**sq, "kind": "roadway"}, "zones[2]: min_people: only gathering zones have it"),
        (
            {**sq, "polygon": [[34, 0], [90, 0], [63, 47]]},
            "zones[2].polygon: vertices outside the 64x48 frame",
        ),
        ({**sq, "polygon": [[0, 0], [9, 9], [9, 0], [0, 9]]}, "zones[2].polygon: polygon must be simple"),
        ({**sq, "id": "road"}, "zones[2].id: 'road' appears twice"),
        ({**sq, "dwell_s": -1}, "zones[2].dwell_s: Input should be greater than 0"),
    ]
    for zone, message in cases:
        with pytest.raises(EvalError) as e:
            load_sidecar(_write(tmp_path, _sidecar(zones=[*zones[:2], zone])))
        assert message in str(e.value), (message, str(e.value))


def test_not_json_and_all_problems_at_once(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    _write(tmp_path, _sidecar(video="x.mp4"), "wrongname")
    _write(tmp_path, _sidecar(video="novideo.mp4"), "novideo")
    with pytest.raises(EvalError) as e:
        load_clips(tmp_path)
    msg = str(e.value)
    assert f"{tmp_path / 'broken.json'}: not JSON: Expecting property name" in msg
    assert f"{tmp_path / 'wrongname.json'}: video: 'x.mp4' is not 'wrongname.mp4'" in msg
    assert f"{tmp_path / 'novideo.json'}: video: {tmp_path / 'novideo.mp4'} does not exist" in msg
    with pytest.raises(EvalError, match="not a directory"):
        load_clips(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError, match="no clip sidecars"):
        load_clips(empty)


def test_video_must_match_its_sidecar(tmp_path):
    _video(tmp_path / "c.mp4", size=(64, 48), frames=20, fps=10)
    _write(tmp_path, _sidecar())
    assert [c.name for c in load_clips(tmp_path)] == ["c"]
    for change, message in [
        ({"width": 96}, "width/height: the sidecar says 96x48, c.mp4 is 64x48"),
        ({"fps": 25}, "fps: the sidecar says 25, c.mp4 has 10"),
        ({"duration_s": 9.0}, "duration_s: the sidecar says 9 s, c.mp4 lasts 2.00 s"),
    ]:
        _write(tmp_path, _sidecar(**change))
        with pytest.raises(EvalError) as e:
            load_clips(tmp_path)
        assert f"{tmp_path / 'c.json'}: {message}" in str(e.value)


def test_min_people_is_max_people_minus_one(tmp_path):
    # "min_people 5" means a crowd of 5; the rule's max_people counts MORE than: 4
    sc = load_sidecar(_write(tmp_path, _sidecar()))
    rules = rules_for_clip(sc, "eval-c", 2.0)
    sq = next(z for z in rules.camera.zones if z.id == "sq")
    assert sq.max_people == 4 and sq.dwell_s == 1 and rules.tracker.fps == 2.0
    assert rules.camera.frame_size == (64, 48)

    def raised(n: int) -> int:
        cr = CameraRules(rules)
        people = [((40.0 + 4 * k, 10.0 + 6 * k, 43.0 + 4 * k, 18.0 + 6 * k), "person", 0.9) for k in range(n)]
        return sum(len(cr.step(1000 + 500 * i, None, detections_of(people)).candidates) for i in range(8))

    assert raised(5) == 1 and raised(4) == 0


def test_committed_sidecars_are_the_recipes_and_valid():
    assert E.check_sidecars() == []
    paths = sorted(E.SIDECAR_DIR.glob("*.json"))
    assert len(paths) == len(E.recipes()) >= 10
    sidecars = [load_sidecar(p) for p in paths]
    cats = {e.category for sc in sidecars for e in sc.events}
    assert cats == {"illegal_dumping", "gathering", "road_blockage"}
    assert sum(not sc.events for sc in sidecars) >= 5  # hard negatives
    assert all(20 <= sc.duration_s <= 60 for sc in sidecars)


# --- real runs (footage + NanoDet) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg() -> GridwatchConfig:
    return load_config(demo_config_path())


@pytest.fixture(scope="module")
def nanodet(cfg):
    if not FOOTAGE.is_file():
        pytest.skip(f"footage {FOOTAGE} missing: run scripts/fetch_footage.sh")
    from gridwatch.detectors.base import build_detector

    try:
        det = build_detector(cfg.cameras.detector)
    except Exception as e:  # no model, bad model: say so, the rest of the suite does not need it
        pytest.skip(f"the configured detector cannot be built ({type(e).__name__}: {e})")
    yield det
    det.close()


def _consistent(r: dict[str, Any], predictions: Path | None = None) -> None:
    groups = [*r["categories"].values(), r["overall"]]
    for f in groups:
        assert f["tp"] + f["misses"] == f["events"]
        assert f["tp"] + f["fp"] == f["candidates"] and f["duplicates"] <= f["fp"]
        if f["candidates"]:
            assert f["precision"] == pytest.approx(f["tp"] / f["candidates"], abs=1e-4)
        if f["events"]:
            assert f["recall"] == pytest.approx(f["tp"] / f["events"], abs=1e-4)
        if f["f1"] is not None and f["delay_rmse_s"] is not None:
            s = f["f1"] * (1 - min(f["delay_rmse_s"], 300) / 300)
            assert f["s_score"] == pytest.approx(s, abs=2e-4)
        assert (f["delay_rmse_s"] is None) == (f["tp"] == 0)
    for key in ("events", "candidates", "tp", "fp", "duplicates", "misses"):
        assert sum(f[key] for f in r["categories"].values()) == r["overall"][key]
        if key != "candidates":
            assert sum(pc[key] for pc in r["per_clip"]) == r["overall"][key]
    assert sum(len(pc["candidates"]) for pc in r["per_clip"]) == r["overall"]["candidates"]
    assert r["frames_analysed"] >= r["inferences"] > 0
    assert r["clip_seconds"] == pytest.approx(r["speed_x_realtime"] * r["wall_seconds"], rel=1e-3)
    if predictions is not None:
        lines = [json.loads(x) for x in predictions.read_text().splitlines()]
        assert len(lines) == r["overall"]["candidates"]
        assert all(set(x) == {"video", "category", "zone", "t_s"} for x in lines)


def test_real_run_on_three_generated_clips(tmp_path, cfg, nanodet):
    names = ["dump_bag_paved", "van_stops_road", "neg_brief_stops"]
    E.build_clips(tmp_path, names=names, footage_path=FOOTAGE)
    assert E.up_to_date(tmp_path, names, FOOTAGE) and not E.up_to_date(tmp_path, None, FOOTAGE)
    for n in names:  # the generator copies the committed sidecar next to its video
        assert (tmp_path / f"{n}.json").read_text() == (E.SIDECAR_DIR / f"{n}.json").read_text()
    preds = tmp_path / "out" / "predictions.jsonl"
    r = run_eval(tmp_path, cfg, fps=2.0, predictions_path=preds, console=_quiet(), detector=nanodet)
    json.loads(json.dumps(r))
    _consistent(r, preds)
    assert (r["clips"], r["fps"], r["clip_seconds"]) == (3, 2.0, 110.0)
    assert r["overall"]["events"] == 2 and r["overall"]["tp"] >= 1  # the pipeline sees what was put in
    assert r["detector"] == nanodet.model_version
    assert r["speed_x_realtime"] > 1.0, "slower than real time"


def test_module_entry_point_prints_the_json_last(tmp_path, capsys, nanodet):
    # a 2 s synthetic clip is enough to see the output contract: tables on stderr, JSON last on stdout
    _video(tmp_path / "c.mp4")
    _write(tmp_path, _sidecar())
    preds = tmp_path / "p.jsonl"
    assert main([str(tmp_path), "--fps", "5", "--predictions", str(preds)]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert (result["clips"], result["fps"], result["overall"]["events"], result["overall"]["misses"]) == (
        1,
        5.0,
        1,
        1,
    )
    assert result["predictions_path"] == str(preds) and preds.read_text() == ""
    assert "eval detectors" in out.err and "MISSED road_blockage@road" in out.err
    assert main([str(tmp_path / "nothing")]) == 2
    assert "evaluation error" in capsys.readouterr().err


@pytest.mark.slow
def test_gate_whole_shipped_set(cfg, nanodet):
    """CI gate: the whole shipped set through the real pipeline (about 75 s on 2 cores)."""
    clips = E.ensure_clips(CLIPS_DIR, footage=FOOTAGE)
    r = run_eval(clips, cfg, fps=2.0, console=_quiet(), detector=nanodet)
    _consistent(r)
    assert r["clips"] == len(E.recipes())
    low = []
    for cat, want in MEASURED.items():
        for key, value in want.items():
            got = r["categories"][cat][key]
            if got is None or got < value - GATE_MARGIN:
                low.append(f"{cat} {key} {got} < {value} - {GATE_MARGIN}")
    per_clip = {pc["clip"]: pc["candidates"] + pc["missed"] for pc in r["per_clip"]}
    assert not low, f"detector quality regressed: {low}; per clip: {per_clip}"


@pytest.mark.slow
def test_the_fine_tuned_bag_model_finds_what_production_misses_without_false_alarms(tmp_path, cfg, nanodet):
    """Issue 8 at event level: the dark bag on the lawn that production misses (12 grey levels from
    the grass, no COCO class) is found by the fine-tune that added `bag` (models/nanodet-g-416-bag),
    and the scenery window keeps the footage's own litter and objects present from the first frame
    out (docs/TRAINING.md "Event level"). The dumping clips and the hard negatives, at 1 fps."""
    from gridwatch.detectors.base import build_detector

    clips = E.ensure_clips(CLIPS_DIR, footage=FOOTAGE)
    names = [
        "dump_box_two_640",
        "dump_drop_lawn",
        "neg_present_removed",
        "neg_light",
        "neg_crowd_walkthrough",
    ]
    for n in names:
        for ext in (".mp4", ".json"):
            (tmp_path / f"{n}{ext}").symlink_to(Path(clips) / f"{n}{ext}")
    prod = run_eval(tmp_path, cfg, fps=1.0, console=_quiet(), detector=nanodet)["categories"][
        "illegal_dumping"
    ]
    det = build_detector(
        cfg.cameras.detector.model_copy(update={"model_dir": REPO / "models" / "nanodet-g-416-bag"})
    )
    try:
        tuned = run_eval(tmp_path, cfg, fps=1.0, console=_quiet(), detector=det)["categories"][
            "illegal_dumping"
        ]
    finally:
        det.close()
    assert (prod["events"], prod["tp"], prod["misses"]) == (3, 2, 1), prod  # the lawn bag is missed
    assert (tuned["tp"], tuned["misses"], tuned["fp"], tuned["duplicates"]) == (3, 0, 0, 0), tuned
