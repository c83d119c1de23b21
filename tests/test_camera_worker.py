"""The camera worker over real RTSP: footage -> detector -> zones and rules -> candidates on Kafka
(with evidence snapshots), camera health in InfluxDB, and a down event when the camera dies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gridwatch.codec import decode_event
from gridwatch.config import demo_config_path, load_config
from gridwatch.detectors.worker import CameraWorker
from gridwatch.localrun import read_topic
from gridwatch.schemas import IncidentCandidate
from gridwatch.topics import CAMERA_EVENTS, INCIDENT_CANDIDATES
from tests.dispatch_helpers import demo_city
from tests.helpers import WorkerThread

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.servers]


def camera_cfg(url: str, grid: str, tmp: Path, bootstrap: str, influx_url: str):
    g = demo_city().node(grid).geometry.representative_point()
    feed = {
        "source": {"id": "cam-vtest", "url": url, "analysed_fps": 2, "stall_timeout_s": 4},
        "location": {"lon": g.x, "lat": g.y},
        "rules": {
            "camera": {
                "camera_id": "cam-vtest",
                "frame_size": [768, 576],
                "zones": [
                    # the whole campus road: the footage always has several people on it
                    {"kind": "gathering", "id": "road", "polygon": [[0, 200], [768, 200], [768, 576], [0, 576]],
                     "grid_id": grid, "max_people": 2, "dwell_s": 4, "hold_fraction": 0.6},
                ],
            },
            "tracker": {"fps": 2},
        },
    }  # fmt: skip
    return load_config(
        demo_config_path(),
        overrides={
            "cameras": {
                "feeds": [feed],
                "evidence": {"directory": str(tmp / "evidence")},
                "health_interval_s": 1,
            },
            "kafka": {"bootstrap_servers": bootstrap},
            "influx": {"url": influx_url, "bucket": "cameras_e2e", "spill_dir": str(tmp / "spill")},
        },
    )


def test_footage_to_candidates_health_and_down_event(
    rtsp_server, footage, fresh_tansu, influxdb, influx_v2, tmp_path
):
    server = rtsp_server({"/cam1": footage["vtest.h264.mp4"]})
    tansu = fresh_tansu()
    influxdb.create_database("cameras_e2e")
    grid = demo_city().grids()[7].id
    cfg = camera_cfg(server.url("/cam1"), grid, tmp_path, tansu.bootstrap_servers, influx_v2.url)
    worker = CameraWorker(cfg)
    running = WorkerThread(worker)
    try:
        deadline = time.monotonic() + 60
        cands: list[IncidentCandidate] = []
        while time.monotonic() < deadline and not cands:
            time.sleep(1)
            cands = [
                decode_event(r, IncidentCandidate)
                for r in read_topic(tansu.bootstrap_servers, INCIDENT_CANDIDATES.name, 2)
            ]
        assert cands, f"no candidate from the camera in 60 s: {worker.stats()}"
        c = cands[0]
        assert (c.category, c.source_kind, c.source_id, c.grid_id) == (
            "gathering",
            "camera",
            "cam-vtest",
            grid,
        )
        assert c.details["zone_id"] == "road" and c.model_version.startswith("nanodet")
        assert c.location is not None
        snap = [e for e in c.evidence if e.kind == "snapshot"]
        assert snap and Path(snap[0].ref.removeprefix("file://")).stat().st_size > 10_000
        # one candidate per episode: the crowd stays, no second gathering candidate for the zone yet
        assert len({x.candidate_id for x in cands}) == 1
        assert worker.stats()["inferences"] > 0 and worker.stats()["candidate_latency_p99_ms"] < 5000

        def health():
            res = influxdb.query(
                "SELECT last(fps), last(up) FROM camera_health WHERE camera_id='cam-vtest'", db="cameras_e2e"
            )
            series = res["results"][0].get("series")
            return series[0]["values"][0] if series else None

        h = None
        for _ in range(20):
            h = health()
            if h:
                break
            time.sleep(0.5)
        assert h is not None, "no camera_health point in InfluxDB"
        _, fps, up = h
        assert up is True and fps > 5  # up, and the reader decodes the camera's 10 fps

        server.kill()
        down = None
        for _ in range(30):
            evs = [json.loads(r) for r in read_topic(tansu.bootstrap_servers, CAMERA_EVENTS.name, 2)]
            down = next((e for e in evs if e["kind"] == "down"), None)
            if down:
                break
            time.sleep(0.5)
        assert down and down["camera_id"] == "cam-vtest"
    finally:
        running.stop()


def test_a_promoted_detector_reaches_a_running_worker_without_restart(
    rtsp_server, footage, influxdb, influx_v2, tmp_path
):
    """Issue 8 part 7: promotion and rollback in the registry (detector and verifier) reach the
    running camera worker; frames keep being analysed, the episode already raised is not raised again, and candidates name
    the model that made them."""
    import shutil

    import yaml

    from gridwatch.model_registry import ModelRegistry

    bundled = Path(__file__).resolve().parents[1] / "models" / "nanodet-g-416"
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote("detector", reg.register(bundled, kind="detector").version)
    tuned = tmp_path / "tuned"
    shutil.copytree(bundled, tuned)  # same weights, another name: a distinct model version string
    manifest = yaml.safe_load((tuned / "model.yaml").read_text(encoding="utf-8"))
    manifest["name"] = "nanodet-g-416-tuned"
    (tuned / "model.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    v2 = reg.register(tuned, kind="detector", parent="1")

    server = rtsp_server({"/cam1": footage["vtest.h264.mp4"]})
    influxdb.create_database("cameras_e2e")
    grid = demo_city().grids()[7].id
    cfg = camera_cfg(server.url("/cam1"), grid, tmp_path, "127.0.0.1:9", influx_v2.url)
    cfg = cfg.model_copy(
        update={
            "cameras": cfg.cameras.model_copy(update={"follow_registry": True, "registry_poll_s": 0.3}),
            "models": cfg.models.model_copy(update={"registry_dir": reg.root}),
        }
    )
    worker = CameraWorker(cfg, kafka=False)
    assert worker.deployed_version == 1 and worker.detector.model_version.startswith("nanodet-g-416@")
    running = WorkerThread(worker)
    pipe = worker.pipelines["cam-vtest"]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not worker.candidates:
            time.sleep(0.5)
        assert worker.candidates, f"no candidate in 60 s: {worker.stats()}"
        first = worker.candidates[0]
        assert first.model_version.startswith("nanodet-g-416@")
        before = pipe.stats.inferences

        reg.promote("detector", v2.version, by="test")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and worker.deployed_version != v2.version:
            time.sleep(0.2)
        assert worker.deployed_version == v2.version and worker.counters["model_swaps"] == 1
        assert pipe.detector is worker.detector and pipe.detector.model_version.startswith(
            "nanodet-g-416-tuned@"
        )
        assert worker.stats()["model_version"].startswith("nanodet-g-416-tuned@")
        time.sleep(4)
        # frames kept being analysed by the new model, and the crowd still there raised nothing new
        assert pipe.stats.inferences >= before + 4, worker.stats()
        assert {c.candidate_id for c in worker.candidates} == {first.candidate_id}

        reg.rollback("detector", reason="test")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and worker.deployed_version != 1:
            time.sleep(0.2)
        assert worker.deployed_version == 1 and pipe.detector.model_version.startswith("nanodet-g-416@")
        assert worker.counters["model_swap_errors"] == 0 and worker.counters["errors"] == 0

        # the verifier follows the registry too: promoted, the cameras run detector + verifier
        ver = reg.register(REPO / "models" / "verifier-vtest", kind="verifier")
        reg.promote("verifier", ver.version, by="test")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and worker.verifier_version != ver.version:
            time.sleep(0.2)
        assert worker.verifier_version == ver.version
        assert "+verifier@" in worker.stats()["model_version"], worker.stats()["model_version"]
        # a fine-tuned detector promoted under it: its head (hence the verifier's features) changed,
        # so the verifier is left out, logged and counted, and the promoted detector runs
        bag = reg.register(REPO / "models" / "nanodet-g-416-bag", kind="detector", parent="1")
        reg.promote("detector", bag.version, by="test")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and worker.deployed_version != bag.version:
            time.sleep(0.2)
        assert worker.deployed_version == bag.version and worker.counters["verifier_errors"] == 1
        assert worker.stats()["model_version"].startswith("nanodet-g-416-bag@")
        assert "+" not in worker.stats()["model_version"] and worker.counters["model_swap_errors"] == 0
    finally:
        running.stop()
