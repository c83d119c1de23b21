"""The README's first command: `gridwatch demo` runs the whole loop and says it completed."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.servers
@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "demo", "--history-hours", "0.3", "--live-s", "12",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "injected anomalies found: 6/6" in out
    assert "KPIs today" in out and "closure" in out
    assert "camera incidents" in out or "cameras skipped" in out
