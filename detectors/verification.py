"""Closure verification by the camera that saw the incident (pure).

When a team marks a camera incident resolved, dispatch asks that camera (a `verify_request` on
Kafka). The camera watches the zone: clear (its rule's episode over) for `clear_s` without a break
-> verified, the incident closes; still there when `timeout_s` has passed -> not verified, the
incident is reopened at the same level and counted (DOMAIN: verify -> close).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ZoneVerification:
    incident_id: str
    zone_id: str
    requested_at: int
    clear_ms: int
    timeout_ms: int
    resolution: str = ""
    """Id of the resolve command this verifies (so a later resolution is verified afresh)."""
    clear_since: int | None = None
    result: bool | None = None
    decided_at: int | None = None

    def update(self, ts_ms: int, occupied: bool) -> bool | None:
        """Feed one analysed frame's answer; returns True / False once decided (then stays)."""
        if self.result is not None:
            return self.result
        if occupied:
            self.clear_since = None
        elif self.clear_since is None:
            self.clear_since = ts_ms
        if self.clear_since is not None and ts_ms - self.clear_since >= self.clear_ms:
            self.result, self.decided_at = True, ts_ms
        elif ts_ms - self.requested_at >= self.timeout_ms:
            self.result, self.decided_at = False, ts_ms
        return self.result
