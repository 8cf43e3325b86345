"""Occupancy: how many cars a lot holds, now and over a day (pure: stays in, counts out).

A car is in a lot from its stay's entry until its exit: ``[entry, exit)``. A stay still
open has no exit: it counts until ``now``. Stays without an entry (an exit nobody saw come
in) and entries whose exit is unknown (in review: the car left unseen) are not counted:
where they begin or end is not known.

``now`` (``LotNow``): open stays against the lot's capacity (``[lots.L] capacity`` in
``configs/parking.toml``), and how many of them are older than the review limit (listed in
the review queue as ``overstay``). Over a day (``day_profile``): per hour of the lot's
local day, the cars present at its start and the most present at once within it, and the
day's peak with when it was first reached.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from citybrain.parking.times import require_aware


@dataclass(frozen=True)
class Stay:
    """A car's time in a lot (``exit_at`` None: still there)."""

    entry_at: datetime
    exit_at: datetime | None


@dataclass(frozen=True)
class LotNow:
    lot_id: str
    capacity: int | None  # None: not configured
    occupied: int  # open stays
    overstays: int  # of them, older than the review limit

    @property
    def free(self) -> int | None:
        return None if self.capacity is None else max(0, self.capacity - self.occupied)

    @property
    def percent(self) -> float | None:
        return None if not self.capacity else 100.0 * self.occupied / self.capacity


@dataclass(frozen=True)
class HourOccupancy:
    start: datetime  # local
    at_start: int  # cars present at the hour's start
    peak: int  # the most present at once within the hour


@dataclass(frozen=True)
class DayOccupancy:
    lot_id: str
    day: date
    capacity: int | None
    hours: tuple[HourOccupancy, ...]  # 23, 24 or 25 of them (daylight saving)
    peak: int
    peak_at: datetime | None  # when the peak was first reached (None: nobody came)


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The lot's local day ``[00:00, next 00:00)`` as aware instants."""
    start = datetime.combine(day, time(0), zone)
    return start, datetime.combine(day + timedelta(days=1), time(0), zone)


def day_profile(
    lot_id: str,
    day: date,
    zone: ZoneInfo,
    stays: Iterable[Stay],
    *,
    now: datetime,
    capacity: int | None = None,
) -> DayOccupancy:
    """Occupancy over the lot's local ``day`` (hours after ``now`` are not counted yet:
    their open stays end at ``now``)."""
    require_aware("now", now)
    start, end = day_bounds(day, zone)
    events: list[tuple[datetime, int]] = []  # (instant, +1 entry / -1 exit); exits first
    for s in stays:
        require_aware("Stay.entry_at", s.entry_at)
        leave = s.exit_at if s.exit_at is not None else max(now, s.entry_at)
        if leave <= start or s.entry_at >= end or leave <= s.entry_at:
            continue
        events.append((max(s.entry_at, start), 1))
        if leave < end:
            events.append((leave, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    hours: list[HourOccupancy] = []
    present = peak = 0
    peak_at: datetime | None = None
    i = 0
    hour = start
    while hour < end:
        following = min((hour.astimezone(UTC) + timedelta(hours=1)).astimezone(zone), end)
        while i < len(events) and events[i][0] <= hour:  # at the hour's start
            present += events[i][1]
            i += 1
        at_start = present
        top = present
        while i < len(events) and events[i][0] < following:
            present += events[i][1]
            if present > top:
                top = present
            if present > peak:
                peak, peak_at = present, events[i][0].astimezone(zone)
            i += 1
        if at_start > peak:
            peak, peak_at = at_start, hour
        hours.append(HourOccupancy(hour, at_start, top))
        hour = following
    return DayOccupancy(lot_id, day, capacity, tuple(hours), peak, peak_at)


__all__ = ["DayOccupancy", "HourOccupancy", "LotNow", "Stay", "day_bounds", "day_profile"]
