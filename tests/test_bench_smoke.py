"""Benchmarks run in CI only as short smoke runs that prove they work (figures: docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.servers
def test_bench_sensors_smoke(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridwatch.cli",
            "bench",
            "sensors",
            "--rates",
            "1500",
            "--duration",
            "3",
            "--sensors",
            "100",
            "--workdir",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=True,
    ).stdout
    r = _last_json(out)
    assert r["bench"] == "sensors"
    row = r["end_to_end"][0]
    assert row["complete"] and row["stored"] == row["sent"] > 0
    assert row["latency_p99_ms"] is not None and row["latency_p99_ms"] >= row["latency_p50_ms"]
    assert r["streams_stage"]["ratio"] > 0 and r["bridge_stage"]["ratio"] > 0
    # the replay covers every record of the run: the bridge stage's and the ladder's
    assert r["streams_stage"]["readings"] == r["bridge_stage"]["sent"] + row["sent"]


def test_bench_city_smoke():
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "bench", "city", "--lookups", "2000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    r = _last_json(out)
    assert r["grids"] == 279 and r["gridwatch_us_per_lookup"] > 0 and r["raw_us_per_lookup"] > 0


@pytest.mark.servers
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_bench_dispatch_smoke(db: str):
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "bench", "dispatch", "--incidents", "150", "--due", "40",
         "--spread-s", "2", "--db", db],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    r = _last_json(out)
    assert r["bench"] == "dispatch" and r["db"] == db
    assert r["open_incidents"] > 100 and r["escalations"] == r["due"] == 40
    assert r["ratio"] > 0 and r["incidents_per_s"] > 0 and r["raw_inserts_per_s"] > 0
    assert r["escalation_lag_p99_ms"] >= r["escalation_lag_p50_ms"] >= 0


@pytest.mark.servers
def test_bench_cameras_smoke(footage):
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "bench", "cameras", "--cameras", "1,2", "--duration", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    r = _last_json(out)
    assert r["bench"] == "cameras" and [row["gridwatch"]["cameras"] for row in r["ladder"]] == [1, 2]
    for row in r["ladder"]:
        g = row["gridwatch"]
        assert g["fps_mean"] > 0 and g["inferences"] > 0
        assert g["frame_latency_p99_ms"] >= g["frame_latency_p50_ms"] > 0
        assert row["raw"]["fps_mean"] > 0
    assert r["max_cameras_raw"] >= 1 and r["ratio"] is not None


def test_percentile_is_nearest_rank_and_says_when_empty() -> None:
    from gridwatch.stats import percentile

    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile(range(1, 101), 0.99) == 100.0 and percentile(range(1, 101), 0.5) == 51.0
    assert percentile([], 0.5) == 0.0 and percentile([], 0.5, empty=None) is None
    assert percentile([1.234, 2.345], 1.0, ndigits=1) == 2.3
    assert isinstance(percentile([1, 2], 0.5), float)  # InfluxDB fixes a field's type


def test_bench_eval_smoke():
    """`gridwatch bench eval` on one shipped clip at 0.5 fps and 3 composite images (~10 s)."""
    from gridwatch.detectors import eval_clips as E

    if not E.FOOTAGE.is_file():
        pytest.skip(f"footage {E.FOOTAGE} missing: run scripts/fetch_footage.sh")
    clips_dir = E.ensure_clips(E.OUT_DIR, names=["dump_bag_paved"])  # cached; ~5 s if stale
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "bench", "eval", "--clips-dir", str(clips_dir),
         "--clips", "dump_bag_paved", "--fps", "0.5", "--images", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    r = _last_json(out)
    assert r["bench"] == "eval"
    ed, ef = r["eval_detectors"], r["eval_frames"]
    assert ed["clips"] == 1 and ed["clip_seconds"] == 35.0
    assert ed["frames_analysed"] == ed["raw"]["frames"] > 0
    assert ed["gridwatch"]["speed_x_realtime"] > 0 and ed["raw"]["speed_x_realtime"] > 0 and ed["ratio"] > 0
    assert ef["images"] == ef["raw"]["images"] == 3 and ef["ratio"] > 0 and ef["gridwatch"]["map"] is not None


def test_bench_train_smoke():
    """`gridwatch bench train` with one timed step of 2 images and 300 verifier rows (~20 s: four
    fresh processes, each importing torch)."""
    from pathlib import Path

    video = Path(__file__).resolve().parents[1] / "var" / "footage" / "vtest.avi"
    if not video.is_file():
        pytest.skip(f"footage {video} missing: run scripts/fetch_footage.sh")
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "bench", "train", "--steps", "1", "--batch", "2", "--rows", "300"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    r = _last_json(out)
    assert r["bench"] == "train"
    for part in ("detector_head", "verifier"):
        f = r[part]
        assert f["s_per_step"] > 0 and f["raw_s_per_step"] > 0 and f["ratio"] > 0
        assert f["peak_rss_mb"] >= f["rss_before_mb"] > 0
    assert r["detector_head"]["batch"] == 2 and r["detector_head"]["head_params"] == 490740
