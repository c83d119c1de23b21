"""Grafana dashboards as code: the wall screens and operations dashboards, their provisioning
files, and `push_dashboards` for a Grafana reached over its HTTP API.

    python -m gridwatch.dashboards_gen            # regenerate dashboards/ (JSON + provisioning YAML)
    python -m gridwatch.dashboards_gen --check    # exit 1 if dashboards/ differs from the generator

See docs/DASHBOARDS.md.
"""

from __future__ import annotations

from gridwatch.dashboards_gen.dashboards import FOLDERS, DashboardSettings, KpiTargets, build_dashboards
from gridwatch.dashboards_gen.provisioning import render_files

__all__ = ["FOLDERS", "DashboardSettings", "KpiTargets", "build_dashboards", "render_files"]
