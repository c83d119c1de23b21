"""The incident state machine (pure): unit cases and a hypothesis state-machine test."""

from __future__ import annotations

import functools
import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gridwatch.city import Level
from gridwatch.dispatch.machine import (
    TERMINAL_STATES,
    Command,
    CommandKind,
    IllegalTransition,
    Incident,
    State,
    Transition,
    apply,
    new_incident,
    pending_deadline,
)
from gridwatch.dispatch.routing import Router
from tests.dispatch_helpers import T0, demo_city, demo_config

_ids = itertools.count()


@functools.cache
def plan():
    cfg = demo_config(None)
    return Router(cfg.dispatch, demo_city(), cfg.site.timezone).plan(0)  # smoke/water: 24/7 clocks


GRID = demo_city().grids()[0]
COMMUNITY = GRID.parent


def cmd(kind: CommandKind, actor: str = "team", by_node: str | None = GRID.id, **params: object) -> Command:
    return Command(f"c{next(_ids)}", kind, actor, "tester", by_node, params)  # type: ignore[arg-type]


def fresh() -> Incident:
    return new_incident("inc-1", GRID.id, Level.GRID, T0, plan())


def escalation_for(inc: Incident) -> Command:
    step, due = pending_deadline(inc)  # type: ignore[misc]
    return cmd(CommandKind.ESCALATE, "system", None, level=inc.level.value, step=step.value, due_ms=due)


def test_happy_path_to_closed() -> None:
    p = plan()
    inc = fresh()
    for c, want in [
        (cmd(CommandKind.ACKNOWLEDGE), State.ACKNOWLEDGED),
        (cmd(CommandKind.ARRIVE), State.ON_SITE),
        (cmd(CommandKind.RESOLVE, note="cleared"), State.RESOLVED),
        (cmd(CommandKind.VERIFY, "supervisor", None, ok=True), State.CLOSED),
    ]:
        inc, tr = apply(inc, c, T0 + 1000, p)
        assert inc.state == want and tr.to_state == want
    assert pending_deadline(inc) is None


def test_illegal_transition_is_refused_with_a_clear_error() -> None:
    inc, _ = apply(fresh(), cmd(CommandKind.ACKNOWLEDGE), T0, plan())
    with pytest.raises(IllegalTransition, match="cannot verify while acknowledged"):
        apply(inc, cmd(CommandKind.VERIFY, "supervisor", None, ok=True), T0, plan())
    inc, _ = apply(inc, cmd(CommandKind.RESOLVE), T0, plan())
    inc, _ = apply(inc, cmd(CommandKind.VERIFY, "supervisor", None, ok=True), T0, plan())
    with pytest.raises(IllegalTransition, match="is closed; no further resolve"):
        apply(inc, cmd(CommandKind.RESOLVE), T0, plan())
    with pytest.raises(IllegalTransition, match="not assigned"):
        apply(fresh(), cmd(CommandKind.ACKNOWLEDGE, by_node=demo_city().grids()[9].id), T0, plan())
    with pytest.raises(IllegalTransition, match="needs a reason"):
        apply(fresh(), cmd(CommandKind.FALSE_ALARM), T0, plan())
    with pytest.raises(IllegalTransition, match="verify is a supervisor"):
        apply(fresh(), cmd(CommandKind.VERIFY, ok=True), T0, plan())


def test_missed_deadline_escalates_to_the_community_with_fresh_clocks() -> None:
    inc = fresh()
    esc = escalation_for(inc)
    early, tr = apply(inc, esc, T0 + 1000, plan())  # not yet due: recorded, nothing changes
    assert early == inc and not tr.changed and "has not passed" in tr.note
    new, tr = apply(inc, esc, inc.deadlines["ack"], plan())
    assert tr.changed and new.node_id == COMMUNITY and new.level == Level.COMMUNITY
    assert new.state == State.DISPATCHED and new.escalations == 1
    assert new.deadlines["ack"] == inc.deadlines["ack"] + 300_000
    assert set(tr.notify) == {GRID.id, COMMUNITY}


@pytest.mark.parametrize("ack_first", [True, False])
def test_acknowledgement_and_escalation_at_the_same_moment(ack_first: bool) -> None:
    """Whichever the ledger applies first, the other finds a consistent state."""
    inc = fresh()
    due = inc.deadlines["ack"]
    esc, ack = escalation_for(inc), cmd(CommandKind.ACKNOWLEDGE)
    first, second = (ack, esc) if ack_first else (esc, ack)
    mid, t1 = apply(inc, first, due, plan())
    end, t2 = apply(mid, second, due, plan())
    assert end.state == State.ACKNOWLEDGED
    if ack_first:
        assert not t2.changed and "no longer pending" in t2.note and end.node_id == GRID.id
        assert end.escalations == 0
    else:
        # escalated, then the grid team's (late) acknowledgement still counts: the community's clock stops
        assert end.node_id == COMMUNITY and end.escalations == 1 and t2.changed
    assert pending_deadline(end)[0].value == "arrive"  # type: ignore[index]


def test_top_of_ladder_records_overdue_once() -> None:
    inc = fresh()
    for _ in range(3):  # grid -> community -> town -> district
        inc, tr = apply(inc, escalation_for(inc), inc.deadlines["ack"], plan())
    assert inc.level == Level.DISTRICT
    inc2, tr = apply(inc, escalation_for(inc), inc.deadlines["ack"], plan())
    assert inc2.level == Level.DISTRICT and inc2.top_level_overdue == ("ack",)
    assert pending_deadline(inc2) is None  # no endless re-escalation at the top


def test_failed_verification_reopens_at_the_same_level() -> None:
    inc = fresh()
    for c in (cmd(CommandKind.ACKNOWLEDGE), cmd(CommandKind.RESOLVE)):
        inc, _ = apply(inc, c, T0 + 1, plan())
    inc, tr = apply(inc, cmd(CommandKind.VERIFY, "camera", None, ok=False), T0 + 10_000, plan())
    assert inc.state == State.DISPATCHED and inc.reopened == 1 and inc.resolved_at is None
    assert inc.deadlines["ack"] == T0 + 10_000 + 300_000


def test_transfer_needs_a_target_and_reason() -> None:
    other = demo_city().grids()[1].id
    with pytest.raises(IllegalTransition, match="needs a reason"):
        apply(fresh(), cmd(CommandKind.TRANSFER, to_node=other), T0, plan())
    inc, tr = apply(fresh(), cmd(CommandKind.TRANSFER, to_node=other, reason="across the road"), T0, plan())
    assert inc.node_id == other and inc.chain == (GRID.id, other) and tr.notify == (GRID.id, other)


# --- property-based: any sequence of commands leaves a valid state and a consistent trail ----------
NODES = [GRID.id, COMMUNITY, demo_city().grids()[1].id, demo_city().node(COMMUNITY).parent]
ACTORS = ["team", "system", "operator", "supervisor", "camera"]


class IncidentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.plan = plan()
        self.now = T0
        self.inc = new_incident("inc-p", GRID.id, Level.GRID, T0, self.plan)
        self.first = State.DISPATCHED
        self.trail: list[Transition] = []

    @initialize(review=st.booleans())
    def start(self, review: bool) -> None:
        """Half the runs start held for review (the trigger line's `review: always`)."""
        self.inc = new_incident("inc-p", GRID.id, Level.GRID, T0, self.plan, review=review)
        self.first = self.inc.state

    def _apply(self, c: Command) -> None:
        try:
            new, tr = apply(self.inc, c, self.now, self.plan)
        except IllegalTransition as e:
            assert str(e)  # refused with a message; state unchanged by construction
            return
        if tr.changed:
            assert tr.from_state == self.inc.state
            assert new.version == self.inc.version + 1
        else:
            assert new == self.inc
        self.trail.append(tr)
        self.inc = new

    @rule(seconds=st.integers(min_value=0, max_value=4000))
    def wait(self, seconds: int) -> None:
        self.now += seconds * 1000

    @rule(
        kind=st.sampled_from([k for k in CommandKind if k is not CommandKind.ESCALATE]),
        actor=st.sampled_from(ACTORS),
        node=st.sampled_from(NODES),
        to=st.sampled_from(NODES),
        ok=st.booleans(),
        reason=st.sampled_from(["", "not ours"]),
        extra=st.sampled_from(
            [
                {},
                {"into": "inc-q"},
                {"into": "inc-p"},
                {"note": "seen"},
                {"category": "smoke", "from_category": "noise"},
            ]
        ),
    )
    def command(
        self, kind: CommandKind, actor: str, node: str, to: str, ok: bool, reason: str, extra: dict[str, str]
    ) -> None:
        self._apply(cmd(kind, actor, node, to_node=to, ok=ok, reason=reason, **extra))

    @rule(stale=st.booleans())
    def deadline(self, stale: bool) -> None:
        p = pending_deadline(self.inc)
        if p is None:
            return
        due = p[1] - (1 if stale else 0)
        self._apply(
            cmd(CommandKind.ESCALATE, "system", None, level=self.inc.level.value, step=p[0].value, due_ms=due)
        )

    @invariant()
    def valid(self) -> None:
        inc = self.inc
        if inc.state is State.PENDING_REVIEW:
            assert inc.chain == () and pending_deadline(inc) is None  # no team sees it, no clock runs
        if inc.chain:
            assert inc.node_id == inc.chain[-1]
        else:  # never dispatched: still in review, or dismissed / merged there
            assert inc.state in (State.PENDING_REVIEW, State.FALSE_ALARM, State.MERGED)
        assert inc.level == demo_city().level_of(inc.node_id)
        if inc.state in TERMINAL_STATES:
            assert pending_deadline(inc) is None and inc.closed_at is not None
        if inc.deadlines:
            assert inc.deadlines["ack"] <= inc.deadlines["arrive"] <= inc.deadlines["resolve"]
        changed = [t for t in self.trail if t.changed]
        assert inc.version == 1 + len(changed)
        prev = self.first
        for t in changed:
            assert t.from_state == prev
            prev = t.to_state
        assert prev == inc.state
        assert inc.escalations == sum(
            1 for t in changed if t.kind is CommandKind.ESCALATE and t.to_node != t.from_node
        )


IncidentMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestIncidentMachine = IncidentMachine.TestCase
