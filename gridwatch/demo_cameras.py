"""The cameras of `gridwatch demo`: two simulated RTSP cameras playing the real test footage.

cam-campus plays vtest.avi (pedestrians on a campus road, a parked van) with a gathering zone on
the road and a roadway zone where the van stands; cam-street plays the street film sample.mp4 with
a gathering zone. Their candidates go through the same fusion, routing and dispatch as the
sensors'; when a team resolves one, the same camera verifies the zone (reopening it if the crowd
or the van is still there).

The campus road's gathering limit is deliberately tight (more than 1 person for 8 s): walkers
passing by trip it within the demo's minute, the team on site dismisses it as a false alarm, and
that verdict is what the retraining loop at the end of the demo starts from (gridwatch/demo_loop.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gridwatch.city import CityModel
from gridwatch.devservers.rtsp import RtspServer

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = Path(os.environ.get("GRIDWATCH_FOOTAGE_DIR", REPO / "var" / "footage"))
CLIPS = {"/campus": "vtest.h264.mp4", "/street": "sample.h264.mp4"}


def footage_missing() -> str | None:
    missing = [c for c in CLIPS.values() if not (FOOTAGE / c).is_file()]
    return (
        f"footage missing in {FOOTAGE} ({', '.join(missing)}): run scripts/fetch_footage.sh"
        if missing
        else None
    )


def start_demo_cameras(workdir: Path) -> RtspServer:
    return RtspServer(workdir / "rtsp", {m: FOOTAGE / c for m, c in CLIPS.items()}).start()


def demo_camera_overrides(server: RtspServer, city: CityModel, evidence_dir: Path) -> dict[str, Any]:
    grids = city.grids()
    g1, g2 = grids[40], grids[120]
    p1, p2 = g1.geometry.representative_point(), g2.geometry.representative_point()
    feeds = [
        {
            "source": {"id": "cam-campus", "url": server.url("/campus"), "analysed_fps": 2},
            "location": {"lon": p1.x, "lat": p1.y},
            "rules": {
                "camera": {"camera_id": "cam-campus", "frame_size": [768, 576], "zones": [
                    {"kind": "gathering", "id": "campus-road", "label": "校园路", "grid_id": g1.id,
                     "polygon": [[0, 230], [768, 230], [768, 576], [0, 576]], "max_people": 1, "dwell_s": 8},
                    {"kind": "roadway", "id": "kerb", "label": "路边车道", "grid_id": g1.id,
                     "polygon": [[520, 80], [768, 80], [768, 300], [520, 300]], "dwell_s": 20},
                ]},
                "tracker": {"fps": 2},
            },
        },
        {
            "source": {"id": "cam-street", "url": server.url("/street"), "analysed_fps": 2},
            "location": {"lon": p2.x, "lat": p2.y},
            "rules": {
                "camera": {"camera_id": "cam-street", "frame_size": [640, 360], "zones": [
                    {"kind": "gathering", "id": "pavement", "label": "人行道", "grid_id": g2.id,
                     "polygon": [[0, 150], [640, 150], [640, 360], [0, 360]], "max_people": 5, "dwell_s": 8},
                ]},
                "tracker": {"fps": 2},
            },
        },
    ]  # fmt: skip
    return {"cameras": {"feeds": feeds, "evidence": {"directory": str(evidence_dir)}, "health_interval_s": 2}}
