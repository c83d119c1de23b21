"""Pure dispatch rules: deadline calendars, routing by the trigger list, fusion."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from gridwatch.city import Level
from gridwatch.config import ConfigError, FusionConfig, FusionRule
from gridwatch.dispatch.calendar import AlwaysCalendar, WorkingHoursCalendar
from gridwatch.dispatch.routing import NoRoute, Router
from gridwatch.schemas import Category, Severity
from gridwatch.streams.fusion import FusionIndex, distance_m, raised_severity
from tests.dispatch_helpers import T0, candidate, demo_city, demo_config

SH = ZoneInfo("Asia/Shanghai")


def ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, tzinfo=SH).timestamp() * 1000)


# --- calendars -------------------------------------------------------------------------------
def office() -> WorkingHoursCalendar:
    return WorkingHoursCalendar(
        "Asia/Shanghai",
        dt.time(8, 30),
        dt.time(17, 30),
        holidays=[dt.date(2026, 10, 1), dt.date(2026, 10, 2)],
        extra_workdays=[dt.date(2026, 10, 10)],  # a Saturday made a working day
    )


def test_always_calendar_counts_every_second() -> None:
    assert AlwaysCalendar().add(T0, 300) == T0 + 300_000


def test_working_hours_within_one_day() -> None:
    assert office().add(ms(2026, 11, 24, 10), 3600) == ms(2026, 11, 24, 11)


def test_working_hours_roll_over_night_and_weekend() -> None:
    # Friday 17:00 + 1 h of office time = Monday 09:00
    assert office().add(ms(2026, 11, 27, 17), 3600) == ms(2026, 11, 30, 9)
    # started before opening: the clock starts at 08:30
    assert office().add(ms(2026, 11, 24, 6), 1800) == ms(2026, 11, 24, 9)


def test_holidays_skipped_and_make_up_days_count() -> None:
    # Wednesday 30 Sep 17:00 + 1 h: Thu 1 Oct and Fri 2 Oct are holidays -> Monday 5 Oct 09:00
    assert office().add(ms(2026, 9, 30, 17), 3600) == ms(2026, 10, 5, 9)
    # Friday 9 Oct 17:00 + 1 h: Saturday 10 Oct is a make-up working day -> Sat 09:00
    assert office().add(ms(2026, 10, 9, 17), 3600) == ms(2026, 10, 10, 9)


def test_calendar_config_refuses_end_before_start() -> None:
    with pytest.raises(ConfigError, match=r"dispatch\.calendars\.bad.*end 08:00 must be after start 09:00"):
        demo_config(
            None,
            calendars={
                "always": {"kind": "always"},
                "bad": {"kind": "working_hours", "start": "09:00", "end": "08:00"},
            },
        )


def test_trigger_with_unknown_calendar_names_the_line() -> None:
    cfg = demo_config(None).dispatch.model_dump(mode="json")
    trig = cfg["triggers"]
    trig[1]["calendar"] = "night"
    with pytest.raises(ConfigError, match=r"triggers\[1\]\.calendar: unknown calendar 'night'"):
        demo_config(None, triggers=trig)


# --- routing ---------------------------------------------------------------------------------
def router() -> Router:
    cfg = demo_config(None)
    return Router(cfg.dispatch, demo_city(), cfg.site.timezone)


def test_route_goes_to_the_grid_of_the_location() -> None:
    gid = demo_city().grids()[5].id
    r = router().route(Category.SMOKE, Severity.HIGH, gid)
    assert (r.node_id, r.level, r.rule.platform) == (gid, Level.GRID, "应急管理")


def test_route_first_level_community_goes_to_the_grids_community() -> None:
    cfg = demo_config(None).dispatch.model_dump(mode="json")
    cfg["triggers"].insert(
        0,
        {
            **cfg["triggers"][0],
            "categories": ["noise"],
            "first_level": "community",
            "deadlines": {"community": {"ack_s": 60, "arrive_s": 120, "resolve_s": 600}},
        },
    )
    c = demo_config(None, triggers=cfg["triggers"])
    r = Router(c.dispatch, demo_city(), "Asia/Shanghai").route(
        Category.NOISE, Severity.LOW, demo_city().grids()[0].id
    )
    assert r.level == Level.COMMUNITY
    assert r.node_id == demo_city().grids()[0].parent


def test_route_outside_every_grid_goes_to_the_district() -> None:
    r = router().route(Category.SMOKE, Severity.HIGH, None)
    assert r.level == Level.DISTRICT and demo_city().level_of(r.node_id) == Level.DISTRICT


def test_no_route_names_category_and_severity() -> None:
    c = demo_config(
        None,
        triggers=[
            {
                "categories": ["smoke"],
                "platform": "x",
                "min_severity": "high",
                "deadlines": {"grid": {"ack_s": 1, "arrive_s": 2, "resolve_s": 3}},
            }
        ],
    )
    r = Router(c.dispatch, demo_city(), "Asia/Shanghai")
    with pytest.raises(NoRoute, match="'smoke' at severity 'low'"):
        r.route(Category.SMOKE, Severity.LOW, demo_city().grids()[0].id)
    with pytest.raises(NoRoute, match="'noise'"):
        r.route(Category.NOISE, Severity.HIGH, demo_city().grids()[0].id)


def test_deadlines_use_nearest_level_below_and_calendar() -> None:
    r = router()
    _, rule = r.rule_for(Category.GATHERING, Severity.HIGH)
    # gathering has grid and town entries: community uses grid's, district uses town's
    assert r.step_deadlines(rule, Level.COMMUNITY).ack_s == 300
    assert r.step_deadlines(rule, Level.DISTRICT).ack_s == 600
    _, dumping = r.rule_for(Category.ILLEGAL_DUMPING, Severity.LOW)
    d = r.deadlines(dumping, Level.GRID, ms(2026, 11, 27, 17, 15))  # Friday 17:15, office calendar
    assert d["ack"] == ms(2026, 11, 30, 8, 45)  # 30 min: 17:15-17:30 Friday, 08:30-08:45 Monday


# --- fusion ----------------------------------------------------------------------------------
def fusion(**kw: object) -> FusionIndex:
    return FusionIndex(FusionConfig(default=FusionRule(radius_m=150, window_s=1800, cooldown_s=600), **kw))


def test_distance_is_haversine() -> None:
    assert distance_m(104.0, 30.0, 104.0, 30.001) == pytest.approx(111.2, abs=0.5)


def test_same_matter_seen_by_two_sources_is_one_incident() -> None:
    f = fusion()
    a = candidate("s1")
    d = f.decide(a)
    assert d.action == "new"
    f.record(a, d, "inc-1")
    b = candidate("cam-7", kind="camera", t=T0 + 60_000, offset_m=100)
    d2 = f.decide(b)
    assert (d2.action, d2.incident_id) == ("attach", "inc-1")
    assert d2.distance_m == pytest.approx(100, abs=2)


def test_too_far_or_too_late_or_other_category_is_a_new_incident() -> None:
    f = fusion()
    a = candidate("s1")
    f.record(a, f.decide(a), "inc-1")
    assert f.decide(candidate("s2", offset_m=200)).action == "new"
    assert f.decide(candidate("s2", t=T0 + 1801_000)).action == "new"
    assert f.decide(candidate("s2", category="water_level")).action == "new"


def test_replayed_candidate_is_a_duplicate() -> None:
    f = fusion()
    a = candidate("s1")
    f.record(a, f.decide(a), "inc-1")
    assert f.decide(candidate("s1")).action == "duplicate"


def test_cooldown_attaches_to_a_closed_incident_without_redispatch() -> None:
    f = fusion()
    a = candidate("s1")
    f.record(a, f.decide(a), "inc-1")
    f.mark_closed("inc-1", T0 + 1000)
    d = f.decide(candidate("s1", t=T0 + 300_000))
    assert (d.action, d.incident_id) == ("attach_closed", "inc-1")
    assert f.decide(candidate("s1", t=T0 + 1000 + 601_000)).action == "new"
    assert f.expire(T0 + 1000 + 601_000) == 1 and len(f) == 0


def test_severity_rises_with_distinct_sources() -> None:
    f = fusion(severity_rise_sources=3)
    a = candidate("s1", severity="medium")
    f.record(a, f.decide(a), "inc-1")
    b = candidate("s2", severity="medium", t=T0 + 1)
    d = f.decide(b)
    assert d.severity == Severity.MEDIUM and not d.severity_raised
    f.record(b, d, "inc-1")
    # the same source again does not count twice
    again = candidate("s2", severity="medium", t=T0 + 2)
    assert f.decide(again).severity == Severity.MEDIUM
    d3 = f.decide(candidate("s3", severity="medium", t=T0 + 3))
    assert d3.severity == Severity.HIGH and d3.severity_raised
    assert raised_severity(Severity.CRITICAL, Severity.LOW, 9, 3) == Severity.CRITICAL


def test_same_grid_only_refuses_a_neighbour_grid() -> None:
    f = fusion(per_category={Category.SMOKE: FusionRule(radius_m=100_000, same_grid_only=True)})
    a = candidate("s1", grid=0)
    f.record(a, f.decide(a), "inc-1")
    assert f.decide(candidate("s2", grid=1)).action == "new"
    assert f.decide(candidate("s3", grid=0)).action == "attach"
