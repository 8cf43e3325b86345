"""Occupancy against the configured capacities, now and over a day; the parking settings
file (a bad key is named); on both backends (fixtures of ``test_parking_ledger``)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from citybrain.errors import ConfigError
from citybrain.parking.ledger import Ledger
from citybrain.parking.occupancy import Stay, day_profile
from citybrain.parking.office import BackOffice
from citybrain.parking.settings import (
    LotSettings,
    ParkingSettings,
    ReviewSettings,
    load_parking_settings,
    parse_parking_settings,
)
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import at, record

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2024, 5, 1)


def local(hour: float, day: int = 1) -> datetime:
    return datetime(2024, 5, day, tzinfo=TZ) + timedelta(hours=hour)


def test_a_day_profile_counts_cars_hour_by_hour() -> None:
    stays = [
        Stay(local(8.5), local(10.25)),  # 08:30-10:15
        Stay(local(9), local(9.5)),
        Stay(local(9.25), None),  # still there
        Stay(local(-3), local(1)),  # from the day before until 01:00
        Stay(local(23.5), local(2, day=2)),  # into the next day
        Stay(local(12), local(12)),  # zero length: never present
    ]
    profile = day_profile("L01", DAY, TZ, stays, now=local(16), capacity=10)
    hours = {h.start.hour: (h.at_start, h.peak) for h in profile.hours}
    assert len(profile.hours) == 24
    assert hours[0] == (1, 1) and hours[1] == (0, 0)
    assert hours[8] == (0, 1) and hours[9] == (2, 3) and hours[10] == (2, 2)
    assert hours[11] == (1, 1)  # the open stay
    assert hours[16] == (0, 0)  # after now: not counted yet
    assert hours[23] == (0, 1)
    assert (profile.peak, profile.peak_at) == (3, local(9.25))


def test_occupancy_now_and_over_a_day(ledger: Ledger) -> None:
    settings = ParkingSettings(
        ReviewSettings(max_stay_hours=24), {"L01": LotSettings(3), "L02": LotSettings(50)}
    )
    back = BackOffice(ledger, settings)
    record(ledger, "a-in", "in", "浙A11111", 0)  # 10:00
    record(ledger, "b-in", "in", "浙A22222", 30)
    record(ledger, "a-out", "out", "浙A11111", 90)
    record(ledger, "c-in", "in", "浙A33333", 60)
    record(ledger, "d-in", "in", "浙A44444", 10, lot="L02")
    record(ledger, "x-out", "out", "浙A55555", 70)  # an exit nobody saw come in
    now = {o.lot_id: o for o in back.occupancy(at(120))}
    assert (now["L01"].occupied, now["L01"].capacity, now["L01"].free) == (2, 3, 1)
    assert now["L01"].percent == pytest.approx(200 / 3)
    assert (now["L02"].occupied, now["L03"].occupied, now["L03"].capacity) == (1, 0, None)
    later = {o.lot_id: o for o in back.occupancy(at(26 * 60))}
    assert (later["L01"].overstays, later["L02"].overstays) == (2, 1)
    (l01,) = back.occupancy_day(DAY, at(24 * 60), "L01")
    hours = {h.start.hour: (h.at_start, h.peak) for h in l01.hours}
    assert hours[10] == (1, 2) and hours[11] == (3, 3) and hours[12] == (2, 2)
    assert (l01.peak, l01.peak_at, l01.capacity) == (3, at(60), 3)


def test_the_settings_file_fails_naming_the_key(tmp_path: Path) -> None:
    shipped = load_parking_settings()
    assert shipped.capacity("L01") == 400 and shipped.review.grace_minutes == 10
    bad = {
        "[review]\ngrace_minutes = -1\n": "f.toml: review.grace_minutes must be at least 0",
        "[review]\nmax_stay_hours = 0\n": "f.toml: review.max_stay_hours must be greater than 0",
        "[lots.L9]\n": "f.toml: lots.L9.capacity is missing",
        "[lots.L9]\ncapacity = 0\n": "f.toml: lots.L9.capacity must be at least 1",
        "[lots.L9]\ncapacity = '40'\n": "f.toml: lots.L9.capacity must be a whole number",
        "[lots.L9]\ncapacity = 4\nspaces = 2\n": "f.toml: unknown key lots.L9.spaces",
        "[review]\ngrace = 3\n": "f.toml: unknown key review.grace",
        "lots = 3\n": "f.toml: lots must be a table",
        "[review\n": "f.toml: not valid TOML",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError) as caught:
            parse_parking_settings(text, "f.toml")
        assert str(caught.value).startswith(message), (text, str(caught.value))
    with pytest.raises(ConfigError, match="parking settings file not found"):
        load_parking_settings(tmp_path / "none.toml")
    good = tmp_path / "p.toml"
    good.write_text("[review]\ngrace_minutes = 2.5\n[lots.X]\ncapacity = 7\n", encoding="utf-8")
    loaded = load_parking_settings(good)
    assert (loaded.review.grace, loaded.capacity("X")) == (timedelta(minutes=2.5), 7)
