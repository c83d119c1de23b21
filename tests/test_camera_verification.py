"""Closure verification by the same camera: dispatch asks over Kafka, the camera watches the zone.

End to end on real servers: a camera's gathering incident is resolved by the team while the crowd
is still there -> the camera answers "not verified" -> the incident is reopened and counted. A zone
that is clear is verified. Plus the pure verification rule.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from gridwatch.config import demo_config_path, load_config
from gridwatch.detectors.verification import ZoneVerification
from gridwatch.detectors.worker import CameraWorker
from gridwatch.devservers.process import free_port
from gridwatch.dispatch.api import hash_token
from gridwatch.dispatch.service import DispatchService
from gridwatch.schemas import VerifyRequest
from tests.dispatch_helpers import demo_city


def test_zone_verification_rule() -> None:
    v = ZoneVerification("inc-1", "z", requested_at=0, clear_ms=3000, timeout_ms=10_000)
    assert v.update(500, True) is None
    assert v.update(1000, False) is None  # clear from 1.0 s
    assert v.update(3000, True) is None  # interrupted: the clock restarts
    assert v.update(4000, False) is None
    assert v.update(7000, False) is True and v.decided_at == 7000
    assert v.update(8000, True) is True  # decided stays decided
    w = ZoneVerification("inc-2", "z", requested_at=0, clear_ms=3000, timeout_ms=10_000)
    for t in range(0, 10_000, 500):
        assert w.update(t, t % 2000 == 0) is None  # never clear for 3 s
    assert w.update(10_000, True) is False


class Loop:
    """Run an async service in its own thread and event loop."""

    def __init__(self, coro_factory) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None

        def run() -> None:
            async def main() -> None:
                self.stop = asyncio.Event()
                await coro_factory(self.stop)

            try:
                self.loop.run_until_complete(main())
            except BaseException as e:  # noqa: BLE001 - asserted by the test
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.mark.servers
def test_resolved_while_crowd_remains_is_reopened(
    rtsp_server, footage, fresh_tansu, mosquitto, influxdb, influx_v2, tmp_path: Path
):
    server = rtsp_server({"/cam1": footage["vtest.h264.mp4"]})
    tansu = fresh_tansu()
    influxdb.create_database("verify_e2e")
    grid = demo_city().grids()[9].id
    g = demo_city().node(grid).geometry.representative_point()
    api_port = free_port()
    op_token = "op-verify-token"
    feed = {
        "source": {"id": "cam-v", "url": server.url("/cam1"), "analysed_fps": 2},
        "location": {"lon": g.x, "lat": g.y},
        "rules": {"camera": {"camera_id": "cam-v", "frame_size": [768, 576], "zones": [
            {"kind": "gathering", "id": "road", "polygon": [[0, 200], [768, 200], [768, 576], [0, 576]],
             "grid_id": grid, "max_people": 2, "dwell_s": 4, "hold_fraction": 0.6},
            # the sky above the campus: never anyone there
            {"kind": "gathering", "id": "sky", "polygon": [[0, 0], [300, 0], [300, 60], [0, 60]],
             "grid_id": grid, "max_people": 0, "dwell_s": 4},
        ]}, "tracker": {"fps": 2}},
    }  # fmt: skip
    cfg = load_config(
        demo_config_path(),
        overrides={
            "kafka": {"bootstrap_servers": tansu.bootstrap_servers},
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "verify-e2e"},
            "influx": {"url": influx_v2.url, "bucket": "verify_e2e", "spill_dir": str(tmp_path / "spill")},
            "cameras": {
                "feeds": [feed],
                "evidence": {"directory": str(tmp_path / "ev")},
                "health_interval_s": 2,
            },
            "dispatch": {
                "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                "api_port": api_port,
                "verify_clear_s": 2,
                "scheduler_max_sleep_s": 0.2,
                "credentials": [{"name": "op", "role": "operator", "token_sha256": hash_token(op_token)}],
            },
        },
    )
    dispatch = DispatchService(cfg)
    worker = CameraWorker(cfg)
    d_loop = Loop(dispatch.run)
    c_loop = Loop(worker.run)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {op_token}"}, timeout=10
    )
    try:
        deadline = time.monotonic() + 90
        incs = []
        while time.monotonic() < deadline and not incs:
            time.sleep(1)
            try:
                incs = api.get("/api/v1/incidents").json()
            except httpx.HTTPError:
                continue
        assert incs, (
            f"no camera incident reached dispatch: camera {worker.stats()} dispatch {dispatch.core.stats}"
        )
        inc = incs[0]
        assert inc["source_kind"] == "camera" and inc["category"] == "gathering"
        iid = inc["incident_id"]
        # the operator resolves for the team although the crowd is still there
        r = api.post(
            f"/api/v1/incidents/{iid}/resolve", json={"command_id": "res-1", "note": "dispersed (not really)"}
        )
        assert r.status_code == 200, r.text
        # dispatch -> Kafka -> camera watches 'road' for 2 s clear within 6 s -> not verified -> reopened
        detail = None
        for _ in range(60):
            time.sleep(0.5)
            detail = api.get(f"/api/v1/incidents/{iid}").json()
            if detail["incident"]["reopened"]:
                break
        assert detail and detail["incident"]["reopened"] == 1 and detail["incident"]["state"] == "dispatched"
        verify = [t for t in detail["transitions"] if t["kind"] == "verify"]
        assert verify and verify[-1]["actor"] == "camera" and "still occupied" in verify[-1]["note"]
        assert any(d["channel"] == "camera-verify" and d["status"] == "sent" for d in detail["deliveries"])
        # a clear zone is verified by the same camera
        now = int(time.time() * 1000)
        assert worker.add_verification(VerifyRequest(incident_id="inc-sky", camera_id="cam-v", zone_id="sky",
                                                     category="gathering", clear_s=2, timeout_s=10, requested_at=now,
                                                     resolution="r-sky"))  # fmt: skip
        for _ in range(40):
            if ("inc-sky", True) in worker.verified:
                break
            time.sleep(0.25)
        assert ("inc-sky", True) in worker.verified
    finally:
        api.close()
        c_loop.close()
        d_loop.close()
    assert d_loop.error is None and c_loop.error is None
