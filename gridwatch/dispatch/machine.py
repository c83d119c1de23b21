"""The incident state machine: pure, synchronous, no I/O.

An incident is dispatched to a node of the ladder (a grid first, usually) and moves through

    [pending_review ->] dispatched -> acknowledged -> on_site -> resolved -> closed
         |                  \\            \\             \\          \\-> (verification failed) -> dispatched
         |                   +------------+-------------+--> false_alarm | returned (rejected: back to the centre)
         +--> false_alarm (dismissed in review) | merged (into another incident; also from the open states)

`pending_review` is where a machine-raised candidate waits when its trigger rule asks an operator
to look first (`review: always`, or a confidence below `auto_min_confidence`): no clock runs, no
team is told, the team does not see it (its chain is empty). `confirm` dispatches it with fresh
clocks; `recategorise` corrects its category (the caller re-routes it); `false_alarm` dismisses
it; `merge` folds it into another incident. `note` adds a line to the audit trail in any state;
`missed` (an operator: a camera showed what no detector raised) likewise, also after closure, but not
on a merged incident.

Escalation does not change the state's kind: when the pending step's deadline passes in silence,
the incident moves one level up the ladder (grid -> community -> town -> district), the new level
gets fresh clocks and must acknowledge; the level below stays informed. An acknowledgement or a
resolution stops the clock cleanly because an escalation names the exact deadline it acts on
(`level`, `step`, `due_ms`) and is a no-op when that deadline is no longer the pending one.
That is what makes "acknowledged at the same moment as escalated" safe: whichever the ledger
applies first, the other finds a consistent state (see `tests/test_dispatch_machine.py`).

Every command carries a `command_id`; applying an already applied command is the caller's job
to detect (the ledger keeps applied ids) and changes nothing.

`apply(incident, command, now_ms, plan)` returns the new incident and the `Transition` to audit,
or raises `IllegalTransition` with a sentence a team member can read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from gridwatch.city import Level

__all__ = [
    "OPEN_STATES",
    "TERMINAL_STATES",
    "Command",
    "CommandKind",
    "IllegalTransition",
    "Incident",
    "InvalidParams",
    "State",
    "Step",
    "Transition",
    "apply",
    "pending_deadline",
]


class State(StrEnum):
    DISPATCHED = "dispatched"
    ACKNOWLEDGED = "acknowledged"
    ON_SITE = "on_site"
    RESOLVED = "resolved"
    CLOSED = "closed"
    FALSE_ALARM = "false_alarm"
    RETURNED = "returned"
    PENDING_REVIEW = "pending_review"
    MERGED = "merged"


TERMINAL_STATES = frozenset({State.CLOSED, State.FALSE_ALARM, State.MERGED})
OPEN_STATES = frozenset(State) - TERMINAL_STATES


class Step(StrEnum):
    """A step with a deadline at each level: acknowledge, arrive on site, resolve."""

    ACK = "ack"
    ARRIVE = "arrive"
    RESOLVE = "resolve"


# The step whose deadline is pending in each state (None: no clock runs).
_PENDING_STEP: dict[State, Step | None] = {
    State.DISPATCHED: Step.ACK,
    State.ACKNOWLEDGED: Step.ARRIVE,
    State.ON_SITE: Step.RESOLVE,
    State.RESOLVED: None,
    State.CLOSED: None,
    State.FALSE_ALARM: None,
    State.RETURNED: None,
    State.PENDING_REVIEW: None,
    State.MERGED: None,
}

LADDER_UP: dict[Level, Level | None] = {
    Level.GRID: Level.COMMUNITY,
    Level.COMMUNITY: Level.TOWN,
    Level.TOWN: Level.DISTRICT,
    Level.DISTRICT: None,
}


class CommandKind(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    ARRIVE = "arrive"
    RESOLVE = "resolve"
    REJECT = "reject"
    TRANSFER = "transfer"
    FALSE_ALARM = "false_alarm"
    VERIFY = "verify"
    ESCALATE = "escalate"
    REDISPATCH = "redispatch"
    CONFIRM = "confirm"
    RECATEGORISE = "recategorise"
    MERGE = "merge"
    NOTE = "note"
    MISSED = "missed"


Actor = Literal["team", "system", "operator", "supervisor", "camera"]


@dataclass(frozen=True)
class Command:
    """Something someone (or the deadline clock) asks of an incident.

    `by_node` is the ladder node the acting team belongs to (for team commands); `params` holds
    the kind's specifics: a note or reason, `photo` reference, `to_node` of a transfer or
    re-dispatch, `ok` of a verification, for a deadline escalation `level`, `step`, `due_ms`;
    `into` of a merge; `category`, `from_category` and the re-routed `to_node` of a recategorise.
    """

    command_id: str
    kind: CommandKind
    actor: Actor
    by: str
    by_node: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Incident:
    """The state the machine needs; the ledger stores it (and more) in the `incidents` table."""

    incident_id: str
    state: State
    level: Level
    node_id: str
    """The ladder node (grid, community, town, district) now responsible."""
    assigned_at: int
    deadlines: Mapping[str, int]
    """Due time (epoch ms) of each step at the current level, keyed by `Step` value."""
    chain: tuple[str, ...] = ()
    """Every node the incident has been assigned to, in order (the current one last)."""
    escalations: int = 0
    reopened: int = 0
    first_level: Level = Level.GRID
    acknowledged_at: int | None = None
    arrived_at: int | None = None
    resolved_at: int | None = None
    closed_at: int | None = None
    top_level_overdue: tuple[str, ...] = ()
    """Steps whose deadline passed at the district, where there is no level left to escalate to."""
    version: int = 0


@dataclass(frozen=True)
class Transition:
    """One audited change (or a recorded no-op such as a stale escalation)."""

    command_id: str
    kind: CommandKind
    actor: str
    by: str
    from_state: State
    to_state: State
    from_node: str
    to_node: str
    at_ms: int
    note: str = ""
    changed: bool = True
    notify: tuple[str, ...] = ()
    """Nodes whose teams must be told about this transition."""


class IllegalTransition(ValueError):
    """A command that the incident's current state does not allow. The message says why."""


class InvalidParams(IllegalTransition):
    """A command whose parameters are wrong whatever the state (the message names the field)."""


MISSED_MAX_AGE_MS = 7 * 86_400_000
"""A miss is reported at most this long after the moment it was visible: an operator's memory
(and any recording) of an older scene is not a label to trust."""
MISSED_CLOCK_SKEW_MS = 5_000
"""How far in the future `at_ms` may lie (an operator's browser clock a little ahead)."""


def missed_params(params: Mapping[str, Any], now_ms: int) -> tuple[str, int, str]:
    """`camera_id`, `at_ms`, `note` of a missed command, checked (not whether the camera exists:
    the caller knows the cameras). Raises InvalidParams naming the field."""
    cam = params.get("camera_id")
    if not isinstance(cam, str) or not cam.strip():
        raise InvalidParams("missed needs params.camera_id (the camera on which it was visible)")
    at = params.get("at_ms")
    if isinstance(at, bool) or not isinstance(at, int):
        raise InvalidParams(f"missed: params.at_ms must be epoch milliseconds (an integer), not {at!r}")
    if at > now_ms + MISSED_CLOCK_SKEW_MS:
        raise InvalidParams(f"missed: params.at_ms {at} is {(at - now_ms) / 1000:.0f} s in the future")
    if at < now_ms - MISSED_MAX_AGE_MS:
        raise InvalidParams(
            f"missed: params.at_ms {at} is {(now_ms - at) / 86_400_000:.1f} days ago "
            f"(at most {MISSED_MAX_AGE_MS // 86_400_000} days)"
        )
    return cam.strip(), at, str(params.get("note") or "").strip()


def _utc_iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Plan:
    """What the machine needs from routing and the city model, as plain callables.

    `deadlines(level, start_ms)` gives the due time of each step at a level when assigned at
    `start_ms` (the calendar lives behind it); `parent(node_id, level)` gives the node one level up.
    """

    def __init__(
        self,
        deadlines: Callable[[Level, int], Mapping[str, int]],
        parent: Callable[[str], str | None],
        level_of: Callable[[str], Level],
    ) -> None:
        self.deadlines = deadlines
        self.parent = parent
        self.level_of = level_of


def pending_deadline(incident: Incident) -> tuple[Step, int] | None:
    """The step whose clock runs now and its due time, or None."""
    step = _PENDING_STEP[incident.state]
    if step is None or step.value not in incident.deadlines:
        return None
    if step.value in incident.top_level_overdue:
        return None
    return step, incident.deadlines[step.value]


def _team_may_act(incident: Incident, cmd: Command) -> None:
    if cmd.actor != "team":
        return
    if cmd.by_node is None or cmd.by_node not in incident.chain:
        raise IllegalTransition(
            f"incident {incident.incident_id}: team of node {cmd.by_node!r} is not assigned to it "
            f"(assigned: {incident.node_id})"
        )


def _require(incident: Incident, cmd: Command, allowed: set[State]) -> None:
    if incident.state not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise IllegalTransition(
            f"incident {incident.incident_id}: cannot {cmd.kind.value} while {incident.state.value} "
            f"(allowed from: {names})"
        )


def _reason(cmd: Command) -> str:
    reason = str(cmd.params.get("reason") or cmd.params.get("note") or "").strip()
    if not reason:
        raise IllegalTransition(f"{cmd.kind.value} needs a reason (params.reason)")
    return reason


def _centre_only(cmd: Command) -> None:
    if cmd.actor not in ("operator", "supervisor"):
        raise IllegalTransition(f"{cmd.kind.value} is an operator's or supervisor's command")


def apply(incident: Incident, cmd: Command, now_ms: int, plan: Plan) -> tuple[Incident, Transition]:
    """Apply one command. Pure: returns the new incident and the transition to audit."""
    st = incident.state
    if st is State.MERGED and cmd.kind is CommandKind.MISSED:
        raise IllegalTransition(
            f"incident {incident.incident_id}: is merged; report the miss on the incident it merged into"
        )
    # a miss is often noticed after closure: it labels the footage, it does not reopen anything
    if st in TERMINAL_STATES and cmd.kind not in (CommandKind.ESCALATE, CommandKind.NOTE, CommandKind.MISSED):
        raise IllegalTransition(
            f"incident {incident.incident_id}: is {st.value}; no further {cmd.kind.value} is possible"
        )
    note = str(cmd.params.get("note") or cmd.params.get("reason") or "")
    upd: dict[str, Any] = {}
    to_state = st
    to_node = incident.node_id
    notify: tuple[str, ...] = ()
    changed = True

    match cmd.kind:
        case CommandKind.ACKNOWLEDGE:
            _team_may_act(incident, cmd)
            _require(incident, cmd, {State.DISPATCHED})
            to_state = State.ACKNOWLEDGED
            upd["acknowledged_at"] = incident.acknowledged_at or now_ms
        case CommandKind.ARRIVE:
            _team_may_act(incident, cmd)
            _require(incident, cmd, {State.ACKNOWLEDGED, State.DISPATCHED})
            to_state = State.ON_SITE
            upd["acknowledged_at"] = incident.acknowledged_at or now_ms
            upd["arrived_at"] = incident.arrived_at or now_ms
        case CommandKind.RESOLVE:
            _team_may_act(incident, cmd)
            _require(incident, cmd, {State.ACKNOWLEDGED, State.ON_SITE, State.DISPATCHED})
            to_state = State.RESOLVED
            upd["acknowledged_at"] = incident.acknowledged_at or now_ms
            upd["resolved_at"] = now_ms
        case CommandKind.FALSE_ALARM:
            _team_may_act(incident, cmd)
            if st is State.PENDING_REVIEW:
                _centre_only(cmd)  # dismissed in review
            _require(
                incident, cmd,
                {State.DISPATCHED, State.ACKNOWLEDGED, State.ON_SITE, State.RETURNED, State.PENDING_REVIEW},
            )  # fmt: skip
            note = _reason(cmd)
            to_state = State.FALSE_ALARM
            upd["closed_at"] = now_ms
        case CommandKind.REJECT:
            _team_may_act(incident, cmd)
            _require(incident, cmd, {State.DISPATCHED, State.ACKNOWLEDGED})
            note = _reason(cmd)
            to_state = State.RETURNED
            upd["deadlines"] = {}
        case CommandKind.TRANSFER | CommandKind.REDISPATCH:
            if cmd.kind is CommandKind.TRANSFER:
                _team_may_act(incident, cmd)
                _require(incident, cmd, {State.DISPATCHED, State.ACKNOWLEDGED})
                note = _reason(cmd)
            else:
                _centre_only(cmd)
                _require(
                    incident,
                    cmd,
                    {State.RETURNED, State.DISPATCHED, State.ACKNOWLEDGED, State.PENDING_REVIEW},
                )
            target = cmd.params.get("to_node")
            if not isinstance(target, str) or not target:
                raise IllegalTransition(f"{cmd.kind.value} needs params.to_node (a ladder node id)")
            if target == incident.node_id:
                raise IllegalTransition(f"{cmd.kind.value}: incident is already assigned to {target}")
            level = plan.level_of(target)  # raises KeyError for an unknown node: caller reports it
            to_state = State.DISPATCHED
            to_node = target
            upd |= _assign(incident, target, level, now_ms, plan)
            # a team that never saw it (pending review) is not told that it went elsewhere
            notify = (target,) if st is State.PENDING_REVIEW else (incident.node_id, target)
        case CommandKind.VERIFY:
            if cmd.actor not in ("supervisor", "camera", "operator"):
                raise IllegalTransition("verify is a supervisor's, operator's or camera's command")
            _require(incident, cmd, {State.RESOLVED})
            if bool(cmd.params.get("ok")):
                to_state = State.CLOSED
                upd["closed_at"] = now_ms
            else:
                # Not fixed: back to the same level with fresh clocks, counted as a reopening.
                to_state = State.DISPATCHED
                upd |= _assign(incident, incident.node_id, incident.level, now_ms, plan)
                upd["chain"] = incident.chain
                upd["reopened"] = incident.reopened + 1
                upd["acknowledged_at"] = upd["arrived_at"] = upd["resolved_at"] = None
                notify = (incident.node_id,)
        case CommandKind.CONFIRM:
            _centre_only(cmd)
            _require(incident, cmd, {State.PENDING_REVIEW})
            to_state = State.DISPATCHED
            upd |= _assign(incident, incident.node_id, incident.level, now_ms, plan)
            notify = (incident.node_id,)
        case CommandKind.RECATEGORISE:
            _centre_only(cmd)
            _require(incident, cmd, {State.PENDING_REVIEW})
            category, target = cmd.params.get("category"), cmd.params.get("to_node")
            if not isinstance(category, str) or not category:
                raise IllegalTransition("recategorise needs params.category")
            if not isinstance(target, str) or not target:
                raise IllegalTransition(
                    "recategorise needs params.to_node (the node the new category routes to)"
                )
            if category == cmd.params.get("from_category"):
                raise IllegalTransition(f"incident {incident.incident_id}: is already {category}")
            level = plan.level_of(target)
            to_node = target
            upd |= {"level": level, "first_level": level, "assigned_at": now_ms}
            note = f"category {cmd.params.get('from_category')} -> {category}" + (f": {note}" if note else "")
        case CommandKind.MERGE:
            _centre_only(cmd)
            _require(
                incident, cmd,
                {State.PENDING_REVIEW, State.DISPATCHED, State.ACKNOWLEDGED, State.ON_SITE, State.RETURNED},
            )  # fmt: skip
            into = cmd.params.get("into")
            if not isinstance(into, str) or not into:
                raise IllegalTransition("merge needs params.into (the incident it merges into)")
            if into == incident.incident_id:
                raise IllegalTransition(f"incident {incident.incident_id}: cannot merge into itself")
            to_state = State.MERGED
            upd["closed_at"] = now_ms
            upd["deadlines"] = {}
            note = f"merged into {into}" + (f": {note}" if note else "")
            # the team that was working on it learns that the other incident carries it now
            notify = () if st is State.PENDING_REVIEW else (incident.node_id,)
        case CommandKind.NOTE:
            _team_may_act(incident, cmd)
            note = str(cmd.params.get("note") or "").strip()
            if not note:
                raise IllegalTransition("note needs params.note")
        case CommandKind.MISSED:
            # audited like a note (the state stays); the caller records the hard example
            _centre_only(cmd)
            cam, at, text = missed_params(cmd.params, now_ms)
            note = f"missed by camera {cam} at {_utc_iso(at)}" + (f": {text}" if text else "")
        case CommandKind.ESCALATE:
            return _escalate(incident, cmd, now_ms, plan)
        case _:  # pragma: no cover - enum is closed
            raise IllegalTransition(f"unknown command {cmd.kind}")

    new = dataclasses.replace(incident, state=to_state, node_id=to_node, version=incident.version + 1, **upd)
    return new, Transition(
        cmd.command_id, cmd.kind, cmd.actor, cmd.by, st, to_state, incident.node_id, to_node, now_ms,
        note, changed, notify,
    )  # fmt: skip


def _assign(incident: Incident, node: str, level: Level, now_ms: int, plan: Plan) -> dict[str, Any]:
    return {
        "level": level,
        "assigned_at": now_ms,
        "deadlines": dict(plan.deadlines(level, now_ms)),
        "chain": incident.chain if node in incident.chain[-1:] else (*incident.chain, node),
        "top_level_overdue": (),
    }


def _escalate(incident: Incident, cmd: Command, now_ms: int, plan: Plan) -> tuple[Incident, Transition]:
    """A deadline passed, or an operator pushes the matter up by hand."""
    st = incident.state
    by_deadline = cmd.actor == "system"
    stale_reason = None
    if st in TERMINAL_STATES or st in (State.RESOLVED, State.RETURNED, State.PENDING_REVIEW):
        stale_reason = f"incident is {st.value}"
    elif by_deadline:
        pending = pending_deadline(incident)
        want = (cmd.params.get("level"), cmd.params.get("step"), cmd.params.get("due_ms"))
        if pending is None:
            stale_reason = "no deadline is pending"
        elif want != (incident.level.value, pending[0].value, pending[1]):
            stale_reason = (
                f"deadline {want[1]}@{want[0]} is no longer pending "
                f"(pending: {pending[0].value}@{incident.level.value})"
            )
        elif now_ms < pending[1]:
            stale_reason = "deadline has not passed yet"
    elif cmd.actor not in ("operator", "supervisor"):
        raise IllegalTransition("a manual escalation is an operator's or supervisor's command")
    if stale_reason is not None:
        if not by_deadline:
            raise IllegalTransition(f"incident {incident.incident_id}: cannot escalate: {stale_reason}")
        # A stale deadline (acknowledged meanwhile): recorded, nothing changes.
        return incident, Transition(
            cmd.command_id, cmd.kind, cmd.actor, cmd.by, st, st, incident.node_id, incident.node_id,
            now_ms, f"stale escalation ignored: {stale_reason}", changed=False,
        )  # fmt: skip

    up = LADDER_UP[incident.level]
    parent = plan.parent(incident.node_id) if up is not None else None
    if up is None or parent is None:
        if not by_deadline:
            raise IllegalTransition(f"incident {incident.incident_id}: already at the top of the ladder")
        step = str(cmd.params.get("step"))
        new = dataclasses.replace(
            incident,
            top_level_overdue=(*incident.top_level_overdue, step),
            version=incident.version + 1,
        )
        return new, Transition(
            cmd.command_id, cmd.kind, cmd.actor, cmd.by, st, st, incident.node_id, incident.node_id,
            now_ms, f"{step} deadline missed at the top level; district notified", True, (incident.node_id,),
        )  # fmt: skip
    upd = _assign(incident, parent, up, now_ms, plan)
    new = dataclasses.replace(
        incident,
        state=State.DISPATCHED,
        node_id=parent,
        escalations=incident.escalations + 1,
        version=incident.version + 1,
        **upd,
    )
    why = (
        f"{cmd.params.get('step')} deadline at {incident.level.value} passed"
        if by_deadline
        else str(cmd.params.get("reason") or "escalated by hand")
    )
    return new, Transition(
        cmd.command_id, cmd.kind, cmd.actor, cmd.by, st, State.DISPATCHED, incident.node_id, parent,
        now_ms, why, True, (incident.node_id, parent),
    )  # fmt: skip


def new_incident(
    incident_id: str, node_id: str, level: Level, now_ms: int, plan: Plan, *, review: bool = False
) -> Incident:
    """A freshly dispatched incident at `node_id`, or one waiting for an operator's review (no
    clock, no team told yet: `node_id` is where a confirmation will dispatch it)."""
    return Incident(
        incident_id=incident_id,
        state=State.PENDING_REVIEW if review else State.DISPATCHED,
        level=level,
        node_id=node_id,
        assigned_at=now_ms,
        deadlines={} if review else dict(plan.deadlines(level, now_ms)),
        chain=() if review else (node_id,),
        first_level=level,
        version=1,
    )
