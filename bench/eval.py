"""Benchmark: how fast the evaluations run, beside the bare detector loop on the same input.

Two parts, one detector each (built once, warmed up, shared by both loops of its part):

* **eval detectors** (`gridwatch eval detectors` on the shipped clips, var/eval-clips): clip
  seconds per wall second (x real time) of `run_eval` (FileSource -> motion gate -> detector ->
  ByteTrack, zones, rules -> matching and scoring), beside the **raw limit**: the same clips
  decoded by the same FileSource at the same analysed rate, the bare detector on every analysed
  frame, nothing else (no gate, tracker, rules, matching). Ratio = gridwatch / raw. Clip by
  clip, `run_eval` on a one-clip folder (timed whole: sidecar and video checks, the pipeline,
  matching, scoring) then the raw loop on the same clip: a shared machine's load drifts over
  minutes, and interleaving gives both the same drift.
* **eval frames** (`gridwatch eval frames` on a dataset version, by default a composite set made
  for the run): images per second of `run_frame_eval` (read, detect at the mAP threshold, map
  names, false-alarm matching, COCO evaluation), beside the bare loop `cv2.imread` + detect on the
  same images with the same detector, run once before and once after (its time: their mean).

Run: `gridwatch bench eval [--clips a,b] [--fps F] [--dataset DIR | --images N] [-c FILE]`.
Tables on stderr, one JSON object as the last stdout line.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
from rich.console import Console
from rich.table import Table

from gridwatch.ingest.camera import FileSource


def _clip_dirs(clips_dir: Path, names: Sequence[str] | None, tmp: Path) -> list[Path]:
    """One folder per clip, holding links to its video and sidecar (run_eval reads whole folders),
    for the clips `names` of `clips_dir` (default: all of them)."""
    if not names:
        names = sorted(p.stem for p in clips_dir.glob("*.json") if (clips_dir / f"{p.stem}.mp4").is_file())
        if not names:
            raise ValueError(
                f"--clips-dir: no NAME.mp4 + NAME.json clips in {clips_dir} (scripts/make_eval_clips.py)"
            )
    dirs = []
    for n in names:
        sub = tmp / "clips" / n
        sub.mkdir(parents=True)
        for ext in (".mp4", ".json"):
            src = clips_dir / f"{n}{ext}"
            if not src.is_file():
                raise ValueError(f"--clips: {src} missing (clips in {clips_dir}: scripts/make_eval_clips.py)")
            (sub / src.name).symlink_to(src.resolve())
        dirs.append(sub)
    return dirs


def _raw_clip(clip: Any, detector: Any, fps: float) -> int:
    """The raw limit on one clip: FileSource at the analysed rate, the bare detector; frames done."""
    frames = 0
    with FileSource(clip.video_path, "bench-raw", analysed_fps=fps) as src:
        for f in src.frames():
            detector.detect(f.image)
            frames += 1
    return frames


def _raw_frames(paths: Sequence[Path], detector: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    for p in paths:
        detector.detect(cv2.imread(str(p), cv2.IMREAD_COLOR))
    wall = time.perf_counter() - t0
    return {"images": len(paths), "wall_seconds": round(wall, 3),
            "frames_per_s": round(len(paths) / wall, 3) if wall > 0 else None}  # fmt: skip


def run_eval_bench(
    cfg: Any,
    *,
    clips_dir: Path = Path("var/eval-clips"),
    clips: Sequence[str] | None = None,
    fps: float | None = None,
    dataset: Path | None = None,
    images: int = 100,
    console: Console | None = None,
) -> dict[str, Any]:
    """Both parts (module docstring); returns the figures, prints a table to `console`."""
    from gridwatch.dataset.composite import composite_dataset
    from gridwatch.dataset.store import DatasetVersion
    from gridwatch.detectors.evaluate import default_fps, load_clips, run_eval
    from gridwatch.detectors.frame_eval import build_eval_detector, run_frame_eval
    from gridwatch.detectors.verifier import build_camera_detector

    console = console or Console(stderr=True)
    quiet = Console(file=io.StringIO(), width=160)
    load_before = os.getloadavg()
    fps = float(fps) if fps is not None else default_fps(cfg)
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-eval-") as tmp_s:
        tmp = Path(tmp_s)
        dirs = _clip_dirs(Path(clips_dir), clips, tmp)
        loaded = [load_clips(d)[0] for d in dirs]
        det = build_camera_detector(cfg.cameras)  # what `eval detectors` runs
        per_clip = []
        ev: dict[str, Any] = {}
        try:
            cap = cv2.VideoCapture(str(loaded[0].video_path))
            ok, first = cap.read()
            cap.release()
            if ok:
                det.detect(first)  # session creation and first-run allocation out of both timings
            console.print(
                f"eval detectors and the raw loop, clip by clip: {len(loaded)} clips at {fps:g} fps ..."
            )
            # clip by clip, gridwatch then raw: a shared machine's load drifts over minutes, and
            # interleaving gives both loops the same drift
            for d, clip in zip(dirs, loaded, strict=True):
                t0 = time.perf_counter()
                ev = run_eval(d, cfg, fps=fps, console=quiet, detector=det)
                t1 = time.perf_counter()
                raw_frames = _raw_clip(clip, det, fps)
                t2 = time.perf_counter()
                per_clip.append({"clip": clip.name, "clip_seconds": clip.sidecar.duration_s,
                                 "frames_analysed": ev["frames_analysed"], "raw_frames": raw_frames,
                                 "inferences": ev["inferences"], "infer_ms_mean": ev["infer_ms_mean"],
                                 "gridwatch_s": round(t1 - t0, 3), "raw_s": round(t2 - t1, 3)})  # fmt: skip
        finally:
            det.close()
        secs = sum(c["clip_seconds"] for c in per_clip)
        g_wall = sum(c["gridwatch_s"] for c in per_clip)
        r_wall = sum(c["raw_s"] for c in per_clip)
        g_speed, r_speed = secs / g_wall, secs / r_wall
        n_frames = sum(c["frames_analysed"] for c in per_clip)
        # the mean is per inference: the motion gate skips the detector on some frames
        n_inf = sum(c["inferences"] for c in per_clip)
        clips_part = {
            "clips": len(loaded),
            "clip_seconds": secs,
            "fps": fps,
            "frames_analysed": n_frames,
            "inferences": n_inf,
            "gridwatch": {"wall_seconds": round(g_wall, 3), "speed_x_realtime": round(g_speed, 3),
                          "infer_ms_mean": round(sum(c["infer_ms_mean"] * c["inferences"] for c in per_clip
                                                     if c["infer_ms_mean"]) / n_inf, 2) if n_inf else None},
            "raw": {"frames": sum(c["raw_frames"] for c in per_clip), "wall_seconds": round(r_wall, 3),
                    "speed_x_realtime": round(r_speed, 3)},
            "ratio": round(g_speed / r_speed, 3),
            "per_clip": per_clip,
        }  # fmt: skip
        raw = clips_part["raw"]

        if dataset is None:
            console.print(f"making a composite set of {images} images ...")
            ds = composite_dataset(tmp / "datasets", "bench", images=images, seed=0)
        else:
            ds = DatasetVersion.open(dataset)
        model_dir = Path(cfg.cameras.detector.model_dir)
        fdet = build_eval_detector(model_dir, cfg.cameras.detector)
        try:
            paths = [ds.images_dir / im["file_name"] for im in ds.coco()["images"]]
            fdet.detect(cv2.imread(str(paths[0])))  # warm-up
            # raw, eval frames, raw again: the raw limit is the mean of the two, so a load drift
            # during the run falls on both sides alike
            console.print(f"eval frames: {len(paths)} images, between two raw loops (imread + detector) ...")
            before = _raw_frames(paths, fdet)
            fr = run_frame_eval(ds.path, model_dir, cfg, console=quiet, detector=fdet)
            after = _raw_frames(paths, fdet)
            wall = (before["wall_seconds"] + after["wall_seconds"]) / 2
            raw_f = {"images": len(paths), "wall_seconds": round(wall, 3),
                     "frames_per_s": round(len(paths) / wall, 3) if wall > 0 else None,
                     "wall_seconds_before_after": [before["wall_seconds"], after["wall_seconds"]]}  # fmt: skip
        finally:
            fdet.close()
        frames_part = {
            "dataset": str(dataset) if dataset is not None else f"composite native seed 0, {images} images",
            "images": len(paths),
            "gridwatch": {"wall_seconds": fr["wall_seconds"], "frames_per_s": fr["frames_per_s"],
                          "infer_ms_mean": fr["infer_ms_mean"], "map": fr["map"]},
            "raw": raw_f,
            "ratio": round(fr["frames_per_s"] / raw_f["frames_per_s"], 3)
            if fr["frames_per_s"] and raw_f["frames_per_s"] else None,
        }  # fmt: skip
    result = {
        "bench": "eval",
        "detector": ev["detector"],
        "eval_detectors": clips_part,
        "eval_frames": frames_part,
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    t = Table(
        title=f"bench eval ({ev['detector']}; load {result['load_before'][0]:.2f})", title_justify="left"
    )
    for col in ("", "gridwatch", "raw limit", "ratio"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row(
        f"eval detectors, {len(loaded)} clips @ {fps:g} fps (x real time)",
        f"{clips_part['gridwatch']['speed_x_realtime']:.2f}",
        f"{raw['speed_x_realtime']:.2f}",
        f"{clips_part['ratio']:.2f}",
    )
    t.add_row(
        f"eval frames, {len(paths)} images (frames/s)",
        f"{fr['frames_per_s']:.2f}",
        f"{raw_f['frames_per_s']:.2f}",
        f"{frames_part['ratio']:.2f}",
    )
    console.print(t)
    return result
