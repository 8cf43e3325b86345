"""Receipts: a stay's fee step by step, with the same numbers the settlement used (pure).

When the tariff prices a stay, the ledger keeps the steps with the decision
(``breakdown_json``: the session's ``breakdown`` column, written in the transaction that
settles it): the tariff's free minutes, unit and daily cap, and per 24-hour window from the
entry the units started in each rate band with their price, the window's sum and what the
cap made of it. A receipt (``receipt``) shows them in the lot's local time, whatever the
tariff file says later. A stay settled before the steps were kept is priced again by the
tariff as it is now, and says so (``recomputed``).

The receipt also lists the stay's money (``citybrain.parking.money``): every charge with
the payment side's answer, every refund, and the net (charges in force minus refunds in
force), so that receipts add up to the ledger's money to the cent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from citybrain.errors import CitybrainError
from citybrain.parking.money import Money
from citybrain.parking.reports import ResolutionRecord, SessionReport
from citybrain.parking.tariff import Fee, Tariff, fee

_VERSION = 1


class ReceiptError(CitybrainError):
    """No receipt for this session (unknown, or not a decided stay)."""


@dataclass(frozen=True)
class BandLine:
    start: str  # HH:MM, local
    end: str
    cents_per_unit: int
    units: int

    @property
    def cents(self) -> int:
        return self.units * self.cents_per_unit


@dataclass(frozen=True)
class WindowLine:
    start: datetime  # the window's first instant, in the lot's local time
    units: int
    raw_cents: int
    cents: int  # after the daily cap
    bands: tuple[BandLine, ...]

    @property
    def capped(self) -> bool:
        return self.cents < self.raw_cents


@dataclass(frozen=True)
class Breakdown:
    """A tariff's steps for one stay, as the settlement used them."""

    timezone: str
    free_minutes: int
    unit_minutes: int
    daily_cap_cents: int | None
    free: bool
    units: int
    windows: tuple[WindowLine, ...]
    total_cents: int


def breakdown_of(priced: Fee) -> Breakdown:
    tariff = priced.tariff
    if tariff is None:
        raise ValueError("a breakdown needs the fee's tariff")
    windows = tuple(
        WindowLine(
            w.start,
            w.units,
            w.raw_cents,
            w.cents,
            tuple(
                BandLine(_hhmm(u.band.start), _hhmm(u.band.end), u.band.cents_per_unit, u.units)
                for u in w.bands
            ),
        )
        for w in priced.windows
    )
    return Breakdown(
        tariff.timezone.key,
        tariff.free_minutes,
        tariff.unit_minutes,
        tariff.daily_cap_cents,
        priced.free,
        priced.units,
        windows,
        priced.total_cents,
    )


def breakdown_json(priced: Fee) -> str:
    """The breakdown as kept with the decision (compact JSON; read by ``parse_breakdown``).
    Written for every stay the tariff prices, on the hot path: straight from the fee."""
    tariff = priced.tariff
    if tariff is None:
        raise ValueError("a breakdown needs the fee's tariff")
    data = {
        "v": _VERSION,
        "tz": tariff.timezone.key,
        "free_minutes": tariff.free_minutes,
        "unit_minutes": tariff.unit_minutes,
        "cap": tariff.daily_cap_cents,
        "free": priced.free,
        "units": priced.units,
        "total": priced.total_cents,
        "windows": [
            [
                w.start.isoformat(),
                w.units,
                w.raw_cents,
                w.cents,
                [
                    [_hhmm(u.band.start), _hhmm(u.band.end), u.band.cents_per_unit, u.units]
                    for u in w.bands
                ],
            ]
            for w in priced.windows
        ],
    }
    return json.dumps(data, separators=(",", ":"))


def parse_breakdown(text: str) -> Breakdown:
    data: dict[str, Any] = json.loads(text)
    if data.get("v") != _VERSION:
        raise ValueError(f"unknown breakdown version {data.get('v')!r}")
    zone = ZoneInfo(data["tz"])
    windows = tuple(
        WindowLine(
            datetime.fromisoformat(start).astimezone(zone),
            units,
            raw,
            cents,
            tuple(BandLine(*band) for band in bands),
        )
        for start, units, raw, cents, bands in data["windows"]
    )
    return Breakdown(
        data["tz"],
        data["free_minutes"],
        data["unit_minutes"],
        data["cap"],
        data["free"],
        data["units"],
        windows,
        data["total"],
    )


@dataclass(frozen=True)
class Receipt:
    """One stay's receipt (see the module docstring)."""

    session_id: str
    lot_id: str
    plate: str
    timezone: str
    entry_at: datetime | None  # local time
    exit_at: datetime | None
    status: str
    fee_cents: int
    priced_by: str  # tariff, recomputed (tariff as it is now), hand, waived
    breakdown: Breakdown | None
    money: Money
    note: str = ""  # a resolution's decision, when a person priced or paired it

    @property
    def duration(self) -> timedelta | None:
        if self.entry_at is None or self.exit_at is None:
            return None
        return self.exit_at - self.entry_at

    @property
    def net_cents(self) -> int:
        return self.money.net_cents


def receipt(
    session: SessionReport,
    stored_breakdown: str | None,
    tariffs: Mapping[str, Tariff],
    money: Money,
    resolution: ResolutionRecord | None = None,
) -> Receipt:
    """The receipt of a decided stay (settled or unpaid, with its fee)."""
    if session.status not in ("settled", "unpaid") or session.fee_cents is None:
        raise ReceiptError(f"{session.session_id} is {session.status}: no receipt (not a stay)")
    tariff = tariffs.get(session.lot_id)
    zone = ZoneInfo("UTC") if tariff is None else tariff.timezone
    breakdown = None
    priced_by = "tariff"
    if stored_breakdown is not None:
        breakdown = parse_breakdown(stored_breakdown)
        zone = ZoneInfo(breakdown.timezone)
    elif resolution is not None and resolution.action.value in ("fee", "waive"):
        priced_by = "hand" if resolution.action.value == "fee" else "waived"
    elif tariff is not None and session.entry_at is not None and session.exit_at is not None:
        breakdown = breakdown_of(fee(tariff, session.entry_at, session.exit_at))
        priced_by = "recomputed"
    note = ""
    if resolution is not None:
        note = f"{resolution.action.value} by {resolution.operator}: {resolution.reason}"
    return Receipt(
        session_id=session.session_id,
        lot_id=session.lot_id,
        plate=session.plate,
        timezone=zone.key,
        entry_at=None if session.entry_at is None else session.entry_at.astimezone(zone),
        exit_at=None if session.exit_at is None else session.exit_at.astimezone(zone),
        status=session.status,
        fee_cents=session.fee_cents,
        priced_by=priced_by,
        breakdown=breakdown,
        money=money,
        note=note,
    )


def render_text(r: Receipt) -> str:
    """The receipt as a driver reads it (amounts in yuan, times in the lot's zone)."""
    lines = [
        f"Receipt {r.session_id}",
        f"Lot      {r.lot_id} ({r.timezone})",
        f"Plate    {r.plate}",
        f"Entry    {_when(r.entry_at)}",
        f"Exit     {_when(r.exit_at)}",
    ]
    if r.duration is not None:
        lines.append(f"Stay     {_span(r.duration)}")
    b = r.breakdown
    if b is not None:
        per = f"per started {b.unit_minutes} min"
        cap = "" if b.daily_cap_cents is None else f", at most {_yuan(b.daily_cap_cents)} a day"
        lines.append(f"Tariff   first {b.free_minutes} min free; then {per}{cap}")
        if b.free:
            lines.append(f"  within the {b.free_minutes} free minutes: 0.00")
        for i, w in enumerate(b.windows, 1):
            lines.append(f"  day {i} from {w.start.strftime('%Y-%m-%d %H:%M')}")
            for band in w.bands:
                price = _yuan(band.cents_per_unit)
                lines.append(
                    f"    {band.start}-{band.end}  {band.units} x {price} = {_yuan(band.cents)}"
                )
            if w.capped:
                lines.append(f"    daily cap applied: {_yuan(w.raw_cents)} -> {_yuan(w.cents)}")
        if r.priced_by == "recomputed":
            lines.append("  (priced again by the tariff as it is now: settled before receipts)")
    elif r.priced_by in ("hand", "waived"):
        lines.append(f"Fee set by hand ({r.note})" if r.note else "Fee set by hand")
    lines.append(f"Fee      {_yuan(r.fee_cents)}")
    for c in r.money.charges:
        lines.append(
            f"Charged  {_yuan(c.cents)} to {c.account} ({r.money.status(c.key)})"
            + (f", attempt {c.attempt}" if c.attempt > 1 else "")
        )
    for x in r.money.refunds:
        lines.append(
            f"Refunded {_yuan(x.cents)} to {x.account} ({r.money.status(x.key)}): {x.reason}"
        )
    if r.status == "unpaid":
        lines.append(f"Owed     {_yuan(r.fee_cents)} (no account paid it yet)")
    lines.append(f"Net      {_yuan(r.net_cents)}")
    if r.note and r.priced_by not in ("hand", "waived"):
        lines.append(f"Note     {r.note}")
    return "\n".join(lines) + "\n"


def to_json(r: Receipt) -> dict[str, Any]:
    b = r.breakdown
    return {
        "session_id": r.session_id,
        "lot_id": r.lot_id,
        "plate": r.plate,
        "timezone": r.timezone,
        "entry_at": None if r.entry_at is None else r.entry_at.isoformat(),
        "exit_at": None if r.exit_at is None else r.exit_at.isoformat(),
        "status": r.status,
        "fee_cents": r.fee_cents,
        "priced_by": r.priced_by,
        "tariff": None
        if b is None
        else {
            "free_minutes": b.free_minutes,
            "unit_minutes": b.unit_minutes,
            "daily_cap_cents": b.daily_cap_cents,
            "free": b.free,
            "units": b.units,
            "total_cents": b.total_cents,
            "windows": [
                {
                    "start": w.start.isoformat(),
                    "units": w.units,
                    "raw_cents": w.raw_cents,
                    "cents": w.cents,
                    "capped": w.capped,
                    "bands": [
                        {
                            "start": x.start,
                            "end": x.end,
                            "cents_per_unit": x.cents_per_unit,
                            "units": x.units,
                            "cents": x.cents,
                        }
                        for x in w.bands
                    ],
                }
                for w in b.windows
            ],
        },
        "charges": [
            {
                "key": c.key,
                "account": c.account,
                "cents": c.cents,
                "attempt": c.attempt,
                "charged_at": c.charged_at.isoformat(),
                "payment": r.money.status(c.key).value,
            }
            for c in r.money.charges
        ],
        "refunds": [
            {
                "refund_id": x.adjustment_id,
                "account": x.account,
                "cents": x.cents,
                "reason": x.reason,
                "operator": x.operator,
                "created_at": x.created_at.isoformat(),
                "payment": r.money.status(x.key).value,
            }
            for x in r.money.refunds
        ],
        "net_cents": r.net_cents,
        "note": r.note,
    }


def _hhmm(t: Any) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def _yuan(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _when(t: datetime | None) -> str:
    return "unknown" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _span(d: timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = ([f"{days} d"] if days else []) + ([f"{hours} h"] if hours or days else [])
    return " ".join([*parts, f"{mins} min"])


__all__ = [
    "BandLine",
    "Breakdown",
    "Receipt",
    "ReceiptError",
    "WindowLine",
    "breakdown_json",
    "breakdown_of",
    "parse_breakdown",
    "receipt",
    "render_text",
    "to_json",
]
