"""The monthly bulletin from a real ledger: numbers, ranking, HTML, and a PDF that renders."""

from __future__ import annotations

import subprocess

import pytest

from gridwatch.clock import ManualClock
from gridwatch.dispatch.machine import Command, CommandKind
from gridwatch.dispatch.report import build_monthly_report, month_bounds, write_pdf
from tests.dispatch_helpers import T0, candidate, demo_city, make_core


def seeded_core(tmp_path):
    clock = ManualClock(T0)
    core = make_core(f"sqlite:///{tmp_path / 'l.db'}", clock)
    grids = demo_city().grids()
    # town t-01's grids 0,1,2 and another town's grid: closed, escalated, open, false alarm
    towns = {g.id: next(a.id for a in demo_city().ancestors(g.id) if a.level == "town") for g in grids}
    other = next(i for i, g in enumerate(grids) if towns[g.id] != towns[grids[0].id])
    ids = [
        core.handle_candidate(candidate(f"s{i}", grid=gi, t=T0 + i)).incident_id
        for i, gi in enumerate([0, 1, 2, other])
    ]
    for n, iid in enumerate(ids):
        node = core.ledger.incident_row(iid).node_id
        if n == 0:
            core.command(iid, Command("a0", CommandKind.ACKNOWLEDGE, "team", "t", node, {}))
            core.command(iid, Command("r0", CommandKind.RESOLVE, "team", "t", node, {}))
            core.command(iid, Command("v0", CommandKind.VERIFY, "supervisor", "s", None, {"ok": True}))
        if n == 3:
            core.command(
                iid, Command("f3", CommandKind.FALSE_ALARM, "team", "t", node, {"reason": "sensor fault"})
            )
    clock.advance(301)
    core.escalate_due()  # incidents 1 and 2 escalate
    return core, towns[grids[0].id], ids


def test_monthly_numbers_and_ranking(tmp_path) -> None:
    core, town, _ = seeded_core(tmp_path)
    rep = build_monthly_report(core.ledger, demo_city(), "2026-11", "Asia/Shanghai")
    assert rep.total.received == 4 and rep.total.closed == 2 and rep.total.escalated == 2
    assert rep.total.false_alarms == 1 and rep.total.resolved_at["grid"] == 1
    # the town with the false alarm (closed 1/1) ranks above t-01 (closed 1/3)
    assert rep.ranking_level == "town" and rep.ranking[0].node_id != town
    assert rep.ranking[0].acc.fields()["closure_rate"] == 1.0
    assert "网格化治理月度通报" in rep.html and "结案率" in rep.html and "data:image/png;base64," in rep.html
    trep = build_monthly_report(core.ledger, demo_city(), "2026-11", "Asia/Shanghai", town=town)
    assert trep.total.received == 3 and trep.ranking_level == "grid"
    assert trep.ranking[0].acc.closed == 1  # the grid that closed its incident ranks first
    empty = build_monthly_report(core.ledger, demo_city(), "2026-10", "Asia/Shanghai")
    assert empty.total.received == 0


def test_bad_month_and_scope_are_refused(tmp_path) -> None:
    core, _, _ = seeded_core(tmp_path)
    with pytest.raises(ValueError, match="not YYYY-MM"):
        month_bounds("November", "Asia/Shanghai")
    with pytest.raises(ValueError, match="is a grid, not a town"):
        build_monthly_report(
            core.ledger, demo_city(), "2026-11", "Asia/Shanghai", town=demo_city().grids()[0].id
        )


def test_pdf_renders(tmp_path) -> None:
    core, _, _ = seeded_core(tmp_path)
    rep = build_monthly_report(core.ledger, demo_city(), "2026-11", "Asia/Shanghai")
    html = tmp_path / "b.html"
    html.write_text(rep.html, encoding="utf-8")
    pdf = tmp_path / "b.pdf"
    write_pdf(html, pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")], check=True
    )
    assert (tmp_path / "page-1.png").stat().st_size > 10_000
