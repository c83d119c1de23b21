"""Small statistics shared by the workers' health records and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(
    values: Iterable[float], q: float, *, empty: float | None = 0.0, ndigits: int | None = None
) -> float | None:
    """The `q` quantile (0..1) by the nearest-rank rule on the sorted values (no interpolation: a
    reported p99 is a latency that happened); `empty` when there are none. Always a float, because
    InfluxDB refuses a field whose type changes between points."""
    s = sorted(values)
    if not s:
        return empty
    v = float(s[min(len(s) - 1, int(q * len(s)))])
    return round(v, ndigits) if ndigits is not None else v
