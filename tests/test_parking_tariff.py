"""Tariffs: hand-checked fees (arithmetic in the comments) and every bad-file case."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.errors import ConfigError
from citybrain.parking.tariff import (
    RateBand,
    Tariff,
    fee,
    fee_cents,
    load_tariffs,
    parse_tariffs,
)

ROOT = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")

L01_TOML = """
[lots.L01]
timezone = "Asia/Shanghai"
free_minutes = 15
unit_minutes = 30
daily_cap_cents = 6000
rates = [ { start = "08:00", end = "20:00", cents_per_unit = 500 },
          { start = "20:00", end = "08:00", cents_per_unit = 200 } ]
"""


def l01(cap: int | None = 6000) -> Tariff:
    return Tariff(
        lot_id="L01",
        timezone=SHANGHAI,
        free_minutes=15,
        unit_minutes=30,
        daily_cap_cents=cap,
        rates=(
            RateBand(time(8), time(20), 500),
            RateBand(time(20), time(8), 200),
        ),
    )


def berlin() -> Tariff:
    """Hourly units, the same day/night bands, no cap, in a zone with DST."""
    return Tariff(
        lot_id="B01",
        timezone=BERLIN,
        free_minutes=15,
        unit_minutes=60,
        daily_cap_cents=None,
        rates=(RateBand(time(8), time(20), 500), RateBand(time(20), time(8), 200)),
    )


def sh(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute, second, tzinfo=SHANGHAI)


# ---- fees --------------------------------------------------------------------------------


def test_the_issue_example_parses_to_l01() -> None:
    assert parse_tariffs(tomllib.loads(L01_TOML)) == {"L01": l01()}


def test_free_period_boundary() -> None:
    t = l01()
    # exactly 15 min: d <= free_minutes -> free
    assert fee_cents(t, sh(1, 10), sh(1, 10, 15)) == 0
    assert fee(t, sh(1, 10), sh(1, 10, 15)).free
    # 15 min 1 s: ceil(901 s / 1800 s) = 1 unit, starting 10:00 (day) -> 500
    assert fee_cents(t, sh(1, 10), sh(1, 10, 15, 1)) == 500
    # zero-length stay is free too
    assert fee_cents(t, sh(1, 10), sh(1, 10)) == 0


def test_units_are_started_units_from_entry() -> None:
    t = l01()
    # 30 min exactly: 1 unit (10:00) -> 500
    assert fee_cents(t, sh(1, 10), sh(1, 10, 30)) == 500
    # 30 min 1 s: 2 units (10:00, 10:30) -> 1000
    assert fee_cents(t, sh(1, 10), sh(1, 10, 30, 1)) == 1000


def test_a_unit_straddling_a_band_boundary_is_priced_by_its_start() -> None:
    t = l01()
    # 19:45 -> 20:30 = 45 min -> 2 units: 19:45 (day, 500; runs to 20:15), 20:15 (night, 200)
    assert fee_cents(t, sh(1, 19, 45), sh(1, 20, 30)) == 700
    # 07:50 -> 08:10 = 20 min -> 1 unit starting 07:50 (night): 200, though mostly in the day
    assert fee_cents(t, sh(1, 7, 50), sh(1, 8, 10)) == 200


def test_stays_crossing_midnight() -> None:
    t = l01()
    # 23:00 -> 01:10 = 130 min -> 5 units at 23:00, 23:30, 00:00, 00:30, 01:00: 5 * 200
    assert fee_cents(t, sh(1, 23), sh(2, 1, 10)) == 1000
    # 22:00 -> 09:00 = 11 h -> 22 units: 22:00 .. 07:30 are 20 night units (4000),
    # 08:00 and 08:30 are 2 day units (1000): 5000, under the 6000 cap
    assert fee_cents(t, sh(1, 22), sh(2, 9)) == 5000


def test_the_cap_applies_per_24h_window_from_entry_not_per_calendar_day() -> None:
    t = l01()
    # 18:00 -> next day 10:00 = 16 h -> 32 units, all in window 0 (18:00 .. 18:00):
    #   18:00 .. 19:30 day: 4 * 500 = 2000; 20:00 .. 07:30 night: 24 * 200 = 4800;
    #   08:00 .. 09:30 day: 4 * 500 = 2000; sum 8800 -> capped at 6000.
    # (Capping per calendar day would give 3600 + 5200 = 8800.)
    f = fee(t, sh(1, 18), sh(2, 10))
    assert (f.units, f.total_cents, f.cap_applied) == (32, 6000, True)
    assert [(w.index, w.units, w.raw_cents, w.cents) for w in f.windows] == [(0, 32, 8800, 6000)]


def test_multi_day_stay_with_daily_cap() -> None:
    t = l01()
    # 2024-01-01 07:50 -> 01-03 09:00 = 2 d 70 min -> 96 + ceil(70 / 30) = 99 units.
    # Windows start at 07:50 each day. A full window (48 units): 07:50 night (200),
    # 08:20 .. 19:50 = 24 day units (12000), 20:20 .. 07:20 = 23 night units (4600):
    # 16800 -> capped 6000. Window 2: 07:50 night 200, 08:20 and 08:50 day 1000 -> 1200.
    # Total: 6000 + 6000 + 1200 = 13200.
    f = fee(t, sh(1, 7, 50), sh(3, 9))
    assert f.units == 99
    assert [(w.units, w.raw_cents, w.cents) for w in f.windows] == [
        (48, 16800, 6000),
        (48, 16800, 6000),
        (3, 1200, 1200),
    ]
    assert [w.start for w in f.windows] == [sh(1, 7, 50), sh(2, 7, 50), sh(3, 7, 50)]
    assert f.total_cents == 13200


def test_tariff_without_cap() -> None:
    # the same stay with no cap: 16800 + 16800 + 1200 = 34800
    f = fee(l01(cap=None), sh(1, 7, 50), sh(3, 9))
    assert f.total_cents == 34800
    assert not f.cap_applied


def test_dst_spring_forward_counts_elapsed_time_and_local_bands() -> None:
    t = berlin()
    # 2024-03-31: clocks jump 02:00 CET -> 03:00 CEST.
    # 01:00 CET (00:00 UTC) -> 09:00 CEST (07:00 UTC): 7 h elapsed (not 8) -> 7 units.
    # Unit starts 00..06 UTC = 01:00 CET, 03:00, 04:00, 05:00, 06:00, 07:00 CEST (night)
    # and 08:00 CEST (day): 6 * 200 + 500 = 1700.
    entry = datetime(2024, 3, 31, 1, 0, tzinfo=BERLIN)
    exit_ = datetime(2024, 3, 31, 9, 0, tzinfo=BERLIN)
    f = fee(t, entry, exit_)
    assert f.duration == timedelta(hours=7)
    assert (f.units, f.total_cents) == (7, 1700)


def test_dst_fall_back() -> None:
    t = berlin()
    # 2024-10-27: clocks go back 03:00 CEST -> 02:00 CET.
    # 00:00 CEST (22:00 UTC) -> 08:00 CET (07:00 UTC): 9 h elapsed -> 9 units, starts
    # 00:00, 01:00, 02:00 CEST, 02:00, 03:00 .. 07:00 CET: all night -> 9 * 200 = 1800.
    entry = datetime(2024, 10, 27, 0, 0, tzinfo=BERLIN)
    exit_ = datetime(2024, 10, 27, 8, 0, tzinfo=BERLIN)
    assert fee_cents(t, entry, exit_) == 1800


def test_dst_windows_are_24_elapsed_hours() -> None:
    t = Tariff("B02", BERLIN, 0, 60, 1000, (RateBand(time(0), time(0), 100),))
    # 2024-03-30 12:00 CET -> 2024-03-31 14:00 CEST = 25 h elapsed -> 25 units of 100.
    # Window 0: 24 units (2400 -> cap 1000); window 1 starts 24 h later, which is
    # 2024-03-31 13:00 CEST on the clock: 1 unit (100). Total 1100.
    f = fee(t, datetime(2024, 3, 30, 12, tzinfo=BERLIN), datetime(2024, 3, 31, 14, tzinfo=BERLIN))
    assert [(w.units, w.cents) for w in f.windows] == [(24, 1000), (1, 100)]
    assert f.windows[1].start == datetime(2024, 3, 31, 13, tzinfo=BERLIN)
    assert f.total_cents == 1100


def test_times_in_other_zones_are_the_same_instants() -> None:
    t = l01()
    entry = sh(1, 19, 45)
    exit_ = sh(1, 20, 30)
    assert fee_cents(t, entry.astimezone(UTC), exit_.astimezone(BERLIN)) == 700


def test_naive_times_and_reversed_stays_are_rejected() -> None:
    t = l01()
    with pytest.raises(ValueError, match="entry_at must be timezone-aware"):
        fee_cents(t, datetime(2024, 1, 1, 10), sh(1, 11))
    with pytest.raises(ValueError, match="exit_at must be timezone-aware"):
        fee_cents(t, sh(1, 10), datetime(2024, 1, 1, 11))
    with pytest.raises(ValueError, match="before entry_at"):
        fee_cents(t, sh(1, 11), sh(1, 10))


def test_the_shipped_file_loads() -> None:
    tariffs = load_tariffs(ROOT / "configs" / "tariffs.toml")
    assert tariffs["L01"] == l01()
    flat = tariffs["L03"]
    # a whole-day band ("00:00" to "00:00"): 2 h 5 min -> 3 units of 300 = 900
    assert fee_cents(flat, sh(1, 23), sh(2, 1, 5)) == 900


# ---- bad tariffs -------------------------------------------------------------------------


def l01_data() -> dict[str, Any]:
    return tomllib.loads(L01_TOML)


def lot(data: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = data["lots"]["L01"]
    return table


def band(data: dict[str, Any], i: int) -> dict[str, Any]:
    table: dict[str, Any] = lot(data)["rates"][i]
    return table


def _missing_unit(d: dict[str, Any]) -> None:
    del lot(d)["unit_minutes"]


def _missing_band_end(d: dict[str, Any]) -> None:
    del band(d, 1)["end"]


def _no_rates(d: dict[str, Any]) -> None:
    lot(d)["rates"] = []


def _set(key: str, value: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        lot(d)[key] = value

    return edit


def _set_band(i: int, key: str, value: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        band(d, i)[key] = value

    return edit


BAD = [
    (_missing_unit, "lots.L01.unit_minutes is missing"),
    (_missing_band_end, "lots.L01.rates[1].end is missing"),
    (_set("fre_minutes", 5), "unknown key lots.L01.fre_minutes"),
    (_set_band(0, "price", 5), "unknown key lots.L01.rates[0].price"),
    (_set("timezone", "Mars/Olympus"), "lots.L01.timezone is not a known time zone"),
    (_set("timezone", "../etc/passwd"), "lots.L01.timezone is not a known time zone"),
    (_set("timezone", 8), "lots.L01.timezone must be an IANA time zone name"),
    (_set_band(1, "end", "8:00"), "lots.L01.rates[1].end must be HH:MM"),
    (_set_band(1, "end", "24:00"), "lots.L01.rates[1].end must be HH:MM"),
    (_set_band(0, "start", "08:60"), "lots.L01.rates[0].start must be HH:MM"),
    (_set_band(0, "start", 800), "lots.L01.rates[0].start must be HH:MM"),
    (_set_band(0, "start", time(8, 0, 30)), "lots.L01.rates[0].start must be HH:MM"),
    (_set_band(1, "start", "19:00"), "lots.L01.rates[0] and lots.L01.rates[1] overlap at 19:00"),
    (_set_band(1, "end", "07:00"), "lots.L01.rates leave 07:00-08:00 uncovered"),
    (_set_band(1, "start", "00:00"), "lots.L01.rates leave 20:00-00:00 uncovered"),
    (_no_rates, "lots.L01.rates must have at least one band"),
    (_set("rates", "08:00-20:00"), "lots.L01.rates must be an array of tables"),
    (_set("unit_minutes", 0), "lots.L01.unit_minutes must be at least 1"),
    (_set("unit_minutes", -30), "lots.L01.unit_minutes must be at least 1"),
    (_set("unit_minutes", 30.0), "lots.L01.unit_minutes must be a whole number"),
    (_set("free_minutes", -1), "lots.L01.free_minutes must be at least 0"),
    (_set("free_minutes", True), "lots.L01.free_minutes must be a whole number"),
    (_set("daily_cap_cents", -100), "lots.L01.daily_cap_cents must not be negative"),
    (_set("daily_cap_cents", 60.0), "lots.L01.daily_cap_cents must be a whole number of cents"),
    (_set_band(0, "cents_per_unit", -1), "lots.L01.rates[0].cents_per_unit must not be negative"),
    (_set_band(1, "cents_per_unit", 2.5), "lots.L01.rates[1].cents_per_unit must be a whole"),
    (_set_band(1, "cents_per_unit", "200"), "lots.L01.rates[1].cents_per_unit must be a whole"),
]


@pytest.mark.parametrize(("edit", "message"), BAD)
def test_bad_tariff_names_the_key(edit: Any, message: str) -> None:
    data = l01_data()
    edit(data)
    with pytest.raises(ConfigError) as err:
        parse_tariffs(data)
    assert str(err.value).startswith("tariffs.toml: ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "lots is missing"),
        ("[lots]\n", "lots must define at least one lot"),
        ("lots = 3\n", "lots must be a table of lots"),
        ("[lots]\nL01 = 3\n", "lots.L01 must be a table"),
        (L01_TOML + "[other]\n", "unknown key other"),
        ("[lots.L01\n", "not valid TOML"),
    ],
)
def test_bad_file_shape(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tariffs.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_tariffs(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tariff file not found"):
        load_tariffs(tmp_path / "nope.toml")


def test_a_tariff_built_in_code_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"lots\.X\.rates leave 20:00-08:00 uncovered"):
        Tariff("X", SHANGHAI, 0, 30, None, (RateBand(time(8), time(20), 500),))
    with pytest.raises(ConfigError, match=r"lots\.X\.rates\[0\]\.cents_per_unit"):
        Tariff("X", SHANGHAI, 0, 30, None, (RateBand(time(0), time(0), 5.0),))  # type: ignore[arg-type]


# ---- properties --------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2023, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
)
stays = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=4))


@settings(max_examples=150, deadline=None)
@given(instants, stays, stays, st.sampled_from(["L01", "L01-nocap", "B01"]))
def test_fee_is_monotone_in_exit_time(
    entry: datetime, a: timedelta, b: timedelta, which: str
) -> None:
    t = {"L01": l01(), "L01-nocap": l01(cap=None), "B01": berlin()}[which]
    short, long_ = sorted((a, b))
    assert fee_cents(t, entry, entry + short) <= fee_cents(t, entry, entry + long_)


@settings(max_examples=100, deadline=None)
@given(instants, stays)
def test_cap_bounds_and_breakdown(entry: datetime, stay: timedelta) -> None:
    capped = fee(l01(), entry, entry + stay)
    uncapped = fee(l01(cap=None), entry, entry + stay)
    assert capped.total_cents == sum(w.cents for w in capped.windows)
    assert capped.units == sum(w.units for w in capped.windows) == uncapped.units
    assert capped.total_cents <= uncapped.total_cents
    assert all(w.cents <= 6000 for w in capped.windows)
    # an instant is the same instant in any zone
    assert fee_cents(l01(), entry.astimezone(SHANGHAI), (entry + stay).astimezone(BERLIN)) == (
        capped.total_cents
    )
