"""The false-alarm verifier's runtime side: detector features without added inference, and scoring.

Issue 8 part 4a. A second stage scores every detection of the NanoDet detector as a real object or a
false alarm from the detector's *own* features, so it costs no second network:

* :func:`find_feature_taps` reads the ONNX graph (protobuf wire format, no ``onnx`` package, as
  detectors/onnx_shapes.py) and finds, for each head level, the tensor the class/box prediction
  convolution reads. In the bundled NanoDet-g 416 the head of each level is
  ``neck (PAN Add, 128 ch) -> Pad -> Conv 3x3 128 -> LeakyReLU(0.1) -> Conv 1x1 124 -> Split
  (80 class logits | 44 box logits) -> Sigmoid / Reshape / Transpose``; the taps are the LeakyReLU
  outputs ``t122_0`` (stride 8, 128 x 52 x 52 at 416x416), ``t102_0`` (stride 16) and ``t114_0``
  (stride 32): the last features before the class and box convolutions, i.e. exactly what the
  detector's own linear classifier looks at, computed for every frame anyway.
* :func:`with_extra_outputs` declares them as extra graph outputs, in memory (the file on disk stays
  the one whose sha256 the manifest records); :class:`FeatureTapDetector` opens a session on those
  bytes and returns the normal detections (same preprocessing, decode and NMS as
  :class:`~gridwatch.detectors.nanodet.NanoDetDetector`, imported read-only) plus one feature vector
  per detection (:data:`FEATURE_LAYOUT`).
* :class:`Verifier` loads a verifier model directory (``model.onnx`` = MatMul + Add + Sigmoid, ``weights.json``,
  ``verifier.yaml``, ``MODEL_CARD.md``, ``labels.json``; made by gridwatch/train/verifier.py),
  checks its sha256 and its parent detector, and scores feature rows.

A camera worker needs only numpy and onnxruntime for all of this.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import supervision as sv
import yaml

from gridwatch.detectors.base import Detector, make_detections
from gridwatch.detectors.nanodet import (
    NanoDetConfig,
    NanoDetDetector,
    decode_gfl,
    make_session,
    nms_per_class,
    preprocess,
    resized_graph,
)
from gridwatch.detectors.onnx_shapes import _encode, _fields, _get, _shape_proto

__all__ = [
    "FEATURE_LAYOUT",
    "FeatureTapDetector",
    "TappedDetections",
    "VerifiedDetector",
    "Verifier",
    "VerifierError",
    "feature_names",
    "find_feature_taps",
    "logistic_onnx",
    "roi_mean",
    "with_extra_outputs",
]

#: what one feature row holds, in order; a verifier records the layout it was trained on
FEATURE_LAYOUT = "nanodet-tap-v1"
_GEOM = ("level_8", "level_16", "level_32", "score", "log_w", "log_h", "log_aspect")


class VerifierError(RuntimeError):
    """A verifier model directory that cannot be used (missing, damaged, or for another detector)."""


# --- the graph: find and expose the feature tensors ------------------------------------------------
@dataclass(frozen=True)
class _Node:
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _nodes(model: bytes) -> list[_Node]:
    graphs = _get(model, 7)
    if not graphs:
        raise ValueError("not an ONNX model: no graph")
    out = []
    for raw in _get(graphs[0], 1):  # GraphProto.node
        ins: list[str] = []
        outs: list[str] = []
        name = op = ""
        for num, _, v in _fields(raw):  # type: ignore[arg-type]
            if num == 1:
                ins.append(bytes(v).decode())  # type: ignore[call-overload]
            elif num == 2:
                outs.append(bytes(v).decode())  # type: ignore[call-overload]
            elif num == 3:
                name = bytes(v).decode()  # type: ignore[call-overload]
            elif num == 4:
                op = bytes(v).decode()  # type: ignore[call-overload]
        out.append(_Node(name, op, tuple(ins), tuple(outs)))
    return out


def find_feature_taps(model: bytes, head_outputs: Sequence[str]) -> list[str]:
    """For each head output (e.g. ``cls_pred_stride_8``), the data input of the nearest Conv upstream
    of it: the feature map the prediction convolution reads (NanoDet: the head's last LeakyReLU)."""
    producer = {o: n for n in _nodes(model) for o in n.outputs}
    taps = []
    for out in head_outputs:
        node, steps = producer.get(out), 0
        while node is not None and node.op_type != "Conv" and steps < 16:
            data = next((i for i in node.inputs if i in producer), None)
            node, steps = (producer[data] if data else None), steps + 1
        if node is None or node.op_type != "Conv":
            raise ValueError(f"no Conv found upstream of head output {out!r}")
        taps.append(node.inputs[0])
    return taps


def with_extra_outputs(model: bytes, names: Sequence[str]) -> bytes:
    """The model with ``names`` (intermediate float tensors) declared as graph outputs, shape
    ``[1, C?, H?, W?]`` left unknown. Every other byte is copied (weights are not re-encoded)."""
    shape = _shape_proto([None, None, None, None])
    extra = [
        (12, 2, _encode([(1, 2, n.encode()), (2, 2, _encode([(1, 2, _encode([(1, 0, 1), (2, 2, shape)]))]))]))
        for n in names
    ]

    def graph(g: memoryview) -> bytes:
        fields = _fields(g)
        have = {bytes(_get(v, 1)[0]).decode() for n, _, v in fields if n == 12}  # type: ignore[arg-type,call-overload]
        return _encode([*fields, *(e for e, n in zip(extra, names, strict=True) if n not in have)])  # type: ignore[list-item]

    return _encode([(n, wt, graph(v) if n == 7 and wt == 2 else v) for n, wt, v in _fields(model)])  # type: ignore[arg-type]


# --- features per detection ------------------------------------------------------------------------
def feature_names(num_classes: int, channels: int) -> list[str]:
    """Column names of a feature row (:data:`FEATURE_LAYOUT`)."""
    return (
        [f"cell_{i}" for i in range(channels)]
        + [f"roi_{i}" for i in range(channels)]
        + [f"cls_{i}" for i in range(num_classes)]
        + list(_GEOM)
    )


def roi_mean(fmap: np.ndarray, box: np.ndarray, stride: int) -> np.ndarray:
    """Mean of a ``[C, H, W]`` feature map over the cells whose centres lie in ``box`` (input pixels,
    xyxy); the nearest cell when none does."""
    _, gh, gw = fmap.shape
    x0 = int(np.clip(np.ceil(box[0] / stride - 0.5), 0, gw - 1))
    y0 = int(np.clip(np.ceil(box[1] / stride - 0.5), 0, gh - 1))
    x1 = int(np.clip(np.floor(box[2] / stride - 0.5), x0, gw - 1))
    y1 = int(np.clip(np.floor(box[3] / stride - 0.5), y0, gh - 1))
    return fmap[:, y0 : y1 + 1, x0 : x1 + 1].mean(axis=(1, 2))


@dataclass
class TappedDetections:
    """The detector's detections (frame pixels) and, row for row, their feature vectors."""

    detections: sv.Detections
    features: np.ndarray  # [N, D] float32, FEATURE_LAYOUT
    level: np.ndarray  # [N] head level index (0 = stride 8)
    cell: np.ndarray  # [N] cell index on that level (row-major)
    input_xyxy: np.ndarray  # [N, 4] boxes in network-input pixels


class FeatureTapDetector:
    """NanoDet with its head features exposed: :meth:`detect` gives the detections the plain
    detector gives for the same config (same preprocessing, decode and NMS) plus a feature row each.

    One onnxruntime session per input size, opened from the manifest-checked bytes with the taps
    declared as extra outputs; the taps are computed for every frame anyway, so the extra cost is
    copying them out (measured in docs/TRAINING.md)."""

    def __init__(
        self, config: NanoDetConfig | dict[str, Any] | None = None, *, score_threshold: float | None = None
    ):
        cfg = config if isinstance(config, NanoDetConfig) else NanoDetConfig(**(config or {}))
        if score_threshold is not None:
            cfg = cfg.model_copy(update={"score_threshold": score_threshold})
        # the plain detector checks the manifest and the file's sha256, and sizes the input
        self.base = NanoDetDetector(cfg)
        self.config = cfg
        self.manifest = self.base.manifest
        self.model_version = self.base.model_version
        self.detector_sha256 = self.manifest.sha256
        self._bytes = self.base.model_path.read_bytes()
        if hashlib.sha256(self._bytes).hexdigest() != self.manifest.sha256:
            raise VerifierError(f"{self.base.model_path}: changed while loading")
        head = self.manifest.head
        self.strides = [lvl.stride for lvl in head.levels]
        self._cls = [lvl.cls for lvl in head.levels]
        self._dis = [lvl.dis for lvl in head.levels]
        self.taps = find_feature_taps(self._bytes, self._cls)
        self._mean = np.array(self.manifest.input.mean, np.float32)
        self._std = np.array(self.manifest.input.std, np.float32)
        self._resize = cfg.resize or self.manifest.input.resize
        self._class_ids = (
            None
            if cfg.classes is None
            else np.array(sorted({self.manifest.labels.index(c) for c in cfg.classes}), np.int64)
        )
        self._lock = threading.Lock()
        self._sessions: dict[tuple[int, int], ort.InferenceSession] = {}
        self.num_classes = len(self.manifest.labels)
        self.channels: int | None = None
        # the plain detector was needed for its checks and input sizing only: drop its session
        self.base.close()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.labels

    def _session(self, width: int, height: int) -> ort.InferenceSession:
        with self._lock:
            s = self._sessions.get((width, height))
            if s is None:
                spec = self.manifest.input
                model = self._bytes
                if (width, height) != (spec.width, spec.height):
                    model = resized_graph(model, self.manifest, width, height)
                s = make_session(with_extra_outputs(model, self.taps), self.config.intra_op_threads)
                self._sessions[(width, height)] = s
            return s

    def infer(self, batch: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """(class scores, box logits, tapped feature maps [C, H, W]) per level."""
        s = self._session(batch.shape[3], batch.shape[2])
        out = s.run(self._cls + self._dis + self.taps, {self.manifest.input.name: batch})
        n = len(self._cls)
        return out[:n], out[n : 2 * n], [f[0] for f in out[2 * n :]]

    def detect(self, frame_bgr: np.ndarray) -> TappedDetections:
        h, w = frame_bgr.shape[:2]
        in_w, in_h = self.base.input_size_for(w, h)
        batch, box = preprocess(
            frame_bgr,
            in_w,
            in_h,
            self._mean,
            self._std,
            resize=self._resize,
            rgb=self.manifest.input.channel_order == "RGB",
        )
        cls_out, dis_out, fmaps = self.infer(batch)
        head = self.manifest.head
        xyxy, scores, class_ids = decode_gfl(
            cls_out,
            dis_out,
            self.strides,
            in_w,
            in_h,
            reg_max=head.reg_max,
            score_threshold=self.config.score_threshold,
            center_offset=head.center_offset,
            class_ids=self._class_ids,
        )
        # which (level, cell) each candidate came from: decode_gfl visits levels in order and, within
        # a level, the cells above the threshold in np.nonzero order; the same selection here
        levels, cells = [], []
        for k, sc in enumerate(cls_out):
            sc = sc.reshape(-1, sc.shape[-1])
            considered = sc if self._class_ids is None else sc[:, self._class_ids]
            cell, _ = np.nonzero(considered > self.config.score_threshold)
            levels.append(np.full(cell.size, k, np.int64))
            cells.append(cell.astype(np.int64))
        level = np.concatenate(levels)
        cell = np.concatenate(cells)
        keep = nms_per_class(
            xyxy, scores, class_ids, self.config.nms_iou_threshold, self.config.max_detections
        )
        dets = make_detections(
            box.to_frame(xyxy[keep], w, h), scores[keep], class_ids[keep], self.manifest.labels
        )
        feats = self.features(fmaps, cls_out, xyxy[keep], scores[keep], level[keep], cell[keep], in_w, in_h)
        return TappedDetections(dets, feats, level[keep], cell[keep], xyxy[keep])

    def features(
        self,
        fmaps: list[np.ndarray],
        cls_out: list[np.ndarray],
        xyxy: np.ndarray,
        scores: np.ndarray,
        level: np.ndarray,
        cell: np.ndarray,
        in_w: int,
        in_h: int,
    ) -> np.ndarray:
        """Feature rows (:data:`FEATURE_LAYOUT`): the tapped feature at the detection's own cell on
        its own level, their mean over the box on that level, the cell's class scores (all classes),
        then level one-hot, score and log box size / aspect (relative to the input)."""
        c = fmaps[0].shape[0]
        self.channels = c
        n_cls = cls_out[0].shape[-1]
        out = np.zeros((len(scores), 2 * c + n_cls + len(_GEOM)), np.float32)
        for i in range(len(scores)):
            k, idx = int(level[i]), int(cell[i])
            fmap = fmaps[k]
            gw = fmap.shape[2]
            out[i, :c] = fmap[:, idx // gw, idx % gw]
            out[i, c : 2 * c] = roi_mean(fmap, xyxy[i], self.strides[k])
            out[i, 2 * c : 2 * c + n_cls] = cls_out[k].reshape(-1, n_cls)[idx]
            g = 2 * c + n_cls
            out[i, g + k] = 1.0
            bw = max(float(xyxy[i, 2] - xyxy[i, 0]), 1.0) / in_w
            bh = max(float(xyxy[i, 3] - xyxy[i, 1]), 1.0) / in_h
            out[i, g + 3 :] = (scores[i], np.log(bw), np.log(bh), np.log(bw / bh))
        return out

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()


# --- the verifier model: ONNX writer and runtime ---------------------------------------------------
def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    fields: list[tuple[int, int, object]] = [(1, 0, int(d)) for d in arr.shape]
    fields += [(2, 0, 1), (8, 2, name.encode()), (9, 2, arr.tobytes())]  # FLOAT, name, raw_data (LE)
    return _encode(fields)  # type: ignore[arg-type]


def _value_info(name: str, dims: Sequence[int | str | None]) -> bytes:
    return _encode(
        [(1, 2, name.encode()), (2, 2, _encode([(1, 2, _encode([(1, 0, 1), (2, 2, _shape_proto(dims))]))]))]
    )


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str) -> bytes:
    fields: list[tuple[int, int, object]] = [(1, 2, i.encode()) for i in inputs]
    fields += [(2, 2, o.encode()) for o in outputs]
    fields += [(3, 2, name.encode()), (4, 2, op.encode())]
    return _encode(fields)  # type: ignore[arg-type]


def logistic_onnx(weights: np.ndarray, bias: float, metadata: dict[str, str] | None = None) -> bytes:
    """An ONNX model ``score = Sigmoid(features @ W + b)``: input ``features`` ``[N, D]`` float32,
    output ``score`` ``[N, 1]`` (opset 13, IR 8). Written with the protobuf wire format directly;
    ``onnx.checker`` accepts it (docs/TRAINING.md)."""
    w = np.asarray(weights, np.float32).reshape(-1, 1)
    d = w.shape[0]
    nodes = [
        _node("MatMul", ["features", "W"], ["logit_raw"], "matmul"),
        _node("Add", ["logit_raw", "b"], ["logit"], "add"),
        _node("Sigmoid", ["logit"], ["score"], "sigmoid"),
    ]
    graph: list[tuple[int, int, object]] = [(1, 2, n) for n in nodes]
    graph += [(2, 2, b"gridwatch_verifier")]
    graph += [(5, 2, _tensor("W", w)), (5, 2, _tensor("b", np.array([bias], np.float32)))]
    graph += [(11, 2, _value_info("features", ["N", d])), (12, 2, _value_info("score", ["N", 1]))]
    model: list[tuple[int, int, object]] = [
        (1, 0, 8),  # ir_version
        (2, 2, b"gridwatch"),  # producer_name
        (3, 2, b"0.1"),  # producer_version
        (7, 2, _encode(graph)),  # type: ignore[arg-type]
        (8, 2, _encode([(1, 2, b""), (2, 0, 13)])),  # opset_import: default domain, 13
    ]
    for k, v in sorted((metadata or {}).items()):
        model.append((14, 2, _encode([(1, 2, k.encode()), (2, 2, str(v).encode())])))
    return _encode(model)  # type: ignore[arg-type]


MANIFEST_NAME = "verifier.yaml"


class Verifier:
    """A verifier model directory, checked and ready: ``score(features) -> [N]`` in 0..1 (1 = real).

    ``verifier.yaml`` names the ONNX file and its sha256, the parent detector's sha256, the feature
    layout and dimension and the threshold chosen at training. Scoring goes through onnxruntime
    (:meth:`score`) or the same weights in numpy (:meth:`score_numpy`, a few microseconds)."""

    def __init__(self, model_dir: Path | str, *, detector_sha256: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        mpath = self.model_dir / MANIFEST_NAME
        try:
            self.manifest = yaml.safe_load(mpath.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VerifierError(f"{mpath}: verifier manifest not found") from None
        m = self.manifest
        for key in ("file", "sha256", "detector_sha256", "feature_layout", "feature_dim", "threshold"):
            if key not in m:
                raise VerifierError(f"{mpath}: {key}: missing")
        if m["feature_layout"] != FEATURE_LAYOUT:
            raise VerifierError(
                f"{mpath}: feature_layout {m['feature_layout']!r}, this code makes {FEATURE_LAYOUT!r}"
            )
        if detector_sha256 is not None and detector_sha256 != m["detector_sha256"]:
            raise VerifierError(
                f"{mpath}: trained on the features of detector {m['detector_sha256'][:12]}, "
                f"not {detector_sha256[:12]}: retrain it (gridwatch train verifier)"
            )
        path = self.model_dir / m["file"]
        data = path.read_bytes() if path.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise VerifierError(f"{path}: missing or sha256 differs from {mpath}")
        self.threshold = float(m["threshold"])
        self.feature_dim = int(m["feature_dim"])
        self.version = f"{m.get('name', 'verifier')}@{m['sha256'][:12]}"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        params = json.loads((self.model_dir / "weights.json").read_text(encoding="utf-8"))
        self._w = np.asarray(params["w"], np.float32)
        self._b = np.float32(params["b"])

    def score(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, np.float32).reshape(-1, self.feature_dim)
        if not len(x):
            return np.zeros(0, np.float32)
        return self._session.run(["score"], {"features": x})[0].reshape(-1)

    def score_numpy(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features, np.float32).reshape(-1, self.feature_dim) @ self._w + self._b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def keep(self, features: np.ndarray, min_score: float | None = None) -> np.ndarray:
        """Boolean mask of the detections to keep (score >= ``min_score``, default the trained threshold)."""
        return self.score(features) >= (self.threshold if min_score is None else min_score)


class VerifiedDetector(Detector):
    """The camera-side composition: the feature-tapped NanoDet, then the verifier; ``detect()`` gives
    what the plain detector gives minus the detections scoring below ``min_score`` (default: the
    verifier's trained threshold), each kept one with ``data["verifier_score"]``. One network run per
    frame, as before. ``model_version`` names both models (``<detector>+<verifier>``), so every
    candidate records what judged it. Not registered as a detector type: the camera worker builds it
    when ``cameras.verifier`` is set (docs/TRAINING.md)."""

    config_model = NanoDetConfig  # the detector's config; the verifier has its own section
    type_key = "nanodet"

    def __init__(
        self,
        config: NanoDetConfig,
        verifier_dir: Path | str,
        *,
        min_score: float | None = None,
        drop: bool = True,
    ) -> None:
        self.config = config
        self.tap = FeatureTapDetector(config)
        try:
            self.verifier = Verifier(verifier_dir, detector_sha256=self.tap.detector_sha256)
        except Exception:
            self.tap.close()
            raise
        self.min_score = self.verifier.threshold if min_score is None else float(min_score)
        self.drop = drop
        self.model_version = f"{self.tap.model_version}+{self.verifier.version}"
        self.dropped = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.tap.class_names

    def detect(self, frame_bgr: np.ndarray) -> sv.Detections:
        td = self.tap.detect(frame_bgr)
        d = td.detections
        if not len(d):
            d.data["verifier_score"] = np.zeros(0, np.float32)
            return d
        s = self.verifier.score(td.features)
        d.data["verifier_score"] = s
        if not self.drop:
            return d
        keep = s >= self.min_score
        self.dropped += int((~keep).sum())
        return d[keep]

    def close(self) -> None:
        self.tap.close()


def build_camera_detector(
    cameras: Any, det_cfg: Any = None, verifier_dir: Path | str | None = None
) -> Detector:
    """The detector the cameras run: `cameras.detector` (or `det_cfg`), followed by the false-alarm
    verifier of `verifier_dir` (the registry's production verifier, for a worker that follows the
    registry) or else of `cameras.verifier.model_dir`, when either is set. One place for the camera
    worker and `gridwatch eval detectors`, so an evaluation measures what the cameras run."""
    from gridwatch.detectors.base import build_detector, parse_detector_config

    det_cfg = cameras.detector if det_cfg is None else det_cfg
    v = cameras.verifier
    model_dir = verifier_dir if verifier_dir is not None else v.model_dir
    if model_dir is None:
        return build_detector(det_cfg)
    cfg = parse_detector_config(det_cfg, where="cameras.detector")
    if cfg.type != "nanodet":
        raise ValueError(f"cameras.verifier: needs the nanodet detector's features, not {cfg.type!r}")
    return VerifiedDetector(cfg, model_dir, min_score=v.min_score, drop=v.drop)  # type: ignore[arg-type]
