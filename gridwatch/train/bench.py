"""What the verifier costs per frame: `python -m gridwatch.train.bench [--verifier DIR] [--frames N]`.

Interleaves, on the same frames of vtest, the plain detector's session (6 head outputs) and the
feature-tapped session (the same plus the 3 feature maps), one thread each as the cameras run
them; then the whole `detect()` of each (preprocess, decode, NMS; the tap also pools features);
then the verifier's scoring of one detection and of a frame's detections (onnxruntime and numpy).
Prints medians in ms / us and one JSON line last.

`gridwatch bench train` (:func:`bench_train`): seconds per training step and peak memory of the
detector head fine-tune and of the verifier fit, each beside its raw limit measured in the same run
(the same module's bare forward + backward on the same batch; for the verifier, the bare Newton
algebra on the same rows), each phase in its own process so its RSS high-water is its own.
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


# --- gridwatch bench train ---------------------------------------------------------------------------
def _rss_mb() -> float:
    """Resident set size now (MB), from /proc (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    """The process's RSS high-water mark (MB): ru_maxrss is in kB on Linux."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _detector_batch(video: Path, batch: int) -> dict[str, Any]:
    """Neck features of ``batch`` vtest frames (the cache's content) and, as the boxes to teach, the
    parent's person detections put in the toaster slot (so ATSS has real positives)."""
    from gridwatch.detectors.nanodet import DEFAULT_MODEL_DIR
    from gridwatch.train.detector import head_detections
    from gridwatch.train.detector_torch import NeckExtractor

    ex = NeckExtractor(DEFAULT_MODEL_DIR)
    cap = cv2.VideoCapture(str(video))
    feats: list[list[np.ndarray]] = []
    t_cache = []
    i = 0
    while len(feats) < batch:
        ok, f = cap.read()
        if not ok:
            raise RuntimeError(f"{video}: fewer than {batch} frames")
        if i % 25 == 0:
            t0 = time.perf_counter()
            feats.append([n.astype(np.float16) for n in ex.run(f)[0]])
            t_cache.append(time.perf_counter() - t0)
        i += 1
    cap.release()
    import torch

    x = [torch.from_numpy(np.stack([f[k] for f in feats]).astype(np.float32)) for k in range(3)]
    head = ex.head().eval()
    with torch.no_grad():
        c, d = head(x)
    dets = head_detections(c, d, ex.strides, ex.width, ex.height, reg_max=head.reg_max, score_threshold=0.35)
    toaster = ex.manifest.labels.index("toaster")
    gts = [torch.from_numpy(b[cl == 0]) for b, _, cl in dets]
    return {"extractor": ex, "x": x, "gts": gts, "labels": [torch.full((len(g),), toaster) for g in gts],
            "slot": toaster, "cache_s_per_image": float(np.median(t_cache))}  # fmt: skip


def _phase(kind: str, video: str, batch: int, steps: int, rows: int, threads: int, q: Any) -> None:
    """One measured phase, in a fresh process: ``det_step`` (the fine-tune's whole step), ``det_raw``
    (bare forward + backward of the head), ``ver_fit`` (verifier's Newton fit), ``ver_raw`` (the bare
    gradient + Hessian + solve of one Newton step). Puts (seconds per step, RSS before, peak RSS)."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    if kind.startswith("det"):
        import copy

        from gridwatch.train.detector_torch import cell_centers, gfl_loss

        data = _detector_batch(Path(video), batch)
        ex, x = data["extractor"], data["x"]
        out["cache_s_per_image"] = round(data["cache_s_per_image"], 4)
        out["new_boxes"] = int(sum(len(g) for g in data["gts"]))
        parent = ex.head().eval()
        head = copy.deepcopy(parent).train()
        opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
        centers, strides = cell_centers(ex.width, ex.height, ex.strides)
        sizes = [(-(-ex.width // s)) * (-(-ex.height // s)) for s in ex.strides]
        base = _rss_mb()

        def step() -> None:
            if kind == "det_raw":
                c, d = head(x)
                (sum(t.sum() for t in c) + sum(t.sum() for t in d)).backward()
                head.zero_grad(set_to_none=True)
                return
            with torch.no_grad():
                pc, pd = parent(x)
            c, d = head(x)
            loss, _ = gfl_loss(torch.cat(c, 1), torch.cat(d, 1), data["gts"], data["labels"], centers=centers,
                               strides=strides, level_sizes=sizes, reg_max=head.reg_max, train_classes=[data["slot"]],
                               parent_cls=torch.sigmoid(torch.cat(pc, 1)), parent_dis=torch.cat(pd, 1))  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
        out["features_mb"] = round(sum(t.numel() * 4 for t in x) / 2**20, 1)
        out["head_params"] = int(sum(p.numel() for p in head.parameters()))
    else:
        from gridwatch.train.verifier import fit_logistic

        rng = np.random.default_rng(0)
        # rows of the verifier's layout size (343); the time depends on the shape, not the values
        X = rng.normal(size=(rows, 343)).astype(np.float32)
        y = (X[:, :5].sum(1) + rng.normal(size=rows) > 0).astype(np.int64)
        base = _rss_mb()
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            if kind == "ver_fit":
                m = fit_logistic(X, y)
                ts.append((time.perf_counter() - t0) / m.iterations)
                out["newton_iterations"] = m.iterations
            else:
                Z = np.hstack([X.astype(np.float64), np.ones((rows, 1))])
                p = 1.0 / (1.0 + np.exp(-(Z @ np.zeros(Z.shape[1]))))
                g = Z.T @ (p - y)
                H = (Z * (p * (1 - p))[:, None]).T @ Z + np.eye(Z.shape[1])
                np.linalg.solve(H, g)
                ts.append(time.perf_counter() - t0)
    out.update(
        s_per_step=float(np.median(ts)), rss_before_mb=round(base, 1), peak_rss_mb=round(_peak_rss_mb(), 1)
    )
    q.put(out)


def _run_phase(kind: str, **kw: Any) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: its RSS high-water is this phase's alone
    q = ctx.Queue()
    p = ctx.Process(
        target=_phase, args=(kind, kw["video"], kw["batch"], kw["steps"], kw["rows"], kw["threads"], q)
    )
    p.start()
    try:
        r = q.get(timeout=900)
    finally:
        p.join(timeout=60)
    if p.exitcode not in (0, None):
        raise RuntimeError(f"bench phase {kind} failed (exit {p.exitcode})")
    return r


def bench_train(
    video: Path | None = None, *, batch: int = 8, steps: int = 10, verifier_rows: int = 1904, threads: int = 2
) -> dict[str, Any]:
    """Seconds per step and peak RSS of the detector head fine-tune (``batch`` 416x416 images of
    cached neck features: the whole step incl. ATSS, QFL/DFL/GIoU, distillation targets from the
    frozen parent head and the AdamW update) beside the raw limit (the head's bare forward + backward
    on the same batch), and of the verifier's fit (per Newton iteration on ``verifier_rows`` x 343)
    beside its bare algebra; medians of ``steps`` after a warm-up, ``threads`` torch threads."""
    video = video or REPO / "var" / "footage" / "vtest.avi"
    kw = {"video": str(video), "batch": batch, "steps": steps, "rows": verifier_rows, "threads": threads}
    det, det_raw = _run_phase("det_step", **kw), _run_phase("det_raw", **kw)
    ver, ver_raw = _run_phase("ver_fit", **kw), _run_phase("ver_raw", **kw)

    def pair(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {
            "s_per_step": round(a["s_per_step"], 4),
            "raw_s_per_step": round(b["s_per_step"], 4),
            "ratio": round(a["s_per_step"] / b["s_per_step"], 2),
            "peak_rss_mb": a["peak_rss_mb"],
            "raw_peak_rss_mb": b["peak_rss_mb"],
            "rss_before_mb": a["rss_before_mb"],
        }

    detector = {**pair(det, det_raw), "batch": batch, "features_mb": det["features_mb"],
                "head_params": det["head_params"], "new_boxes": det["new_boxes"],
                "cache_s_per_image": det["cache_s_per_image"]}  # fmt: skip
    verifier = {
        **pair(ver, ver_raw),
        "rows": verifier_rows,
        "newton_iterations": ver.get("newton_iterations"),
    }
    return {"bench": "train", "video": str(video), "threads": threads, "steps": steps,
            "detector_head": detector, "verifier": verifier}  # fmt: skip


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
