"""Routing by the trigger list: who is called first for a candidate, and by when.

Pure: the trigger list and calendars come from config, the ladder from the city model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from gridwatch.city import LEVELS, CityModel, Level
from gridwatch.config import CalendarConfig, DispatchConfig, StepDeadlines, TriggerRule
from gridwatch.dispatch.calendar import AlwaysCalendar, DeadlineCalendar, WorkingHoursCalendar
from gridwatch.dispatch.machine import Plan, Step
from gridwatch.schemas import Category, Severity

__all__ = ["NoRoute", "Route", "Router", "SEVERITY_ORDER", "build_calendar"]

SEVERITY_ORDER = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
# Bottom to top: where "the nearest entry below" is looked up.
_UP_ORDER: tuple[Level, ...] = tuple(reversed(LEVELS))


class NoRoute(ValueError):
    """No line of the trigger list covers a candidate, or it lies outside every grid."""


def build_calendar(cfg: CalendarConfig, timezone: str) -> DeadlineCalendar:
    if cfg.kind == "always":
        return AlwaysCalendar()
    return WorkingHoursCalendar(
        timezone,
        dt.time.fromisoformat(cfg.start),
        dt.time.fromisoformat(cfg.end),
        weekdays=[_WEEKDAYS[d] for d in cfg.weekdays],
        holidays=cfg.holidays,
        extra_workdays=cfg.extra_workdays,
    )


@dataclass(frozen=True)
class Route:
    rule_index: int
    rule: TriggerRule
    node_id: str
    level: Level


class Router:
    def __init__(self, cfg: DispatchConfig, city: CityModel, timezone: str) -> None:
        self.cfg = cfg
        self.city = city
        self.calendars = {name: build_calendar(c, timezone) for name, c in cfg.calendars.items()}

    def rule_for(self, category: Category, severity: Severity) -> tuple[int, TriggerRule]:
        rank = SEVERITY_ORDER[severity]
        for i, rule in enumerate(self.cfg.triggers):
            if ("*" in rule.categories or category in rule.categories) and rank >= SEVERITY_ORDER[
                rule.min_severity
            ]:
                return i, rule
        raise NoRoute(
            f"no trigger-list line covers category {category.value!r} at severity {severity.value!r}"
        )

    def route(self, category: Category, severity: Severity, grid_id: str | None) -> Route:
        """First responsible node: the grid's ancestor (or the grid) at the rule's first level."""
        index, rule = self.rule_for(category, severity)
        if grid_id is None:
            # Outside every grid: the district centre takes it (there is one district root).
            roots = [n for n in self.city.nodes.values() if n.level == Level.DISTRICT]
            if not roots:
                raise NoRoute("candidate has no grid and the city model has no district")
            return Route(index, rule, roots[0].id, Level.DISTRICT)
        try:
            self.city.node(grid_id)
        except KeyError:
            raise NoRoute(f"grid {grid_id!r} is not in the city model") from None
        want = Level(rule.first_level)
        node_id = grid_id
        for node in self.city.ancestors(grid_id):
            if node.level == want:
                node_id = node.id
                break
        return Route(index, rule, node_id, want)

    def step_deadlines(self, rule: TriggerRule, level: Level) -> StepDeadlines:
        """The rule's deadlines at `level`, or of the nearest level below it that has an entry."""
        start = _UP_ORDER.index(level)
        for lv in reversed(_UP_ORDER[: start + 1]):
            if lv.value in rule.deadlines:
                return rule.deadlines[lv.value]
        return rule.deadlines[rule.first_level]

    def deadlines(self, rule: TriggerRule, level: Level, start_ms: int) -> Mapping[str, int]:
        cal = self.calendars[rule.calendar]
        d = self.step_deadlines(rule, level)
        return {
            Step.ACK.value: cal.add(start_ms, d.ack_s),
            Step.ARRIVE.value: cal.add(start_ms, d.arrive_s),
            Step.RESOLVE.value: cal.add(start_ms, d.resolve_s),
        }

    def plan(self, rule_index: int) -> Plan:
        """The callables the state machine needs for an incident routed by trigger line `rule_index`."""
        rule = self.cfg.triggers[rule_index]

        def parent(node_id: str) -> str | None:
            return self.city.node(node_id).parent

        return Plan(
            deadlines=lambda level, start: self.deadlines(rule, level, start),
            parent=parent,
            level_of=self.city.level_of,
        )
