"""Detector plugins: registry and configs, the NanoDet model (integrity, decoding, real footage), motion gate.

Reference boxes on vtest.avi were checked by eye on 4x crops of the frames (docs/MODELS.md,
"Verified on footage"): each surrounds one walking person from head to feet.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field

from gridwatch.detectors import base
from gridwatch.detectors.base import (
    Detector,
    DetectorConfig,
    DetectorConfigError,
    build_detector,
    detector_config_union,
    register_detector,
)
from gridwatch.detectors.motion import MotionConfig, MotionGate, due_for_detection, small_grey
from gridwatch.detectors.nanodet import (
    DEFAULT_MODEL_DIR,
    ModelIntegrityError,
    NanoDetConfig,
    NanoDetDetector,
    decode_gfl,
    load_manifest,
    nms_per_class,
    preprocess,
)
from gridwatch.detectors.onnx_shapes import declared_shapes, set_declared_shapes

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = Path(os.environ.get("GRIDWATCH_FOOTAGE_DIR", REPO / "var" / "footage"))
if not FOOTAGE.is_absolute():
    FOOTAGE = REPO / FOOTAGE

# vtest.avi (768x576): frame -> hand-checked person boxes (x1, y1, x2, y2)
VTEST_PEOPLE = {
    100: [
        (349, 198, 380, 272),  # dark coat, walking left of the sign post
        (378, 181, 408, 258),  # jeans, facing the camera
        (494, 150, 517, 221),  # red and blue jacket
        (520, 151, 540, 219),  # fair hair, black coat
        (590, 155, 620, 236),  # walking away, right
        (222, 61, 237, 97),  # small, far on the upper path
    ],
    400: [
        (688, 300, 742, 412),  # near, right, carrying papers
        (590, 140, 617, 204),  # far right
        (273, 199, 304, 286),  # left of the sign post
    ],
}


def _iou(a: np.ndarray, b: tuple[float, float, float, float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def _frames(name: str, indices: list[int]) -> dict[int, np.ndarray]:
    path = FOOTAGE / name
    if not path.is_file():
        pytest.skip(f"{path} missing: run scripts/fetch_footage.sh")
    cap = cv2.VideoCapture(str(path))
    out = {}
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok, f"{path}: cannot read frame {i}"
        out[i] = frame
    cap.release()
    return out


@pytest.fixture(scope="module")
def nanodet() -> NanoDetDetector:
    det = build_detector({"type": "nanodet"})
    assert isinstance(det, NanoDetDetector)
    return det


# --- registry and configs --------------------------------------------------------------------------
def test_registry_builds_nanodet_from_a_mapping(nanodet: NanoDetDetector) -> None:
    det = build_detector({"type": "nanodet", "score_threshold": 0.5, "classes": ["person", "car"]})
    assert isinstance(det, NanoDetDetector)
    assert det.config.score_threshold == 0.5
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    assert det.model_version == f"nanodet-g-416@{manifest.sha256[:12]}"
    assert len(det.class_names) == 80 and det.class_names[0] == "person"
    assert "nanodet" in base.registered_detectors()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "yolo"}, "detector.type: unknown detector type 'yolo'; registered types: nanodet"),
        ({"score_threshold": 0.3}, "detector.type: missing"),
        (
            {"type": "nanodet", "score_treshold": 0.3},
            "detector.score_treshold: Extra inputs are not permitted",
        ),
        ({"type": "nanodet", "score_threshold": 1.5}, "detector.score_threshold: Input should be less than"),
        ({"type": "nanodet", "classes": []}, "detector.classes: Value error, must name at least one class"),
        (
            {"type": "nanodet", "input_size": [16, 416]},
            "detector.input_size: Value error, width and height must be 32-4096 pixels",
        ),
        ({"type": "nanodet", "input_size": [400, 300]}, "detector.input_size: 400x300 is not a multiple of"),
    ],
)
def test_registry_rejects_bad_configs_naming_the_field(config: dict, message: str) -> None:
    with pytest.raises(DetectorConfigError) as err:
        build_detector(config)
    assert message in str(err.value)


def test_unknown_class_name_is_refused_at_build() -> None:
    with pytest.raises(
        DetectorConfigError, match=r"detector.classes: 'persn' not among the labels of nanodet-g-416"
    ):
        build_detector({"type": "nanodet", "classes": ["persn"]})


def test_union_type_for_yaml_loaders_and_third_party_plugins() -> None:
    class EchoConfig(DetectorConfig):
        type: Literal["test-echo"] = Field("test-echo", title="Type", description="Test detector.")
        boxes: int = Field(1, title="Boxes", description="How many boxes to return.")

    @register_detector("test-echo")
    class EchoDetector(Detector):
        config_model = EchoConfig

        def __init__(self, config: EchoConfig) -> None:
            self.config = config
            self.model_version = "echo@0"

        @property
        def class_names(self) -> tuple[str, ...]:
            return ("thing",)

        def detect(self, frame_bgr: np.ndarray) -> sv.Detections:
            n = self.config.boxes
            return base.make_detections(
                np.tile([0, 0, 1, 1], (n, 1)), np.ones(n), np.zeros(n), self.class_names
            )

    try:

        class Camera(BaseModel):
            model_config = ConfigDict(extra="forbid")
            detector: detector_config_union() = Field(
                title="Detector", description="Detector of this camera."
            )  # type: ignore[valid-type]

        cam = Camera.model_validate({"detector": {"type": "test-echo", "boxes": 2}})
        assert isinstance(cam.detector, EchoConfig)
        assert isinstance(Camera.model_validate({"detector": {"type": "nanodet"}}).detector, NanoDetConfig)
        found = build_detector(cam.detector).detect(np.zeros((4, 4, 3), np.uint8))
        assert found.data["class_name"].tolist() == ["thing", "thing"]
        with pytest.raises(TypeError, match=r'Literal\["other"\]'):
            register_detector("other")(EchoDetector)
    finally:
        base._REGISTRY.pop("test-echo", None)
        base._union_adapter.cache_clear()


# --- model integrity -------------------------------------------------------------------------------
def test_sha256_mismatch_names_the_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "nanodet-g-416"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir, ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    onnx_file = model_dir / "nanodet-g-416.onnx"
    with onnx_file.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError) as err:
        build_detector({"type": "nanodet", "model_dir": str(model_dir)})
    msg = str(err.value)
    assert str(onnx_file) in msg and "does not match" in msg and "model.yaml" in msg
    onnx_file.unlink()
    with pytest.raises(ModelIntegrityError, match="model file not found"):
        build_detector({"type": "nanodet", "model_dir": str(model_dir)})


# --- input size: the declared shapes re-written in memory -------------------------------------------
def test_onnx_shapes_rewrites_only_the_declarations() -> None:
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    data = (DEFAULT_MODEL_DIR / manifest.file).read_bytes()
    ins, outs = declared_shapes(data)
    assert ins == {"image": [1, 3, 416, 416]}
    assert outs["cls_pred_stride_8"] == [1, 52 * 52, 80] and outs["dis_pred_stride_32"] == [1, 13 * 13, 44]
    # the same declarations give the same bytes: everything else is copied, not re-encoded
    assert set_declared_shapes(data, {"image": [1, 3, 416, 416]}) == data
    patched = set_declared_shapes(data, {"image": [1, 3, "h", 416], "cls_pred_stride_8": [1, None, 80]})
    ins2, outs2 = declared_shapes(patched)
    assert ins2 == {"image": [1, 3, "h", 416]} and outs2["cls_pred_stride_8"] == [1, None, 80]
    assert outs2["cls_pred_stride_16"] == outs["cls_pred_stride_16"]
    with pytest.raises(KeyError, match="no input/output named nope"):
        set_declared_shapes(data, {"nope": [1]})


def test_trimmed_padding_sees_the_frame_at_the_same_scale(nanodet: NanoDetDetector) -> None:
    """Trimming the letterbox padding in 64 px steps keeps the scale and the cell grid on the same
    pixels: the same people, nearly the same boxes, at 416x352 for a 4:3 frame."""
    full = build_detector({"type": "nanodet", "trim_padding": False})
    assert isinstance(full, NanoDetDetector) and full.model_version == nanodet.model_version
    assert nanodet.input_size_for(768, 576) == (416, 352) and nanodet.input_size_for(640, 480) == (416, 352)
    assert nanodet.input_size_for(1920, 1080) == (416, 288) and nanodet.input_size_for(480, 640) == (352, 416)
    assert nanodet.input_size_for(416, 416) == (416, 416) and full.input_size_for(768, 576) == (416, 416)
    frames = _frames("vtest.avi", sorted(VTEST_PEOPLE))
    for index, expected in VTEST_PEOPLE.items():
        found, ref = nanodet.detect(frames[index]), full.detect(frames[index])
        people = found[found.data["class_name"] == "person"]
        matched = [max((_iou(b, r) for b in people.xyxy), default=0.0) for r in expected]
        assert min(matched) > 0.5 and np.median(matched) > 0.8, f"frame {index}: IoUs {np.round(matched, 2)}"
        iou = sv.box_iou_batch(ref.xyxy, found.xyxy)
        # a borderline box may come or go (frame 100: 9 boxes against 8)
        assert abs(len(found) - len(ref)) <= 1 and np.median(iou.max(axis=1)) > 0.97, (len(found), len(ref))
    full.close()


def test_explicit_input_size_is_part_of_the_model_version(nanodet: NanoDetDetector) -> None:
    det = build_detector({"type": "nanodet", "input_size": [320, 256], "trim_padding": False})
    assert isinstance(det, NanoDetDetector)
    assert det.model_version == f"{nanodet.model_version}/320x256"
    frame = _frames("vtest.avi", [100])[100]
    people = det.detect(frame)
    assert len(people) >= 3 and (people.xyxy[:, 2] <= 768).all()
    det.close()


def test_inferences_run_concurrently_and_close_waits_for_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Camera threads share one detector: two runs overlap (no lock around run()); close() from
    another thread lets a run in progress finish and refuses the next one."""
    det = build_detector({"type": "nanodet"})
    assert isinstance(det, NanoDetDetector)
    frame = np.zeros((480, 640, 3), np.uint8)
    det.detect(frame)
    active, peak, lock = [0], [0], threading.Lock()
    real = det._sessions[(416, 352)]

    class SlowSession:
        def run(self, names, feeds):  # noqa: ANN001, ANN202 - onnxruntime's signature
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.3)
            with lock:
                active[0] -= 1
            return real.run(names, feeds)

    monkeypatch.setitem(det._sessions, (416, 352), SlowSession())
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(det.detect(frame))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    det.close()  # while both are running
    for t in threads:
        t.join(5)
    assert peak[0] == 2 and len(results) == 2
    with pytest.raises(RuntimeError, match="detector is closed"):
        det.detect(frame)


# --- decoding --------------------------------------------------------------------------------------
def _synthetic_outputs(reg_max: int = 10) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outputs of a 416x416 net with one confident car at stride 16, row 10, col 5."""
    cls = [np.zeros((1, (416 // s) ** 2, 80), np.float32) for s in (8, 16, 32)]
    dis = [np.full((1, (416 // s) ** 2, 4 * (reg_max + 1)), -20.0, np.float32) for s in (8, 16, 32)]
    cell = 10 * 26 + 5
    cls[1][0, cell, 2] = 0.9  # car
    cls[1][0, cell, 0] = 0.2  # person, below the threshold
    logits = dis[1][0, cell].reshape(4, reg_max + 1)
    logits[0, 2] = 20.0  # left: 2 bins
    logits[1, 3] = 20.0  # top: 3 bins
    logits[2, [4, 5]] = 20.0  # right: half 4, half 5 -> 4.5 bins
    logits[3, 1] = 20.0  # bottom: 1 bin
    return cls, dis


def test_decode_gfl_on_a_synthetic_output() -> None:
    cls, dis = _synthetic_outputs()
    xyxy, scores, class_ids = decode_gfl(cls, dis, [8, 16, 32], 416, 416, reg_max=10, score_threshold=0.35)
    # centre ((5 + 0.5) * 16, (10 + 0.5) * 16) = (88, 168); distances (2, 3, 4.5, 1) * 16
    np.testing.assert_allclose(xyxy, [[88 - 32, 168 - 48, 88 + 72, 168 + 16]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.9])
    assert class_ids.tolist() == [2]
    # the class filter and the threshold apply before decoding
    none = decode_gfl(
        cls, dis, [8, 16, 32], 416, 416, reg_max=10, score_threshold=0.35, class_ids=np.array([0])
    )
    assert len(none[0]) == 0
    both = decode_gfl(cls, dis, [8, 16, 32], 416, 416, reg_max=10, score_threshold=0.1)
    assert sorted(both[2].tolist()) == [0, 2] and np.allclose(both[0][0], both[0][1])  # same cell, same box
    with pytest.raises(ValueError, match="stride 8"):
        decode_gfl(cls, dis, [8, 16, 32], 320, 320, reg_max=10, score_threshold=0.35)


def test_class_aware_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], np.float32)
    keep = nms_per_class(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 2, 0]), 0.5, 100)
    assert keep.tolist() == [0, 2, 3]  # box 1 overlaps box 0 of its class; box 2 is another class


def test_letterbox_maps_boxes_back_to_the_frame(nanodet: NanoDetDetector, monkeypatch) -> None:
    frame = np.zeros((576, 768, 3), np.uint8)
    batch, box = preprocess(frame, 416, 416, np.zeros(3), np.ones(3))
    assert batch.shape == (1, 3, 416, 416) and batch.dtype == np.float32
    # 768x576 -> 416x312, centred: 52 rows of padding above
    assert (box.scale_x, box.pad_x, box.pad_y) == pytest.approx((416 / 768, 0.0, 52.0))
    monkeypatch.setattr(nanodet, "infer", lambda batch: _synthetic_outputs())
    monkeypatch.setattr(nanodet, "_trim_step", 0)  # the synthetic outputs are of a 416x416 input
    found = nanodet.detect(frame)
    assert found.data["class_name"].tolist() == ["car"]
    s = 768 / 416
    np.testing.assert_allclose(found.xyxy[0], [56 * s, (120 - 52) * s, 160 * s, (184 - 52) * s], atol=0.01)
    assert found.xyxy.dtype == np.float32 and found.confidence.dtype == np.float32


# --- real footage ----------------------------------------------------------------------------------
def test_nanodet_finds_the_people_of_vtest(nanodet: NanoDetDetector) -> None:
    frames = _frames("vtest.avi", sorted(VTEST_PEOPLE))
    for index, expected in VTEST_PEOPLE.items():
        frame = frames[index]
        found = nanodet.detect(frame)
        assert isinstance(found, sv.Detections)
        assert found.xyxy.dtype == np.float32 and found.data["class_name"].dtype.kind == "U"
        h, w = frame.shape[:2]
        assert (found.xyxy[:, [0, 2]] >= 0).all() and (found.xyxy[:, [0, 2]] <= w).all()
        assert (found.xyxy[:, [1, 3]] >= 0).all() and (found.xyxy[:, [1, 3]] <= h).all()
        assert (found.xyxy[:, 2] > found.xyxy[:, 0]).all() and (found.xyxy[:, 3] > found.xyxy[:, 1]).all()
        people = found[found.data["class_name"] == "person"]
        assert (people.confidence >= nanodet.config.score_threshold).all()
        assert len(people) >= len(expected), f"frame {index}: {len(people)} people found"
        matched = [max((_iou(b, ref) for b in people.xyxy), default=0.0) for ref in expected]
        # every hand-checked person is found, with a tight box (measured: IoU 0.91-0.95 for all nine)
        assert min(matched) > 0.5, f"frame {index}: IoUs {np.round(matched, 2)}"
        assert np.median(matched) > 0.8, f"frame {index}: IoUs {np.round(matched, 2)}"


def test_class_filter_on_real_frame() -> None:
    frame = _frames("vtest.avi", [100])[100]
    det = build_detector({"type": "nanodet", "classes": ["car"]})
    found = det.detect(frame)
    assert set(found.data["class_name"].tolist()) == {"car"}
    assert any(_iou(b, (650, 45, 722, 100)) > 0.5 for b in found.xyxy)  # the parked van, top right


# --- motion gate -----------------------------------------------------------------------------------
def test_motion_gate_identical_and_noisy_frames_are_still() -> None:
    frame = _frames("vtest.avi", [100])[100]
    gate = MotionGate(MotionConfig())
    assert gate.update(frame).moving  # first frame: nothing to compare, so "moving"
    assert gate.update(frame.copy()) == (0.0, False)
    noise = np.random.default_rng(1).normal(0, 3, frame.shape)
    noisy = np.clip(frame + noise, 0, 255).astype(np.uint8)
    assert not gate.update(noisy).moving


def test_motion_gate_sees_walking_people() -> None:
    frames = _frames("vtest.avi", [100, 103])
    gate = MotionGate()
    gate.update(frames[100])
    result = gate.update(frames[103])
    assert result.moving and result.fraction > 0.005


def test_motion_gate_detects_periodically_without_motion() -> None:
    frame = _frames("vtest.avi", [100])[100]
    gate = MotionGate(MotionConfig(max_interval_s=5.0))
    decisions = [gate.should_detect(frame, ts) for ts in np.arange(0.0, 12.0, 0.5)]
    assert [float(ts) for ts, d in zip(np.arange(0.0, 12.0, 0.5), decisions, strict=True) if d] == [
        0.0,
        5.0,
        10.0,
    ]


def test_due_for_detection_rule() -> None:
    assert due_for_detection(False, 0.0, None, 5.0)  # never detected
    assert due_for_detection(True, 1.0, 0.5, 5.0)  # motion
    assert not due_for_detection(False, 4.9, 0.0, 5.0)
    assert due_for_detection(False, 5.0, 0.0, 5.0)
    assert due_for_detection(False, 3.0, 10.0, 5.0)  # clock went backwards


def test_small_grey_keeps_aspect_and_width() -> None:
    assert small_grey(np.zeros((576, 768, 3), np.uint8), 160).shape == (120, 160)
    assert small_grey(np.zeros((1080, 1920, 3), np.uint8), 160, 5).shape == (90, 160)
    assert small_grey(np.zeros((100, 120, 3), np.uint8), 160).shape == (100, 120)  # never enlarged
