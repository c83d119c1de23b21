"""The ledger on embedded SQLite and on a real PostgreSQL: idempotency, escalation, races, outbox."""

from __future__ import annotations

import threading

import pytest

from gridwatch.clock import ManualClock
from gridwatch.dispatch.ledger import Ledger, UnknownIncident
from gridwatch.dispatch.machine import Command, CommandKind, IllegalTransition, State
from tests.dispatch_helpers import T0, candidate, demo_city, make_core

GRID = demo_city().grids()[0]


def ack(iid: str, cid: str, node: str = GRID.id) -> Command:
    return Command(cid, CommandKind.ACKNOWLEDGE, "team", "王婷", node, {})


def test_migrations_create_the_schema_and_are_repeatable(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    led.migrate()
    led.migrate()  # second run is a no-op
    assert led.count_incidents() == 0
    led.close()


def test_candidate_replay_after_restart_changes_nothing(ledger_url: str) -> None:
    core = make_core(ledger_url)
    first = core.handle_candidate(candidate("s1"))
    core.handle_candidate(candidate("cam-1", kind="camera", t=T0 + 5000, offset_m=30))
    assert first.action == "new"
    before = [t.seq for t in core.ledger.transitions(first.incident_id)]
    # a new worker (fresh fusion index from the ledger) sees both candidates again from Kafka
    core2 = make_core(ledger_url)
    assert core2.handle_candidate(candidate("s1")).action == "duplicate"
    assert (
        core2.handle_candidate(candidate("cam-1", kind="camera", t=T0 + 5000, offset_m=30)).action
        == "duplicate"
    )
    assert [t.seq for t in core2.ledger.transitions(first.incident_id)] == before
    assert core2.ledger.count_incidents() == 1
    srcs = core2.ledger.sources(first.incident_id)
    assert [s.source_id for s in srcs] == ["s1", "cam-1"]
    # a third source nearby still attaches after the restart (index rebuilt from the ledger)
    assert core2.handle_candidate(candidate("s9", t=T0 + 9000, offset_m=20)).action == "attach"


def test_a_retried_command_counts_once(ledger_url: str) -> None:
    core = make_core(ledger_url)
    iid = core.handle_candidate(candidate("s1")).incident_id
    r1 = core.command(iid, ack(iid, "ack-1"))
    r2 = core.command(iid, ack(iid, "ack-1"))
    assert not r1.duplicate and r2.duplicate
    assert [t.kind for t in core.ledger.transitions(iid)] == ["dispatch", "acknowledge"]
    with pytest.raises(IllegalTransition, match="cannot acknowledge while acknowledged"):
        core.command(iid, ack(iid, "ack-2"))
    other = core.handle_candidate(candidate("s2", grid=1)).incident_id
    with pytest.raises(IllegalTransition, match="already used for incident"):
        core.command(other, ack(other, "ack-1", demo_city().grids()[1].id))
    with pytest.raises(UnknownIncident):
        core.command("inc-nope", ack("inc-nope", "x"))


def test_silence_escalates_by_the_test_clock_and_notifies_both_levels(ledger_url: str) -> None:
    clock = ManualClock(T0)
    core = make_core(ledger_url, clock)
    iid = core.handle_candidate(candidate("s1")).incident_id
    clock.advance(299)
    assert core.escalate_due() == []
    clock.advance(1)
    [res] = core.escalate_due()
    assert res.incident.node_id == GRID.parent and res.incident.state == State.DISPATCHED
    assert core.escalate_due() == []  # applied once; the community's clock runs from now
    assert core.ledger.next_due_at() == clock.now_ms() + 300_000
    events = {(d.node_id, d.event) for d in core.ledger.deliveries(iid)}
    assert events == {(GRID.id, "dispatched"), (GRID.id, "escalated_away"), (GRID.parent, "escalated")}
    assert all(d.status == "pending" for d in core.ledger.deliveries(iid))


def test_acknowledgement_racing_escalation_leaves_a_valid_state(ledger_url: str) -> None:
    """Ack and deadline escalation of the same incident from two threads at the deadline, 12 times."""
    clock = ManualClock(T0)
    core = make_core(ledger_url, clock)
    ids = [core.handle_candidate(candidate(f"s{i}", grid=i)).incident_id for i in range(12)]
    clock.advance(300)  # every ack deadline is now due
    grids = demo_city().grids()
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(fn) -> None:
        try:
            barrier.wait()
            fn()
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    for i, iid in enumerate(ids):
        due = core.ledger.incident(iid).deadlines["ack"]
        esc = Command(f"deadline:{iid}:grid:ack:{due}", CommandKind.ESCALATE, "system", "deadline", None,
                      {"level": "grid", "step": "ack", "due_ms": due})  # fmt: skip
        t1 = threading.Thread(target=run, args=(lambda iid=iid, esc=esc: core.command(iid, esc),))
        t2 = threading.Thread(
            target=run, args=(lambda iid=iid, i=i: core.command(iid, ack(iid, f"a{i}", grids[i].id)),)
        )
        t1.start(), t2.start()
        t1.join(), t2.join()
    assert errors == []
    for iid in ids:
        inc = core.ledger.incident(iid)
        trail = [t for t in core.ledger.transitions(iid) if t.changed]
        assert inc.state == State.ACKNOWLEDGED
        kinds = [t.kind for t in trail]
        assert kinds in (["dispatch", "acknowledge"], ["dispatch", "escalate", "acknowledge"])
        for a, b in zip(trail, trail[1:], strict=False):
            assert b.from_state == a.to_state
        assert inc.version == len(trail)
        assert core.ledger.next_due_at() is not None
    assert core.escalate_due() == []  # nothing left due at this instant


def test_attach_raising_severity_is_audited_and_pushed(ledger_url: str) -> None:
    core = make_core(ledger_url)
    iid = core.handle_candidate(candidate("s1", severity="medium", category="water_level")).incident_id
    core.handle_candidate(candidate("s2", severity="medium", category="water_level", t=T0 + 1))
    core.handle_candidate(candidate("s3", severity="medium", category="water_level", t=T0 + 2))
    row = core.ledger.incident_row(iid)
    assert (row.severity, row.source_count) == ("high", 3)
    assert any("severity medium -> high" in t.note for t in core.ledger.transitions(iid))
    assert "severity_raised" in {d.event for d in core.ledger.deliveries(iid)}


def test_closed_incidents_leave_fusion_memory_after_their_cooldown(ledger_url: str) -> None:
    clock = ManualClock(T0)
    core = make_core(ledger_url, clock)
    iid = core.handle_candidate(candidate("s1")).incident_id
    node = core.ledger.incident_row(iid).node_id
    core.command(iid, Command("f1", CommandKind.FALSE_ALARM, "team", "t", node, {"reason": "test"}))
    assert len(core.fusion) == 1
    clock.advance(601 + 60)  # smoke's cooldown (default 600 s) has passed; the scheduler's pass forgets it
    core.escalate_due()
    assert len(core.fusion) == 0
    assert core.ledger.incident(iid).state == State.FALSE_ALARM  # the ledger keeps it
