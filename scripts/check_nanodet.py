"""Check the bundled NanoDet model on the real test footage (runs in the project's .venv).

    .venv/bin/python scripts/check_nanodet.py bench     # ms per frame: inference alone and detect()
    .venv/bin/python scripts/check_nanodet.py annotate  # draws detections into /tmp/nanodet_*.png
    .venv/bin/python scripts/check_nanodet.py motion    # motion gate ms per frame
    .venv/bin/python scripts/check_nanodet.py frames-npz OUT.npz
        # real frames preprocessed exactly as the detector does, for convert_nanodet.py --verify-inputs

Footage: var/footage/{vtest.avi,sample.mp4} (scripts/fetch_footage.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import supervision as sv

from gridwatch.detectors.base import build_detector
from gridwatch.detectors.motion import MotionGate
from gridwatch.detectors.nanodet import DEFAULT_MODEL_DIR, NanoDetDetector, load_manifest, preprocess

FOOTAGE = Path(__file__).resolve().parents[1] / "var" / "footage"
# frames looked at by eye (docs/MODELS.md): people walking, the parked van and car; street scene
SAMPLES = [("vtest.avi", 100), ("vtest.avi", 400), ("sample.mp4", 300), ("sample.mp4", 900)]


def read_frame(name: str, index: int) -> np.ndarray:
    path = FOOTAGE / name
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"{path}: cannot read frame {index} (run scripts/fetch_footage.sh)")
    return frame


def bench(threads: int, repeat: int) -> None:
    det = build_detector({"type": "nanodet", "intra_op_threads": threads})
    assert isinstance(det, NanoDetDetector)
    spec = det.manifest.input
    for name, index in SAMPLES[::2]:
        frame = read_frame(name, index)
        batch, _ = preprocess(frame, spec.width, spec.height, np.array(spec.mean), np.array(spec.std))
        for _ in range(3):
            det.detect(frame)
        infer, full = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            det.infer(batch)
            t1 = time.perf_counter()
            det.detect(frame)
            full.append(time.perf_counter() - t1)
            infer.append(t1 - t0)
        print(
            f"{name} {frame.shape[1]}x{frame.shape[0]}, {threads} thread(s): inference median "
            f"{1000 * np.median(infer):.1f} ms (p90 {1000 * np.percentile(infer, 90):.1f}), "
            f"detect() median {1000 * np.median(full):.1f} ms"
        )


def annotate(out_dir: Path) -> None:
    det = build_detector({"type": "nanodet"})
    boxes, labels = sv.BoxAnnotator(thickness=1), sv.LabelAnnotator(text_scale=0.35, text_padding=2)
    for name, index in SAMPLES:
        frame = read_frame(name, index)
        found = det.detect(frame)
        text = [f"{n} {c:.2f}" for n, c in zip(found.data["class_name"], found.confidence, strict=True)]
        image = labels.annotate(boxes.annotate(frame.copy(), found), found, text)
        out = out_dir / f"nanodet_{Path(name).stem}_{index}.png"
        cv2.imwrite(str(out), image)
        print(f"{out}: {len(found)} detections")
        for xyxy, conf, cls in zip(found.xyxy, found.confidence, found.data["class_name"], strict=True):
            print(f"  {cls:12s} {conf:.2f} {np.round(xyxy).astype(int).tolist()}")


def motion(frames: int) -> None:
    for name in ("vtest.avi", "sample.mp4"):
        cap = cv2.VideoCapture(str(FOOTAGE / name))
        gate, times, moving = MotionGate(), [], 0
        for i in range(frames):
            ok, frame = cap.read()
            if not ok:
                break
            t0 = time.perf_counter()
            moving += gate.should_detect(frame, i / 10)
            times.append(time.perf_counter() - t0)
        cap.release()
        print(
            f"{name} {frame.shape[1]}x{frame.shape[0]}: motion gate median {1000 * np.median(times):.2f} ms, "
            f"p99 {1000 * np.percentile(times, 99):.2f} ms; detect on {moving}/{len(times)} frames"
        )


def frames_npz(out: Path) -> None:
    # the manifest alone: this runs before a rebuild, when the ONNX file may be missing or stale
    spec = load_manifest(DEFAULT_MODEL_DIR).input
    arrays = {}
    for name, index in SAMPLES:
        batch, _ = preprocess(
            read_frame(name, index), spec.width, spec.height, np.array(spec.mean), np.array(spec.std)
        )
        arrays[f"{Path(name).stem}_{index}"] = batch
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {', '.join(arrays)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--repeat", type=int, default=30)
    a = sub.add_parser("annotate")
    a.add_argument("--out-dir", type=Path, default=Path("/tmp"))
    m = sub.add_parser("motion")
    m.add_argument("--frames", type=int, default=500)
    f = sub.add_parser("frames-npz")
    f.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        bench(args.threads, args.repeat)
    elif args.cmd == "annotate":
        annotate(args.out_dir)
    elif args.cmd == "motion":
        motion(args.frames)
    else:
        frames_npz(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
