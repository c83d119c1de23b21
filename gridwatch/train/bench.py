"""What the verifier costs per frame: `python -m gridwatch.train.bench [--verifier DIR] [--frames N]`.

Interleaves, on the same frames of vtest, the plain detector's session (6 head outputs) and the
feature-tapped session (the same plus the 3 feature maps), one thread each as the cameras run
them; then the whole `detect()` of each (preprocess, decode, NMS; the tap also pools features);
then the verifier's scoring of one detection and of a frame's detections (onnxruntime and numpy).
Prints medians in ms / us and one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gridwatch.detectors.nanodet import NanoDetConfig, NanoDetDetector, preprocess
from gridwatch.detectors.verifier import FeatureTapDetector, Verifier

REPO = Path(__file__).resolve().parents[2]


def _median_ms(fn: Any, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1000)


def bench(video: Path, *, frames: int = 30, verifier_dir: Path | None = None) -> dict[str, Any]:
    cap = cv2.VideoCapture(str(video))
    imgs = []
    i = 0
    while len(imgs) < frames:
        ok, f = cap.read()
        if not ok:
            break
        if i % 20 == 0:
            imgs.append(f)
        i += 1
    cap.release()
    plain = NanoDetDetector(NanoDetConfig())
    tap = FeatureTapDetector(NanoDetConfig())
    h, w = imgs[0].shape[:2]
    in_w, in_h = plain.input_size_for(w, h)
    mean = np.array(plain.manifest.input.mean, np.float32)
    std = np.array(plain.manifest.input.std, np.float32)
    batches = [preprocess(f, in_w, in_h, mean, std)[0] for f in imgs]
    plain.infer(batches[0])
    tap.infer(batches[0])  # sessions made, warmed
    p_inf, t_inf, p_det, t_det = [], [], [], []
    for b, f in zip(batches, imgs, strict=True):  # interleaved: both see the same machine load
        p_inf.append(_median_ms(lambda b=b: plain.infer(b), 3))
        t_inf.append(_median_ms(lambda b=b: tap.infer(b), 3))
        p_det.append(_median_ms(lambda f=f: plain.detect(f), 1))
        t_det.append(_median_ms(lambda f=f: tap.detect(f), 1))
    dets = [tap.detect(f) for f in imgs]
    per_frame = float(np.mean([len(d.detections) for d in dets]))
    out: dict[str, Any] = {
        "video": str(video),
        "frames": len(imgs),
        "input": f"{in_w}x{in_h}",
        "plain_infer_ms": round(float(np.median(p_inf)), 2),
        "tapped_infer_ms": round(float(np.median(t_inf)), 2),
        "plain_detect_ms": round(float(np.median(p_det)), 2),
        "tapped_detect_ms": round(float(np.median(t_det)), 2),
        "extra_infer_ms": round(float(np.median(np.array(t_inf) - np.array(p_inf))), 2),
        "extra_detect_ms": round(float(np.median(np.array(t_det) - np.array(p_det))), 2),
        "detections_per_frame": round(per_frame, 1),
    }
    if verifier_dir is not None:
        v = Verifier(verifier_dir, detector_sha256=tap.detector_sha256)
        one = dets[0].features[:1]
        frame_feats = max(dets, key=lambda d: len(d.detections)).features
        v.score(one)
        out["score_one_us_onnx"] = round(_median_ms(lambda: v.score(one), 2000) * 1000, 1)
        out["score_one_us_numpy"] = round(_median_ms(lambda: v.score_numpy(one), 2000) * 1000, 1)
        out["score_frame_us_onnx"] = round(_median_ms(lambda: v.score(frame_feats), 1000) * 1000, 1)
        out["frame_detections"] = len(frame_feats)
    plain.close()
    tap.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=REPO / "var" / "footage" / "vtest.h264.mp4")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--verifier", type=Path, default=None, help="a verifier model directory to time too")
    a = ap.parse_args(argv)
    r = bench(a.video, frames=a.frames, verifier_dir=a.verifier)
    for k, v in r.items():
        print(f"{k:>22}: {v}")
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
