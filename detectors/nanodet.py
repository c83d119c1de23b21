"""NanoDet (v0.x, GFL head) on onnxruntime: the default camera detector.

The model folder (``models/nanodet-g-416/`` by default) holds the ONNX file and ``model.yaml``, the
manifest this module reads everything model-specific from: the file's sha256 (checked at load),
input size, channel order, mean/std, resize mode, head strides / reg_max and the label list.
docs/MODELS.md and the folder's MODEL_CARD.md say how the file is made and verified.

Pipeline per frame (pure functions below, each unit-tested):

1. :func:`preprocess` - centred letterbox to 416x416 (aspect kept, black padding, as NanoDet's own
   ``keep_ratio: True`` warp), BGR kept, ``(pixel - mean) / std`` with NanoDet's training constants,
   NCHW float32. With ``trim_padding`` (default) the padding the frame does not need is cut in
   64 px steps (:func:`trimmed_input`: 416x352 for 4:3), the graph's declared input re-written to
   match (:func:`resized_graph`, detectors/onnx_shapes.py); same scale, same cell grid.
2. onnxruntime runs the graph: per stride (8, 16, 32) sigmoid class scores ``[1, HxW, 80]`` and box
   distributions ``[1, HxW, 4 x (reg_max + 1)]``.
3. :func:`decode_gfl` - cells with a class score above the threshold (one candidate per
   (cell, class), as NanoDet's multiclass NMS does); softmax over each side's reg_max + 1 bins, the
   expectation times the stride is the distance from the cell centre ``((col + 0.5) * stride,
   (row + 0.5) * stride)`` to the left / top / right / bottom edge.
4. class-aware NMS (``cv2.dnn.NMSBoxesBatched``), then boxes are mapped back to the original frame
   and clipped to it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnxruntime as ort
import supervision as sv
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gridwatch.detectors.base import (
    Detector,
    DetectorConfig,
    DetectorConfigError,
    make_detections,
    register_detector,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "nanodet-g-416"
MANIFEST_NAME = "model.yaml"


class ModelIntegrityError(RuntimeError):
    """The model file is missing or is not the file its manifest describes."""


# --- the manifest (models/<name>/model.yaml) --------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str = Field(title="Input name", description="Name of the ONNX graph input.")
    width: int = Field(gt=0, title="Input width", description="Network input width in pixels.")
    height: int = Field(gt=0, title="Input height", description="Network input height in pixels.")
    layout: Literal["NCHW"] = Field(title="Layout", description="Tensor layout of the input.")
    channel_order: Literal["BGR", "RGB"] = Field(
        title="Channel order", description="Channel order the weights were trained with."
    )
    mean: tuple[float, float, float] = Field(
        title="Mean", description="Per-channel mean subtracted from 0-255 pixels, in channel_order."
    )
    std: tuple[float, float, float] = Field(
        title="Std", description="Per-channel divisor applied after the mean, in channel_order."
    )
    resize: Literal["letterbox", "stretch"] = Field(
        title="Resize", description="How the training pipeline fitted images to the input (the default here)."
    )


class HeadLevel(_Strict):
    stride: int = Field(gt=0, title="Stride", description="Down-sampling factor of this level's feature map.")
    cls: str = Field(title="Class output", description="ONNX output with sigmoid class scores [1, HxW, C].")
    dis: str = Field(
        title="Box output",
        description="ONNX output with box distribution logits [1, HxW, 4 x (reg_max + 1)].",
    )


class HeadSpec(_Strict):
    kind: Literal["nanodet-gfl"] = Field(
        title="Head kind", description="Decoder to use: NanoDet v0.x GFL head (sigmoid scores + DFL boxes)."
    )
    reg_max: int = Field(
        gt=0, title="reg_max", description="Largest bin of the box distribution (bins 0..reg_max)."
    )
    center_offset: float = Field(
        title="Centre offset", description="Cell centre = (index + offset) x stride; 0.5 for NanoDet v0.x."
    )
    levels: tuple[HeadLevel, ...] = Field(min_length=1, title="Levels", description="One entry per stride.")


class ModelManifest(_Strict):
    name: str = Field(title="Name", description="Model name, the first part of model_version.")
    file: str = Field(title="File", description="ONNX file name, relative to the manifest.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        title="SHA-256",
        description="Hex sha256 of the ONNX file, checked at load.",
    )
    input: InputSpec = Field(title="Input", description="What the network expects.")
    head: HeadSpec = Field(title="Head", description="How to decode the outputs.")
    labels: tuple[str, ...] = Field(min_length=1, title="Labels", description="Class names by class index.")
    source: str = Field(title="Source", description="Where the weights come from.")
    license: str = Field(title="License", description="SPDX id of the weights' licence.")


def load_manifest(model_dir: Path) -> ModelManifest:
    path = model_dir / MANIFEST_NAME
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ModelManifest.model_validate(raw)
    except FileNotFoundError:
        raise ModelIntegrityError(f"{path}: model manifest not found") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ModelIntegrityError(f"{path}: invalid model manifest: {exc}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_model_file(path: Path, expected_sha256: str, manifest_path: Path) -> None:
    """Raise ModelIntegrityError naming the file unless its sha256 is the manifest's."""
    if not path.is_file():
        raise ModelIntegrityError(f"{path}: model file not found (named by {manifest_path})")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 {actual} does not match {expected_sha256} recorded in {manifest_path}; "
            "the file is damaged or is not the model the manifest describes "
            "(restore it, or rebuild it with scripts/convert_nanodet.sh)"
        )


# --- config --------------------------------------------------------------------------------------
class NanoDetConfig(DetectorConfig):
    type: Literal["nanodet"] = Field("nanodet", title="Detector type", description="NanoDet on onnxruntime.")
    model_dir: Path = Field(
        DEFAULT_MODEL_DIR,
        title="Model folder",
        description="Folder with model.yaml and the ONNX file it names (default: the bundled NanoDet-g 416).",
    )
    score_threshold: float = Field(
        0.35,
        ge=0.0,
        le=1.0,
        title="Score threshold",
        description="Smallest class score kept (NanoDet's scores are IoU-aware: 0.35 is its demo default).",
    )
    nms_iou_threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        title="NMS IoU",
        description="A box overlapping a better box of its class by more than this IoU is dropped (NanoDet uses 0.6; "
        "0.5 also drops the boxes spanning two people walking side by side).",
    )
    classes: tuple[str, ...] | None = Field(
        None,
        title="Classes",
        description="Labels to report (e.g. [person, car, bus]); all of the model's labels when omitted.",
    )
    max_detections: int = Field(
        100, ge=1, le=10_000, title="Max detections", description="Highest-scoring boxes kept per frame."
    )
    resize: Literal["letterbox", "stretch"] | None = Field(
        None,
        title="Resize",
        description="letterbox keeps the aspect ratio (as trained); stretch fills the input. Default: the manifest's.",
    )
    input_size: tuple[int, int] | None = Field(
        None,
        title="Input size",
        description="Network input [width, height] in pixels, multiples of the largest head stride (32); "
        "default: the manifest's (416x416). Smaller sizes shrink the picture and cost detections "
        "(docs/MODELS.md has the measurements); to save only the padding, leave this and keep "
        "trim_padding on.",
    )
    trim_padding: bool = Field(
        True,
        title="Trim letterbox padding",
        description="Cut the letterbox padding rows (or columns) the frame does not need from the network "
        "input, in steps of two of the largest stride (64 px) so the cell grid stays on the same pixels: "
        "the frame is seen at the same scale, and a 4:3 frame costs 416x352 instead of 416x416 (-15 %), "
        "16:9 416x288 (-30 %). Detections are those of the full input but for a few boxes near the edge.",
    )
    intra_op_threads: int = Field(
        1,
        ge=1,
        le=64,
        title="Threads",
        description="onnxruntime threads for one inference. 1 by default: a machine runs several camera "
        "workers, and one thread each uses the cores better than several threads per worker.",
    )

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 32 or v[1] < 32 or v[0] > 4096 or v[1] > 4096):
            raise ValueError("width and height must be 32-4096 pixels")
        return v

    @field_validator("classes")
    @classmethod
    def _no_empty_class_list(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError("must name at least one class (omit it to keep all)")
        return v


# --- pure steps ----------------------------------------------------------------------------------
class Letterbox(BaseModel):
    """Maps network-input pixels back to frame pixels: frame = (input - pad) / scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale_x: float = Field(title="Scale x", description="Input pixels per frame pixel, horizontally.")
    scale_y: float = Field(title="Scale y", description="Input pixels per frame pixel, vertically.")
    pad_x: float = Field(title="Pad x", description="Left padding in input pixels.")
    pad_y: float = Field(title="Pad y", description="Top padding in input pixels.")

    def to_frame(self, xyxy: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, frame_w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, frame_h)
        return out


def preprocess(
    frame_bgr: np.ndarray,
    width: int,
    height: int,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    resize: Literal["letterbox", "stretch"] = "letterbox",
    rgb: bool = False,
) -> tuple[np.ndarray, Letterbox]:
    """BGR uint8 frame -> normalised NCHW float32 batch of one, and the mapping back to the frame."""
    h, w = frame_bgr.shape[:2]
    if resize == "stretch":
        canvas = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
        box = Letterbox(scale_x=width / w, scale_y=height / h, pad_x=0.0, pad_y=0.0)
    else:
        scale = min(width / w, height / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        # centred, as NanoDet's warp with keep_ratio=True; padding is 0 before normalisation,
        # exactly as its cv2.warpPerspective border
        px, py = (width - nw) // 2, (height - nh) // 2
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[py : py + nh, px : px + nw] = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        box = Letterbox(scale_x=nw / w, scale_y=nh / h, pad_x=float(px), pad_y=float(py))
    if rgb:
        canvas = canvas[..., ::-1]
    x = (canvas.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), box


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decode_gfl(
    cls_scores: list[np.ndarray],
    box_dists: list[np.ndarray],
    strides: list[int],
    input_width: int,
    input_height: int,
    *,
    reg_max: int,
    score_threshold: float,
    center_offset: float = 0.5,
    class_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode NanoDet GFL outputs into (xyxy in input pixels, score, class id) candidates, before NMS.

    ``cls_scores[i]``: ``[cells, C]`` (or with a leading batch of 1) sigmoid scores of level i, cells in
    row-major order over a ``ceil(H / stride) x ceil(W / stride)`` grid; ``box_dists[i]``:
    ``[cells, 4 * (reg_max + 1)]`` logits, sides in the order left, top, right, bottom.
    ``class_ids``: only these classes are considered (all when None).
    """
    all_boxes, all_scores, all_classes = [], [], []
    bins = np.arange(reg_max + 1, dtype=np.float32)
    for scores, dists, stride in zip(cls_scores, box_dists, strides, strict=True):
        scores = scores.reshape(-1, scores.shape[-1])
        dists = dists.reshape(-1, dists.shape[-1])
        grid_w = -(-input_width // stride)
        grid_h = -(-input_height // stride)
        if scores.shape[0] != grid_w * grid_h or dists.shape[0] != scores.shape[0]:
            raise ValueError(
                f"stride {stride}: {scores.shape[0]} cells, expected {grid_w}x{grid_h} for "
                f"{input_width}x{input_height}"
            )
        if dists.shape[1] != 4 * (reg_max + 1):
            raise ValueError(
                f"stride {stride}: box output has {dists.shape[1]} values, expected 4 x {reg_max + 1}"
            )
        considered = scores if class_ids is None else scores[:, class_ids]
        cell, col = np.nonzero(considered > score_threshold)
        if cell.size == 0:
            continue
        cls = col if class_ids is None else class_ids[col]
        # one distribution per candidate cell, shared by every class found there
        ucell, inverse = np.unique(cell, return_inverse=True)
        dist = _softmax(dists[ucell].reshape(-1, 4, reg_max + 1)) @ bins * stride  # [n, 4] l,t,r,b
        cx = (ucell % grid_w + center_offset) * stride
        cy = (ucell // grid_w + center_offset) * stride
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)
        all_boxes.append(boxes[inverse])
        all_scores.append(considered[cell, col])
        all_classes.append(cls)
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return (
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_scores).astype(np.float32),
        np.concatenate(all_classes).astype(np.int64),
    )


def nms_per_class(
    xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float, max_detections: int
) -> np.ndarray:
    """Indices kept by class-aware NMS, best score first (boxes of different classes never suppress)."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = xyxy.astype(np.float64).copy()
    xywh[:, 2:] -= xywh[:, :2]
    keep = cv2.dnn.NMSBoxesBatched(
        xywh, scores.astype(np.float32), class_ids.astype(np.int32), 0.0, iou_threshold, top_k=max_detections
    )
    return np.asarray(keep, dtype=np.int64).reshape(-1)


# --- the detector --------------------------------------------------------------------------------
def make_session(model: Path | bytes, intra_op_threads: int) -> ort.InferenceSession:
    """The onnxruntime session, with options chosen for many camera workers sharing a few cores."""
    opts = ort.SessionOptions()
    # one inference uses `intra_op_threads` cores (1 by default): on a 2-core machine running
    # several camera workers, more threads per worker only add contention and context switches
    opts.intra_op_num_threads = intra_op_threads
    # the graph is a single chain of convolutions: nothing runs in parallel between operators
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # constant folding, conv+activation fusion and NCHWc layout: median 48 ms vs 66 ms with BASIC
    # (onnxruntime 1.32, one thread, docs/MODELS.md)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle pool threads must not spin-wait between frames, burning CPU the other workers need
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def trimmed_input(frame_w: int, frame_h: int, width: int, height: int, step: int) -> tuple[int, int]:
    """The input size holding a ``frame_w x frame_h`` frame letterboxed at the scale of a ``width x
    height`` input, with the unneeded padding cut in multiples of ``step`` (two strides: the centred
    picture moves by whole cells, so every level's grid stays on the same frame pixels)."""
    scale = min(width / frame_w, height / frame_h)
    nw, nh = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
    return width - step * ((width - nw) // step), height - step * ((height - nh) // step)


def resized_graph(model: bytes, manifest: ModelManifest, width: int, height: int) -> bytes:
    """The model's bytes with its input declared ``[1, 3, height, width]`` and the head outputs to
    match (``ceil(W / stride) x ceil(H / stride)`` cells per level). The graph itself is
    size-agnostic (detectors/onnx_shapes.py says why); only the declarations were fixed."""
    from gridwatch.detectors.onnx_shapes import declared_shapes, set_declared_shapes

    ins, outs = declared_shapes(model)
    name = manifest.input.name
    if name not in ins or len(ins[name]) != 4:
        raise ModelIntegrityError(f"{manifest.name}: graph input {name!r} is not a 4-d NCHW tensor")
    shapes: dict[str, list[int | str | None]] = {name: [*ins[name][:2], height, width]}
    for lvl in manifest.head.levels:
        cells = (-(-width // lvl.stride)) * (-(-height // lvl.stride))
        for out in (lvl.cls, lvl.dis):
            if out not in outs or len(outs[out]) != 3:
                raise ModelIntegrityError(f"{manifest.name}: graph output {out!r} is not [1, cells, values]")
            shapes[out] = [outs[out][0], cells, outs[out][2]]
    return set_declared_shapes(model, shapes)


@register_detector("nanodet")
class NanoDetDetector(Detector):
    """NanoDet-g (or any model.yaml-described NanoDet v0.x export) on onnxruntime's CPU provider."""

    config_model = NanoDetConfig

    def __init__(self, config: NanoDetConfig) -> None:
        self.config = config
        model_dir = Path(config.model_dir)
        self.manifest = manifest = load_manifest(model_dir)
        self.model_path = model_dir / manifest.file
        verify_model_file(self.model_path, manifest.sha256, model_dir / MANIFEST_NAME)
        spec = manifest.input
        width, height = config.input_size or (spec.width, spec.height)
        stride = max(lvl.stride for lvl in manifest.head.levels)
        if width % stride or height % stride:
            raise DetectorConfigError(
                f"detector.input_size: {width}x{height} is not a multiple of {manifest.name}'s largest "
                f"stride {stride} in both directions (e.g. 416x320, 384x288, 320x256)"
            )
        self.input_width, self.input_height = width, height
        self.model_version = f"{manifest.name}@{manifest.sha256[:12]}"
        if (width, height) != (spec.width, spec.height):
            # detections depend on the input size: say it wherever the version is recorded
            self.model_version += f"/{width}x{height}"

        labels = manifest.labels
        if config.classes is None:
            self._class_ids: np.ndarray | None = None
        else:
            unknown = [c for c in config.classes if c not in labels]
            if unknown:
                raise DetectorConfigError(
                    f"detector.classes: {', '.join(map(repr, unknown))} not among the labels of "
                    f"{manifest.name} (see {model_dir / MANIFEST_NAME})"
                )
            self._class_ids = np.array(sorted({labels.index(c) for c in config.classes}), dtype=np.int64)

        self._mean = np.array(spec.mean, dtype=np.float32)
        self._std = np.array(spec.std, dtype=np.float32)
        self._resize = config.resize or spec.resize
        data = self.model_path.read_bytes()
        # the bytes loaded are the bytes checked (the file could change after verify_model_file)
        if hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise ModelIntegrityError(f"{self.model_path}: changed while loading")
        self._model_bytes: bytes | None = data
        self._trim_step = 2 * stride if config.trim_padding and self._resize == "letterbox" else 0
        self._cls_names = [lvl.cls for lvl in manifest.head.levels]
        self._dis_names = [lvl.dis for lvl in manifest.head.levels]
        # guards the sessions only: run() takes a session under it and runs outside it, so camera
        # threads infer concurrently (onnxruntime's run() is thread-safe), while close() from
        # another thread cannot pull a session from under a run in progress
        self._lock = threading.Lock()
        # one session per input size (trimming gives one per frame shape: one or two per worker)
        self._sessions: dict[tuple[int, int], ort.InferenceSession] = {}
        session = self._session_for(width, height)
        outputs = {o.name for o in session.get_outputs()}
        missing = [n for n in self._cls_names + self._dis_names if n not in outputs]
        if missing or spec.name not in {i.name for i in session.get_inputs()}:
            raise ModelIntegrityError(
                f"{self.model_path}: graph lacks {missing or spec.name} named by the manifest"
            )

    def _session_for(self, width: int, height: int) -> ort.InferenceSession:
        with self._lock:
            if self._model_bytes is None:
                raise RuntimeError(f"{self.model_version}: detector is closed")
            session = self._sessions.get((width, height))
            if session is None:
                spec = self.manifest.input
                model = self._model_bytes
                if (width, height) != (spec.width, spec.height):
                    model = resized_graph(model, self.manifest, width, height)
                session = make_session(model, self.config.intra_op_threads)
                self._sessions[(width, height)] = session
            return session

    def input_size_for(self, frame_w: int, frame_h: int) -> tuple[int, int]:
        """The network input size a ``frame_w x frame_h`` frame is run at."""
        if not self._trim_step:
            return self.input_width, self.input_height
        return trimmed_input(frame_w, frame_h, self.input_width, self.input_height, self._trim_step)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.labels

    def infer(self, batch: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Raw network outputs for a preprocessed batch: (class scores per level, box logits per level)."""
        session = self._session_for(batch.shape[3], batch.shape[2])
        out = session.run(self._cls_names + self._dis_names, {self.manifest.input.name: batch})
        n = len(self._cls_names)
        return out[:n], out[n:]

    def detect(self, frame_bgr: np.ndarray) -> sv.Detections:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame H x W x 3, got {frame_bgr.dtype} {frame_bgr.shape}")
        spec, head = self.manifest.input, self.manifest.head
        h, w = frame_bgr.shape[:2]
        in_w, in_h = self.input_size_for(w, h)
        batch, box = preprocess(
            frame_bgr, in_w, in_h, self._mean, self._std, resize=self._resize, rgb=spec.channel_order == "RGB"
        )
        cls_out, dis_out = self.infer(batch)
        xyxy, scores, class_ids = decode_gfl(
            cls_out,
            dis_out,
            [lvl.stride for lvl in head.levels],
            in_w,
            in_h,
            reg_max=head.reg_max,
            score_threshold=self.config.score_threshold,
            center_offset=head.center_offset,
            class_ids=self._class_ids,
        )
        keep = nms_per_class(
            xyxy, scores, class_ids, self.config.nms_iou_threshold, self.config.max_detections
        )
        return make_detections(
            box.to_frame(xyxy[keep], w, h), scores[keep], class_ids[keep], self.manifest.labels
        )

    def close(self) -> None:
        with self._lock:
            self._model_bytes = None
            self._sessions.clear()
