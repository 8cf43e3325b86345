"""Parking tariffs: loading from TOML and the fee of a stay, in integer cents.

A tariff file has one table per lot::

    [lots.L01]
    timezone = "Asia/Shanghai"
    free_minutes = 15          # a stay of at most this long is free
    unit_minutes = 30          # otherwise charged per started unit from entry
    daily_cap_cents = 6000     # optional
    rates = [ { start = "08:00", end = "20:00", cents_per_unit = 500 },
              { start = "20:00", end = "08:00", cents_per_unit = 200 } ]

A band covers local times ``start <= t < end``; ``end <= start`` crosses midnight, and
``start == end`` is the whole day. The bands must cover the day exactly once.

Fee of a stay of duration ``d`` (elapsed time, whatever the clocks did): 0 if
``d <= free_minutes``; otherwise ``ceil(d / unit)`` units counted from the entry, each priced
by the band in which its start instant falls in the lot's local time; the units are grouped
into 24-hour windows of elapsed time from the entry (a unit belongs to the window in which
it starts) and each window's sum is capped at ``daily_cap_cents``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from citybrain.errors import ConfigError
from citybrain.parking.times import require_aware
from citybrain.tomlfile import read_toml

MINUTES_PER_DAY = 24 * 60
DAY = timedelta(days=1)

_LOT_KEYS = ("timezone", "free_minutes", "unit_minutes", "daily_cap_cents", "rates")
_OPTIONAL_LOT_KEYS = frozenset({"daily_cap_cents"})
_BAND_KEYS = ("start", "end", "cents_per_unit")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class RateBand:
    """Price of a unit whose start falls in ``start <= local time < end`` (may wrap)."""

    start: time
    end: time
    cents_per_unit: int

    def minutes(self) -> tuple[range, ...]:
        """The minutes of the day (0..1439) this band covers, as one or two ranges."""
        s = self.start.hour * 60 + self.start.minute
        e = self.end.hour * 60 + self.end.minute
        if s < e:
            return (range(s, e),)
        return (range(s, MINUTES_PER_DAY), range(0, e))


@dataclass(frozen=True)
class Tariff:
    """One lot's tariff; construction validates it (``ConfigError`` naming the key)."""

    lot_id: str
    timezone: ZoneInfo
    free_minutes: int
    unit_minutes: int
    daily_cap_cents: int | None
    rates: tuple[RateBand, ...]
    # The band (index in ``rates``) a unit starting in each minute of the local day is
    # priced by, by __post_init__.
    _band_of_minute: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = f"lots.{self.lot_id}"
        if not isinstance(self.timezone, ZoneInfo):
            raise ConfigError(f"{key}.timezone must be a ZoneInfo, not {self.timezone!r}")
        _check_int(f"{key}.free_minutes", self.free_minutes, minimum=0)
        _check_int(f"{key}.unit_minutes", self.unit_minutes, minimum=1)
        if self.daily_cap_cents is not None:
            _check_cents(f"{key}.daily_cap_cents", self.daily_cap_cents)
        object.__setattr__(self, "rates", tuple(self.rates))
        for i, band in enumerate(self.rates):
            for name in ("start", "end"):
                value = getattr(band, name)
                if not _is_hhmm(value):
                    raise ConfigError(f"{key}.rates[{i}].{name} must be HH:MM, not {value!r}")
            _check_cents(f"{key}.rates[{i}].cents_per_unit", band.cents_per_unit)
        object.__setattr__(self, "_band_of_minute", _cover_day(key, self.rates))


@dataclass(frozen=True)
class BandUnits:
    """The units of one window that started in one band, and what they cost."""

    band: RateBand
    units: int

    @property
    def cents(self) -> int:
        return self.units * self.band.cents_per_unit


@dataclass(frozen=True)
class WindowFee:
    """The units of one 24-hour window (``index`` 0 starts at the entry) and their price."""

    index: int
    start: datetime  # the window's first instant, in the lot's local time
    units: int
    raw_cents: int  # sum of the unit prices
    cents: int  # after the daily cap
    bands: tuple[BandUnits, ...] = ()  # the units per band, in the tariff's band order

    @property
    def capped(self) -> bool:
        return self.cents < self.raw_cents


@dataclass(frozen=True)
class Fee:
    """A fee with its breakdown, for receipts and reports."""

    lot_id: str
    entry_at: datetime
    exit_at: datetime
    duration: timedelta
    free: bool  # within the free period
    units: int
    windows: tuple[WindowFee, ...]
    total_cents: int
    tariff: Tariff | None = field(default=None, repr=False, compare=False)  # priced by

    @property
    def cap_applied(self) -> bool:
        return any(w.capped for w in self.windows)


def fee(tariff: Tariff, entry_at: datetime, exit_at: datetime) -> Fee:
    """The fee of a stay from ``entry_at`` to ``exit_at`` (aware datetimes, any zone)."""
    require_aware("entry_at", entry_at)
    require_aware("exit_at", exit_at)
    # Elapsed time must be computed in UTC: subtracting two datetimes that share a tzinfo
    # uses wall-clock time and would be wrong across a DST change.
    start = entry_at.astimezone(UTC)
    end = exit_at.astimezone(UTC)
    if end < start:
        raise ValueError(f"exit_at {exit_at.isoformat()} is before entry_at {entry_at.isoformat()}")
    duration = end - start
    if duration <= timedelta(minutes=tariff.free_minutes):
        return Fee(tariff.lot_id, entry_at, exit_at, duration, True, 0, (), 0, tariff)
    unit_minutes = tariff.unit_minutes
    unit = timedelta(minutes=unit_minutes)
    units = -((-duration) // unit)  # ceil, exact in microseconds
    # Unit k starts k * unit_minutes whole minutes after the entry: its 24-hour window is
    # that // MINUTES_PER_DAY, and its price that of the local minute it starts in (bands
    # change on whole minutes, so the seconds never matter).
    count = (units - 1) * unit_minutes // MINUTES_PER_DAY + 1
    rates = tariff.rates
    bands = len(rates)
    counts = [0] * (count * bands)  # units per (window, band)
    band_of = tariff._band_of_minute
    zone = tariff.timezone
    at = start
    for k in range(units):
        local = at.astimezone(zone)
        counts[
            k * unit_minutes // MINUTES_PER_DAY * bands + band_of[local.hour * 60 + local.minute]
        ] += 1
        at += unit
    cap = tariff.daily_cap_cents
    windows = []
    for i in range(count):
        used = tuple(
            BandUnits(rates[b], n) for b, n in enumerate(counts[i * bands : (i + 1) * bands]) if n
        )
        if not used:
            continue
        raw = sum(u.cents for u in used)
        windows.append(
            WindowFee(
                index=i,
                start=(start + i * DAY).astimezone(zone),
                units=sum(u.units for u in used),
                raw_cents=raw,
                cents=raw if cap is None else min(raw, cap),
                bands=used,
            )
        )
    total = sum(w.cents for w in windows)
    return Fee(
        tariff.lot_id, entry_at, exit_at, duration, False, units, tuple(windows), total, tariff
    )


def fee_cents(tariff: Tariff, entry_at: datetime, exit_at: datetime) -> int:
    """The fee of a stay, in cents."""
    return fee(tariff, entry_at, exit_at).total_cents


def load_tariffs(path: Path | str) -> dict[str, Tariff]:
    """Read and validate a tariff file; ``ConfigError`` names the file and the bad key."""
    path = Path(path)
    return parse_tariffs(read_toml(path, "tariff file"), str(path))


def parse_tariffs(data: Mapping[str, Any], source: str = "tariffs.toml") -> dict[str, Tariff]:
    """Tariffs from an already parsed TOML document (``{"lots": {lot_id: table}}``)."""
    try:
        return _parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: Mapping[str, Any]) -> dict[str, Tariff]:
    _check_keys("", data, ("lots",), frozenset())
    lots = data["lots"]
    if not isinstance(lots, dict):
        raise ConfigError("lots must be a table of lots")
    if not lots:
        raise ConfigError("lots must define at least one lot")
    return {lot_id: _parse_lot(lot_id, table) for lot_id, table in lots.items()}


def _parse_lot(lot_id: str, table: Any) -> Tariff:
    key = f"lots.{lot_id}"
    if not isinstance(table, dict):
        raise ConfigError(f"{key} must be a table")
    _check_keys(f"{key}.", table, _LOT_KEYS, _OPTIONAL_LOT_KEYS)
    rates = table["rates"]
    if not isinstance(rates, list) or not all(isinstance(b, dict) for b in rates):
        raise ConfigError(f"{key}.rates must be an array of tables")
    if not rates:
        raise ConfigError(f"{key}.rates must have at least one band")
    bands = []
    for i, band in enumerate(rates):
        bkey = f"{key}.rates[{i}]"
        _check_keys(f"{bkey}.", band, _BAND_KEYS, frozenset())
        bands.append(
            RateBand(
                start=_parse_hhmm(f"{bkey}.start", band["start"]),
                end=_parse_hhmm(f"{bkey}.end", band["end"]),
                cents_per_unit=band["cents_per_unit"],
            )
        )
    return Tariff(
        lot_id=lot_id,
        timezone=_parse_zone(f"{key}.timezone", table["timezone"]),
        free_minutes=table["free_minutes"],
        unit_minutes=table["unit_minutes"],
        daily_cap_cents=table.get("daily_cap_cents"),
        rates=tuple(bands),
    )


def _check_keys(
    prefix: str, table: Mapping[str, Any], known: tuple[str, ...], optional: frozenset[str]
) -> None:
    for name in table:
        if name not in known:
            raise ConfigError(f"unknown key {prefix}{name} (known: {', '.join(known)})")
    for name in known:
        if name not in table and name not in optional:
            raise ConfigError(f"{prefix}{name} is missing")


def _parse_zone(key: str, value: Any) -> ZoneInfo:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be an IANA time zone name such as 'Asia/Shanghai'")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key} is not a known time zone: {value!r}") from None


def _parse_hhmm(key: str, value: Any) -> time:
    if isinstance(value, time) and _is_hhmm(value):
        return value  # a TOML local time such as 08:00:00
    if isinstance(value, str):
        m = _HHMM.fullmatch(value)
        if m:
            return time(int(m.group(1)), int(m.group(2)))
    raise ConfigError(f"{key} must be HH:MM, not {value!r}")


def _is_hhmm(value: object) -> bool:
    return (
        isinstance(value, time)
        and value.second == 0
        and value.microsecond == 0
        and value.tzinfo is None
    )


def _check_int(key: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a whole number, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, not {value}")


def _check_cents(key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a whole number of cents, not {value!r}")
    if value < 0:
        raise ConfigError(f"{key} must not be negative, not {value}")


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _runs(minutes: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs [start, end) of a sorted list of minutes."""
    runs: list[tuple[int, int]] = []
    for m in minutes:
        if runs and runs[-1][1] == m:
            runs[-1] = (runs[-1][0], m + 1)
        else:
            runs.append((m, m + 1))
    return runs


def _cover_day(key: str, rates: tuple[RateBand, ...]) -> tuple[int, ...]:
    """Band index of each minute; ``ConfigError`` on an overlap or a gap."""
    owner: list[int | None] = [None] * MINUTES_PER_DAY
    for i, band in enumerate(rates):
        for span in band.minutes():
            for m in span:
                j = owner[m]
                if j is not None:
                    raise ConfigError(
                        f"{key}.rates[{j}] and {key}.rates[{i}] overlap at {_hhmm(m)}"
                    )
                owner[m] = i
    gaps = _runs([m for m, j in enumerate(owner) if j is None])
    if len(gaps) > 1 and gaps[0][0] == 0 and gaps[-1][1] == MINUTES_PER_DAY:
        gaps = [(gaps[-1][0], gaps[0][1]), *gaps[1:-1]]  # one gap across midnight
    if gaps:
        text = ", ".join(f"{_hhmm(s)}-{_hhmm(e % MINUTES_PER_DAY)}" for s, e in gaps)
        raise ConfigError(f"{key}.rates leave {text} uncovered (the bands must cover the day)")
    return tuple(j for j in owner if j is not None)
