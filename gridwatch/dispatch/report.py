"""The monthly bulletin (月度通报): KPIs, rankings of towns and grids, charts; HTML and PDF.

`gridwatch report monthly --month 2026-11 [--town t-01]` reads the ledger, computes the reform KPIs
for the month (docs/DOMAIN.md "How they are judged") with the same code as the live KPIs
(`kpi.aggregate`), ranks towns (or a town's grids), draws the charts with matplotlib, writes a
self-contained HTML file (charts inlined) and prints it to PDF with headless Chromium.

Ranking score: closure rate, then on-time acknowledgement rate, then self-disposal rate (the
order the reforms publish them in); ties by fewer escalations. Labels are Chinese first.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from gridwatch.city import CityModel, Level
from gridwatch.dispatch.kpi import KpiAcc, KpiRow, aggregate
from gridwatch.dispatch.ledger import Ledger

__all__ = ["MonthlyReport", "build_monthly_report", "month_bounds", "write_pdf"]

CATEGORY_ZH = {
    "illegal_dumping": "乱倒垃圾", "gathering": "人员聚集", "road_blockage": "道路阻塞", "water_level": "水位异常",
    "smoke": "烟感报警", "air_quality": "空气质量", "noise": "噪声超标", "manhole_cover": "井盖异常",
    "bin_overflow": "垃圾桶满溢", "sensor_anomaly": "传感器异常", "sensor_offline": "传感器离线",
}  # fmt: skip


def month_bounds(month: str, timezone: str) -> tuple[int, int]:
    """[start, end) of a YYYY-MM month in the centre's time zone, epoch ms."""
    try:
        y, m = (int(x) for x in month.split("-"))
        start = dt.datetime(y, m, 1, tzinfo=ZoneInfo(timezone))
    except (ValueError, TypeError):
        raise ValueError(f"--month: {month!r} is not YYYY-MM") from None
    end = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=ZoneInfo(timezone))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@dataclass
class RankRow:
    rank: int
    node_id: str
    name: str
    acc: KpiAcc


@dataclass
class MonthlyReport:
    month: str
    scope_id: str
    scope_name: str
    total: KpiAcc
    ranking: list[RankRow]
    ranking_level: str
    by_category: dict[str, KpiAcc]
    daily: list[tuple[str, int, int]]
    html: str


def _score(a: KpiAcc) -> tuple[float, float, float, int]:
    f = a.fields()
    return (f["closure_rate"], f["on_time_ack_rate"], f["self_disposal_rate"], -a.escalated)


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _rate(a: KpiAcc, key: str) -> str:
    """A rate, or a dash where there is nothing to rate (no incidents received)."""
    return _pct(a.fields()[key]) if a.received else "—"


def _chart_png(daily: list[tuple[str, int, int]], by_category: dict[str, KpiAcc]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist if "CJK" in f.name or "Noto Sans SC" in f.name]
    if cjk:
        plt.rcParams["font.family"] = [cjk[0], "DejaVu Sans"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2.2, 1]})
    days = [d[0][-2:] for d in daily]
    ax1.bar(days, [d[1] for d in daily], color="#4c78a8", label="受理 received")
    ax1.plot(days, [d[2] for d in daily], color="#f58518", marker="o", ms=3, label="办结 closed")
    ax1.set_title("每日受理与办结 Daily received / closed")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.tick_params(axis="x", labelsize=7)
    cats = sorted(by_category.items(), key=lambda kv: -kv[1].received)[:8]
    ax2.barh(
        [CATEGORY_ZH.get(c, c) for c, _ in cats][::-1], [a.received for _, a in cats][::-1], color="#54a24b"
    )
    ax2.set_title("按类别 By category")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def build_monthly_report(
    ledger: Ledger, city: CityModel, month: str, timezone: str, town: str | None = None
) -> MonthlyReport:
    start, end = month_bounds(month, timezone)
    district = next(n for n in city.nodes.values() if n.level == Level.DISTRICT)
    scope = city.node(town) if town else district
    if scope.level not in (Level.DISTRICT, Level.TOWN):
        raise ValueError(f"--town: {scope.id} is a {scope.level.value}, not a town")
    rows: list[KpiRow] = [r for r in ledger.kpi_rows(start) if start <= r.created_at < end]
    if town:
        rows = [r for r in rows if r.town_id == town]
    acc = aggregate(rows, start, end, district.id)
    total = (
        acc.get(("town", town, "all"), KpiAcc())
        if town
        else acc.get(("district", district.id, "all"), KpiAcc())
    )
    level = "grid" if town else "town"
    children = (
        [g for g in city.grids() if town and any(a.id == town for a in city.ancestors(g.id))]
        if town
        else [n for n in city.nodes.values() if n.level == Level.TOWN]
    )
    ranked = sorted(children, key=lambda n: _score(acc.get((level, n.id, "all"), KpiAcc())), reverse=True)
    ranking = [
        RankRow(i + 1, n.id, n.name_zh, acc.get((level, n.id, "all"), KpiAcc())) for i, n in enumerate(ranked)
    ]
    by_category: dict[str, KpiAcc] = {}
    for r in rows:
        by_category.setdefault(r.category, KpiAcc()).add(r)
    tz = ZoneInfo(timezone)
    days: dict[str, list[int]] = {}
    d = dt.datetime.fromtimestamp(start / 1000, tz)
    while int(d.timestamp() * 1000) < end:
        days[d.strftime("%Y-%m-%d")] = [0, 0]
        d += dt.timedelta(days=1)
    for r in rows:
        days[dt.datetime.fromtimestamp(r.created_at / 1000, tz).strftime("%Y-%m-%d")][0] += 1
        if r.closed_at is not None and r.state in ("closed", "false_alarm") and r.closed_at < end:
            key = dt.datetime.fromtimestamp(r.closed_at / 1000, tz).strftime("%Y-%m-%d")
            if key in days:
                days[key][1] += 1
    daily = [(k, v[0], v[1]) for k, v in days.items()]
    report = MonthlyReport(month, scope.id, scope.name_zh, total, ranking, level, by_category, daily, "")
    report.html = _render(report, _chart_png(daily, by_category))
    return report


def _render(r: MonthlyReport, chart_b64: str) -> str:
    e = html.escape
    f = r.total.fields()
    cards = [
        ("受理 Received", str(r.total.received)),
        ("结案率 Closure rate", _pct(f["closure_rate"])),
        ("自处置率 Self-disposal", _pct(f["self_disposal_rate"])),
        ("按时响应率 On-time ack", _pct(f["on_time_ack_rate"])),
        ("平均响应 Mean response", _dur(f["mean_response_s"])),
        ("升级率 Escalation rate", _pct(f["escalation_rate"])),
        ("误报率 False alarms", _pct(f["false_alarm_rate"])),
    ]
    level_zh = {"town": "镇街 towns", "grid": "网格 grids"}[r.ranking_level]
    rank_rows = "".join(
        f"<tr><td>{x.rank}</td><td>{e(x.name)}<br><small>{e(x.node_id)}</small></td><td>{x.acc.received}</td>"
        f"<td>{_rate(x.acc, 'closure_rate')}</td><td>{_rate(x.acc, 'on_time_ack_rate')}</td>"
        f"<td>{_rate(x.acc, 'self_disposal_rate')}</td><td>{x.acc.escalated}</td>"
        f"<td>{_dur(x.acc.fields()['mean_response_s']) if x.acc.acked else '—'}</td></tr>"
        for x in r.ranking
    )
    cat_rows = "".join(
        f"<tr><td>{e(CATEGORY_ZH.get(c, c))} <small>{e(c)}</small></td><td>{a.received}</td><td>{a.closed}</td>"
        f"<td>{_pct(a.fields()['closure_rate'])}</td><td>{a.escalated}</td><td>{a.false_alarms}</td></tr>"
        for c, a in sorted(r.by_category.items(), key=lambda kv: -kv[1].received)
    )
    levels = "".join(
        f"<td>{r.total.resolved_at[lv]}</td>" for lv in ("grid", "community", "town", "district")
    )
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>{e(r.scope_name)} {e(r.month)} 月度通报</title>
<style>
 @page {{ size: A4; margin: 14mm; }}
 body {{ font-family: "Noto Sans CJK SC", "Noto Sans SC", sans-serif; color: #1d2530; font-size: 11pt; }}
 h1 {{ font-size: 20pt; margin: 0 0 2mm; }} h2 {{ font-size: 13pt; border-bottom: 2px solid #4c78a8; padding-bottom: 1mm; margin-top: 7mm; }}
 .sub {{ color: #5a6572; margin-bottom: 5mm; }}
 .cards {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 3mm; }}
 .card {{ border: 1px solid #d5dbe3; border-radius: 2mm; padding: 3mm; }}
 .card b {{ display: block; font-size: 16pt; margin-top: 1mm; }}
 table {{ border-collapse: collapse; width: 100%; font-size: 9.5pt; }}
 th, td {{ border-bottom: 1px solid #e3e7ec; padding: 1.5mm 2mm; text-align: right; }}
 th:nth-child(2), td:nth-child(2), th:first-child, td:first-child {{ text-align: left; }}
 th {{ background: #f1f4f8; }} small {{ color: #7a8591; }}
 img {{ width: 100%; }}
</style></head><body>
<h1>{e(r.scope_name)} 网格化治理月度通报</h1>
<div class="sub">Monthly bulletin · {e(r.month)} · scope {e(r.scope_id)} · generated by gridwatch from the incident ledger</div>
<div class="cards">{"".join(f'<div class="card">{e(k)}<b>{e(v)}</b></div>' for k, v in cards)}</div>
<h2>排名 Ranking of {level_zh}</h2>
<table><tr><th>#</th><th>单位 Unit</th><th>受理</th><th>结案率</th><th>按时响应</th><th>自处置率</th><th>升级</th><th>平均响应</th></tr>{rank_rows}</table>
<h2>趋势与类别 Trend and categories</h2>
<img alt="daily and category charts" src="data:image/png;base64,{chart_b64}">
<table><tr><th>类别 Category</th><th>受理</th><th>结案</th><th>结案率</th><th>升级</th><th>误报</th></tr>{cat_rows}</table>
<h2>各层级办结 Resolved at each level</h2>
<table><tr><th>网格 grid</th><th>社区 community</th><th>镇街 town</th><th>区 district</th></tr><tr>{levels}</tr></table>
</body></html>
"""


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        "no Chromium found for PDF output (Debian package `chromium`: run scripts/setup.sh)"
    )


def write_pdf(html_path: Path, pdf_path: Path, timeout_s: float = 120) -> None:
    """Print an HTML file to PDF with headless Chromium (flags: no network, no first-run work)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gridwatch-chromium-") as profile:
        cmd = [
            chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={pdf_path}",
            html_path.resolve().as_uri(),
        ]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0 or not pdf_path.exists():
        raise RuntimeError(f"chromium could not print {html_path} to PDF: {r.stderr.strip()[-500:]}")
