"""A lot's day in numbers, and the CSV export of a period (pure: records in, numbers and
text out; no database, no clock).

The day is the lot's local day ``[00:00, next 00:00)``. Each money figure counts records
by their own instant, in force (``citybrain.parking.money``: not declined):

* ``revenue``: charges made that day; ``refunds``: refunds made that day; ``net``: the
  difference. Summed over every lot and day they give the ledger's charges in force minus
  its refunds in force, to the cent;
* ``stays``: stays that ended that day (settled or unpaid; a stay settlement sent to
  review with its fee counts too), ``free``: those with a fee of 0; mean and longest stay
  over those with both times;
* ``debts created``: stays that ended that day owing their fee (nobody paid at the exit),
  and charges declined that day (the stay owes again); ``debts collected``: debts charged
  that day when a plate was bound;
* ``peak occupancy``: ``citybrain.parking.occupancy``.

The export (``export_rows``, ``csv_text``) writes RFC 4180 CSV (CRLF line ends, fields
quoted when they hold a comma, a quote or a line break, quotes doubled), UTF-8, amounts in
integer cents, instants in the lot's local time with their offset.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from citybrain.parking.money import Money, Payment, status_of
from citybrain.parking.occupancy import DayOccupancy
from citybrain.parking.reports import (
    AdjustmentRecord,
    ChargeReport,
    PaymentResultRecord,
    ResolutionRecord,
    SessionReport,
)

DECIDED = ("settled", "unpaid")


@dataclass(frozen=True)
class Period:
    """What a lot's report or export of ``[start, end)`` is made of (loaded by the store)."""

    lot_id: str
    start: datetime
    end: datetime
    sessions: tuple[SessionReport, ...]  # ended in the span (or entered, when not ended)
    charges: tuple[ChargeReport, ...]  # every charge of those sessions, and those made in it
    refunds: tuple[AdjustmentRecord, ...]  # every refund of those sessions, and those made in it
    results: Mapping[str, PaymentResultRecord]  # answers to those charges and refunds
    resolutions: tuple[ResolutionRecord, ...] = ()  # made in the span


@dataclass(frozen=True)
class LotDay:
    lot_id: str
    day: date
    stays: int
    free_stays: int
    revenue_cents: int
    refunds_cents: int
    debts_created: int
    debts_created_cents: int
    debts_collected: int
    debts_collected_cents: int
    mean_stay: timedelta | None
    longest_stay: timedelta | None
    peak_occupancy: int
    peak_at: datetime | None
    capacity: int | None

    @property
    def net_cents(self) -> int:
        return self.revenue_cents - self.refunds_cents


def _within(t: datetime | None, start: datetime, end: datetime) -> bool:
    return t is not None and start <= t < end


def is_stay(s: SessionReport) -> bool:
    """A decided stay: settled or unpaid, or priced and sent to review (accounts differ)."""
    if s.status in DECIDED:
        return s.fee_cents is not None
    return s.status == "review" and s.fee_cents is not None and s.exit_at is not None


def lot_day(
    period: Period, day: date, zone: ZoneInfo, occupancy: DayOccupancy | None = None
) -> LotDay:
    """The lot's numbers for its local ``day`` (within ``period``)."""
    start = datetime.combine(day, datetime.min.time(), zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
    results = period.results
    stays = [s for s in period.sessions if is_stay(s) and _within(s.exit_at, start, end)]
    charged_at_decision = {
        c.session_id for c in period.charges if c.attempt == 1 and c.source != "debt"
    }
    owing = [s for s in stays if (s.fee_cents or 0) > 0 and s.session_id not in charged_at_decision]
    declined = [
        c
        for c in period.charges
        if status_of(c.key, results) is Payment.DECLINED
        and _within(results[c.key].received_at, start, end)
    ]
    made = [c for c in period.charges if _within(c.charged_at, start, end)]
    in_force = [c for c in made if status_of(c.key, results) is not Payment.DECLINED]
    collected = [c for c in in_force if c.source == "debt"]
    refunds = [
        r
        for r in period.refunds
        if _within(r.created_at, start, end) and status_of(r.key, results) is not Payment.DECLINED
    ]
    spans = [
        s.exit_at - s.entry_at for s in stays if s.entry_at is not None and s.exit_at is not None
    ]
    return LotDay(
        lot_id=period.lot_id,
        day=day,
        stays=len(stays),
        free_stays=sum(1 for s in stays if s.fee_cents == 0),
        revenue_cents=sum(c.cents for c in in_force),
        refunds_cents=sum(r.cents for r in refunds),
        debts_created=len(owing) + len(declined),
        debts_created_cents=sum(s.fee_cents or 0 for s in owing) + sum(c.cents for c in declined),
        debts_collected=len(collected),
        debts_collected_cents=sum(c.cents for c in collected),
        mean_stay=sum(spans, timedelta()) / len(spans) if spans else None,
        longest_stay=max(spans) if spans else None,
        peak_occupancy=0 if occupancy is None else occupancy.peak,
        peak_at=None if occupancy is None else occupancy.peak_at,
        capacity=None if occupancy is None else occupancy.capacity,
    )


# ---- export --------------------------------------------------------------------------------


class ExportKind(StrEnum):
    SESSIONS = "sessions"
    CHARGES = "charges"
    ADJUSTMENTS = "adjustments"
    REVIEWS = "reviews"


COLUMNS: dict[ExportKind, tuple[str, ...]] = {
    ExportKind.SESSIONS: (
        "session_id",
        "lot_id",
        "plate",
        "exit_plate",
        "entry_at",
        "exit_at",
        "status",
        "fee_cents",
        "account",
        "review_reason",
        "charged_cents",
        "refunded_cents",
        "net_cents",
    ),
    ExportKind.CHARGES: (
        "key",
        "session_id",
        "lot_id",
        "plate",
        "account",
        "cents",
        "charged_at",
        "attempt",
        "source",
        "payment",
    ),
    ExportKind.ADJUSTMENTS: (
        "adjustment_id",
        "session_id",
        "lot_id",
        "kind",
        "cents",
        "account",
        "operator",
        "reason",
        "created_at",
        "payment",
    ),
    ExportKind.REVIEWS: (
        "resolution_id",
        "item",
        "session_id",
        "lot_id",
        "action",
        "other_session_id",
        "at",
        "cents",
        "account",
        "operator",
        "reason",
        "created_at",
    ),
}


def export_rows(
    kind: ExportKind, period: Period, zone: ZoneInfo
) -> list[dict[str, str | int | None]]:
    """The rows of one lot's period: sessions that ended in it (or entered, when they have
    not ended), charges, refunds and resolutions made in it; instants in ``zone``."""
    start, end = period.start, period.end
    results = period.results

    def local(t: datetime | None) -> str | None:
        return None if t is None else t.astimezone(zone).isoformat()

    if kind is ExportKind.SESSIONS:
        money = _money_by_session(period)
        rows: list[dict[str, Any]] = []
        for s in period.sessions:
            if not _within(s.exit_at if s.exit_at is not None else s.entry_at, start, end):
                continue
            m = money.get(s.session_id, Money())
            rows.append(
                {
                    "session_id": s.session_id,
                    "lot_id": s.lot_id,
                    "plate": s.plate,
                    "exit_plate": s.exit_plate,
                    "entry_at": local(s.entry_at),
                    "exit_at": local(s.exit_at),
                    "status": s.status,
                    "fee_cents": s.fee_cents,
                    "account": s.account,
                    "review_reason": s.review_reason,
                    "charged_cents": m.charged_cents,
                    "refunded_cents": m.refunded_cents,
                    "net_cents": m.net_cents,
                }
            )
        return rows
    if kind is ExportKind.CHARGES:
        return [
            {
                "key": c.key,
                "session_id": c.session_id,
                "lot_id": c.lot_id,
                "plate": c.plate,
                "account": c.account,
                "cents": c.cents,
                "charged_at": local(c.charged_at),
                "attempt": c.attempt,
                "source": c.source,
                "payment": status_of(c.key, results).value,
            }
            for c in period.charges
            if _within(c.charged_at, start, end)
        ]
    if kind is ExportKind.ADJUSTMENTS:
        return [
            {
                "adjustment_id": r.adjustment_id,
                "session_id": r.session_id,
                "lot_id": period.lot_id,
                "kind": r.kind,
                "cents": r.cents,
                "account": r.account,
                "operator": r.operator,
                "reason": r.reason,
                "created_at": local(r.created_at),
                "payment": status_of(r.key, results).value,
            }
            for r in period.refunds
            if _within(r.created_at, start, end)
        ]
    return [
        {
            "resolution_id": x.resolution_id,
            "item": x.item,
            "session_id": x.session_id,
            "lot_id": period.lot_id,
            "action": x.action.value,
            "other_session_id": x.other_session_id,
            "at": local(x.at),
            "cents": x.cents,
            "account": x.account,
            "operator": x.operator,
            "reason": x.reason,
            "created_at": local(x.created_at),
        }
        for x in period.resolutions
        if _within(x.created_at, start, end)
    ]


def _money_by_session(period: Period) -> dict[str, Money]:
    charges: dict[str, list[ChargeReport]] = {}
    refunds: dict[str, list[AdjustmentRecord]] = {}
    for c in period.charges:
        charges.setdefault(c.session_id, []).append(c)
    for r in period.refunds:
        refunds.setdefault(r.session_id, []).append(r)
    ids = set(charges) | set(refunds)
    return {
        sid: Money(tuple(charges.get(sid, ())), tuple(refunds.get(sid, ())), period.results)
        for sid in ids
    }


def csv_text(kind: ExportKind, rows: Iterable[Mapping[str, Any]]) -> str:
    """RFC 4180 CSV: a header, then one line per row; CRLF line ends; empty for None."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    columns = COLUMNS[kind]
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def days_of(first: date, last: date) -> Sequence[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


__all__ = [
    "COLUMNS",
    "ExportKind",
    "LotDay",
    "Period",
    "csv_text",
    "days_of",
    "export_rows",
    "is_stay",
    "lot_day",
]
