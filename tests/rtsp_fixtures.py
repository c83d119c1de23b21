"""Fixtures for camera tests: footage, simulated RTSP cameras, camera readers (all torn down by PID).

Import the fixtures into a test module (``from tests.rtsp_fixtures import *``-style, by name).
Each test gets private servers: camera tests freeze and kill them.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatch.devservers.rtsp import GST_PYTHON, RtspServer
from gridwatch.ingest.camera import CameraEvent, CameraReader
from gridwatch.ingest.camera_config import CameraSourceConfig

log = logging.getLogger("tests.rtsp")

REPO = Path(__file__).resolve().parent.parent
FOOTAGE_DIR = Path(os.environ.get("GRIDWATCH_FOOTAGE_DIR", REPO / "var" / "footage"))
if not FOOTAGE_DIR.is_absolute():
    FOOTAGE_DIR = REPO / FOOTAGE_DIR

#: name -> nominal frame rate of the clips made by scripts/fetch_footage.sh
CLIPS = {"vtest.h264.mp4": 10.0, "sample.h264.mp4": 30000 / 1001}


@functools.cache
def _gst_rtsp_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here (None: it can)."""
    code = "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); from gi.repository import GstRtspServer"
    try:
        r = subprocess.run(
            [GST_PYTHON, "-c", code], capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"}
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{GST_PYTHON} unusable: {e}"
    if r.returncode != 0:
        return f"gst-rtsp-server not importable by {GST_PYTHON} (apt: python3-gi gir1.2-gst-rtsp-server-1.0): {r.stderr.decode()[-200:]}"
    return None


@pytest.fixture(scope="session")
def footage() -> dict[str, Path]:
    """The H.264 clips, or skip with the command that makes them."""
    paths = {name: FOOTAGE_DIR / name for name in CLIPS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"camera footage missing ({', '.join(missing)}): run scripts/fetch_footage.sh")
    return paths


@pytest.fixture
def rtsp_server(
    footage: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RtspServer]]:
    """``rtsp_server({"/cam1": path}, **RtspServer kwargs, start=True) -> RtspServer`` private to the test."""
    why = _gst_rtsp_missing()
    if why:
        pytest.skip(why)
    servers: list[RtspServer] = []

    def make(mounts: dict[str, Path], *, start: bool = True, **kwargs: Any) -> RtspServer:
        server = RtspServer(tmp_path_factory.mktemp("rtsp"), mounts, **kwargs)
        servers.append(server)
        return server.start() if start else server

    try:
        yield make
    finally:
        for s in reversed(servers):
            try:
                s.stop(grace=3.0)
            except Exception:  # noqa: BLE001 - keep tearing down the rest
                log.exception("failed to stop %r", s)


class EventLog:
    """Collects camera events (called from the readers' threads) for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[float, CameraEvent]] = []

    def __call__(self, event: CameraEvent) -> None:
        self.events.append((time.monotonic(), event))

    def of(self, camera_id: str, kind: str | None = None) -> list[tuple[float, CameraEvent]]:
        return [
            (t, e) for t, e in self.events if e.camera_id == camera_id and (kind is None or e.kind == kind)
        ]

    def wait_for(self, camera_id: str, kind: str, after: float, timeout: float) -> float | None:
        """Monotonic time of the first ``kind`` event of ``camera_id`` after ``after`` (None: timed out)."""
        deadline = time.monotonic() + timeout
        while True:
            for t, _e in self.of(camera_id, kind):
                if t >= after:
                    return t
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


@pytest.fixture
def camera_reader(rtsp_server: Callable[..., RtspServer]) -> Iterator[Callable[..., CameraReader]]:
    """``camera_reader(url, id=..., **CameraSourceConfig fields, on_event=...) -> started CameraReader``.

    Depends on ``rtsp_server`` so readers are stopped before the servers.
    """
    readers: list[CameraReader] = []

    def make(url: str, *, id: str = "cam1", on_event: Any = None, **fields: Any) -> CameraReader:  # noqa: A002
        cfg = CameraSourceConfig(id=id, url=url, **fields)
        reader = CameraReader(cfg, on_event=on_event)
        readers.append(reader)
        return reader.start()

    try:
        yield make
    finally:
        for r in readers:
            r.stop(timeout=15.0)
